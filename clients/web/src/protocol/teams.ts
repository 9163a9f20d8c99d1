/**
 * Care teams (protocol/teams.py, SPEC §13.1–§13.2): membership records,
 * signed records, their hash, and chain verification.
 *
 *     record = canonical msgpack map {v: 1, team, seq, prev, op, user, by,
 *              device?, at, name?, org?, lifespan?, att?}
 *     signed = {rec, sig}, sig = Ed25519("miss.v1/team\0" ‖ rec) by the
 *              signing device (or the authority key when by = "authority")
 *     hash   = BLAKE2b-256(rec ‖ sig); the head is the last record's hash
 *
 * `verifyChain` / `applyRecord` run the same checks as the hub and the
 * Python clients and throw TeamChainError with the same `reason`
 * ("malformed", "bad_signature", "broken_chain", "forbidden"). Membership
 * is what a chain verified here says, never what the hub says.
 *
 * Needs `await ready()` (sodium.ts) first.
 */
import * as attestation from "./attestation";
import { codePointLength, concatBytes, equalBytes, toHex, utf8Encode } from "./bytes";
import { MsgMap, type MsgValue, pack, RepeatedKeyError, unpack } from "./codec";
import { type Signer, verifySignature } from "./crypto";
import { sodium } from "./sodium";
import { type AuthorityKeys, verifyAttestation, verifyByAuthority } from "./rotation";

/** Signed before every record (SPEC §13.2). */
export const TEAM_CONTEXT = utf8Encode("miss.v1/team\0");
/** `by` of a record signed by the verification authority. */
export const AUTHORITY = "authority";
export const OPS = ["create", "add", "remove", "leave", "promote", "demote"] as const;
export type TeamOp = (typeof OPS)[number];
/** The `prev` of the creation record. */
export const ZERO_HEAD: Uint8Array = new Uint8Array(32);
export const MAX_TEAM_MEMBERS = 200;
export const MAX_RECORD_BYTES = 12288;
export const MIN_LIFESPAN_MS = 3_600_000;
export const MAX_LIFESPAN_MS = 2_592_000_000;
export const RECORD_VERSION = 1;
const MAX_ATT_BYTES = 8192;
const MAX_ID_CHARS = 128;

/** Why a chain (or one record) is refused. */
export type TeamChainReason = "malformed" | "bad_signature" | "broken_chain" | "forbidden";

export class TeamChainError extends Error {
  constructor(
    readonly reason: TeamChainReason,
    detail = "",
  ) {
    super(detail ? `${reason}: ${detail}` : reason);
    this.name = "TeamChainError";
  }
}

/** One membership change (field names as on the wire). */
export interface TeamRecord {
  team: string;
  seq: number;
  /** Hash of record seq − 1 (32 bytes; zeros for seq 0). */
  prev: Uint8Array;
  op: TeamOp;
  user: string;
  /** A user id, or AUTHORITY. */
  by: string;
  /** ms, the signer's clock. */
  at: number;
  /** The signing device; absent when `by` is AUTHORITY. */
  device?: string;
  name?: string;
  org?: string;
  /** Default lifespan of the team's messages (ms). */
  lifespan?: number;
  /** The signer's attestation; absent when `by` is AUTHORITY. */
  att?: Uint8Array;
}

const TEAM_ID = /^t_[0-9a-f]{16}$/;

/** True for "t_" + 16 lowercase hex digits. */
export function isTeamId(s: unknown): s is string {
  return typeof s === "string" && TEAM_ID.test(s);
}

/** A fresh random team id. */
export function newTeamId(): string {
  return "t_" + toHex(sodium().randombytes_buf(8));
}

/** The canonical bytes of a record (keys in the order of SPEC §13.2). */
export function packRecord(r: TeamRecord): Uint8Array {
  const m = new MsgMap([
    ["v", RECORD_VERSION],
    ["team", r.team],
    ["seq", r.seq],
    ["prev", r.prev],
    ["op", r.op],
    ["user", r.user],
    ["by", r.by],
  ]);
  if (r.device !== undefined) m.set("device", r.device);
  m.set("at", r.at);
  if (r.name !== undefined) m.set("name", r.name);
  if (r.org !== undefined) m.set("org", r.org);
  if (r.lifespan !== undefined) m.set("lifespan", r.lifespan);
  if (r.att !== undefined) m.set("att", r.att);
  return pack(m);
}

const KEYS = new Set(["v", "team", "seq", "prev", "op", "user", "by", "device", "at", "name", "org", "lifespan", "att"]);

function isInt(v: MsgValue | undefined): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function isId(v: MsgValue | undefined): v is string {
  return typeof v === "string" && v.length > 0 && codePointLength(v) <= MAX_ID_CHARS && !v.includes("\0");
}

/** A string of `min` to `max` code points without U+0000 (as in a frame,
 * SPEC §3.1: the hub stores names in a database that cannot hold it). */
function isText(v: MsgValue | undefined, min: number, max: number): v is string {
  return typeof v === "string" && codePointLength(v) >= min && codePointLength(v) <= max && !v.includes("\0");
}

/** Parse a packed record; TeamChainError("malformed") unless every key has
 * its type and constraints (SPEC §13.2 table, rule 1's shape). */
export function unpackRecord(data: Uint8Array): TeamRecord {
  const bad = (what: string) => new TeamChainError("malformed", what);
  if (data.length > MAX_RECORD_BYTES) throw bad("record too large");
  let m: MsgValue;
  try {
    m = unpack(data);
  } catch (e) {
    throw bad(e instanceof RepeatedKeyError ? e.message : "not msgpack");
  }
  if (!(m instanceof MsgMap)) throw bad("not a map");
  for (const k of m.keys()) if (typeof k !== "string" || !KEYS.has(k)) throw bad("unknown key");
  for (const k of ["v", "team", "seq", "prev", "op", "user", "by", "at"]) if (!m.has(k)) throw bad(`missing '${k}'`);
  // As the Python: a key present with nil is present (and then of the wrong type).
  const get = (k: string) => m.get(k);
  if (get("v") !== RECORD_VERSION) throw bad("version");
  const team = get("team");
  const seq = get("seq");
  const prev = get("prev");
  const op = get("op");
  const user = get("user");
  const by = get("by");
  const device = get("device");
  const at = get("at");
  const name = get("name");
  const org = get("org");
  const lifespan = get("lifespan");
  const att = get("att");
  if (!isTeamId(team)) throw bad("team");
  if (!isInt(seq)) throw bad("seq");
  if (!(prev instanceof Uint8Array && prev.length === 32)) throw bad("prev");
  if (typeof op !== "string" || !(OPS as readonly string[]).includes(op)) throw bad("op");
  if (!isId(user) || user === AUTHORITY) throw bad("user");
  if (!isId(by)) throw bad("by");
  if (!isInt(at)) throw bad("at");
  if (by === AUTHORITY) {
    if (device !== undefined || att !== undefined) throw bad("the authority's record names no device or attestation");
  } else if (!(device !== undefined && att !== undefined && isId(device))) {
    throw bad("a member's record names its device and attestation");
  } else if (!(att instanceof Uint8Array && att.length > 0 && att.length <= MAX_ATT_BYTES)) {
    throw bad("att is not an attestation");
  }
  if (op !== "create" && (name !== undefined || org !== undefined || lifespan !== undefined)) {
    throw bad("name, org and lifespan belong to a creation");
  }
  if (name !== undefined && !isText(name, 1, 64)) throw bad("name");
  if (org !== undefined && !isText(org, 0, 128)) throw bad("org");
  if (lifespan !== undefined && !(isInt(lifespan) && lifespan >= MIN_LIFESPAN_MS && lifespan <= MAX_LIFESPAN_MS)) throw bad("lifespan");
  const r: TeamRecord = { team, seq, prev, op: op as TeamOp, user, by, at };
  if (device !== undefined) r.device = device as string;
  if (name !== undefined) r.name = name as string;
  if (org !== undefined) r.org = org as string;
  if (lifespan !== undefined) r.lifespan = lifespan as number;
  if (att !== undefined) r.att = att as Uint8Array;
  return r;
}

/** A record and its signature, as on the wire (`{rec, sig}`). */
export class SignedRecord {
  constructor(
    readonly rec: Uint8Array,
    readonly sig: Uint8Array,
  ) {}

  /** BLAKE2b-256(rec ‖ sig): this record's place in the chain. */
  hash(): Uint8Array {
    return sodium().crypto_generichash(32, concatBytes(this.rec, this.sig), null);
  }

  /** The record (TeamChainError "malformed"). */
  record(): TeamRecord {
    return unpackRecord(this.rec);
  }
}

/** Sign a record with a device's keys (`r.by`/`r.device` name it). */
export function signRecord(r: TeamRecord, keys: Signer): SignedRecord {
  const rec = packRecord(r);
  return new SignedRecord(rec, keys.sign(concatBytes(TEAM_CONTEXT, rec)));
}

/** Sign a record with the authority's Ed25519 seed (tests, `miss-admin team create`). */
export function signRecordAuthority(r: TeamRecord, authoritySeed: Uint8Array): SignedRecord {
  const rec = packRecord(r);
  const sk = sodium().crypto_sign_seed_keypair(authoritySeed).privateKey;
  return new SignedRecord(rec, sodium().crypto_sign_detached(concatBytes(TEAM_CONTEXT, rec), sk));
}

/** A team as a verified chain leaves it. */
export interface TeamState {
  team: string;
  name: string;
  /** null when the creation named none (as the Python's None). */
  org: string | null;
  lifespan: number | undefined;
  /** In order of joining. */
  members: readonly string[];
  admins: readonly string[];
  /** Number of records applied. */
  seq: number;
  head: Uint8Array;
  closed: boolean;
}

function without(list: readonly string[], user: string): string[] {
  return list.filter((u) => u !== user);
}

/**
 * Apply one signed record to `state` (null before the creation): rules 1–3
 * of SPEC §13.2. `att` is checked as a signature by `authorityPk` whose
 * validity interval contains `rec.at` (a record outlives its attestation).
 * `authorityPk` may be a keyring (SPEC §15): a key retired by a rotation
 * counts for records whose `at` is up to its `until`.
 * Throws TeamChainError; returns a new state.
 */
export function applyRecord(state: TeamState | null, s: SignedRecord, authorityPk: Uint8Array | AuthorityKeys, team: string): TeamState {
  if (!(s.rec instanceof Uint8Array) || !(s.sig instanceof Uint8Array) || s.sig.length !== 64) {
    throw new TeamChainError("malformed", "sig is 64 bytes");
  }
  const r = s.record();
  // Rule 1: a record of this format and team, following the head.
  const seq = state === null ? 0 : state.seq;
  const head = state === null ? ZERO_HEAD : state.head;
  if (r.team !== team) throw new TeamChainError("malformed", "record of another team");
  if (r.seq !== seq) throw new TeamChainError("broken_chain", `seq ${r.seq}, expected ${seq}`);
  if (!equalBytes(r.prev, head)) throw new TeamChainError("broken_chain", "prev is not the head");
  // Rule 2: the signature.
  const signed = concatBytes(TEAM_CONTEXT, s.rec);
  if (r.by === AUTHORITY) {
    if (!verifyByAuthority(authorityPk, r.at, signed, s.sig)) throw new TeamChainError("bad_signature", "not the authority's signature");
  } else {
    let att: attestation.Attestation;
    try {
      att = verifyAttestation(r.att!, authorityPk, r.at);
    } catch {
      throw new TeamChainError("bad_signature", "the attestation does not verify at the record's time");
    }
    if (att.user !== r.by) throw new TeamChainError("bad_signature", "the attestation is another user's");
    const dev = att.device(r.device!);
    if (dev === undefined) throw new TeamChainError("bad_signature", "the device is not attested");
    if (!verifySignature(dev.sign_pk, signed, s.sig)) throw new TeamChainError("bad_signature", "the signature does not verify");
  }
  // Rule 3: the operation.
  const forbid = (what: string) => new TeamChainError("forbidden", what);
  const isAuthority = r.by === AUTHORITY;
  if (state === null || r.op === "create") {
    if (state !== null || r.op !== "create") throw forbid("a creation is the first record, and only it");
    if (r.name === undefined) throw forbid("a creation names the team");
    if (!isAuthority && r.by !== r.user) throw forbid("a creator makes themself admin");
    return {
      team,
      name: r.name,
      org: r.org ?? null,
      lifespan: r.lifespan,
      members: [r.user],
      admins: [r.user],
      seq: 1,
      head: s.hash(),
      closed: false,
    };
  }
  if (state.closed) throw forbid("the team is closed");
  const isMember = (u: string) => state.members.includes(u);
  const isAdmin = (u: string) => isAuthority && u === AUTHORITY ? true : state.admins.includes(u);
  let members = [...state.members];
  let admins = [...state.admins];
  switch (r.op) {
    case "add":
      if (!isAdmin(r.by)) throw forbid("only admins add");
      if (isMember(r.user)) throw forbid("already a member");
      members.push(r.user);
      break;
    case "remove":
      if (!isAdmin(r.by)) throw forbid("only admins remove");
      if (!isMember(r.user) || r.user === r.by) throw forbid("not a member other than the signer");
      members = without(members, r.user);
      admins = without(admins, r.user);
      break;
    case "leave":
      if (isAuthority || r.by !== r.user || !isMember(r.user)) throw forbid("only a member leaves, by themself");
      if (admins.length === 1 && admins[0] === r.user && members.length > 1) throw forbid("the last admin cannot leave");
      members = without(members, r.user);
      admins = without(admins, r.user);
      break;
    case "promote":
      if (!isAdmin(r.by)) throw forbid("only admins promote");
      if (!isMember(r.user) || admins.includes(r.user)) throw forbid("not a member who is not an admin");
      admins.push(r.user);
      break;
    case "demote":
      if (!isAdmin(r.by)) throw forbid("only admins demote");
      if (!admins.includes(r.user) || admins.length < 2) throw forbid("not an admin, or the last one");
      admins = without(admins, r.user);
      break;
  }
  // Closed once the last member left (or the authority removed them).
  return { ...state, members, admins, seq: state.seq + 1, head: s.hash(), closed: members.length === 0 };
}

/** Verify a whole chain from its creation; the final state, or TeamChainError
 * at the first record that breaks a rule (an empty chain is "broken_chain"). */
export function verifyChain(records: Iterable<SignedRecord>, authorityPk: Uint8Array | AuthorityKeys, team: string): TeamState {
  let state: TeamState | null = null;
  for (const s of records) state = applyRecord(state, s, authorityPk, team);
  if (state === null) throw new TeamChainError("broken_chain", "no records");
  return state;
}

/** The next record after `state` (null: a creation), with team, seq and
 * prev filled in. */
export function nextRecord(
  state: TeamState | null,
  op: TeamOp,
  user: string,
  fields: {
    by: string;
    at: number;
    device?: string;
    att?: Uint8Array;
    team?: string;
    name?: string;
    org?: string;
    lifespan?: number;
  },
): TeamRecord {
  const team = state?.team ?? fields.team;
  if (team === undefined) throw new Error("a creation names its team");
  const r: TeamRecord = {
    team,
    seq: state?.seq ?? 0,
    prev: state?.head ?? ZERO_HEAD,
    op,
    user,
    by: fields.by,
    at: fields.at,
  };
  if (fields.device !== undefined) r.device = fields.device;
  if (fields.name !== undefined) r.name = fields.name;
  if (fields.org !== undefined) r.org = fields.org;
  if (fields.lifespan !== undefined) r.lifespan = fields.lifespan;
  if (fields.att !== undefined) r.att = fields.att;
  return r;
}
