/**
 * Wire frames of protocol v1 and their codec (SPEC §3, §4), as
 * protocol/frames.py, frame_base.py, client_frames.py and hub_frames.py.
 *
 * A frame is a plain object with its wire keys: `{t: "send", id, from, to,
 * envs}`, `{t: "deliver", seq, id, from_user, ...}`. `bin` fields are
 * `Uint8Array`s, `int` fields are `number`s (safe integers: see `decode`),
 * `envs` is a `Map` (its order is kept), nested maps (`lookup_ok.devices`,
 * `ack.refused`...) are plain objects. An absent optional field is
 * `undefined` (omitted on the wire, never nil).
 *
 * `decode(data, direction)` applies every decoding rule of SPEC §3.1 and
 * every field check of the tables, and throws MalformedFrame or
 * UnknownFrameType (errors.ts), never anything else. `encode(frame)` writes
 * the canonical bytes of SPEC §3.2, byte-identical to the Python `encode`;
 * it checks the frame with the same field checks first and throws
 * MalformedFrame (local) rather than write a frame the peer would refuse.
 * `decode(encode(f))` equals `f`.
 */
import { MAX_ATTACHMENTS_WIRE, PIECE_MAX, isBlobId } from "./attachments";
import { codePointLength } from "./bytes";
import { MsgMap, type MsgValue, pack, unpack } from "./codec";
import { MalformedFrame, ProtocolError, UnknownFrameType } from "./errors";
import { MAX_STATEMENTS, MAX_STATEMENT_BYTES } from "./rotation";
import {
  MAX_ESCALATION_STEPS,
  MAX_ROLE_HOLDERS,
  MAX_ROLE_NAME_CHARS,
  MAX_ROLE_ORG_CHARS,
  MAX_ROLE_QUERY_CHARS,
  MAX_ROLE_RESULTS,
  URGENT_STATES,
  isRoleId,
  type Policy,
  type RoleInfo,
  type Step,
  type UrgentState,
} from "./oncall";

export type { Policy, RoleInfo, Step, UrgentState } from "./oncall";

// --- limits (frame_base.py) ----------------------------------------------------------

export const PROTOCOL_VERSION = 1;
export const SUBPROTOCOL = "miss.v1";
/** Largest frame the hub accepts (bytes); larger ones are closed with 1009. */
export const MAX_FRAME_BYTES = 64 * 1024;
/** Largest hub frame a client should accept (bytes), as the Python SDK
 * (`MAX_INCOMING_BYTES`): a `search_ok` can exceed MAX_FRAME_BYTES (SPEC §2). */
export const MAX_HUB_FRAME_BYTES = 2 * MAX_FRAME_BYTES;
/** Longest user id, device id, enrollment code, name... (characters). */
export const MAX_ID_CHARS = 128;
/** Most envelopes one `send` may carry (recipient devices + own devices). */
export const MAX_RECIPIENT_DEVICES = 64;
/** Largest attestation (SPEC §11). */
export const MAX_ATTESTATION_BYTES = 8192;
/** Most entries a `search` answers with. */
export const MAX_SEARCH_RESULTS = 50;
/** The shortest query a `search` answers (shorter ones: no entry, SPEC §11.3). */
export const MIN_SEARCH_CHARS = 3;
/** Most seqs one `ack` carries, and most refusals (SPEC §6.4). */
export const MAX_ACK_SEQS = 1024;
export const MAX_ACK_REFUSALS = 64;
/** The largest `ack` an honest client can send: 1024 seqs and 64 refusals,
 * each at its widest (frames.py computes it; the tests recompute it). */
export const MAX_ACK_BYTES = 12762;
/** Capability (SPEC §10): the client sends `ack.refused` and understands
 * `refused` receipts (SPEC §6.5). */
export const CAP_REFUSALS = "refusals";
/** Capability (SPEC §13): care teams, sealed bodies, `team_changed`. */
export const CAP_TEAMS = "teams";
/** Capability (SPEC §14): on-call roles, urgent messages, escalation. */
export const CAP_ONCALL = "oncall";
/** Capability (SPEC §15): authority key rotation, `challenge.rotations`. */
export const CAP_ROTATION = "rotation";
/** Capability (SPEC §16): encrypted attachments, blob frames, `send.blobs`. */
export const CAP_BLOBS = "blobs";
/** Capability (SPEC §4.1): the `ping` request, answered `ok`; how a browser,
 * which sees no WebSocket ping, tells a silent hub from a dead connection. */
export const CAP_PING = "ping";
/** What the reference hub announces. */
export const HUB_CAPS: readonly string[] = [CAP_REFUSALS, CAP_TEAMS, CAP_ONCALL, CAP_BLOBS, CAP_PING];
/** Most key wraps one team `send` (with `body`) may carry (SPEC §13.4). */
export const MAX_WRAPS = 512;
/** Largest page of `team_chain_ok` records (SPEC §13.4). */
export const MAX_TEAM_CHAIN_BYTES = 48 * 1024;
/** Most teams one `teams_ok` lists. */
export const MAX_TEAMS_LIST = 256;
/** Largest packed team record (SPEC §13.2). */
export const MAX_RECORD_BYTES = 12288;
/** Bounds of a message's lifespan, `send.ttl` (ms, SPEC §13.6). */
export const MIN_LIFESPAN_MS = 3_600_000;
export const MAX_LIFESPAN_MS = 2_592_000_000;
/** Most capabilities one side may name (each 1-32 characters `[a-z0-9_]`). */
export const MAX_CAPS = 16;
/** Statuses a clinician can set (SPEC §6.7). */
export const STATUSES = ["available", "busy", "on_call", "off_duty"] as const;
export type Status = (typeof STATUSES)[number];
/** Most users one `watch` may name. */
export const MAX_WATCH = 512;

// --- frame types -----------------------------------------------------------------------

/** Authenticate as an enrolled device by signing the challenge (SPEC §5.2). */
export interface Auth {
  t: "auth";
  v: number;
  device: string;
  sig: Uint8Array;
  /** Capabilities of the client (SPEC §10); not signed. */
  caps?: readonly string[];
}
/** Register a new device with a one-time code (SPEC §5.1). */
export interface Enroll {
  t: "enroll";
  v: number;
  code: string;
  sign_pk: Uint8Array;
  box_pk: Uint8Array;
  label: string;
  sig: Uint8Array;
  caps?: readonly string[];
}
/** One message, as one envelope per target device (SPEC §6.2). */
export interface Send {
  t: "send";
  id: Uint8Array;
  from: string;
  to: string;
  /** Envelopes, or key wraps when `body` is given (SPEC §13.3). */
  envs: ReadonlyMap<string, Uint8Array>;
  /** The sealed body of a team message (SPEC §13.3). */
  body?: Uint8Array;
  /** The sender's head of the team's chain (32 bytes). */
  head?: Uint8Array;
  /** Lifespan in ms (SPEC §13.6). */
  ttl?: number;
  /** An urgent message (SPEC §14.5): the policy as is (`{}`), or with
   * `interval` and/or `final` overridden. */
  urgent?: Urgent;
  /** Blob ids of the message's attachments (SPEC §16; requires `body`). */
  blobs?: readonly string[];
}
/** `send.urgent`: overrides of the escalation policy (ms). */
export interface Urgent {
  interval?: number;
  final?: number;
}
/** One queued message this device refuses, and why (SPEC §6.5). */
export interface Refusal {
  seq: number;
  reason: string;
}
/** The device has durably kept these rows, and refuses those (SPEC §6.4, §6.5). */
export interface Ack {
  t: "ack";
  seqs: readonly number[];
  refused?: readonly Refusal[];
}
/** Find a clinician by user id or RPPS number (send exactly one of them). */
export interface Lookup {
  t: "lookup";
  rid: number;
  user?: string;
  rpps?: string;
}
/** Ask for a one-time code that enrolls another device of the same clinician. */
export interface LinkCode {
  t: "link_code";
  rid: number;
}
/** Set the clinician's status (SPEC §6.7). */
export interface SetStatus {
  t: "set_status";
  rid: number;
  status: Status;
}
/** Follow the presence of these users; replaces the previous watch list. */
export interface Watch {
  t: "watch";
  rid: number;
  users: readonly string[];
}
/** Search the directory of verified clinicians (SPEC §11.3). */
export interface Search {
  t: "search";
  rid: number;
  query: string;
}
/** List this clinician's active devices (SPEC §11.4). */
export interface Devices {
  t: "devices";
  rid: number;
}
/** Revoke one of this clinician's devices, for ever (SPEC §11.4). */
export interface Revoke {
  t: "revoke";
  rid: number;
  device: string;
}
/** Is the hub still there? Answered `ok` (SPEC §4.1, revision 8). */
export interface Ping {
  t: "ping";
  rid: number;
}

/** Add a signed record to a team's chain (SPEC §13.4). */
export interface TeamChange {
  t: "team_change";
  rid: number;
  team: string;
  rec: Uint8Array;
  sig: Uint8Array;
}
/** List the teams the user is a member of. */
export interface Teams {
  t: "teams";
  rid: number;
}
/** Fetch a team's records from `seq` = `from` on. */
export interface TeamChain {
  t: "team_chain";
  rid: number;
  team: string;
  from: number;
}
/** Delete the undelivered rows of one of our messages (SPEC §13.6). */
export interface Recall {
  t: "recall";
  rid: number;
  id: Uint8Array;
}

/** Find on-call roles by name or organisation, or (`mine`) those we hold (SPEC §14.3). */
export interface RoleSearch {
  t: "role_search";
  rid: number;
  query: string;
  mine?: boolean;
}
/** One role's description, holders and effective policy. */
export interface RoleGet {
  t: "role_get";
  rid: number;
  role: string;
}
/** Take a role: a handover (the only manual holder), or with `join` beside the others. */
export interface RoleTake {
  t: "role_take";
  rid: number;
  role: string;
  join?: boolean;
}
/** Stop holding a role (manually; a scheduled shift stays). */
export interface RoleLeave {
  t: "role_leave";
  rid: number;
  role: string;
}
/** Acknowledge an urgent message we received: its escalation stops (SPEC §14.7). */
export interface Acknowledge {
  t: "acknowledge";
  rid: number;
  id: Uint8Array;
  sender: string;
}

/** Start an upload of `size` ciphertext bytes, or (with `blob`) resume one (SPEC §16). */
export interface BlobBegin {
  t: "blob_begin";
  rid: number;
  size: number;
  blob?: string;
}
/** Bytes of an upload at offset `off` (1 … PIECE_MAX bytes). */
export interface BlobPut {
  t: "blob_put";
  rid: number;
  blob: string;
  off: number;
  data: Uint8Array;
}
/** The upload is complete: the hub makes it durable. */
export interface BlobEnd {
  t: "blob_end";
  rid: number;
  blob: string;
}
/** Ask for a download link (`/blobs/<token>`) to a blob we may read. */
export interface BlobLink {
  t: "blob_link";
  rid: number;
  blob: string;
}

/** The first frame of a connection (SPEC §4, §5). */
export interface Challenge {
  t: "challenge";
  v: number;
  nonce: Uint8Array;
  /** The authority key the hub is configured with (SPEC §5.1); never a reason to trust it. */
  authority?: Uint8Array;
  caps?: readonly string[];
  /** Rotation statements, oldest first, ending at `authority` (SPEC §15):
   * how a client trusting an older key comes to trust it (rotation.ts). */
  rotations?: readonly Uint8Array[];
}
export interface Welcome {
  t: "welcome";
  user: string;
  device: string;
  /** Most attachments per message (SPEC §16; when we named `blobs`). */
  att_max?: number;
  /** Largest attachment, plaintext bytes. */
  blob_max?: number;
}
/** Answer to the blob frames: `have` bytes of `blob` are held. */
export interface BlobOk {
  t: "blob_ok";
  rid: number;
  blob: string;
  have: number;
}
/** A download link: GET `url` (ranges) until `expires` (ms). */
export interface BlobLinkOk {
  t: "blob_link_ok";
  rid: number;
  blob: string;
  url: string;
  size: number;
  expires: number;
}
/** The message is durably stored; `dup`: a resend of a stored id. */
export interface Accepted {
  t: "accepted";
  id: Uint8Array;
  dup: boolean;
}
export interface Deliver {
  t: "deliver";
  seq: number;
  id: Uint8Array;
  from_user: string;
  from_device: string;
  ts: number;
  /** An envelope, or the key wrap of `body`. */
  env: Uint8Array;
  /** The sealed body of a team message (SPEC §13.3). */
  body?: Uint8Array;
  /** The team a team message was sent to. */
  team?: string;
  /** The role a role message was sent to (also on backups' copies). */
  role?: string;
  /** The hub's hint that the message is urgent (the plaintext decides). */
  urgent?: boolean;
  /** This copy was released at escalation step `step` (absent for primary rows). */
  step?: number;
}
/** Receipt: message `id` reached device `device` of user `user`. */
export interface Delivered {
  t: "delivered";
  seq: number;
  id: Uint8Array;
  user: string;
  device: string;
  ts: number;
}
/** Receipt: device `device` of user `user` refused message `id` (`reason`). */
export interface Refused {
  t: "refused";
  seq: number;
  id: Uint8Array;
  user: string;
  device: string;
  ts: number;
  reason: string;
}
/** One device of `lookup_ok.devices`. */
export interface DeviceInfo {
  device: string;
  sign_pk: Uint8Array;
  box_pk: Uint8Array;
}
export interface LookupOk {
  t: "lookup_ok";
  rid: number;
  user: string;
  name: string;
  rpps: string;
  profession: string;
  organisation: string;
  devices: readonly DeviceInfo[];
  /** The authority's attestation (attestation.ts): verify it, never trust the hub. */
  att?: Uint8Array;
  /** `false` only for a service that does not accept replies (SPEC §17.2): a hint. */
  replies?: boolean;
}
export interface LinkCodeOk {
  t: "link_code_ok";
  rid: number;
  code: string;
  expires: number;
}
/** A request that returns nothing succeeded (`set_status`, `revoke`, `ping`). */
export interface Ok {
  t: "ok";
  rid: number;
}
/** The attestations of the clinicians found; show only those that verify. */
export interface SearchOk {
  t: "search_ok";
  rid: number;
  atts: readonly Uint8Array[];
}
/** One of the clinician's own devices, as `devices_ok` lists them. */
export interface DeviceEntry {
  device: string;
  label: string;
  created: number;
  attested: boolean;
}
export interface DevicesOk {
  t: "devices_ok";
  rid: number;
  devices: readonly DeviceEntry[];
}
/** An error (errors.ts). `id`/`rid` say which request it answers. */
export interface ErrorFrame {
  t: "error";
  code: string;
  message: string;
  fatal: boolean;
  id?: Uint8Array;
  rid?: number;
  retry_after?: number;
  missing?: readonly string[];
  /** `role_vacant`: the role nobody holds now. */
  role?: string;
}
/** One entry of `watching.presence`: a `presence` without `"t"`. */
export interface PresenceEntry {
  user: string;
  status: Status;
  online: boolean;
}
/** A watched user's status and whether any of their devices is online. */
export interface Presence extends PresenceEntry {
  t: "presence";
}
export interface Watching {
  t: "watching";
  rid: number;
  presence: readonly PresenceEntry[];
}

/** A team's head as the hub holds it. */
export interface TeamHead {
  team: string;
  seq: number;
  head: Uint8Array;
}
/** One signed record of a chain (`{rec, sig}`, SPEC §13.2). */
export interface ChainEntry {
  rec: Uint8Array;
  sig: Uint8Array;
}
/** The record is stored; `seq` is its position, `head` its hash. */
export interface TeamOk {
  t: "team_ok";
  rid: number;
  team: string;
  seq: number;
  head: Uint8Array;
}
export interface TeamsOk {
  t: "teams_ok";
  rid: number;
  teams: readonly TeamHead[];
}
export interface TeamChainOk {
  t: "team_chain_ok";
  rid: number;
  team: string;
  recs: readonly ChainEntry[];
  more: boolean;
}
export interface RecallOk {
  t: "recall_ok";
  rid: number;
  id: Uint8Array;
  removed: number;
}
/** Push: a record was added to a team's chain (not queued, not acked). */
export interface TeamChanged {
  t: "team_changed";
  team: string;
  seq: number;
  head: Uint8Array;
}

/** The roles found (at most 20). */
export interface RoleSearchOk {
  t: "role_search_ok";
  rid: number;
  roles: readonly RoleInfo[];
}
/** Answers `role_get`, `role_take`, `role_leave`: the role as it is now. */
export interface RoleOk {
  t: "role_ok";
  rid: number;
  info: RoleInfo;
}
/** The FIRST acknowledgement of the message (`first`: this request was it). */
export interface AcknowledgeOk {
  t: "acknowledge_ok";
  rid: number;
  id: Uint8Array;
  sender: string;
  user: string;
  device: string;
  at: number;
  first: boolean;
}
/** Queued row (acked like receipts): where an urgent message's escalation stands. */
export interface UrgentStatus {
  t: "urgent_status";
  seq: number;
  id: Uint8Array;
  sender: string;
  state: UrgentState;
  step: number;
  ts: number;
  user?: string;
  device?: string;
  target?: string;
}
/** Push: re-notify the not yet acknowledged urgent message (n = 1, 2, …). */
export interface UrgentReminder {
  t: "urgent_reminder";
  id: Uint8Array;
  sender: string;
  n: number;
}
/** Push: the holders of `role` changed (we took it, or were released). */
export interface RoleChanged {
  t: "role_changed";
  role: string;
  holders: readonly string[];
}

export type ClientFrame =
  | Auth
  | Enroll
  | Send
  | Ack
  | Lookup
  | LinkCode
  | SetStatus
  | Watch
  | Search
  | Devices
  | Revoke
  | TeamChange
  | Teams
  | TeamChain
  | Recall
  | RoleSearch
  | RoleGet
  | RoleTake
  | RoleLeave
  | Acknowledge
  | BlobBegin
  | BlobPut
  | BlobEnd
  | BlobLink
  | Ping;
export type HubFrame =
  | Challenge
  | Welcome
  | Accepted
  | Deliver
  | Delivered
  | Refused
  | LookupOk
  | LinkCodeOk
  | Ok
  | Presence
  | Watching
  | SearchOk
  | DevicesOk
  | ErrorFrame
  | TeamOk
  | TeamsOk
  | TeamChainOk
  | RecallOk
  | TeamChanged
  | RoleSearchOk
  | RoleOk
  | AcknowledgeOk
  | UrgentStatus
  | UrgentReminder
  | RoleChanged
  | BlobOk
  | BlobLinkOk;
export type Frame = ClientFrame | HubFrame;
export type FrameType = Frame["t"];
export type FrameOf<T extends FrameType> = Extract<Frame, { t: T }>;

/** Every client → hub frame type, in the order of SPEC §3.3 (CLIENT_FRAMES). */
export const CLIENT_FRAME_TYPES: readonly ClientFrame["t"][] = [
  "auth",
  "enroll",
  "send",
  "ack",
  "lookup",
  "link_code",
  "set_status",
  "watch",
  "search",
  "devices",
  "revoke",
  "team_change",
  "teams",
  "team_chain",
  "recall",
  "role_search",
  "role_get",
  "role_take",
  "role_leave",
  "acknowledge",
  "blob_begin",
  "blob_put",
  "blob_end",
  "blob_link",
  "ping",
];
/** Every hub → client frame type (SERVER_FRAMES). */
export const HUB_FRAME_TYPES: readonly HubFrame["t"][] = [
  "challenge",
  "welcome",
  "accepted",
  "deliver",
  "delivered",
  "refused",
  "lookup_ok",
  "link_code_ok",
  "ok",
  "presence",
  "watching",
  "search_ok",
  "devices_ok",
  "error",
  "team_ok",
  "teams_ok",
  "team_chain_ok",
  "recall_ok",
  "team_changed",
  "role_search_ok",
  "role_ok",
  "acknowledge_ok",
  "urgent_status",
  "urgent_reminder",
  "role_changed",
  "blob_ok",
  "blob_link_ok",
];

// --- field checkers (frame_base.py) ----------------------------------------------------
// A checker returns the field's value if the decoded value is acceptable and
// throws MalformedFrame otherwise.

type Checker<T = unknown> = (v: MsgValue) => T;

function malformed(what: string): MalformedFrame {
  return new MalformedFrame(what);
}

function checkBytes(n?: number, maxLen: number = MAX_FRAME_BYTES): Checker<Uint8Array> {
  return (v) => {
    if (!(v instanceof Uint8Array) || (n !== undefined && v.length !== n) || v.length > maxLen) {
      throw malformed(`expected ${n ?? "some"} bytes`);
    }
    return v;
  };
}

/** A string of at most `maxLen` code points, never holding U+0000 (SPEC
 * §3.1: no field has a use for it, and a hub on PostgreSQL cannot store it;
 * the hub refuses it as malformed_frame, so a client refuses it too). */
function checkStr(maxLen: number = MAX_ID_CHARS, allowEmpty = false): Checker<string> {
  return (v) => {
    if (typeof v !== "string") throw malformed("expected a non-empty string without NUL");
    const n = codePointLength(v);
    if (n > maxLen || (n === 0 && !allowEmpty) || v.includes("\0")) {
      throw malformed("expected a non-empty string without NUL");
    }
    return v;
  };
}

/** 0 … 2^53 − 1. SPEC §3.1 allows up to 2^63 − 1; a larger integer than
 * JavaScript numbers hold exactly is refused too (the hub's never are). */
function checkInt(v: MsgValue): number {
  if (typeof v === "bigint") {
    throw malformed(v < 0n || v > 2n ** 63n - 1n ? "expected a non-negative integer" : "integer above 2^53 - 1");
  }
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    throw malformed("expected a non-negative integer");
  }
  return v;
}

function checkBool(v: MsgValue): boolean {
  if (typeof v !== "boolean") throw malformed("expected a boolean");
  return v;
}

function checkList<T>(item: Checker<T>, maxItems: number): Checker<T[]> {
  return (v) => {
    if (!Array.isArray(v) || v.length > maxItems) throw malformed("expected a list");
    return v.map(item);
  };
}

const TOKEN = /^[a-z0-9_]+$/;

/** A short lowercase name: `[a-z0-9_]`, 1 to `maxLen` characters
 * (capabilities, refusal reasons). */
function checkToken(maxLen: number): Checker<string> {
  return (v) => {
    if (typeof v !== "string" || v.length === 0 || v.length > maxLen || !TOKEN.test(v)) {
      throw malformed("expected a lowercase name");
    }
    return v;
  };
}

const checkCaps = checkList(checkToken(32), MAX_CAPS);

function checkEnvs(v: MsgValue): Map<string, Uint8Array> {
  // Up to MAX_WRAPS here; a send without `body` is held to
  // MAX_RECIPIENT_DEVICES in fromWire (the bound depends on another key).
  if (!(v instanceof MsgMap) || v.size === 0 || v.size > MAX_WRAPS) {
    throw malformed("expected a map of device id to envelope");
  }
  const checkId = checkStr();
  const checkEnv = checkBytes(undefined, MAX_FRAME_BYTES);
  const out = new Map<string, Uint8Array>();
  for (const [k, env] of v.entries()) {
    out.set(checkId(k), checkEnv(env)); // a bin key is no device id: refused
  }
  return out;
}

function checkStatus(v: MsgValue): Status {
  if (typeof v !== "string" || !(STATUSES as readonly string[]).includes(v)) throw malformed("unknown status");
  return v as Status;
}

/** A nested map of the given fields (required unless marked optional). */
function checkRecord<T>(what: string, fields: readonly (readonly [string, Checker, "optional"?])[]): Checker<T> {
  return (v) => {
    if (!(v instanceof MsgMap)) throw malformed(`expected a ${what} map`);
    const out: Record<string, unknown> = {};
    for (const [key, check, optional] of fields) {
      if (v.has(key)) out[key] = check(v.get(key)!);
      else if (optional === undefined) throw malformed(`${what} lacks '${key}'`);
    }
    return out as T;
  };
}

const refusal = checkRecord<Refusal>("refusal", [
  ["seq", checkInt],
  ["reason", checkToken(32)],
]);
const deviceInfo = checkRecord<DeviceInfo>("device", [
  ["device", checkStr()],
  ["sign_pk", checkBytes(32)],
  ["box_pk", checkBytes(32)],
]);
const deviceEntry = checkRecord<DeviceEntry>("device entry", [
  ["device", checkStr()],
  ["label", checkStr(64, true)],
  ["created", checkInt],
  ["attested", checkBool],
]);
const PRESENCE_FIELDS: readonly (readonly [string, Checker])[] = [
  ["user", checkStr()],
  ["status", checkStatus],
  ["online", checkBool],
];
const presenceEntry = checkRecord<PresenceEntry>("presence", PRESENCE_FIELDS);

const TEAM_ID = /^t_[0-9a-f]{16}$/;
/** A team id: "t_" + 16 lowercase hex digits (SPEC §13.1). */
function checkTeamId(v: MsgValue): string {
  if (typeof v !== "string" || !TEAM_ID.test(v)) throw malformed("expected a team id");
  return v;
}

function checkLifespan(v: MsgValue): number {
  const n = checkInt(v);
  if (n < MIN_LIFESPAN_MS || n > MAX_LIFESPAN_MS) throw malformed("lifespan out of range");
  return n;
}

/** A role id: "r_" + 16 lowercase hex digits (SPEC §14.1). */
function checkRoleId(v: MsgValue): string {
  if (!isRoleId(v)) throw malformed("expected a role id");
  return v;
}

const checkHolders = checkList(checkStr(), MAX_ROLE_HOLDERS);

/** A blob id: "b_" + 32 lowercase hex digits (SPEC §16). */
function checkBlobId(v: MsgValue): string {
  if (!isBlobId(v)) throw malformed("expected a blob id");
  return v;
}
/** 1 … MAX_ATTACHMENTS_WIRE distinct blob ids. */
function checkBlobList(v: MsgValue): string[] {
  const ids = checkList(checkBlobId, MAX_ATTACHMENTS_WIRE)(v);
  if (ids.length === 0 || new Set(ids).size !== ids.length) throw malformed("expected 1 to 16 distinct blob ids");
  return ids;
}
/** The smallest blob: a header and one empty final chunk. */
function checkBlobSize(v: MsgValue): number {
  const n = checkInt(v);
  if (n < 41) throw malformed("a blob is at least 41 bytes");
  return n;
}
const checkPiece = (v: MsgValue): Uint8Array => {
  if (!(v instanceof Uint8Array) || v.length < 1 || v.length > PIECE_MAX) throw malformed("expected 1 to PIECE_MAX bytes");
  return v;
};
const BLOB_URL = /^\/blobs\/[A-Za-z0-9_-]{43}$/;
function checkBlobUrl(v: MsgValue): string {
  if (typeof v !== "string" || !BLOB_URL.test(v)) throw malformed("expected a blob url");
  return v;
}
const checkStepMap = checkRecord<Step>("step", [
  ["delay", checkInt],
  ["role", checkRoleId, "optional"],
  ["user", checkStr(), "optional"],
  ["holders", checkHolders, "optional"],
]);
function checkStep(v: MsgValue): Step {
  const step = checkStepMap(v);
  if ((step.role === undefined) === (step.user === undefined)) throw malformed("a step names exactly one of role and user");
  return { ...step, holders: step.holders ?? [] };
}
const checkPolicy = checkRecord<Policy>("policy", [
  ["interval", checkInt],
  ["steps", checkList(checkStep, MAX_ESCALATION_STEPS)],
  ["final", checkInt],
]);
const roleInfo = checkRecord<RoleInfo>("role", [
  ["role", checkRoleId],
  ["name", checkStr(MAX_ROLE_NAME_CHARS)],
  ["org", checkStr(MAX_ROLE_ORG_CHARS, true)],
  ["reserved", checkBool],
  ["holders", checkHolders],
  ["policy", checkPolicy],
]);
const checkUrgent = checkRecord<Urgent>("urgent", [
  ["interval", checkInt, "optional"],
  ["final", checkInt, "optional"],
]);
function checkUrgentState(v: MsgValue): UrgentState {
  if (typeof v !== "string" || !(URGENT_STATES as readonly string[]).includes(v)) throw malformed("unknown urgent state");
  return v as UrgentState;
}
function checkStepNumber(v: MsgValue): number {
  const n = checkInt(v);
  if (n < 1) throw malformed("a step is 1 or more");
  return n;
}
function checkTrue(v: MsgValue): boolean {
  if (v !== true) throw malformed("expected true");
  return true;
}

/**
 * A policy map as decoded msgpack (`Policy.from_map`): throws MalformedFrame
 * unless it is `{interval, steps, final}` with at most MAX_ESCALATION_STEPS
 * steps, each naming exactly one of a role id and a user. Bounds are the
 * hub's business (`policyProblem`).
 */
export function decodePolicy(v: MsgValue): Policy {
  return checkPolicy(v);
}

/** The wire shape of a RoleInfo, for `encode`: keys in canonical order, nested. */
const STEP_SHAPE: Shape = ["delay", "role", "user", "holders"];
const ROLE_SHAPE: Shape = ["role", "name", "org", "reserved", "holders", ["policy", ["interval", ["steps", STEP_SHAPE], "final"]]];

const teamHead = checkRecord<TeamHead>("team head", [
  ["team", checkTeamId],
  ["seq", checkInt],
  ["head", checkBytes(32)],
]);
const chainEntry = checkRecord<ChainEntry>("record", [
  ["rec", checkBytes(undefined, MAX_RECORD_BYTES)],
  ["sig", checkBytes(64)],
]);

// --- the tables of SPEC §3.3 and §3.4 ------------------------------------------------------

/** The keys of a nested map in canonical order; a `[key, Shape]` entry is
 * itself a nested map (or a list of them). */
type Shape = readonly (string | readonly [string, Shape])[];

interface Field {
  readonly key: string;
  readonly check: Checker;
  readonly optional: boolean;
  /** For a nested map or a list of them: their keys, in canonical order. */
  readonly record?: Shape;
}

interface Schema {
  readonly type: FrameType;
  readonly direction: "client" | "hub";
  readonly fields: readonly Field[];
}

const req = (key: string, check: Checker, record?: Shape): Field => ({ key, check, optional: false, record });
const opt = (key: string, check: Checker, record?: Shape): Field => ({ key, check, optional: true, record });

const SCHEMAS = new Map<string, Schema>();
function schema(type: FrameType, direction: "client" | "hub", fields: Field[]): void {
  SCHEMAS.set(type, { type, direction, fields });
}

const id16 = checkBytes(16);
const rid = req("rid", checkInt);

// Client → hub (SPEC §3.3).
schema("auth", "client", [req("v", checkInt), req("device", checkStr()), req("sig", checkBytes(64)), opt("caps", checkCaps)]);
schema("enroll", "client", [
  req("v", checkInt),
  req("code", checkStr()),
  req("sign_pk", checkBytes(32)),
  req("box_pk", checkBytes(32)),
  req("label", checkStr(64, true)),
  req("sig", checkBytes(64)),
  opt("caps", checkCaps),
]);
schema("send", "client", [
  req("id", id16),
  req("from", checkStr()),
  req("to", checkStr()),
  req("envs", checkEnvs),
  opt("body", checkBytes(undefined, MAX_FRAME_BYTES)),
  opt("head", checkBytes(32)),
  opt("ttl", checkLifespan),
  opt("urgent", checkUrgent, ["interval", "final"]),
  opt("blobs", checkBlobList),
]);
schema("ack", "client", [
  req("seqs", checkList(checkInt, MAX_ACK_SEQS)),
  opt("refused", checkList(refusal, MAX_ACK_REFUSALS), ["seq", "reason"]),
]);
schema("lookup", "client", [rid, opt("user", checkStr()), opt("rpps", checkStr(32))]);
schema("link_code", "client", [rid]);
schema("set_status", "client", [rid, req("status", checkStatus)]);
schema("watch", "client", [rid, req("users", checkList(checkStr(), MAX_WATCH))]);
schema("search", "client", [rid, req("query", checkStr(64))]);
schema("devices", "client", [rid]);
schema("revoke", "client", [rid, req("device", checkStr())]);
schema("team_change", "client", [
  rid,
  req("team", checkTeamId),
  req("rec", checkBytes(undefined, MAX_RECORD_BYTES)),
  req("sig", checkBytes(64)),
]);
schema("teams", "client", [rid]);
schema("team_chain", "client", [rid, req("team", checkTeamId), req("from", checkInt)]);
schema("recall", "client", [rid, req("id", id16)]);
schema("role_search", "client", [rid, req("query", checkStr(MAX_ROLE_QUERY_CHARS, true)), opt("mine", checkBool)]);
schema("role_get", "client", [rid, req("role", checkRoleId)]);
schema("role_take", "client", [rid, req("role", checkRoleId), opt("join", checkBool)]);
schema("role_leave", "client", [rid, req("role", checkRoleId)]);
schema("acknowledge", "client", [rid, req("id", id16), req("sender", checkStr())]);
schema("blob_begin", "client", [rid, req("size", checkBlobSize), opt("blob", checkBlobId)]);
schema("blob_put", "client", [rid, req("blob", checkBlobId), req("off", checkInt), req("data", checkPiece)]);
schema("blob_end", "client", [rid, req("blob", checkBlobId)]);
schema("blob_link", "client", [rid, req("blob", checkBlobId)]);
schema("ping", "client", [rid]);

// Hub → client (SPEC §3.4).
schema("challenge", "hub", [
  req("v", checkInt),
  req("nonce", checkBytes(32)),
  opt("authority", checkBytes(32)),
  opt("caps", checkCaps),
  opt("rotations", checkList(checkBytes(undefined, MAX_STATEMENT_BYTES), MAX_STATEMENTS)),
]);
schema("welcome", "hub", [req("user", checkStr()), req("device", checkStr()), opt("att_max", checkInt), opt("blob_max", checkInt)]);
schema("accepted", "hub", [req("id", id16), req("dup", checkBool)]);
schema("deliver", "hub", [
  req("seq", checkInt),
  req("id", id16),
  req("from_user", checkStr()),
  req("from_device", checkStr()),
  req("ts", checkInt),
  req("env", checkBytes()),
  opt("body", checkBytes(undefined, MAX_FRAME_BYTES)),
  opt("team", checkTeamId),
  opt("role", checkRoleId),
  opt("urgent", checkTrue),
  opt("step", checkStepNumber),
]);
schema("delivered", "hub", [req("seq", checkInt), req("id", id16), req("user", checkStr()), req("device", checkStr()), req("ts", checkInt)]);
schema("refused", "hub", [
  req("seq", checkInt),
  req("id", id16),
  req("user", checkStr()),
  req("device", checkStr()),
  req("ts", checkInt),
  req("reason", checkToken(32)),
]);
schema("lookup_ok", "hub", [
  rid,
  req("user", checkStr()),
  req("name", checkStr()),
  req("rpps", checkStr(32)),
  req("profession", checkStr(MAX_ID_CHARS, true)),
  req("organisation", checkStr(MAX_ID_CHARS, true)),
  req("devices", checkList(deviceInfo, MAX_RECIPIENT_DEVICES), ["device", "sign_pk", "box_pk"]),
  opt("att", checkBytes(undefined, MAX_ATTESTATION_BYTES)),
  opt("replies", checkBool),
]);
schema("link_code_ok", "hub", [rid, req("code", checkStr()), req("expires", checkInt)]);
schema("ok", "hub", [rid]);
schema("presence", "hub", PRESENCE_FIELDS.map(([key, check]) => req(key, check)));
schema("watching", "hub", [rid, req("presence", checkList(presenceEntry, MAX_WATCH), ["user", "status", "online"])]);
schema("search_ok", "hub", [rid, req("atts", checkList(checkBytes(undefined, MAX_ATTESTATION_BYTES), MAX_SEARCH_RESULTS))]);
schema("devices_ok", "hub", [rid, req("devices", checkList(deviceEntry, MAX_RECIPIENT_DEVICES), ["device", "label", "created", "attested"])]);
schema("error", "hub", [
  req("code", checkStr()),
  req("message", checkStr(512)),
  req("fatal", checkBool),
  opt("id", id16),
  opt("rid", checkInt),
  opt("retry_after", checkInt),
  opt("missing", checkList(checkStr(), MAX_WRAPS)),
  opt("role", checkRoleId),
]);
schema("team_ok", "hub", [rid, req("team", checkTeamId), req("seq", checkInt), req("head", checkBytes(32))]);
schema("teams_ok", "hub", [rid, req("teams", checkList(teamHead, MAX_TEAMS_LIST), ["team", "seq", "head"])]);
schema("team_chain_ok", "hub", [
  rid,
  req("team", checkTeamId),
  req("recs", checkList(chainEntry, MAX_TEAM_CHAIN_BYTES / 64), ["rec", "sig"]),
  req("more", checkBool),
]);
schema("recall_ok", "hub", [rid, req("id", id16), req("removed", checkInt)]);
schema("team_changed", "hub", [req("team", checkTeamId), req("seq", checkInt), req("head", checkBytes(32))]);
schema("role_search_ok", "hub", [rid, req("roles", checkList(roleInfo, MAX_ROLE_RESULTS), ROLE_SHAPE)]);
schema("role_ok", "hub", [rid, req("info", roleInfo, ROLE_SHAPE)]);
schema("acknowledge_ok", "hub", [
  rid,
  req("id", id16),
  req("sender", checkStr()),
  req("user", checkStr()),
  req("device", checkStr()),
  req("at", checkInt),
  req("first", checkBool),
]);
schema("urgent_status", "hub", [
  req("seq", checkInt),
  req("id", id16),
  req("sender", checkStr()),
  req("state", checkUrgentState),
  req("step", checkInt),
  req("ts", checkInt),
  opt("user", checkStr()),
  opt("device", checkStr()),
  opt("target", checkStr()),
]);
schema("urgent_reminder", "hub", [req("id", id16), req("sender", checkStr()), req("n", checkInt)]);
schema("role_changed", "hub", [req("role", checkRoleId), req("holders", checkHolders)]);
schema("blob_ok", "hub", [rid, req("blob", checkBlobId), req("have", checkInt)]);
schema("blob_link_ok", "hub", [
  rid,
  req("blob", checkBlobId),
  req("url", checkBlobUrl),
  req("size", checkInt),
  req("expires", checkInt),
]);

function fromWire(spec: Schema, m: MsgMap): Frame {
  const out: Record<string, unknown> = { t: spec.type };
  for (const field of spec.fields) {
    if (m.has(field.key)) out[field.key] = field.check(m.get(field.key)!);
    else if (!field.optional) throw malformed(`${spec.type}: missing '${field.key}'`);
  }
  if (spec.type === "send" && out.body === undefined && (out.envs as Map<string, Uint8Array>).size > MAX_RECIPIENT_DEVICES) {
    throw malformed("more than 64 envelopes without a body");
  }
  if (spec.type === "send" && out.blobs !== undefined && out.body === undefined) throw malformed("blobs without a body");
  return out as unknown as Frame;
}

// --- the codec -------------------------------------------------------------------------------

/** Which frame types `decode` admits: "hub" = hub → client (what a client
 * decodes), "client" = client → hub (what the hub decodes), "any" = both. */
export type Direction = "hub" | "client" | "any";

/**
 * Parse one frame of `direction` (default "any"). Throws MalformedFrame for
 * anything that is not one msgpack map of the right shape for its type
 * (SPEC §3.1), UnknownFrameType for a `"t"` that names no frame type of
 * that direction; nothing else. Unknown keys are ignored; a map holding a
 * key twice, at any depth, is MalformedFrame (SPEC §3.1). Integers above 2^53 − 1 are refused as
 * MalformedFrame (the Python decoder accepts up to 2^63 − 1). No size
 * check: a client should accept hub frames up to MAX_HUB_FRAME_BYTES.
 */
export function decode(data: Uint8Array, direction: "hub"): HubFrame;
export function decode(data: Uint8Array, direction: "client"): ClientFrame;
export function decode(data: Uint8Array, direction?: Direction): Frame;
export function decode(data: Uint8Array, direction: Direction = "any"): Frame {
  let m: MsgValue;
  try {
    m = unpack(data);
  } catch (err) {
    throw new MalformedFrame(`not msgpack: ${(err as Error).message}`);
  }
  if (!(m instanceof MsgMap)) throw new MalformedFrame("frame is not a map");
  const kind = m.get("t");
  if (typeof kind !== "string") throw new MalformedFrame("frame has no type");
  const spec = SCHEMAS.get(kind);
  if (spec === undefined || (direction !== "any" && spec.direction !== direction)) {
    throw new UnknownFrameType(`type '${Array.from(kind).slice(0, 32).join("")}'`);
  }
  try {
    return fromWire(spec, m);
  } catch (err) {
    if (err instanceof ProtocolError) throw err;
    throw new MalformedFrame(String(err));
  }
}

/** A frame field's value as a msgpack value (no checks yet). */
function toMsg(v: unknown, record?: Shape): MsgValue {
  if (v === null || typeof v === "string" || typeof v === "boolean" || typeof v === "bigint" || v instanceof Uint8Array) {
    return v;
  }
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) throw malformed(`${v} is not an integer`);
    return v;
  }
  if (Array.isArray(v)) return v.map((item) => toMsg(item, record));
  if (v instanceof Map) {
    const m = new MsgMap();
    for (const [k, value] of v) {
      if (typeof k !== "string") throw malformed("map keys are strings");
      m.set(k, toMsg(value));
    }
    return m;
  }
  if (record !== undefined && typeof v === "object") {
    const m = new MsgMap();
    const obj = v as Record<string, unknown>;
    for (const entry of record) {
      const [key, shape] = typeof entry === "string" ? [entry, undefined] : entry;
      if (obj[key] !== undefined) m.set(key, toMsg(obj[key], shape));
    }
    return m;
  }
  throw malformed("a value with no wire form");
}

/**
 * The canonical msgpack bytes of `frame` (SPEC §3.2): `"t"` first, then the
 * fields in the order of the frame's table, absent optional fields omitted,
 * shortest formats, `str` for strings and `bin` for bytes. Throws
 * MalformedFrame (local) for a frame that `decode` would refuse, or
 * UnknownFrameType for an unknown `t`.
 */
export function encode(frame: Frame): Uint8Array {
  const spec = SCHEMAS.get((frame as { t: unknown }).t as string);
  if (spec === undefined) throw new UnknownFrameType(`cannot encode a frame of type ${String(frame.t)}`);
  const m = new MsgMap([["t", spec.type]]);
  const fields = frame as unknown as Record<string, unknown>;
  for (const field of spec.fields) {
    const value = fields[field.key];
    if (value !== undefined) m.set(field.key, toMsg(value, field.record));
  }
  fromWire(spec, m); // the same checks as decode
  try {
    return pack(m);
  } catch (err) {
    throw malformed(`not encodable: ${(err as Error).message}`);
  }
}

/** True if `t` is a client → hub frame type. */
export function isClientFrameType(t: string): t is ClientFrame["t"] {
  return SCHEMAS.get(t)?.direction === "client";
}

/** True if `t` is a hub → client frame type. */
export function isHubFrameType(t: string): t is HubFrame["t"] {
  return SCHEMAS.get(t)?.direction === "hub";
}
