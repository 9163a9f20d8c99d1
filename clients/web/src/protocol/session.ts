/**
 * The client's side of one connection, as a state table
 * (protocol/client_session.py; SPEC §4, §5, §7). No I/O.
 *
 * Whoever owns the WebSocket feeds `ClientSession.receive` every binary
 * message the hub sends; it returns an event or throws a ProtocolError
 * (errors.ts). It asks the session for the bytes to send: `auth` or
 * `enroll` to answer the challenge, `request` and `send` afterwards.
 *
 *     awaiting_challenge --challenge--> challenged --auth/enroll sent--> answered
 *         --welcome--> authenticated          (any state --fatal error--> closed)
 *
 * `RECEIVABLE` lists the hub frames each state admits, `SENDABLE` the
 * client frames (the hub's own table, `ALLOWED`). A challenge whose `v` is
 * not 1 is UnsupportedVersion; a hub frame the state does not admit is
 * UnexpectedFrame; sending a frame the state does not allow is
 * FrameNotAllowed, and nothing is to be sent.
 *
 * Once authenticated, every frame is classified (answers are matched by
 * `rid` or message id, never by arrival order):
 * - `pushed`: a `deliver`, `delivered`, `refused`, `presence` or `team_changed`;
 * - `answered`: the answer to an outstanding request: `request` is its
 *   `rid`, or for an `accepted` the message id of the `send` (lowercase hex);
 * - `failed`: a request error answering an outstanding request, a non-fatal
 *   error naming none (`request` null), or an answer to an outstanding
 *   request that does not decode or is of the wrong type (local error).
 *
 * Remote errors (the hub's `error` frames): after `welcome` a request error
 * is a `failed` event; a fatal `error`, or any `error` before `welcome`, is
 * thrown and the session is closed. Local errors before `welcome` close the
 * session too (the caller closes the connection, ideally with the error's
 * `closeCode`: 4426 for a wrong version). After `welcome` a frame that does
 * not decode, is not admitted, or answers no outstanding request throws a
 * local error and is dropped, but the session stays authenticated: the
 * caller decides whether to read on.
 */
import { equalBytes, toHex } from "./bytes";
import { MsgMap, type MsgValue, unpack } from "./codec";
import { authMessage, enrollMessage, type Signer } from "./crypto";
import {
  type FatalError,
  FrameNotAllowed,
  ProtocolError,
  UnexpectedFrame,
  UnsupportedVersion,
  errorFromClose,
  errorFromFrame,
} from "./errors";
import {
  type Accepted,
  type Acknowledge,
  type AcknowledgeOk,
  type BlobBegin,
  type BlobEnd,
  type BlobLink,
  type BlobLinkOk,
  type BlobOk,
  type BlobPut,
  type RoleChanged,
  type RoleGet,
  type RoleLeave,
  type RoleOk,
  type RoleSearch,
  type RoleSearchOk,
  type RoleTake,
  type UrgentReminder,
  type UrgentStatus,
  type Auth,
  type Challenge,
  type ClientFrame,
  type Deliver,
  type Delivered,
  type Devices,
  type DevicesOk,
  type Enroll,
  type ErrorFrame,
  type HubFrame,
  type LinkCode,
  type LinkCodeOk,
  type Lookup,
  type LookupOk,
  type Ok,
  type Ping,
  PROTOCOL_VERSION,
  type Presence,
  type Recall,
  type RecallOk,
  type Refused,
  type Revoke,
  type TeamChain,
  type TeamChainOk,
  type TeamChange,
  type TeamChanged,
  type TeamOk,
  type Teams,
  type TeamsOk,
  type Search,
  type SearchOk,
  type SetStatus,
  type Watch,
  type Watching,
  type Welcome,
  decode,
  encode,
} from "./frames";

/** The connection's life, on the client's side. */
export const ClientState = {
  /** Connected; the hub speaks first. */
  AWAITING_CHALLENGE: "awaiting_challenge",
  /** Challenge read; our auth or enroll is due. */
  CHALLENGED: "challenged",
  /** Auth or enroll sent; waiting for welcome. */
  ANSWERED: "answered",
  /** Welcomed: requests, answers and pushes. */
  AUTHENTICATED: "authenticated",
  /** A fatal error, or the connection ended. */
  CLOSED: "closed",
} as const;
export type ClientState = (typeof ClientState)[keyof typeof ClientState];

/** The hub's connection states (protocol/session.py). */
export type HubState = "challenged" | "authenticated" | "closed";

/** Requests answered by `rid`. */
export type RidRequest =
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
/** Frames that answer a request. */
export type AnswerFrame =
  | LookupOk
  | LinkCodeOk
  | Ok
  | Watching
  | SearchOk
  | DevicesOk
  | Accepted
  | TeamOk
  | TeamsOk
  | TeamChainOk
  | RecallOk
  | RoleSearchOk
  | RoleOk
  | AcknowledgeOk
  | BlobOk
  | BlobLinkOk;
/** Frames the hub sends of its own accord once authenticated. */
export type PushedFrame = Deliver | Delivered | Refused | Presence | TeamChanged | UrgentStatus | UrgentReminder | RoleChanged;
/** An outstanding request: its `rid`, or the message id of a `send` in lowercase hex. */
export type RequestKey = number | string;

/** What each request expects for an answer (an `error` may answer any). A
 * `send` is matched by its message id, the others by `rid`. */
export const ANSWERS: Readonly<Record<RidRequest["t"] | "send", AnswerFrame["t"]>> = {
  lookup: "lookup_ok",
  link_code: "link_code_ok",
  set_status: "ok",
  watch: "watching",
  search: "search_ok",
  devices: "devices_ok",
  revoke: "ok",
  team_change: "team_ok",
  teams: "teams_ok",
  team_chain: "team_chain_ok",
  recall: "recall_ok",
  role_search: "role_search_ok",
  role_get: "role_ok",
  role_take: "role_ok",
  role_leave: "role_ok",
  acknowledge: "acknowledge_ok",
  blob_begin: "blob_ok",
  blob_put: "blob_ok",
  blob_end: "blob_ok",
  blob_link: "blob_link_ok",
  ping: "ok",
  send: "accepted",
};

/** Frames the hub pushes once the connection is authenticated. */
export const PUSHED: ReadonlySet<HubFrame["t"]> = new Set([
  "deliver",
  "delivered",
  "refused",
  "presence",
  "team_changed",
  "urgent_status",
  "urgent_reminder",
  "role_changed",
]);

/** Which client frame types the hub admits in each of its states (SPEC §4, table 2). */
export const ALLOWED: Readonly<Record<HubState, ReadonlySet<ClientFrame["t"]>>> = {
  challenged: new Set(["auth", "enroll"]),
  authenticated: new Set([
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
  ]),
  closed: new Set(),
};

/** Which hub frame types each state admits (SPEC §4, the client's side). An
 * `error` is admitted until the session is closed: the hub may report a
 * fatal error at any time (`auth_timeout` while we have not answered). */
export const RECEIVABLE: Readonly<Record<ClientState, ReadonlySet<HubFrame["t"]>>> = {
  awaiting_challenge: new Set(["challenge", "error"]),
  challenged: new Set(["error"]),
  answered: new Set(["welcome", "error"]),
  authenticated: new Set([...PUSHED, ...new Set(Object.values(ANSWERS)), "error"]),
  closed: new Set(),
};

/** Which client frame types each state lets us send (the hub's table). */
export const SENDABLE: Readonly<Record<ClientState, ReadonlySet<ClientFrame["t"]>>> = {
  awaiting_challenge: new Set(),
  challenged: ALLOWED.challenged,
  answered: new Set(),
  authenticated: ALLOWED.authenticated,
  closed: new Set(),
};

// What the hub should have sent instead, for UnexpectedFrame's detail.
const WANTED: Readonly<Record<ClientState, string>> = {
  awaiting_challenge: "instead of a challenge",
  challenged: "before our answer to the challenge",
  answered: "instead of welcome",
  authenticated: "after welcome",
  closed: "after the connection ended",
};

/** What `ClientSession.receive` returns. */
export type SessionEvent =
  /** The hub's challenge, of this protocol version: answer it with `auth` or `enroll`. */
  | { kind: "challenged"; challenge: Challenge }
  /** The hub accepted our answer; after an `enroll`, `welcome.device` is
   * the id it assigned, which the client must store (SPEC §5.1). */
  | { kind: "welcomed"; welcome: Welcome }
  /** `deliver`, `delivered` and `refused` are to be acked (SPEC §6.4); `presence` is not. */
  | { kind: "pushed"; frame: PushedFrame }
  /** `frame` answers the outstanding request `request`. */
  | { kind: "answered"; request: RequestKey; frame: AnswerFrame }
  /** `request` failed: the hub answered it with a request error (`remote`),
   * or its answer does not decode or is of the wrong type (local). `request`
   * is null for a non-fatal error that names no request (e.g. about an ack). */
  | { kind: "failed"; request: RequestKey | null; error: ProtocolError };

// --- the answers to a challenge (SPEC §5) ---------------------------------------------

/** The hub announces another verification authority key than the one the
 * user was given with the code (SPEC §5.1). Nothing was signed or sent:
 * the code is unused. */
export class WrongAuthority extends Error {
  constructor(
    /** The key the user was given. */
    readonly expected: Uint8Array,
    /** The key the hub announces. */
    readonly announced: Uint8Array,
  ) {
    super("the hub announces another verification authority key");
    this.name = "WrongAuthority";
  }
}

/** The `auth` of the enrolled device `deviceId` answering `challenge`: its
 * signature over `authMessage` (SPEC §5.2). `caps`: the capabilities the
 * client speaks (SPEC §10); undefined omits the key. */
export function answerAuth(challenge: Challenge, deviceId: string, keys: Signer, caps?: readonly string[]): Auth {
  const sig = keys.sign(authMessage(challenge.nonce, deviceId));
  const frame: Auth = { t: "auth", v: PROTOCOL_VERSION, device: deviceId, sig };
  if (caps !== undefined) frame.caps = caps;
  return frame;
}

/**
 * The `enroll` of a new device with an invitation or link code answering
 * `challenge` (SPEC §5.1, §5.3): `keys`' public keys, signed with the nonce
 * and `code` exactly as sent. `authority`: the key the user was given; if
 * the challenge announces another one, throws WrongAuthority before signing
 * anything (a hub that announces none is answered).
 */
export function answerEnroll(
  challenge: Challenge,
  code: string,
  keys: Signer,
  label = "",
  caps?: readonly string[],
  options: { authority?: Uint8Array } = {},
): Enroll {
  const { authority } = options;
  if (authority !== undefined && challenge.authority !== undefined && !equalBytes(challenge.authority, authority)) {
    throw new WrongAuthority(authority, challenge.authority);
  }
  const { signPk, boxPk } = keys;
  const sig = keys.sign(enrollMessage(challenge.nonce, code, signPk, boxPk));
  const frame: Enroll = { t: "enroll", v: PROTOCOL_VERSION, code, sign_pk: signPk, box_pk: boxPk, label, sig };
  if (caps !== undefined) frame.caps = caps;
  return frame;
}

/** The request a frame that does not decode seems to answer: its integer
 * `rid`, else the `id` of an `accepted` or `error` (hex). */
function namedRequest(data: Uint8Array): RequestKey | null {
  let m: MsgValue;
  try {
    m = unpack(data);
  } catch {
    return null;
  }
  if (!(m instanceof MsgMap)) return null;
  const rid = m.get("rid");
  if (typeof rid === "number") return rid;
  if (typeof rid === "bigint") return null; // an integer rid, never outstanding
  const mid = m.get("id");
  const t = m.get("t");
  if (mid instanceof Uint8Array && (t === "accepted" || t === "error")) return toHex(mid);
  return null;
}

// --- the session -------------------------------------------------------------------------

/** One connection's protocol state, on the client's side; one per
 * connection, created when the WebSocket opens. */
export class ClientSession {
  private currentState: ClientState = ClientState.AWAITING_CHALLENGE;
  private challengeFrame: Challenge | null = null;
  private welcomeFrame: Welcome | null = null;
  private nextRid = 1;
  /** Outstanding rid -> its request type. */
  private readonly requests = new Map<number, RidRequest["t"]>();
  /** Message id (hex) -> sends of it not answered yet. */
  private readonly sends = new Map<string, number>();

  get state(): ClientState {
    return this.currentState;
  }

  /** The hub's challenge, once received. */
  get challenge(): Challenge | null {
    return this.challengeFrame;
  }

  /** The hub's welcome, once received. */
  get welcome(): Welcome | null {
    return this.welcomeFrame;
  }

  /** The verification authority key the challenge announced (SPEC §5.1). */
  get hubAuthority(): Uint8Array | null {
    return this.challengeFrame?.authority ?? null;
  }

  /** The capabilities the challenge announced (SPEC §10). */
  get hubCaps(): ReadonlySet<string> {
    return new Set(this.challengeFrame?.caps ?? []);
  }

  /** The requests not answered yet: `rid`s, and message ids (hex) of sends. */
  get outstanding(): ReadonlySet<RequestKey> {
    return new Set<RequestKey>([...this.requests.keys(), ...this.sends.keys()]);
  }

  // --- receiving ----------------------------------------------------------------------

  /**
   * Parse and classify one binary message from the hub (see the module's
   * doc). Throws the hub's error (`remote`: a fatal `error` frame, or any
   * `error` before `welcome`), or a local MalformedFrame, UnknownFrameType,
   * UnexpectedFrame or UnsupportedVersion. After a remote error, or a local
   * one before `welcome`, the session is closed.
   */
  receive(data: Uint8Array): SessionEvent {
    let frame: HubFrame;
    try {
      frame = decode(data, "hub");
    } catch (err) {
      return this.unreadable(data, err as ProtocolError);
    }
    if (this.currentState === ClientState.AUTHENTICATED) {
      if (PUSHED.has(frame.t)) return { kind: "pushed", frame: frame as PushedFrame };
      if (frame.t === "error") return this.reported(frame);
      if (RECEIVABLE.authenticated.has(frame.t)) return this.answer(frame as AnswerFrame);
      throw new UnexpectedFrame(frame.t, `the hub sent '${frame.t}' ${WANTED.authenticated}`);
    }
    return this.handshake(frame);
  }

  private handshake(frame: HubFrame): SessionEvent {
    const state = this.currentState;
    if (!RECEIVABLE[state].has(frame.t)) {
      this.currentState = ClientState.CLOSED;
      throw new UnexpectedFrame(frame.t, `the hub sent '${frame.t}' ${WANTED[state]}`);
    }
    if (frame.t === "error") {
      this.currentState = ClientState.CLOSED;
      throw errorFromFrame(frame);
    }
    if (frame.t === "challenge") {
      if (frame.v !== PROTOCOL_VERSION) {
        this.currentState = ClientState.CLOSED;
        throw new UnsupportedVersion(`hub speaks version ${frame.v}`);
      }
      this.challengeFrame = frame;
      this.currentState = ClientState.CHALLENGED;
      return { kind: "challenged", challenge: frame };
    }
    const welcome = frame as Welcome; // RECEIVABLE admits nothing else
    this.welcomeFrame = welcome;
    this.currentState = ClientState.AUTHENTICATED;
    return { kind: "welcomed", welcome };
  }

  private unreadable(data: Uint8Array, err: ProtocolError): SessionEvent {
    if (this.currentState !== ClientState.AUTHENTICATED) {
      this.currentState = ClientState.CLOSED;
      throw err;
    }
    const request = namedRequest(data);
    if (request !== null && this.settle(request) !== undefined) return { kind: "failed", request, error: err };
    throw err;
  }

  private reported(frame: ErrorFrame): SessionEvent {
    const error = errorFromFrame(frame);
    if (frame.fatal) {
      this.currentState = ClientState.CLOSED;
      throw error;
    }
    const request = frame.rid ?? (frame.id !== undefined ? toHex(frame.id) : null);
    if (request === null) return { kind: "failed", request: null, error };
    if (this.settle(request) === undefined) {
      throw new UnexpectedFrame("error", `the hub reported '${frame.code}' for a request not outstanding`);
    }
    return { kind: "failed", request, error };
  }

  private answer(frame: AnswerFrame): SessionEvent {
    const request: RequestKey = frame.t === "accepted" ? toHex(frame.id) : frame.rid;
    const asked = this.settle(request);
    if (asked === undefined) {
      throw new UnexpectedFrame(frame.t, `the hub sent '${frame.t}' for a request not outstanding`);
    }
    if (ANSWERS[asked] !== frame.t) {
      return {
        kind: "failed",
        request,
        error: new UnexpectedFrame(frame.t, `the hub answered '${asked}' with '${frame.t}'`),
      };
    }
    return { kind: "answered", request, frame };
  }

  /** Forget an outstanding request now answered; its type, or undefined if
   * it was not outstanding. */
  private settle(request: RequestKey): RidRequest["t"] | "send" | undefined {
    if (typeof request === "number") {
      const kind = this.requests.get(request);
      this.requests.delete(request);
      return kind;
    }
    const sends = this.sends.get(request);
    if (sends === undefined) return undefined;
    if (sends === 1) this.sends.delete(request);
    else this.sends.set(request, sends - 1);
    return "send";
  }

  // --- sending ------------------------------------------------------------------------

  /** The bytes of the `auth` answering the challenge (`answerAuth`). Throws
   * FrameNotAllowed unless challenged. */
  auth(deviceId: string, keys: Signer, caps?: readonly string[]): Uint8Array {
    return this.send(answerAuth(this.challenged(), deviceId, keys, caps));
  }

  /** The bytes of the `enroll` answering the challenge (`answerEnroll`).
   * Throws FrameNotAllowed unless challenged, WrongAuthority (the session
   * stays challenged: nothing is to be sent). */
  enroll(
    code: string,
    keys: Signer,
    label = "",
    caps?: readonly string[],
    options: { authority?: Uint8Array } = {},
  ): Uint8Array {
    return this.send(answerEnroll(this.challenged(), code, keys, label, caps, options));
  }

  /**
   * Allocate a `rid` and return it with the bytes of `build(rid)`, a request
   * (`lookup`, `link_code`, `set_status`, `watch`, `search`, `devices` or
   * `revoke`) now outstanding. Throws FrameNotAllowed unless authenticated,
   * Error if `build` made a frame without that rid.
   */
  request(build: (rid: number) => RidRequest): [number, Uint8Array] {
    let rid = this.nextRid++;
    while (this.requests.has(rid)) rid = this.nextRid++; // taken by a request sent with its own rid
    const frame = build(rid);
    if ((frame as { rid?: unknown }).rid !== rid) {
      throw new Error(`build(${rid}) made a '${frame.t}' frame without that rid`);
    }
    return [rid, this.send(frame)];
  }

  /**
   * The bytes of `frame`, which the state must allow (`SENDABLE`; else
   * FrameNotAllowed, and nothing is to be sent). An `auth` or `enroll`
   * moves the session to answered. A request becomes outstanding under its
   * `rid` (Error if that rid already is), a `send` under its message id: a
   * resend of an id still outstanding is answered once more (SPEC §6.2).
   * Throws MalformedFrame (local) for a frame the hub would refuse.
   */
  send(frame: ClientFrame): Uint8Array {
    if (!SENDABLE[this.currentState].has(frame.t)) {
      throw new FrameNotAllowed(`sending ${String(frame.t)} in ${this.currentState}`);
    }
    const asks = frame.t !== "send" && frame.t in ANSWERS ? (frame as RidRequest) : null;
    if (asks !== null && this.requests.has(asks.rid)) throw new Error(`rid ${asks.rid} is already outstanding`);
    const data = encode(frame);
    if (frame.t === "send") {
      const mid = toHex(frame.id);
      this.sends.set(mid, (this.sends.get(mid) ?? 0) + 1);
    } else if (asks !== null) {
      this.requests.set(asks.rid, asks.t);
    } else if (frame.t === "auth" || frame.t === "enroll") {
      this.currentState = ClientState.ANSWERED;
    }
    return data;
  }

  private challenged(): Challenge {
    if (this.currentState !== ClientState.CHALLENGED || this.challengeFrame === null) {
      throw new FrameNotAllowed(`answering a challenge in ${this.currentState}`);
    }
    return this.challengeFrame;
  }

  // --- the end ------------------------------------------------------------------------

  /** The WebSocket closed with `code` and `reason` (as received): the
   * session is closed. Returns the fatal error the close names
   * (`errorFromClose`), or null. */
  connectionClosed(code: number | null | undefined, reason: string | null | undefined): FatalError | null {
    this.currentState = ClientState.CLOSED;
    return errorFromClose(code, reason);
  }

  /** Move to closed, from any state: nothing more is admitted or sent. */
  close(): void {
    this.currentState = ClientState.CLOSED;
  }
}
