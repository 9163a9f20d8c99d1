/**
 * One device's life on the hub: the browser counterpart of the Python SDK's
 * Client (miss_client/client.py), over protocol/session.ts's ClientSession.
 *
 * Contract:
 * - It keeps one WebSocket open, reconnecting with exponential backoff and
 *   full jitter (a delay drawn uniformly below 1 s doubling to 30 s, never
 *   below a `retry_after`; at once when the browser says it is back online);
 *   `conn` says where it stands, for the UI. A hub that goes away (close
 *   1001: a node draining in a rolling restart) is routine: for the first
 *   10 s after it (`conn.quietUntil`) the interface shows a discreet
 *   "reconnecting" rather than "offline"; a hub still away after that is
 *   offline as any other. A fatal error
 *   that a reconnection cannot mend (revoked, suspended, unknown device,
 *   session taken over elsewhere) stops it: `conn.kind === "stopped"`.
 * - Liveness (SPEC §4.1): with a hub that names `ping`, 18 s without a frame
 *   send a `ping`, and 10 s more without any frame drop the connection, which
 *   then reconnects as after any loss: a network that died silently shows
 *   as "offline" within 33 s instead of "online" for minutes. A tab that
 *   comes back into view looks at once (its timers were throttled).
 * - Sending: `send()` records the message in the sealed outbox first, then
 *   sends it; whatever is pending is resent with its original id after each
 *   welcome (the hub deduplicates ids: exactly once as users see it).
 *   Nothing is encrypted to a clinician whose attestation does not verify,
 *   to keys the authority did not sign, nor while a key change of either
 *   side waits for the user's acceptance (SPEC §11.2).
 * - Authority key rotation (SPEC §15): a challenge announcing another
 *   authority key with statements leading there from ours makes the new key
 *   ours (kept in the vault's profile) and the older ones count until their
 *   `until`; `rotationNotice` gives the new key's fingerprint for the
 *   interface. Statements that do not lead there are refused
 *   (`rotationRefused`, `rotation_refused`): our key stays, like a wrong
 *   authority (`authorityMismatch`).
 * - Receiving: each `deliver` is opened, checked against the sender's
 *   attested keys, stored, then acked; a message that cannot be read is
 *   refused (SPEC §6.5) and never shown. Receipts are stored, then acked.
 *   Acks go in batches.
 *
 * Public API of revision 3 (SPEC §13; stable names, for the interface):
 * - Conversations: a conversation id is a user id ("u_…") or a team id
 *   ("t_…", `isTeamId`); `state.conversationList()` lists both.
 * - `teams(): TeamView[]`, `team(id): TeamView | undefined` (src/app/teams.ts):
 *   name, org, lifespanMs?, members, admins, head, closed, member, admin,
 *   problem (null | "tampered" | "diverged"), events [{seq, at, op, by, user}].
 * - `createTeam(name, org?, lifespanMs?) → Promise<TeamView>`,
 *   `addMember(team, user)`, `removeMember(team, user)`, `leaveTeam(team)`,
 *   `promote(team, user)`, `demote(team, user)`: each signs a record, sends
 *   `team_change`, and resolves once the hub stored it (a `team_conflict`
 *   refetches the chain and redoes the change once). Errors: ProtocolError
 *   (`team_forbidden`, `team_full`, …), TeamProblemError when the team is
 *   tampered/diverged.
 * - `send(conversationId, text, {lifespanMs?})`: users or teams; a team's
 *   default lifespan applies unless given; `lifespanFor(conversationId)`
 *   says the default, `setLifespan(peerUser, ms | null)` sets a 1:1 one.
 *   A team message held because of a problem has `held.get(id)` a
 *   TeamProblemError.
 * - `markRead(conversationId)`: marks read and sends read notices (to the
 *   senders, or only to our own devices when read receipts are off).
 *   `readReceipts` (getter) and `setReadReceipts(on)` (persisted).
 *   Outgoing messages carry `readBy: string[]` (MessageRecord, store.ts).
 * - `recall(messageId)`: asks the hub to drop undelivered rows, then sends
 *   a recall notice; messages have `recalled`, `expiresAt`, `expired`
 *   (plaintext deleted locally: `body` becomes "").
 * - `onChange` fires on any team change too.
 * - Also public: `syncTeam(id, hubHead?)` (fetch and verify a chain; the
 *   client calls it after welcome, on `team_changed` and before team sends)
 *   and `sweepExpired(now?)` (run every 30 s from `start`).
 * - Problems (SPEC §13.4): a chain that does not verify, a hub asking for
 *   devices of a non-member, or a hub saying we are not a member while the
 *   chain says we are → "tampered" (kept for good on this device); a head
 *   the hub announces that is not in the chain after a fetch → "diverged"
 *   (cleared when the hub's head is ours again). Either blocks sending and
 *   changes; messages from members by the chain are still received.
 */
import {
  CAP_BLOBS,
  CAP_ONCALL,
  CAP_PING,
  CAP_REFUSALS,
  CAP_ROTATION,
  CAP_TEAMS,
  MAX_ACK_REFUSALS,
  MAX_ACK_SEQS,
  MAX_FRAME_BYTES,
  MAX_LIFESPAN_MS,
  MAX_RECIPIENT_DEVICES,
  MAX_TEAM_CHAIN_BYTES,
  MAX_WRAPS,
  MIN_LIFESPAN_MS,
  MIN_SEARCH_CHARS,
  SUBPROTOCOL,
  encode,
} from "../protocol/frames";
import type {
  Deliver,
  Delivered,
  DevicesOk,
  HubFrame,
  LinkCodeOk,
  LookupOk,
  Presence,
  RecallOk,
  Refused,
  SearchOk,
  Send,
  TeamChainOk,
  TeamChanged,
  TeamOk,
  TeamsOk,
  UrgentStatus,
  Watching,
} from "../protocol/frames";
import { CLOSE_GOING_AWAY } from "../protocol/errors";
import { type AuthorityKeys, RotationRefused, consider, keyring, verifyAttestation } from "../protocol/rotation";
import {
  EnvelopeError,
  MAX_REFS,
  equalBytes,
  openBody,
  openEnvelope,
  packPlaintext,
  safetyNumber,
  seal,
  sealBody,
  unpackPlaintext,
  unwrapKey,
  newMessageId,
  fromHex,
  toHex,
  wrapKey,
  type DeviceKeys,
  type Plaintext,
} from "../protocol/crypto";
import { NotMember, ProtocolError, RoleVacant, TeamForbidden } from "../protocol/errors";
import { isRoleId } from "../protocol/oncall";
import { isServiceId } from "../protocol/notices";
import { Oncall } from "./oncall";
import { AttachmentRefused, Attachments, type Prepared } from "./attachments";
import { ClientSession } from "../protocol/session";
import { TeamChainError, newTeamId, nextRecord, signRecord, type TeamOp, type TeamRecord } from "../protocol/teams";
import { fieldText } from "../protocol/text";
import { LocalState, type MessageRecord } from "./store";
import {
  emptyTeam,
  extendTeam,
  loadTeam,
  membersAt,
  strangers,
  teamTargets,
  teamView,
  type KnownTeam,
  type TeamProblem,
  type TeamView,
} from "./teams";
import { KeyChangePending, UnverifiedPeer, acceptPending, checkLookup, identities, observePeer, type Device, type Peer, type PeerChange } from "./trust";
import type { Vault } from "./vault";

export type ConnState =
  | { kind: "connecting" }
  | { kind: "online" }
  /** `quietUntil`: after the hub went away (1001), until then a routine reconnection. */
  | { kind: "offline"; retryAt: number; quietUntil?: number }
  | { kind: "stopped"; error: Error };

/** The connection ended before an answer came. */
export class ConnectionLost extends Error {}

/** The message, sealed for every device, exceeds the frame limit. */
export class MessageTooLarge extends Error {}

export type { TeamEvent, TeamProblem, TeamView } from "./teams";

/** True for a team id ("t_" + 16 lowercase hex digits), i.e. a team conversation. */
export function isTeamId(id: string): boolean {
  return /^t_[0-9a-f]{16}$/.test(id);
}

/** Nothing can be sent to (or changed in) this team: its chain does not
 * verify or the hub asked to encrypt to a non-member ("tampered"), or the
 * hub's head is not in the chain ("diverged"). SPEC §13.4. */
export class TeamProblemError extends Error {
  constructor(
    readonly team: string,
    readonly problem: Exclude<TeamProblem, null>,
  ) {
    super(`team ${team}: ${problem}`);
    this.name = "TeamProblemError";
  }
}

/** Options of `send`. */
export interface SendOptions {
  /** Lifespan (ms, 3,600,000 … 2,592,000,000); default: the conversation's. */
  lifespanMs?: number;
  /** Urgent (SPEC §14): escalates until acknowledged, per the recipient's policy. */
  urgent?: boolean;
  /** Attachments (SPEC §16), encrypted by `attachments.prepare`; uploaded before the message goes. */
  files?: Prepared[];
}

export interface PresenceInfo {
  status: string;
  online: boolean;
}

export interface DirectoryEntry {
  user: string;
  name: string;
  rpps: string;
  profession: string;
  organisation: string;
}

/** Close codes after which reconnecting cannot help. */
const FINAL_ERRORS = new Set(["auth_failed", "device_revoked", "account_suspended", "session_replaced", "unsupported_version"]);

const REQUEST_TIMEOUT_MS = 30_000;
const OPEN_TIMEOUT_MS = 15_000;
/** Liveness (SPEC §4.1): after this long without a frame from the hub, a
 * `ping`; once it has gone unanswered (nothing at all received) for
 * PING_TIMEOUT_MS more, the connection is taken for dead and replaced. A
 * browser sees no WebSocket ping, so on a network that drops silently this
 * is how a clinician learns within 33 s (with the tick) that messages no
 * longer arrive. Under the hub's default ping interval (20 s), so that the
 * hub, hearing from the page, skips its own pings (keepalive.py): an idle
 * page costs two frames per 18 s, about what the hub's pings cost. */
const IDLE_PING_MS = 18_000;
const PING_TIMEOUT_MS = 10_000;
const LIVENESS_TICK_MS = 5_000;
const BACKOFF_FIRST_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;
/** How long after a 1001 reconnecting counts as routine (conn.quietUntil):
 * another node takes the device at once in a rolling restart, a lone hub
 * restarts within seconds. */
const QUIET_RECONNECT_MS = 10_000;
const ACK_DELAY_MS = 100;
/** A lookup older than this is refreshed before encrypting to it. */
const LOOKUP_FRESH_MS = 5_000;
const SELF_RECHECK_MS = 10_000;
/** Plaintexts are padded to a multiple of this (SPEC §13.5). */
const PAD_TO = 256;
/** How often expired plaintexts are looked for (SPEC §13.6). */
const SWEEP_MS = 30_000;

interface Waiter {
  resolve: (frame: HubFrame) => void;
  reject: (err: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export class MissClient {
  conn: ConnState = { kind: "connecting" };
  /** Our own verification: null until known; else true or why not. */
  selfCheck: true | UnverifiedPeer | null = null;
  /** Set when the hub announces another authority than ours (SPEC §5.1),
   * with no statement or with statements refused (then `rotationRefused`). */
  authorityMismatch = false;
  /** Why the last challenge's rotation statements were refused (SPEC §15). */
  rotationRefused: RotationRefused | null = null;
  /** The fingerprint of the authority key a rotation made ours during this
   * session, for the interface to say so; `dismissRotationNotice` clears it. */
  rotationNotice: string | null = null;
  readonly presence = new Map<string, PresenceInfo>();
  /** Why pending messages are held back, by message id (not persisted). */
  readonly held = new Map<string, Error>();
  /** Called after any change the interface may show. */
  onChange: () => void = () => undefined;
  /** Called for each new incoming message (for notifications). */
  onMessage: (m: MessageRecord, peer: Peer | undefined) => void = () => undefined;

  private ws: WebSocket | null = null;
  private session: ClientSession | null = null;
  private waiters = new Map<number | string, Waiter[]>();
  private lookups = new Map<string, { peer: Peer; at: number }>();
  private inbound: Promise<void> = Promise.resolve();
  private acks: number[] = [];
  private refusals: Array<{ seq: number; reason: string }> = [];
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private attempt = 0;
  /** When the hub last closed with 1001 (going away), until a welcome. */
  private wentAwayAt: number | null = null;
  private keyringCache: AuthorityKeys | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private selfTimer: ReturnType<typeof setTimeout> | null = null;
  private flushing = false;
  private flushAgain = false;
  private inflight = new Set<string>();
  private stopped = false;
  /** Verified teams, loaded from state.teams on first use. */
  private book: Map<string, KnownTeam> | null = null;
  /** Our own attestation as the last lookup of ourselves gave it (signs team records). */
  private ownAtt: Uint8Array | null = null;
  private sweepTimer: ReturnType<typeof setInterval> | null = null;
  /** Liveness (SPEC §4.1): when a frame last came, when our unanswered `ping` left. */
  private heardAt = 0;
  private pingedAt: number | null = null;
  private livenessTimer: ReturnType<typeof setInterval> | null = null;
  /** A member of the team (by id) whose lookup did not verify at the last send. */
  private unverifiedMembers = new Map<string, string>();
  /** The running chain fetch of each team. */
  private syncing = new Map<string, Promise<KnownTeam>>();

  /** On-call roles and urgent messages (oncall.ts). */
  readonly oncall: Oncall;
  /** Attachments: limits, encryption, upload and download (attachments.ts). */
  readonly attachments: Attachments;

  constructor(
    readonly vault: Vault,
    readonly keys: DeviceKeys,
    readonly state: LocalState,
  ) {
    addEventListener("online", () => this.reconnectNow());
    // A hidden tab's timers run once a minute at best: when the clinician
    // comes back to it, look at the connection at once, not at the next tick.
    globalThis.document?.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.checkLiveness();
    });
    const client = this; // eslint-disable-line @typescript-eslint/no-this-alias
    this.oncall = new Oncall({
      get me() {
        return client.me;
      },
      get device() {
        return client.device;
      },
      state,
      request: (build) => this.request(build),
      changed: () => this.onChange(),
    });
    this.attachments = new Attachments({
      request: (build) => this.request(build),
      get httpBase() {
        return client.vault.profile.server.replace(/^ws/, "http");
      },
      get welcomeLimits() {
        return client.session?.welcome ?? null;
      },
      changed: () => this.onChange(),
    });
  }

  get me(): string {
    return this.vault.profile.user;
  }

  get device(): string {
    return this.vault.profile.device;
  }

  // --- the connection -------------------------------------------------------------

  start(): void {
    this.stopped = false;
    this.startSweep();
    this.oncall.restore();
    this.connect();
  }

  private startSweep(): void {
    if (this.sweepTimer !== null) return;
    void this.sweepExpired();
    this.sweepTimer = setInterval(() => void this.sweepExpired(), SWEEP_MS);
  }

  /** Close for good (locking the app). */
  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.selfTimer) clearTimeout(this.selfTimer);
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = null;
    this.stopLiveness();
    this.ws?.close(1000, "");
  }

  /** Reconnect now, from "offline" or "stopped". */
  reconnectNow(): void {
    if (this.stopped || this.conn.kind === "online" || this.conn.kind === "connecting") return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.attempt = 0;
    this.connect();
  }

  /** Adopt a connection already authenticated by an enrollment. */
  adopt(ws: WebSocket, session: ClientSession, backlog: Uint8Array[]): void {
    this.stopped = false;
    this.startSweep();
    this.wire(ws, session);
    this.welcomed();
    for (const data of backlog) this.receive(data);
    if (ws.readyState === WebSocket.CLOSED) this.closed(null);
  }

  private setConn(conn: ConnState): void {
    this.conn = conn;
    this.onChange();
  }

  private connect(): void {
    this.setConn({ kind: "connecting" });
    let ws: WebSocket;
    try {
      ws = new WebSocket(this.vault.profile.server, [SUBPROTOCOL]);
    } catch (err) {
      this.setConn({ kind: "stopped", error: err as Error });
      return;
    }
    this.wire(ws, new ClientSession());
    // A connection that neither fails nor authenticates (a silent network)
    // is given up, and retried like a failure.
    setTimeout(() => {
      if (this.ws === ws && this.conn.kind === "connecting") ws.close();
    }, OPEN_TIMEOUT_MS);
  }

  private wire(ws: WebSocket, session: ClientSession): void {
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.session = session;
    ws.onmessage = (ev: MessageEvent) => {
      if (this.ws !== ws || !(ev.data instanceof ArrayBuffer)) return;
      this.heardAt = Date.now();
      this.pingedAt = null; // any frame answers it
      this.receive(new Uint8Array(ev.data));
    };
    ws.onclose = (ev: CloseEvent) => {
      if (this.ws !== ws) return;
      if (ev.code === CLOSE_GOING_AWAY) this.wentAwayAt = Date.now();
      this.closed(session.connectionClosed(ev.code, ev.reason));
    };
  }

  private receive(data: Uint8Array): void {
    const session = this.session!;
    let event;
    try {
      event = session.receive(data);
    } catch (err) {
      this.fail(err as Error);
      return;
    }
    switch (event.kind) {
      case "challenged": {
        this.considerAuthority(session);
        this.ws!.send(session.auth(this.device, this.keys, [CAP_REFUSALS, CAP_TEAMS, CAP_ONCALL, CAP_ROTATION, CAP_BLOBS]));
        break;
      }
      case "welcomed":
        this.welcomed();
        break;
      case "pushed":
        this.pushed(event.frame);
        break;
      case "answered":
        this.settle(event.request, (w) => w.resolve(event.frame));
        break;
      case "failed":
        this.settle(event.request, (w) => w.reject(event.error));
        break;
    }
  }

  /**
   * The challenge's authority key and rotation statements against ours
   * (SPEC §5.1, §15; rotation.ts `consider`): a valid chain to the announced
   * key makes it ours (the profile rewritten in the vault); a
   * refused one leaves our key and flags the mismatch. Either way the
   * connection goes on (what the hub serves is verified with our keys).
   */
  private considerAuthority(session: ClientSession): void {
    const profile = this.vault.profile;
    const stored = profile.rotations ?? [];
    let outcome;
    try {
      outcome = consider(profile.authority, stored, session.hubAuthority, session.challenge?.rotations ?? []);
    } catch (err) {
      if (!(err instanceof RotationRefused)) throw err;
      console.warn("MiSS: rotation_refused", err.reason, err.message);
      this.rotationRefused = err;
      this.authorityMismatch = true;
      return;
    }
    this.rotationRefused = null;
    this.authorityMismatch = outcome.kind === "mismatch";
    if (outcome.kind === "mismatch") return;
    if (outcome.kind === "rotated") {
      this.rotationNotice = outcome.fingerprint;
      void this.vault.setAuthority(outcome.current, outcome.stored);
    } else if (outcome.stored.length !== stored.length) {
      void this.vault.setAuthority(profile.authority, outcome.stored); // older keys learnt
    } else return;
    // Verified with the new keyring from now on: teams reload, lookups again.
    this.keyringCache = null;
    this.book = null;
    this.lookups.clear();
    this.onChange();
  }

  /** The authority keys this browser trusts (SPEC §15): ours, and older
   * ones of the rotations it accepted while they count. */
  get authorityKeys(): AuthorityKeys {
    this.keyringCache ??= keyring(this.vault.profile.authority, this.vault.profile.rotations ?? []);
    return this.keyringCache;
  }

  /** The interface showed the rotation notice. */
  dismissRotationNotice(): void {
    this.rotationNotice = null;
    this.onChange();
  }

  private welcomed(): void {
    this.attempt = 0;
    this.wentAwayAt = null;
    this.lookups.clear(); // device lists may have changed while we were away
    this.setConn({ kind: "online" });
    this.startLiveness();
    void this.afterWelcome();
  }

  /** Watch this connection for silence (SPEC §4.1), if the hub answers `ping`. */
  private startLiveness(): void {
    this.stopLiveness();
    this.heardAt = Date.now();
    this.pingedAt = null;
    if (!this.session?.hubCaps.has(CAP_PING)) return; // an older hub would close on it
    this.livenessTimer = setInterval(() => this.checkLiveness(), LIVENESS_TICK_MS);
  }

  private stopLiveness(): void {
    if (this.livenessTimer) clearInterval(this.livenessTimer);
    this.livenessTimer = null;
    this.pingedAt = null;
  }

  private checkLiveness(): void {
    if (this.conn.kind !== "online" || this.ws === null) return;
    if (!this.session?.hubCaps.has(CAP_PING)) return; // an older hub would close on it
    const now = Date.now();
    if (this.pingedAt !== null) {
      if (now - this.pingedAt < PING_TIMEOUT_MS) return;
      // Nothing came since the ping: the connection is dead, whatever the
      // browser says. Drop it without waiting for a close it would not get.
      console.warn("MiSS: the hub did not answer for", now - this.heardAt, "ms; reconnecting");
      const ws = this.ws;
      this.ws = null;
      ws.close();
      this.closed(new ConnectionLost("the hub stopped answering"));
      return;
    }
    if (now - this.heardAt < IDLE_PING_MS) return;
    this.pingedAt = now;
    this.request((rid) => ({ t: "ping", rid })).catch(() => undefined); // any frame will do
  }

  private async afterWelcome(): Promise<void> {
    await this.checkSelf();
    await this.watchAll().catch(() => undefined);
    if (this.selfCheck === true) await this.syncTeams().catch((err) => console.warn("MiSS: teams", err));
    if (this.selfCheck === true && this.oncallHub) await this.oncall.mine().catch((err) => console.warn("MiSS: roles", err));
    this.flushOutbox();
  }

  /** Whether the hub speaks revision 4 (roles, urgent messages). */
  get oncallHub(): boolean {
    return this.session?.hubCaps.has(CAP_ONCALL) ?? false;
  }

  /** A fatal protocol error of ours or the hub's: close, then as closed. */
  private fail(err: Error): void {
    const ws = this.ws;
    this.ws = null;
    ws?.close(4400, "");
    this.closed(err);
  }

  private closed(err: Error | null): void {
    this.ws = null;
    this.session = null;
    this.stopLiveness();
    for (const list of this.waiters.values()) for (const w of list) w.reject(new ConnectionLost("connection lost"));
    this.waiters.clear();
    this.inflight.clear();
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    this.acks = []; // unacked rows come again on the next connection
    this.refusals = [];
    this.presence.clear(); // unknown until the next `watching`
    if (this.stopped) return;
    if (err instanceof ProtocolError && FINAL_ERRORS.has(err.code)) {
      this.setConn({ kind: "stopped", error: err });
      return;
    }
    // Full jitter: the clients a draining node sends away must not all come
    // back at once (a retry_after is a floor, the jitter added on top).
    let delay = Math.random() * Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    if (err instanceof ProtocolError && err.retryAfter !== undefined) delay += err.retryAfter;
    this.attempt = Math.min(this.attempt + 1, 10);
    const retryAt = Date.now() + delay;
    const quietUntil = this.wentAwayAt === null ? 0 : this.wentAwayAt + QUIET_RECONNECT_MS;
    this.setConn(Date.now() < quietUntil ? { kind: "offline", retryAt, quietUntil } : { kind: "offline", retryAt });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  // --- requests -------------------------------------------------------------------

  private settle(request: number | string | null, act: (w: Waiter) => void): void {
    if (request === null) return;
    const list = this.waiters.get(request);
    const w = list?.shift();
    if (list && list.length === 0) this.waiters.delete(request);
    if (w) {
      clearTimeout(w.timer);
      act(w);
    }
  }

  private wait(request: number | string): Promise<HubFrame> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.settle(request, (w) => w.reject(new ConnectionLost("no answer")));
      }, REQUEST_TIMEOUT_MS);
      const list = this.waiters.get(request) ?? [];
      list.push({ resolve, reject, timer });
      this.waiters.set(request, list);
    });
  }

  /** Send a request built for a fresh rid; retried after `rate_limited`
   * or `storage_unavailable` (up to 3 times), other errors thrown. */
  private async request<T extends HubFrame>(build: (rid: number) => any): Promise<T> {
    for (let tries = 0; ; tries++) {
      const session = this.session;
      if (session === null || this.conn.kind !== "online") throw new ConnectionLost("not connected");
      const [rid, bytes] = session.request(build);
      const answer = this.wait(rid);
      this.ws!.send(bytes);
      try {
        return (await answer) as T;
      } catch (err) {
        // A wait of more than a minute (a daily quota) is the caller's to report.
        if (err instanceof ProtocolError && err.retryable && tries < 3 && (err.retryAfter ?? 0) <= 60_000) {
          await sleep(err.retryAfter ?? 1000);
          continue;
        }
        throw err;
      }
    }
  }

  // --- clinicians -----------------------------------------------------------------

  /** A verified clinician (SPEC §11.2), cached for LOOKUP_FRESH_MS unless `refresh`. */
  async lookup(user: string, refresh = false): Promise<Peer> {
    const cached = this.lookups.get(user);
    if (!refresh && cached && Date.now() - cached.at < LOOKUP_FRESH_MS) return cached.peer;
    const reply = await this.request<LookupOk>((rid) => ({ t: "lookup", rid, user }));
    // A hub answering about someone else must not redirect a conversation.
    if (reply.user !== user) throw new UnverifiedPeer(user, "wrong_user", user === this.me);
    return this.verified(reply);
  }

  /** Look up by RPPS number. */
  async lookupRpps(rpps: string): Promise<Peer> {
    const reply = await this.request<LookupOk>((rid) => ({ t: "lookup", rid, rpps }));
    return this.verified(reply, rpps);
  }

  private async verified(reply: LookupOk, rpps?: string): Promise<Peer> {
    const own = reply.user === this.me;
    let checked;
    try {
      checked = checkLookup(reply, this.authorityKeys, Date.now(), own, rpps);
      const old = this.state.peers.get(reply.user);
      if (old !== undefined && checked.notBefore < old.attestedFrom) {
        throw new UnverifiedPeer(reply.user, "stale", own);
      }
    } catch (err) {
      this.lookups.delete(reply.user);
      throw err;
    }
    const trusted: Device | null = own
      ? { device: this.device, sign_pk: this.keys.signPk, box_pk: this.keys.boxPk }
      : null;
    if (own && reply.att !== undefined) this.ownAtt = reply.att;
    const seen = observePeer(this.state.peers.get(reply.user), checked, trusted);
    await this.state.savePeer(seen.record);
    const peer: Peer = {
      ...checked.peer,
      verified: seen.record.verifiedAt !== null,
      pending: seen.record.pending?.change ?? null,
    };
    this.lookups.set(peer.user, { peer, at: Date.now() });
    if (seen.report) this.onChange();
    return peer;
  }

  /** The pending key change of `user`, as the local state says now. */
  pendingChange(user: string): PeerChange | null {
    return this.state.peers.get(user)?.pending?.change ?? null;
  }

  async acceptKeys(user: string): Promise<void> {
    const record = this.state.peers.get(user);
    if (record?.pending) await this.state.savePeer(acceptPending(record));
    this.lookups.delete(user);
    this.onChange();
    this.flushOutbox();
  }

  async safetyNumber(user: string): Promise<string> {
    const own = await this.lookup(this.me, true);
    const peer = await this.lookup(user, true);
    return safetyNumber(this.me, identities(own), peer.user, identities(peer));
  }

  /** Mark verified in person: accepts a pending change of the keys just compared. */
  async markVerified(user: string): Promise<void> {
    await this.lookup(user, true);
    const record = this.state.peers.get(user)!;
    await this.state.savePeer({ ...acceptPending(record), verifiedAt: Date.now() });
    this.lookups.delete(user);
    this.onChange();
    this.flushOutbox();
  }

  /**
   * The directory entries matching `query` (attested only). Services are
   * never in directory results (SPEC §17.1): a query that is a service's
   * identifier (`svc:…`) looks that service up instead, verified alike.
   */
  async search(query: string): Promise<DirectoryEntry[]> {
    const q = fieldText(query);
    if (isServiceId(q)) {
      try {
        const p = await this.lookupRpps(q);
        return p.user === this.me ? [] : [{ user: p.user, name: p.name, rpps: p.rpps, profession: p.profession, organisation: p.organisation }];
      } catch (err) {
        if (err instanceof UnverifiedPeer || (err instanceof ProtocolError && err.code === "unknown_user")) return [];
        throw err;
      }
    }
    if (q.length < MIN_SEARCH_CHARS || q.length > 64) return [];
    const reply = await this.request<SearchOk>((rid) => ({ t: "search", rid, query: q }));
    const found = new Map<string, DirectoryEntry>();
    const now = Date.now();
    for (const blob of reply.atts) {
      try {
        const att = verifyAttestation(blob, this.authorityKeys, now);
        if (att.user !== this.me && !found.has(att.user)) {
          found.set(att.user, { user: att.user, name: att.name, rpps: att.rpps, profession: att.profession, organisation: att.organisation });
        }
      } catch {
        // an entry that does not verify is dropped
      }
    }
    return [...found.values()];
  }

  private async checkSelf(): Promise<void> {
    if (this.selfTimer) clearTimeout(this.selfTimer);
    try {
      const own = await this.lookup(this.me, true);
      this.selfCheck = own.devices.some((d) => d.device === this.device)
        ? true
        : new UnverifiedPeer(this.me, "device_not_attested", true);
    } catch (err) {
      if (err instanceof ConnectionLost) return;
      this.selfCheck = err instanceof UnverifiedPeer ? err : new UnverifiedPeer(this.me, "missing", true);
    }
    if (this.selfCheck !== true) this.selfTimer = setTimeout(() => void this.recheckSelf(), SELF_RECHECK_MS);
    this.onChange();
  }

  /** Check our own verification again (after an administrator attested us). */
  async recheckSelf(): Promise<void> {
    const before = this.selfCheck;
    await this.checkSelf();
    if (before !== true && this.selfCheck === true) {
      await this.watchAll().catch(() => undefined);
      await this.syncTeams().catch((err) => console.warn("MiSS: teams", err)); // refused while unverified
      if (this.oncallHub) await this.oncall.mine().catch((err) => console.warn("MiSS: roles", err));
      this.flushOutbox();
    }
  }

  // --- presence -------------------------------------------------------------------

  /** Watch ourselves and every conversation's clinician (the list replaces the last). */
  async watchAll(): Promise<void> {
    const users = [this.me, ...this.state.conversationList().map((c) => c.peer).filter((p) => !isTeamId(p) && !isRoleId(p))].slice(0, 512);
    const reply = await this.request<Watching>((rid) => ({ t: "watch", rid, users }));
    for (const p of reply.presence) this.presence.set(p.user, { status: p.status, online: p.online });
    this.onChange();
  }

  async setStatus(status: string): Promise<void> {
    await this.request((rid) => ({ t: "set_status", rid, status }));
    await this.state.saveSettings({ ...this.state.settings, status });
    const mine = this.presence.get(this.me);
    this.presence.set(this.me, { status, online: mine?.online ?? true });
    this.onChange();
  }

  /** Open (or create) the conversation with a verified clinician. */
  async startConversation(user: string): Promise<Peer> {
    const peer = await this.lookup(user, true);
    this.state.conversation(peer.user);
    await this.watchAll().catch(() => undefined);
    return peer;
  }

  // --- own devices ----------------------------------------------------------------

  async devices(): Promise<DevicesOk["devices"]> {
    return (await this.request<DevicesOk>((rid) => ({ t: "devices", rid }))).devices;
  }

  async revoke(device: string): Promise<void> {
    await this.request((rid) => ({ t: "revoke", rid, device }));
    this.lookups.delete(this.me);
  }

  async linkCode(): Promise<{ code: string; expires: number }> {
    const reply = await this.request<LinkCodeOk>((rid) => ({ t: "link_code", rid }));
    return { code: reply.code, expires: reply.expires };
  }

  // --- teams (SPEC §13) ------------------------------------------------------------

  /** Every team this device knows of (member or not any more), by name. */
  teams(): TeamView[] {
    return [...this.teamBook().values()]
      .map((k) => teamView(k, this.me))
      .sort((a, b) => a.name.localeCompare(b.name, "fr"));
  }

  /** One team's view, or undefined when this device never saw it. */
  team(id: string): TeamView | undefined {
    const known = this.teamBook().get(id);
    return known ? teamView(known, this.me) : undefined;
  }

  /** Create a team with us as its first admin; resolves once the hub stored it. */
  async createTeam(name: string, org = "", lifespanMs?: number): Promise<TeamView> {
    const clean = fieldText(name);
    if (clean.length === 0 || [...clean].length > 64) throw new RangeError("a team name has 1 to 64 characters");
    const id = newTeamId();
    const known = emptyTeam(id);
    const record = nextRecord(null, "create", this.me, {
      ...(await this.signer()),
      team: id,
      name: clean,
      org: fieldText(org) || undefined,
      lifespan: lifespanMs,
    });
    await this.commitRecord(known, record);
    this.state.conversation(id);
    this.onChange();
    return this.team(id)!;
  }

  /** Add a verified clinician (admins only). */
  async addMember(team: string, user: string): Promise<void> {
    await this.lookup(user, true); // only a verified clinician is added
    await this.changeTeam(team, "add", user);
  }

  /** Remove a member (admins only; not oneself: see leaveTeam). */
  async removeMember(team: string, user: string): Promise<void> {
    await this.changeTeam(team, "remove", user);
  }

  /** Leave a team (the last admin cannot while others remain). */
  async leaveTeam(team: string): Promise<void> {
    await this.changeTeam(team, "leave", this.me);
  }

  /** Make a member an admin (admins only). */
  async promote(team: string, user: string): Promise<void> {
    await this.changeTeam(team, "promote", user);
  }

  /** Make an admin a member again (admins only; another admin must remain). */
  async demote(team: string, user: string): Promise<void> {
    await this.changeTeam(team, "demote", user);
  }

  /** The verified teams, loaded from the vault on first use. */
  private teamBook(): Map<string, KnownTeam> {
    if (this.book === null) {
      this.book = new Map();
      for (const stored of this.state.teams.values()) this.book.set(stored.id, loadTeam(stored, this.authorityKeys));
    }
    return this.book;
  }

  private async keepTeam(known: KnownTeam): Promise<void> {
    this.teamBook().set(known.stored.id, known);
    await this.state.saveTeam(known.stored);
    if (known.state?.members.includes(this.me) && !this.state.conversations.has(known.stored.id)) {
      this.state.conversation(known.stored.id);
    }
    this.onChange();
  }

  private async markProblem(team: string, problem: Exclude<TeamProblem, null>, detail: string): Promise<void> {
    const known = this.teamBook().get(team) ?? emptyTeam(team);
    if (known.stored.problem === "tampered" && problem === "diverged") return; // the worse one stays
    await this.keepTeam({ ...known, stored: { ...known.stored, problem, detail } });
    console.warn(`MiSS: team ${team} ${problem}: ${detail}`);
  }

  /** What signs a record from this device: our user, device and attestation. */
  private async signer(): Promise<{ by: string; device: string; att: Uint8Array; at: number }> {
    const own = await this.lookup(this.me, true);
    if (this.ownAtt === null) throw new UnverifiedPeer(this.me, "missing", true);
    if (!own.devices.some((d) => d.device === this.device)) throw new UnverifiedPeer(this.me, "device_not_attested", true);
    return { by: this.me, device: this.device, att: this.ownAtt, at: Date.now() };
  }

  /**
   * Bring a team's chain up to the hub's (SPEC §13.4): fetch the records
   * after ours, verify each, keep them. A record that does not verify makes
   * the team "tampered"; a head the hub announces (`hubHead`) that is still
   * not in the verified chain afterwards makes it "diverged".
   */
  syncTeam(team: string, hubHead?: Uint8Array): Promise<KnownTeam> {
    // One at a time per team: two fetches from the same seq must not race.
    const before = this.syncing.get(team) ?? Promise.resolve();
    const run = before.catch(() => undefined).then(() => this.syncTeamNow(team, hubHead));
    this.syncing.set(team, run);
    void run.catch(() => undefined).finally(() => {
      if (this.syncing.get(team) === run) this.syncing.delete(team);
    });
    return run;
  }

  private async syncTeamNow(team: string, hubHead?: Uint8Array): Promise<KnownTeam> {
    let known = this.teamBook().get(team) ?? emptyTeam(team);
    if (known.stored.problem === "tampered") return known;
    if (hubHead !== undefined && known.heads.includes(toHex(hubHead))) {
      if (known.stored.problem === "diverged" && known.heads.at(-1) === toHex(hubHead)) {
        known = { ...known, stored: { ...known.stored, problem: null, detail: undefined } };
        await this.keepTeam(known); // the hub's head is ours again
      }
      return known;
    }
    const authority = this.authorityKeys;
    let more = true;
    let bytes = 0;
    while (more) {
      const from = known.heads.length;
      let page: TeamChainOk;
      try {
        page = await this.request<TeamChainOk>((rid) => ({ t: "team_chain", rid, team, from }));
      } catch (err) {
        if (err instanceof ProtocolError && err.code === "unknown_team" && from > 0) break; // nothing after ours
        throw err;
      }
      if (page.team !== team) {
        await this.markProblem(team, "tampered", "team_chain_ok about another team");
        return this.teamBook().get(team)!;
      }
      try {
        known = extendTeam(known, page.recs, authority);
      } catch (err) {
        if (!(err instanceof TeamChainError)) throw err;
        await this.keepTeam(known);
        await this.markProblem(team, "tampered", err.message);
        return this.teamBook().get(team)!;
      }
      for (const e of page.recs) bytes += e.rec.length + e.sig.length;
      more = page.more && page.recs.length > 0 && bytes < 64 * MAX_TEAM_CHAIN_BYTES;
    }
    if (known.state === null) {
      await this.markProblem(team, "tampered", "the hub gave no creation record");
      return this.teamBook().get(team)!;
    }
    if (hubHead !== undefined && !known.heads.includes(toHex(hubHead))) {
      known = { ...known, stored: { ...known.stored, problem: "diverged", detail: "the hub's head is not in the chain" } };
    } else if (hubHead !== undefined && known.stored.problem === "diverged") {
      known = { ...known, stored: { ...known.stored, problem: null, detail: undefined } };
    }
    await this.keepTeam(known);
    return known;
  }

  /** After welcome: the teams the hub says we are in, each brought up to date. */
  private async syncTeams(): Promise<void> {
    if (!this.session?.hubCaps.has(CAP_TEAMS)) return;
    const reply = await this.request<TeamsOk>((rid) => ({ t: "teams", rid }));
    const listed = new Set<string>();
    for (const h of reply.teams) {
      listed.add(h.team);
      await this.syncTeam(h.team, h.head).catch((err) => console.warn("MiSS: team sync", err));
    }
    // Teams we believe we are in but the hub no longer lists: the chain says why.
    for (const [id, known] of this.teamBook()) {
      if (!listed.has(id) && known.state?.members.includes(this.me) && known.stored.problem === null) {
        await this.syncTeam(id).catch(() => undefined);
      }
    }
  }

  /** Sign `op` on `user` after the verified chain and have the hub store it;
   * on `team_conflict` fetch the chain and redo the change (twice at most). */
  private async changeTeam(team: string, op: TeamOp, user: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const known = await this.syncTeam(team);
      if (known.stored.problem !== null) throw new TeamProblemError(team, known.stored.problem);
      const record = nextRecord(known.state, op, user, await this.signer());
      try {
        await this.commitRecord(known, record);
        return;
      } catch (err) {
        if (err instanceof ProtocolError && err.code === "team_conflict" && attempt < 2) continue;
        throw err;
      }
    }
  }

  /** Check `record` against our chain (rule 3 locally: nothing the hub
   * would refuse is sent), send it, keep it once the hub stored it. */
  private async commitRecord(known: KnownTeam, record: TeamRecord): Promise<void> {
    const signed = signRecord(record, this.keys);
    let next: KnownTeam;
    try {
      next = extendTeam(known, [{ rec: signed.rec, sig: signed.sig }], this.authorityKeys);
    } catch (err) {
      if (err instanceof TeamChainError && err.reason === "forbidden") throw new TeamForbidden(err.message);
      throw err;
    }
    const ok = await this.request<TeamOk>((rid) => ({ t: "team_change", rid, team: record.team, rec: signed.rec, sig: signed.sig }));
    if (ok.team !== record.team || ok.seq !== record.seq || !equalBytes(ok.head, signed.hash())) {
      // The hub says it stored something else: refetch and compare.
      await this.syncTeam(record.team, ok.head);
      return;
    }
    await this.keepTeam(next);
    this.flushOutbox(); // messages held for this team may go now
  }

  // --- notices, lifespan, recall (SPEC §13.5, §13.6) -------------------------------

  /** Whether read notices go to senders (persisted setting, default on). */
  get readReceipts(): boolean {
    return this.state.settings.readReceipts !== false;
  }

  async setReadReceipts(on: boolean): Promise<void> {
    await this.state.saveSettings({ ...this.state.settings, readReceipts: on });
    this.onChange();
  }

  /** The default lifespan (ms) of messages to this conversation, if any. */
  lifespanFor(conversationId: string): number | undefined {
    if (isTeamId(conversationId)) return this.teamBook().get(conversationId)?.state?.lifespan ?? undefined;
    return this.state.settings.lifespans?.[conversationId] ?? undefined;
  }

  /** Set (or clear with null) the default lifespan of a 1:1 conversation. */
  async setLifespan(peer: string, ms: number | null): Promise<void> {
    if (ms !== null && !(Number.isSafeInteger(ms) && ms >= MIN_LIFESPAN_MS && ms <= MAX_LIFESPAN_MS)) {
      throw new RangeError("a lifespan is between one hour and 30 days");
    }
    const lifespans = { ...(this.state.settings.lifespans ?? {}) };
    if (ms === null) delete lifespans[peer];
    else lifespans[peer] = ms;
    await this.state.saveSettings({ ...this.state.settings, lifespans });
    this.onChange();
  }

  /** Mark the conversation read and send the read notices it calls for:
   * to each sender of the messages newly read (with `team` for a team), or,
   * with read receipts off (or to a service that refuses replies), to our
   * own other devices only. */
  async markRead(conversationId: string): Promise<void> {
    const fresh = this.state
      .thread(conversationId)
      .filter((m) => !m.outgoing && !m.readNoticed && !m.recalled && !m.expired);
    const upTo = Math.max(0, ...this.state.thread(conversationId).map((m) => m.at));
    this.state.markRead(conversationId, upTo);
    if (fresh.length === 0) return;
    const bySender = new Map<string, string[]>();
    for (const m of fresh) {
      await this.state.saveMessage({ ...m, readNoticed: true });
      // A service that refuses replies refuses read notices too (SPEC §17.2):
      // ours then go to our own devices only, as with read receipts off.
      const to = this.readReceipts && !this.state.peers.get(m.fromUser)?.repliesRefused ? m.fromUser : this.me;
      bySender.set(to, [...(bySender.get(to) ?? []), m.id]);
    }
    const team = isTeamId(conversationId) ? conversationId : undefined;
    for (const [to, ids] of bySender) {
      for (let i = 0; i < ids.length; i += MAX_REFS) await this.queueNotice(to, "read", ids.slice(i, i + MAX_REFS), team);
    }
    this.onChange();
    this.flushOutbox();
  }

  private async queueNotice(to: string, kind: "read" | "recall", refs: string[], team?: string): Promise<void> {
    const now = Date.now();
    const m: MessageRecord = {
      id: toHex(newMessageId(now)),
      peer: to,
      outgoing: true,
      fromUser: this.me,
      fromDevice: this.device,
      body: "",
      kind,
      sentAt: now,
      at: now,
      status: "pending",
      targets: [],
      receipts: {},
      refs,
    };
    if (team !== undefined) m.team = team;
    await this.state.saveMessage(m);
  }

  /** Recall one of our messages (hex id): the hub drops undelivered rows,
   * then a recall notice goes to the conversation; our copy shows "message retiré". */
  async recall(messageId: string): Promise<void> {
    const m = this.state.message(this.me, messageId);
    if (!m || !m.outgoing || m.kind !== "text") throw new Error("only one's own messages are recalled");
    if (m.recalled) return;
    const sent = m.status !== "pending" || this.inflight.has(m.id);
    if (sent) {
      await this.request<RecallOk>((rid) => ({ t: "recall", rid, id: fromHex(messageId) }));
      await this.queueNotice(m.peer, "recall", [m.id]);
    }
    this.attachments.drop(m.id);
    await this.state.saveMessage({ ...m, body: "", atts: undefined, notice: undefined, files: undefined, recalled: true, ...(sent ? {} : { status: "failed" as const, failure: "recalled" }) });
    this.onChange();
    this.flushOutbox();
  }

  /** Delete the plaintext of messages whose lifespan ended (SPEC §13.6). */
  async sweepExpired(now = Date.now()): Promise<void> {
    let changed = false;
    for (const m of [...this.state.messages.values()]) {
      if (m.expiresAt != null && m.expiresAt <= now && !m.expired) {
        await this.state.saveMessage({ ...m, body: "", atts: undefined, notice: undefined, files: undefined, expired: true });
        changed = true;
      }
    }
    if (changed) this.onChange();
  }

  // --- sending --------------------------------------------------------------------

  /** Record `text` to `peer` (a user or a team id) in the outbox, then send
   * it (as soon as it can be). */
  async send(peer: string, text: string, options: SendOptions = {}): Promise<MessageRecord> {
    if (isRoleId(peer) && !this.state.conversations.has(peer)) this.state.conversation(peer);
    const body = text.trim();
    const files = options.files ?? [];
    if (!body && files.length === 0) throw new Error("empty message");
    if (files.length > 0) this.attachments.check(files);
    const ttl = options.lifespanMs ?? this.lifespanFor(peer);
    if (ttl !== undefined && !(Number.isSafeInteger(ttl) && ttl >= MIN_LIFESPAN_MS && ttl <= MAX_LIFESPAN_MS)) {
      throw new RangeError("a lifespan is between one hour and 30 days");
    }
    const now = Date.now();
    const m: MessageRecord = {
      id: toHex(newMessageId(now)),
      peer,
      outgoing: true,
      fromUser: this.me,
      fromDevice: this.device,
      body,
      kind: "text",
      sentAt: now,
      at: now,
      status: "pending",
      targets: [],
      receipts: {},
      readBy: [],
    };
    if (options.urgent) {
      m.urgent = true;
      m.escalation = { state: "waiting", step: 0, targets: {}, ts: now };
    }
    if (isRoleId(peer)) m.role = peer;
    if (ttl !== undefined) {
      m.ttl = ttl;
      m.expiresAt = now + ttl;
    }
    if (files.length > 0) {
      m.files = files.map((f) => ({ name: f.name, type: f.type, size: f.size, ...(f.thumb ? { thumb: f.thumb } : {}) }));
      this.attachments.keep(m.id, files);
    }
    await this.state.saveMessage(m); // durably recorded before anything is sent
    this.onChange();
    this.flushOutbox();
    return m;
  }

  /** Send every pending message, oldest first, one flush at a time; a call
   * during a flush makes that flush run once more. */
  flushOutbox(): void {
    if (this.conn.kind !== "online") return;
    if (this.flushing) {
      this.flushAgain = true;
      return;
    }
    this.flushing = true;
    this.flushAgain = false;
    void this.flushPass().finally(() => {
      this.flushing = false;
      this.onChange();
      if (this.flushAgain) this.flushOutbox();
    });
  }

  private async flushPass(): Promise<void> {
    const tried = new Set<string>();
    // Until a pass finds nothing new: messages typed meanwhile go too.
    for (let again = true; again && this.conn.kind === "online"; ) {
      again = false;
      for (const m of this.state.outbox()) {
        if (this.conn.kind !== "online") return;
        if (tried.has(m.id)) continue;
        tried.add(m.id);
        again = true;
        await this.sendOne(m);
      }
    }
  }

  private async sendOne(record: MessageRecord): Promise<void> {
    let m = record;
    if (this.inflight.has(m.id)) return;
    this.inflight.add(m.id);
    try {
      if (m.expiresAt != null && m.expiresAt <= Date.now()) {
        await this.state.saveMessage({ ...m, body: "", files: undefined, expired: true, status: "failed", failure: "expired" });
        return;
      }
      if (m.files !== undefined && m.atts === undefined) {
        // Uploaded first (resumed after a reconnection); then the message names them.
        const atts = await this.attachments.upload(m.id);
        m = { ...(this.state.message(this.me, m.id) ?? m), atts };
        delete m.files;
        await this.state.saveMessage(m);
      }
      for (let attempt = 0; attempt < 4; attempt++) {
        const refresh = attempt > 0;
        const frame = isTeamId(m.peer)
          ? await this.buildTeamSend(m, refresh)
          : isRoleId(m.peer)
            ? await this.buildRoleSend(m, refresh)
            : await this.buildDirectSend(m, refresh);
        if (frame === null) {
          // Nobody to send to (a notice to ourselves with no other device).
          await this.state.saveMessage({ ...m, status: "accepted", targets: [] });
          return;
        }
        const bytes = this.session!.send(frame);
        const answer = this.wait(m.id);
        this.ws!.send(bytes);
        try {
          await answer;
          this.held.delete(m.id);
          const now = this.state.message(this.me, m.id) ?? m; // a recall may have happened meanwhile
          await this.state.saveMessage({ ...now, status: "accepted", targets: [...frame.envs.keys()] });
          this.attachments.drop(m.id);
          return;
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
          if (err.code === "team_changed") continue; // buildTeamSend fetches the chain again
          if (err.code === "not_member" && isTeamId(m.peer)) {
            // The chain decides: fetch it; if it still makes us a member,
            // the hub's view of the team differs from the chain.
            const known = await this.syncTeam(m.peer);
            if (known.stored.problem === null && known.state?.members.includes(this.me)) {
              await this.markProblem(m.peer, "tampered", "the hub says we are not a member; the chain says we are");
              throw new TeamProblemError(m.peer, "tampered");
            }
            throw err;
          }
          if (err.code === "missing_devices" && isTeamId(m.peer)) {
            await this.checkMissing(m.peer, err.missing ?? []);
            continue;
          }
          if (err.code === "missing_devices" || err.retryable) {
            if (err.retryAfter) await sleep(err.retryAfter);
            continue; // refresh the device lists and try again
          }
          throw err;
        }
      }
      throw new ConnectionLost("the hub kept refusing; kept for the next connection");
    } catch (err) {
      const e = err as Error;
      if (e instanceof ConnectionLost || e instanceof KeyChangePending || e instanceof UnverifiedPeer || e instanceof TeamProblemError) {
        this.held.set(m.id, e); // stays pending: sent once the cause is gone
      } else {
        this.held.delete(m.id);
        const failure = e instanceof ProtocolError ? e.code : e instanceof MessageTooLarge ? "too_large" : e.message;
        this.attachments.drop(m.id);
        await this.state.saveMessage({ ...(this.state.message(this.me, m.id) ?? m), status: "failed", failure });
        // The hub refuses replies to this service (SPEC §17.2) although our
        // hint said otherwise: look it up again, so that the composer says so.
        if (failure === "replies_refused" && m.kind === "text") void this.lookup(m.peer, true).then(() => this.onChange(), () => undefined);
      }
    } finally {
      this.inflight.delete(m.id);
      this.onChange();
    }
  }

  private checkSendable(peer: Peer, own: Peer): void {
    for (const who of [peer, own]) {
      const pending = this.pendingChange(who.user);
      if (pending) throw new KeyChangePending(who.user, pending, who.user === this.me);
    }
    if (!own.devices.some((d) => d.device === this.device)) {
      throw new UnverifiedPeer(this.me, "device_not_attested", true);
    }
  }

  /** The plaintext of an outbox record, padded to 256 bytes (SPEC §13.5). */
  private plaintextOf(m: MessageRecord, to: string, head?: Uint8Array): Uint8Array {
    const p: Plaintext = { id: fromHex(m.id), fromUser: this.me, toUser: to, sentAt: m.sentAt, kind: m.kind, body: m.body };
    if (head !== undefined) p.head = head;
    if (m.expiresAt != null) p.expiresAt = m.expiresAt;
    if (m.refs != null) p.refs = m.refs.map(fromHex);
    if (m.team != null) p.team = m.team;
    if (m.urgent === true) p.urgent = true;
    if (m.atts !== undefined && m.atts.length > 0) p.atts = m.atts;
    return packPlaintext(p, PAD_TO);
  }

  /** Whether the hub speaks revision 3 (lifespans, notices' keys are fine anyway). */
  private get teamsHub(): boolean {
    return this.session?.hubCaps.has(CAP_TEAMS) ?? false;
  }

  private async buildDirectSend(m: MessageRecord, refresh: boolean): Promise<Send | null> {
    const peer = await this.lookup(m.peer, refresh);
    const own = await this.lookup(this.me, refresh);
    this.checkSendable(peer, own);
    if (peer.devices.length === 0) throw new ProtocolError("no_devices", "no verified device", { fatal: false });
    const targets = new Map<string, Uint8Array>();
    for (const d of [...own.devices, ...peer.devices]) if (d.device !== this.device) targets.set(d.device, d.box_pk);
    if (targets.size === 0) return null;
    if (targets.size > MAX_RECIPIENT_DEVICES) throw new MessageTooLarge("too many devices");
    const plaintext = this.plaintextOf(m, peer.user);
    const envs = new Map<string, Uint8Array>();
    let frame: Send;
    const blobs = this.blobsOf(m);
    if (m.urgent || blobs) {
      // An urgent message, or one with attachments, is always a sealed body (SPEC §14.5, §16).
      if (m.urgent && !this.oncallHub) throw new ConnectionLost("this hub does not know urgent messages");
      const [key, body] = sealBody(plaintext, fromHex(m.id), this.keys);
      for (const [device, boxPk] of targets) envs.set(device, wrapKey(key, this.keys, boxPk));
      frame = { t: "send", id: fromHex(m.id), from: this.device, to: peer.user, envs, body };
      if (m.urgent) frame.urgent = {};
      if (blobs) frame.blobs = blobs;
    } else {
      for (const [device, boxPk] of targets) envs.set(device, seal(plaintext, this.keys, boxPk));
      frame = { t: "send", id: fromHex(m.id), from: this.device, to: peer.user, envs };
    }
    if (m.ttl != null && this.teamsHub) frame.ttl = m.ttl;
    if (encode(frame).length > MAX_FRAME_BYTES) throw new MessageTooLarge("message too large");
    return frame;
  }

  /**
   * A team message (SPEC §13.3, §13.4): the chain fetched and verified, the
   * targets computed from it (never from the hub), the plaintext sealed once
   * and its key wrapped for each device of each member and our other devices.
   */
  private async buildTeamSend(m: MessageRecord, refresh: boolean): Promise<Send | null> {
    if (!this.teamsHub) throw new ConnectionLost("this hub does not know teams");
    const team = m.peer;
    const known = refresh || !this.teamBook().get(team)?.state ? await this.syncTeam(team) : this.teamBook().get(team)!;
    if (known.stored.problem !== null) throw new TeamProblemError(team, known.stored.problem);
    const state = known.state!;
    if (!state.members.includes(this.me)) throw new NotMember("not a member of this team by its chain");
    const own = await this.lookup(this.me, refresh);
    this.checkSendable(own, own);
    const devices = new Map<string, readonly Device[]>();
    this.unverifiedMembers.delete(team);
    for (const user of state.members) {
      const peer = user === this.me ? own : await this.memberLookup(team, user, refresh);
      if (peer === null) continue; // not verified: nothing is encrypted to them (nor does the hub ask)
      const pending = this.pendingChange(user);
      if (pending) throw new KeyChangePending(user, pending, user === this.me);
      devices.set(user, peer.devices);
    }
    const targets = teamTargets(state, this.device, (u) => devices.get(u) ?? []);
    if (targets.size === 0) return null;
    if (targets.size > MAX_WRAPS) throw new MessageTooLarge("too many devices");
    const head = state.head;
    const [key, body] = sealBody(this.plaintextOf(m, team, head), fromHex(m.id), this.keys);
    const envs = new Map<string, Uint8Array>();
    for (const [device, boxPk] of targets) envs.set(device, wrapKey(key, this.keys, boxPk));
    const frame: Send = { t: "send", id: fromHex(m.id), from: this.device, to: team, envs, body, head };
    if (m.ttl != null) frame.ttl = m.ttl;
    if (m.urgent) {
      if (!this.oncallHub) throw new ConnectionLost("this hub does not know urgent messages");
      frame.urgent = {};
    }
    const blobs = this.blobsOf(m);
    if (blobs) frame.blobs = blobs;
    if (encode(frame).length > MAX_FRAME_BYTES) throw new MessageTooLarge("message too large");
    await this.state.saveMessage({ ...(this.state.message(this.me, m.id) ?? m), head: toHex(head) });
    return frame;
  }

  /**
   * A message to an on-call role (SPEC §14.4, §14.5): the role's holders
   * now (`role_get`), each verified like any recipient; the plaintext
   * sealed once, its key wrapped for every attested device of the holders
   * and our other devices, and, for an urgent message, of each escalation
   * step's backups (the hub holds their rows until their step).
   */
  private async buildRoleSend(m: MessageRecord, refresh: boolean): Promise<Send | null> {
    if (!this.oncallHub) throw new ConnectionLost("this hub does not know roles");
    const role = m.peer;
    const info = await this.oncall.get(role);
    if (info.holders.length === 0) throw new RoleVacant("nobody holds this role now");
    const own = await this.lookup(this.me, refresh);
    this.checkSendable(own, own);
    const devices = new Map<string, Uint8Array>();
    for (const users of this.oncall.targets(info, m.urgent === true)) {
      for (const user of users) {
        const peer = user === this.me ? own : await this.memberLookup(role, user, refresh);
        if (peer === null) continue; // not verified: nothing is encrypted to them
        const pending = this.pendingChange(user);
        if (pending) throw new KeyChangePending(user, pending, user === this.me);
        for (const d of peer.devices) if (d.device !== this.device && !devices.has(d.device)) devices.set(d.device, d.box_pk);
      }
    }
    if (devices.size === 0) return null;
    if (devices.size > MAX_WRAPS) throw new MessageTooLarge("too many devices");
    const [key, body] = sealBody(this.plaintextOf(m, role), fromHex(m.id), this.keys);
    const envs = new Map<string, Uint8Array>();
    for (const [device, boxPk] of devices) envs.set(device, wrapKey(key, this.keys, boxPk));
    const frame: Send = { t: "send", id: fromHex(m.id), from: this.device, to: role, envs, body };
    if (m.ttl != null) frame.ttl = m.ttl;
    if (m.urgent) frame.urgent = {};
    const blobs = this.blobsOf(m);
    if (blobs) frame.blobs = blobs;
    if (encode(frame).length > MAX_FRAME_BYTES) throw new MessageTooLarge("message too large");
    return frame;
  }

  /** The blob ids a send names (SPEC §16), if the message has attachments. */
  private blobsOf(m: MessageRecord): string[] | undefined {
    if (!m.atts?.length) return undefined;
    if (!this.session?.hubCaps.has(CAP_BLOBS)) throw new ConnectionLost("this hub does not know attachments");
    return m.atts.map((a) => a.blob);
  }

  /** A member as a lookup verifies them, or null (remembered per team)
   * when they are not a verified clinician now. */
  private async memberLookup(team: string, user: string, refresh: boolean): Promise<Peer | null> {
    try {
      return await this.lookup(user, refresh);
    } catch (err) {
      if (err instanceof UnverifiedPeer || (err instanceof ProtocolError && err.code === "unknown_user")) {
        this.unverifiedMembers.set(team, user);
        return null;
      }
      throw err;
    }
  }

  /**
   * The hub wants devices we did not encrypt to. With fresh lookups of every
   * member (the next attempt), devices of members are targeted; a device
   * that belongs to no member by our chain means the hub's view of the team
   * differs from the chain: the team is "tampered", nothing is sent (SPEC §13.4).
   */
  private async checkMissing(team: string, missing: readonly string[]): Promise<void> {
    const state = this.teamBook().get(team)?.state;
    if (!state) return;
    const ids = new Set<string>();
    for (const user of state.members) {
      const peer = await this.memberLookup(team, user, true);
      for (const d of peer?.listed ?? []) ids.add(d.device);
    }
    const others = strangers(missing, ids);
    const unverified = this.unverifiedMembers.get(team);
    if (others.length > 0 && unverified !== undefined) {
      // Devices of a member we could not verify, perhaps: not proof of tampering.
      throw new UnverifiedPeer(unverified, "missing", false);
    }
    if (others.length > 0) {
      await this.markProblem(team, "tampered", `the hub asked for devices of non-members: ${others.join(", ")}`);
      throw new TeamProblemError(team, "tampered");
    }
  }

  // --- receiving ------------------------------------------------------------------

  private pushed(frame: HubFrame): void {
    if (frame.t === "presence") {
      const p = frame as Presence;
      this.presence.set(p.user, { status: p.status, online: p.online });
      this.onChange();
      return;
    }
    if (frame.t === "urgent_reminder") {
      this.oncall.reminder(frame);
      return;
    }
    if (frame.t === "role_changed") {
      void this.oncall.roleChanged(frame).catch((err) => console.warn("MiSS: role", err));
      return;
    }
    if (frame.t === "team_changed") {
      const c = frame as TeamChanged;
      void this.syncTeam(c.team, c.head)
        .then(() => this.flushOutbox())
        .catch((err) => console.warn("MiSS: team sync", err));
      return;
    }
    // One at a time, in order: opening may wait for a lookup.
    const session = this.session;
    this.inbound = this.inbound
      .then(() => this.process(frame as Deliver | Delivered | Refused | UrgentStatus))
      .catch((err) => {
        // Not acked: the hub delivers it again on the next connection.
        if (this.session === session && !(err instanceof ConnectionLost)) console.warn("MiSS: frame held", err);
      });
  }

  private async process(frame: Deliver | Delivered | Refused | UrgentStatus): Promise<void> {
    if (frame.t === "urgent_status") {
      await this.oncall.status(frame); // kept before it is acked
      this.ack(frame.seq);
      return;
    }
    if (frame.t === "delivered" || frame.t === "refused") {
      const m = this.state.message(this.me, toHex(frame.id));
      if (m) {
        const receipt = frame.t === "refused" ? { ts: frame.ts, reason: frame.reason } : { ts: frame.ts };
        await this.state.saveMessage({ ...m, receipts: { ...m.receipts, [frame.device]: receipt } });
        this.onChange();
      }
      this.ack(frame.seq);
      return;
    }
    const id = toHex(frame.id);
    if (this.state.message(frame.from_user, id)) {
      this.ack(frame.seq);
      return;
    }
    let sender: Device | undefined;
    let peer: Peer | undefined;
    try {
      peer = await this.lookup(frame.from_user);
      sender = peer.devices.find((d) => d.device === frame.from_device);
      if (!sender) {
        peer = await this.lookup(frame.from_user, true);
        sender = peer.devices.find((d) => d.device === frame.from_device);
      }
    } catch (err) {
      if (!(err instanceof UnverifiedPeer || (err instanceof ProtocolError && err.code === "unknown_user"))) throw err;
    }
    if (!sender) {
      this.refuse(frame.seq, "sender_unverified");
      return;
    }
    const ownCopy = frame.from_user === this.me;
    const team = frame.team;
    const role = team === undefined ? frame.role : undefined;
    let inner: Plaintext;
    try {
      if (frame.body !== undefined) {
        const key = unwrapKey(frame.env, this.keys, sender.box_pk);
        inner = unpackPlaintext(openBody(frame.body, key, frame.id, sender.sign_pk));
        // A sealed body is a team's, a role's, an urgent message's or one with attachments (SPEC §13.3, §14.5, §16).
        if (team === undefined && role === undefined && inner.urgent !== true && !inner.atts?.length) {
          throw new EnvelopeError("a sealed body without its team");
        }
      } else {
        if (team !== undefined || role !== undefined) throw new EnvelopeError("a team or role message without its body");
        inner = unpackPlaintext(openEnvelope(frame.env, this.keys, sender.box_pk));
      }
    } catch {
      this.refuse(frame.seq, "undecryptable");
      return;
    }
    const to = team ?? role ?? this.me;
    const direct = team === undefined && role === undefined;
    if (toHex(inner.id) !== id || inner.fromUser !== frame.from_user || (inner.toUser !== to && !(ownCopy && direct))) {
      this.refuse(frame.seq, "undecryptable");
      return;
    }
    if (team !== undefined && !(await this.teamSenderOk(team, frame.from_user, inner.head))) {
      this.refuse(frame.seq, "undecryptable");
      return;
    }
    if (inner.kind === "read" || inner.kind === "recall") {
      await this.notice(frame.from_user, inner);
      this.ack(frame.seq);
      return;
    }
    if (inner.kind !== "text") {
      this.ack(frame.seq); // a kind this version does not know: acked, never shown
      return;
    }
    if (this.state.recalls.has(`${frame.from_user}/${id}`)) {
      this.ack(frame.seq); // recalled before it arrived
      return;
    }
    const expired = inner.expiresAt !== undefined && inner.expiresAt <= Date.now();
    const m: MessageRecord = {
      id,
      // A role message shows in the conversation with its sender (the
      // answer goes to them), our own copy in the role's.
      peer: team ?? (ownCopy ? inner.toUser : frame.from_user),
      outgoing: ownCopy,
      fromUser: frame.from_user,
      fromDevice: frame.from_device,
      body: expired ? "" : inner.body,
      kind: inner.kind,
      sentAt: inner.sentAt,
      at: ownCopy ? inner.sentAt : frame.ts,
      status: ownCopy ? "accepted" : "received",
      targets: [],
      receipts: {},
    };
    if (ownCopy) m.readBy = [];
    if (inner.expiresAt !== undefined) m.expiresAt = inner.expiresAt;
    if (expired) m.expired = true;
    if (inner.head !== undefined) m.head = toHex(inner.head);
    if (inner.urgent === true) m.urgent = true;
    if (inner.atts !== undefined && !expired) m.atts = [...inner.atts];
    if (inner.notice !== undefined && !expired) m.notice = inner.notice;
    if (role !== undefined) m.role = role;
    if (frame.step !== undefined) m.step = frame.step;
    if (ownCopy && inner.urgent === true) m.escalation = { state: "waiting", step: 0, targets: {}, ts: frame.ts };
    // The role's name for the alert and the thread (a role is the hub's word, not an identity).
    if (role !== undefined && !this.oncall.role(role)) await this.oncall.get(role).catch(() => undefined);
    await this.state.saveMessage(m); // kept before it is acked
    if (!this.state.conversations.has(m.peer)) {
      this.state.conversation(m.peer);
      if (!isTeamId(m.peer) && !isRoleId(m.peer)) void this.watchAll().catch(() => undefined);
    }
    this.ack(frame.seq);
    this.onChange();
    if (!ownCopy && !expired) {
      this.onMessage(m, peer);
      this.oncall.received(m);
    }
  }

  /**
   * A team message's sender must be a member by our verified chain, at the
   * head it names (fetched if unknown). A head still unknown after a fetch
   * makes the team "diverged"; the message is then kept only if its sender
   * is a member by our chain now.
   */
  private async teamSenderOk(team: string, user: string, head: Uint8Array | undefined): Promise<boolean> {
    let known = this.teamBook().get(team);
    const headHex = head ? toHex(head) : undefined;
    if (!known?.state || (headHex !== undefined && !known.heads.includes(headHex))) {
      known = await this.syncTeam(team, head);
    }
    if (!known.state) return false;
    const authority = this.authorityKeys;
    const members = headHex !== undefined ? membersAt(known, headHex, authority) : undefined;
    return (members ?? known.state.members).includes(user);
  }

  /** A read or recall notice (SPEC §13.5). */
  private async notice(from: string, inner: Plaintext): Promise<void> {
    const refs = (inner.refs ?? []).map(toHex);
    if (inner.kind === "read") {
      for (const ref of refs) {
        if (from === this.me) {
          // Our other device read them: stop showing them unread here.
          for (const m of this.state.messages.values()) {
            if (m.id === ref && !m.outgoing && !m.readNoticed) await this.state.saveMessage({ ...m, readNoticed: true });
          }
        } else {
          const m = this.state.message(this.me, ref);
          if (m && m.outgoing && !(m.readBy ?? []).includes(from)) {
            await this.state.saveMessage({ ...m, readBy: [...(m.readBy ?? []), from] });
          }
        }
      }
    } else {
      // Only the original sender's notice counts: messages are keyed by sender.
      for (const ref of refs) {
        const m = this.state.message(from, ref);
        if (m) {
          if (!m.recalled) await this.state.saveMessage({ ...m, body: "", atts: undefined, notice: undefined, recalled: true });
        } else {
          await this.state.addRecall(from, ref);
        }
      }
    }
    this.onChange();
  }

  private ack(seq: number): void {
    this.acks.push(seq);
    this.scheduleAcks();
  }

  private refuse(seq: number, reason: string): void {
    if (this.session?.hubCaps.has(CAP_REFUSALS)) this.refusals.push({ seq, reason });
    else this.acks.push(seq); // a hub without refusals: ack, never show
    this.scheduleAcks();
  }

  private scheduleAcks(): void {
    if (this.acks.length >= MAX_ACK_SEQS || this.refusals.length >= MAX_ACK_REFUSALS) this.flushAcks();
    else if (this.ackTimer === null) this.ackTimer = setTimeout(() => this.flushAcks(), ACK_DELAY_MS);
  }

  private flushAcks(): void {
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    if (this.session === null || this.ws === null || (this.acks.length === 0 && this.refusals.length === 0)) return;
    const seqs = this.acks.splice(0, MAX_ACK_SEQS);
    const refused = this.refusals.splice(0, MAX_ACK_REFUSALS);
    const frame = refused.length ? { t: "ack" as const, seqs, refused } : { t: "ack" as const, seqs };
    this.ws.send(this.session.send(frame));
    if (this.acks.length || this.refusals.length) this.scheduleAcks();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
