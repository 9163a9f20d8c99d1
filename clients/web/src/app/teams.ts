/**
 * Care teams on this device (SPEC §13.1–§13.4), without I/O: the records of
 * each team's chain as this device fetched and verified them, what it shows
 * of them (TeamView), and whether the hub's view disagrees with the chain
 * ("tampered": the chain does not verify, or the hub wants messages
 * encrypted to someone the chain does not make a member; "diverged": the
 * hub announces a head that is not in the chain after a refetch).
 *
 * Targets of a team message are computed from the VERIFIED chain only
 * (SPEC §13.4), never from the hub.
 */
import type { TeamOp } from "../protocol/teams";

/** Why a team cannot be written to; null when all is well. */
export type TeamProblem = null | "tampered" | "diverged";

/** One membership change as the chain says it (no free text). */
export interface TeamEvent {
  /** Position in the chain (0 = creation). */
  seq: number;
  /** ms, the signer's clock. */
  at: number;
  op: TeamOp;
  /** User id of the signer, or "authority". */
  by: string;
  /** The user the change is about. */
  user: string;
}

/** What the interface shows of a team. */
export interface TeamView {
  /** "t_" + 16 hex digits: also the conversation id. */
  id: string;
  name: string;
  org: string;
  /** The team's default lifespan of messages (ms), if any. */
  lifespanMs?: number;
  /** Current members (user ids), in chain order. */
  members: string[];
  admins: string[];
  /** Head of the verified chain, hex ("" before any verified record). */
  head: string;
  /** The last member left: nothing more can happen. */
  closed: boolean;
  /** This device's user is a member / an admin. */
  member: boolean;
  admin: boolean;
  problem: TeamProblem;
  /** Every record of the verified chain, oldest first. */
  events: TeamEvent[];
}
