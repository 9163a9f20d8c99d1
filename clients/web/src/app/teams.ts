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
import { toHex } from "../protocol/bytes";
import type { AuthorityKeys } from "../protocol/rotation";
import type { ChainEntry } from "../protocol/frames";
import { SignedRecord, type TeamOp, type TeamRecord, type TeamState, applyRecord, verifyChain } from "../protocol/teams";

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

/** One team as this device keeps it (sealed in the vault): the records it
 * verified, in order, and the problem it found, if any. */
export interface StoredTeam {
  id: string;
  recs: ChainEntry[];
  problem: TeamProblem;
  /** For logs: which rule failed, or what the hub said. */
  detail?: string;
}

/** A stored team with its verified state (null before any record). */
export interface KnownTeam {
  stored: StoredTeam;
  state: TeamState | null;
  /** Hex hash of each record: heads[i] is the head after record i. */
  heads: string[];
  events: TeamEvent[];
}

function eventOf(r: TeamRecord): TeamEvent {
  return { seq: r.seq, at: r.at, op: r.op, by: r.by, user: r.user };
}

/**
 * Apply `entries` after what `known` verified (records of seq known.heads.length
 * on); returns the new KnownTeam or throws TeamChainError (nothing changes).
 */
export function extendTeam(known: KnownTeam, entries: readonly ChainEntry[], authorityPk: Uint8Array | AuthorityKeys): KnownTeam {
  let state = known.state;
  const heads = [...known.heads];
  const events = [...known.events];
  const recs = [...known.stored.recs];
  for (const e of entries) {
    const s = new SignedRecord(e.rec, e.sig);
    state = applyRecord(state, s, authorityPk, known.stored.id);
    heads.push(toHex(state.head));
    events.push(eventOf(s.record()));
    recs.push({ rec: e.rec, sig: e.sig });
  }
  return { stored: { ...known.stored, recs }, state, heads, events };
}

/** Verify a stored team from its creation. A chain that no longer verifies
 * (a vault from an older version, a bug) is "tampered" with no state. */
export function loadTeam(stored: StoredTeam, authorityPk: Uint8Array | AuthorityKeys): KnownTeam {
  const empty: KnownTeam = { stored: { ...stored, recs: [] }, state: null, heads: [], events: [] };
  try {
    const known = extendTeam(empty, stored.recs, authorityPk);
    return { ...known, stored: { ...known.stored, problem: stored.problem, detail: stored.detail } };
  } catch (err) {
    return { ...empty, stored: { ...stored, recs: [], problem: "tampered", detail: String(err) } };
  }
}

/** A team no record of which was verified yet. */
export function emptyTeam(id: string): KnownTeam {
  return { stored: { id, recs: [], problem: null }, state: null, heads: [], events: [] };
}

/** Members as of the record whose hash is `headHex`, or undefined if that
 * head is not in the verified chain. */
export function membersAt(known: KnownTeam, headHex: string, authorityPk: Uint8Array | AuthorityKeys): readonly string[] | undefined {
  const i = known.heads.indexOf(headHex);
  if (i < 0) return undefined;
  if (i === known.heads.length - 1) return known.state!.members;
  const recs = known.stored.recs.slice(0, i + 1).map((e) => new SignedRecord(e.rec, e.sig));
  return verifyChain(recs, authorityPk, known.stored.id).members;
}

/** What the interface shows. */
export function teamView(known: KnownTeam, me: string): TeamView {
  const s = known.state;
  const view: TeamView = {
    id: known.stored.id,
    name: s?.name ?? "",
    org: s?.org ?? "",
    members: [...(s?.members ?? [])],
    admins: [...(s?.admins ?? [])],
    head: s ? toHex(s.head) : "",
    closed: s?.closed ?? false,
    member: s?.members.includes(me) ?? false,
    admin: s?.admins.includes(me) ?? false,
    problem: known.stored.problem,
    events: [...known.events],
  };
  if (s?.lifespan !== undefined) view.lifespanMs = s.lifespan;
  return view;
}

/** The devices a team message goes to (SPEC §13.4, from the VERIFIED chain):
 * every attested device of every member, our own other devices included,
 * except the sending device. `devicesOf` gives a member's attested devices. */
export function teamTargets(
  state: TeamState,
  sendingDevice: string,
  devicesOf: (user: string) => readonly { device: string; box_pk: Uint8Array }[],
): Map<string, Uint8Array> {
  const targets = new Map<string, Uint8Array>();
  for (const user of state.members) {
    for (const d of devicesOf(user)) if (d.device !== sendingDevice) targets.set(d.device, d.box_pk);
  }
  return targets;
}

/**
 * After a `missing_devices` for a team send: the devices the hub wants that
 * belong to no member by our chain (`known`: each member's attested device
 * ids). A non-empty answer means the hub's view of the team differs from the
 * chain: "tampered", and nothing is encrypted to them (SPEC §13.4).
 */
export function strangers(missing: readonly string[], memberDevices: ReadonlySet<string>): string[] {
  return missing.filter((d) => !memberDevices.has(d));
}
