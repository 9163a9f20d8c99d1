/**
 * On-call roles and escalation policies (protocol/oncall.py, SPEC §14,
 * revision 4).
 *
 * A role ("r_" + 16 lowercase hex digits, chosen by the hub) is a function,
 * not a person: a message to it reaches whoever holds it at send time. An
 * urgent message follows an escalation `Policy`: its released recipients
 * are reminded every `interval` ms until one acknowledges; `steps[k].delay`
 * ms after the previous step (after the send for the first) the copies of
 * step k+1's backups are released; `final` ms after the last step the
 * sender learns that nobody acknowledged.
 *
 * A policy is hub-visible metadata; on the wire (a RoleInfo's `policy`) it
 * is the map `{interval, steps: [{delay, role | user, holders}], final}`.
 * Everything here is pure.
 */

import { MsgMap, pack } from "./codec";

/** A role id: "r_" and 16 lowercase hex digits. */
export const ROLE_ID_RE = /^r_[0-9a-f]{16}$/;
/** Most holders a role has at one time (manual and scheduled). */
export const MAX_ROLE_HOLDERS = 16;
/** Most backup steps a policy may have (hubs set a lower cap, 3 by default). */
export const MAX_ESCALATION_STEPS = 5;
/** The protocol's floor and ceiling of `interval`, each `delay` and `final` (ms). */
export const MIN_ESCALATION_MS = 100;
export const MAX_ESCALATION_MS = 86_400_000;
/** Most roles one `role_search_ok` lists. */
export const MAX_ROLE_RESULTS = 20;
/** Longest role name, organisation, query (characters). */
export const MAX_ROLE_NAME_CHARS = 64;
export const MAX_ROLE_ORG_CHARS = 128;
export const MAX_ROLE_QUERY_CHARS = 64;
/** The states of an `urgent_status` row. */
export const URGENT_STATES = ["escalated", "acknowledged", "unacknowledged"] as const;
export type UrgentState = (typeof URGENT_STATES)[number];

/** True for "r_" + 16 lowercase hex digits. */
export function isRoleId(s: unknown): s is string {
  return typeof s === "string" && ROLE_ID_RE.test(s);
}

/** One escalation step, as a RoleInfo lists it: exactly one of `role` and
 * `user`; `holders`, the target's holders now (a user step: that user). */
export interface Step {
  delay: number;
  role?: string;
  user?: string;
  holders: readonly string[];
}

/** An escalation policy (ms). */
export interface Policy {
  interval: number;
  steps: readonly Step[];
  final: number;
}

/** The target (role id or user id) a step releases to. */
export function stepTarget(step: Step): string {
  return (step.role ?? step.user)!;
}

/** Absolute times (ms) of the release of steps 1..n, then of the final
 * deadline: n + 1 values, each the previous plus a delay (Policy.deadlines). */
export function deadlines(policy: Policy, sentAt: number): number[] {
  const out: number[] = [];
  let t = sentAt;
  for (const s of policy.steps) {
    t += s.delay;
    out.push(t);
  }
  out.push(t + policy.final);
  return out;
}

/** This policy with `interval` and/or `final` replaced (a `send.urgent`);
 * steps are never overridden. Not checked. */
export function withOverride(policy: Policy, interval?: number, final?: number): Policy {
  return { ...policy, interval: interval ?? policy.interval, final: final ?? policy.final };
}

/** The reason a policy is beyond bounds, or null when it is within
 * [max(minMs, MIN_ESCALATION_MS), MAX_ESCALATION_MS] with at most
 * min(maxSteps, MAX_ESCALATION_STEPS) steps (Policy.check, whose error is
 * `policy_out_of_bounds`). */
export function policyProblem(policy: Policy, minMs: number, maxSteps: number): string | null {
  const floor = Math.max(minMs, MIN_ESCALATION_MS);
  if (policy.steps.length > Math.min(maxSteps, MAX_ESCALATION_STEPS)) return `${policy.steps.length} steps`;
  const values: Array<[string, number]> = [
    ["interval", policy.interval],
    ["final", policy.final],
    ...policy.steps.map((s, i): [string, number] => [`steps[${i}].delay`, s.delay]),
  ];
  for (const [name, value] of values) {
    if (!(value >= floor && value <= MAX_ESCALATION_MS)) return `${name} = ${value} ms`;
  }
  return null;
}

/** The canonical msgpack of a policy without holders (protocol/oncall.py
 * `pack_policy`, the store form): `{interval, steps: [{delay, role | user}], final}`. */
export function packPolicy(policy: Policy): Uint8Array {
  const steps = policy.steps.map((s) => {
    const m = new MsgMap([["delay", s.delay]]);
    if (s.role !== undefined) m.set("role", s.role);
    else m.set("user", s.user!);
    return m;
  });
  return pack(new MsgMap([["interval", policy.interval], ["steps", steps], ["final", policy.final]]));
}

/** One role as the hub describes it (`role_ok.info`, `role_search_ok.roles`). */
export interface RoleInfo {
  role: string;
  name: string;
  org: string;
  /** Held only through the schedule or by an administrator: not taken from a client. */
  reserved: boolean;
  /** The users holding it now, sorted. */
  holders: readonly string[];
  /** The effective policy (the role's, else its organisation's, else the hub's). */
  policy: Policy;
}

/**
 * The users each escalation level reaches, as the hub computes them
 * (SPEC §14.5): level 0 = the role's holders now (`primary`), level k = the
 * users of step k not reached by an earlier level. Devices are then these
 * users' attested devices; the sender's own user is in level 0 (its other
 * devices get a copy) and never repeated.
 */
export function escalationLevels(primary: readonly string[], policy: Policy | null, sender: string): string[][] {
  const seen = new Set<string>([sender, ...primary]);
  const levels: string[][] = [[...new Set([...primary, sender])]];
  for (const step of policy?.steps ?? []) {
    const targets = step.user !== undefined ? [step.user] : step.holders;
    const users = targets.filter((u) => !seen.has(u));
    for (const u of users) seen.add(u);
    levels.push([...new Set(users)]);
  }
  return levels;
}
