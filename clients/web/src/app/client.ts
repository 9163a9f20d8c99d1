/**
 * One device's life on the hub: the browser counterpart of the Python SDK's
 * Client (miss_client/client.py), over protocol/session.ts's ClientSession.
 *
 * Contract:
 * - It keeps one WebSocket open, reconnecting with exponential backoff and
 *   full jitter (1 s doubling to 30 s; at once when the browser says it is
 *   back online); `conn` says where it stands, for the UI. A fatal error
 *   that a reconnection cannot mend (revoked, suspended, unknown device,
 *   session taken over elsewhere) stops it: `conn.kind === "stopped"`.
 * - Sending: `send()` records the message in the sealed outbox first, then
 *   sends it; whatever is pending is resent with its original id after each
 *   welcome (the hub deduplicates ids: exactly once as users see it).
 *   Nothing is encrypted to a clinician whose attestation does not verify,
 *   to keys the authority did not sign, nor while a key change of either
 *   side waits for the user's acceptance (SPEC §11.2).
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
 */
import { CAP_REFUSALS, MAX_ACK_REFUSALS, MAX_ACK_SEQS, MAX_FRAME_BYTES, MAX_RECIPIENT_DEVICES, MIN_SEARCH_CHARS, SUBPROTOCOL, encode } from "../protocol/frames";
import type { Deliver, Delivered, DevicesOk, HubFrame, LinkCodeOk, LookupOk, Presence, Refused, SearchOk, Watching } from "../protocol/frames";
import * as attestation from "../protocol/attestation";
import { openEnvelope, packPlaintext, safetyNumber, seal, unpackPlaintext, newMessageId, fromHex, toHex, type DeviceKeys } from "../protocol/crypto";
import { ProtocolError } from "../protocol/errors";
import { ClientSession } from "../protocol/session";
import { LocalState, type MessageRecord } from "./store";
import type { TeamProblem, TeamView } from "./teams";
import { KeyChangePending, UnverifiedPeer, acceptPending, checkLookup, identities, observePeer, type Device, type Peer, type PeerChange } from "./trust";
import type { Vault } from "./vault";

export type ConnState =
  | { kind: "connecting" }
  | { kind: "online" }
  | { kind: "offline"; retryAt: number }
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
const BACKOFF_FIRST_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;
const ACK_DELAY_MS = 100;
/** A lookup older than this is refreshed before encrypting to it. */
const LOOKUP_FRESH_MS = 5_000;
const SELF_RECHECK_MS = 10_000;

interface Waiter {
  resolve: (frame: HubFrame) => void;
  reject: (err: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export class MissClient {
  conn: ConnState = { kind: "connecting" };
  /** Our own verification: null until known; else true or why not. */
  selfCheck: true | UnverifiedPeer | null = null;
  /** Set when the hub announces another authority than ours (SPEC §5.1). */
  authorityMismatch = false;
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
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private selfTimer: ReturnType<typeof setTimeout> | null = null;
  private flushing = false;
  private flushAgain = false;
  private inflight = new Set<string>();
  private stopped = false;

  constructor(
    readonly vault: Vault,
    readonly keys: DeviceKeys,
    readonly state: LocalState,
  ) {
    addEventListener("online", () => this.reconnectNow());
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
    this.connect();
  }

  /** Close for good (locking the app). */
  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.selfTimer) clearTimeout(this.selfTimer);
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
      this.receive(new Uint8Array(ev.data));
    };
    ws.onclose = (ev: CloseEvent) => {
      if (this.ws !== ws) return;
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
        const authority = session.hubAuthority;
        this.authorityMismatch = authority != null && toHex(authority) !== toHex(this.vault.profile.authority);
        this.ws!.send(session.auth(this.device, this.keys, [CAP_REFUSALS]));
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

  private welcomed(): void {
    this.attempt = 0;
    this.lookups.clear(); // device lists may have changed while we were away
    this.setConn({ kind: "online" });
    void this.afterWelcome();
  }

  private async afterWelcome(): Promise<void> {
    await this.checkSelf();
    await this.watchAll().catch(() => undefined);
    this.flushOutbox();
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
    let delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    if (err instanceof ProtocolError && err.retryAfter !== undefined) delay = Math.max(delay, err.retryAfter);
    delay = delay / 2 + Math.random() * (delay / 2); // jitter: many tabs must not come back at once
    this.attempt = Math.min(this.attempt + 1, 10);
    this.setConn({ kind: "offline", retryAt: Date.now() + delay });
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
        if (err instanceof ProtocolError && err.retryable && tries < 3) {
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
      checked = checkLookup(reply, this.vault.profile.authority, Date.now(), own, rpps);
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

  async search(query: string): Promise<DirectoryEntry[]> {
    const q = query.trim();
    if (q.length < MIN_SEARCH_CHARS || q.length > 64) return [];
    const reply = await this.request<SearchOk>((rid) => ({ t: "search", rid, query: q }));
    const found = new Map<string, DirectoryEntry>();
    const now = Date.now();
    for (const blob of reply.atts) {
      try {
        const att = attestation.verify(blob, this.vault.profile.authority, now);
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
      this.flushOutbox();
    }
  }

  // --- presence -------------------------------------------------------------------

  /** Watch ourselves and every conversation's clinician (the list replaces the last). */
  async watchAll(): Promise<void> {
    const users = [this.me, ...this.state.conversationList().map((c) => c.peer)].slice(0, 512);
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
    throw new Error("not implemented");
  }

  /** One team's view, or undefined when this device never saw it. */
  team(id: string): TeamView | undefined {
    void id;
    throw new Error("not implemented");
  }

  /** Create a team with us as its first admin; resolves once the hub stored it. */
  async createTeam(name: string, org = "", lifespanMs?: number): Promise<TeamView> {
    void name, org, lifespanMs;
    throw new Error("not implemented");
  }

  /** Add a verified clinician (admins only). */
  async addMember(team: string, user: string): Promise<void> {
    void team, user;
    throw new Error("not implemented");
  }

  /** Remove a member (admins only; not oneself: see leaveTeam). */
  async removeMember(team: string, user: string): Promise<void> {
    void team, user;
    throw new Error("not implemented");
  }

  /** Leave a team (the last admin cannot while others remain). */
  async leaveTeam(team: string): Promise<void> {
    void team;
    throw new Error("not implemented");
  }

  /** Make a member an admin (admins only). */
  async promote(team: string, user: string): Promise<void> {
    void team, user;
    throw new Error("not implemented");
  }

  /** Make an admin a member again (admins only; another admin must remain). */
  async demote(team: string, user: string): Promise<void> {
    void team, user;
    throw new Error("not implemented");
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
    void conversationId;
    throw new Error("not implemented");
  }

  /** Set (or clear with null) the default lifespan of a 1:1 conversation. */
  async setLifespan(peer: string, ms: number | null): Promise<void> {
    void peer, ms;
    throw new Error("not implemented");
  }

  /** Mark the conversation read and send the read notices it calls for. */
  async markRead(conversationId: string): Promise<void> {
    void conversationId;
    throw new Error("not implemented");
  }

  /** Recall one of our messages (hex id): the hub drops undelivered rows,
   * then a recall notice goes to the conversation; our copy shows "message retiré". */
  async recall(messageId: string): Promise<void> {
    void messageId;
    throw new Error("not implemented");
  }

  // --- sending --------------------------------------------------------------------

  /** Record `text` to `peer` (a user or a team id) in the outbox, then send
   * it (as soon as it can be). */
  async send(peer: string, text: string, options: SendOptions = {}): Promise<MessageRecord> {
    const body = text.trim();
    if (!body) throw new Error("empty message");
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
    };
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

  private async sendOne(m: MessageRecord): Promise<void> {
    if (this.inflight.has(m.id)) return;
    this.inflight.add(m.id);
    try {
      for (let attempt = 0; attempt < 4; attempt++) {
        const refresh = attempt > 0;
        const peer = await this.lookup(m.peer, refresh);
        const own = await this.lookup(this.me, refresh);
        this.checkSendable(peer, own);
        const frame = this.buildSend(m, peer, own);
        const bytes = this.session!.send(frame);
        const answer = this.wait(m.id);
        this.ws!.send(bytes);
        try {
          await answer;
          this.held.delete(m.id);
          await this.state.saveMessage({ ...m, status: "accepted", targets: [...frame.envs.keys()] });
          return;
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
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
      if (e instanceof ConnectionLost || e instanceof KeyChangePending || e instanceof UnverifiedPeer) {
        this.held.set(m.id, e); // stays pending: sent once the cause is gone
      } else {
        this.held.delete(m.id);
        const failure = e instanceof ProtocolError ? e.code : e instanceof MessageTooLarge ? "too_large" : e.message;
        await this.state.saveMessage({ ...m, status: "failed", failure });
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

  private buildSend(m: MessageRecord, peer: Peer, own: Peer) {
    if (peer.devices.length === 0) throw new ProtocolError("no_devices", "no verified device", { fatal: false });
    const targets = new Map<string, Uint8Array>();
    for (const d of [...own.devices, ...peer.devices]) if (d.device !== this.device) targets.set(d.device, d.box_pk);
    if (targets.size > MAX_RECIPIENT_DEVICES) throw new MessageTooLarge("too many devices");
    const plaintext = packPlaintext({
      id: fromHex(m.id),
      fromUser: this.me,
      toUser: peer.user,
      sentAt: m.sentAt,
      kind: m.kind,
      body: m.body,
    });
    const envs = new Map<string, Uint8Array>();
    for (const [device, boxPk] of targets) envs.set(device, seal(plaintext, this.keys, boxPk));
    const frame = { t: "send" as const, id: fromHex(m.id), from: this.device, to: peer.user, envs };
    if (encode(frame).length > MAX_FRAME_BYTES) throw new MessageTooLarge("message too large");
    return frame;
  }

  // --- receiving ------------------------------------------------------------------

  private pushed(frame: HubFrame): void {
    if (frame.t === "presence") {
      const p = frame as Presence;
      this.presence.set(p.user, { status: p.status, online: p.online });
      this.onChange();
      return;
    }
    // One at a time, in order: opening may wait for a lookup.
    const session = this.session;
    this.inbound = this.inbound
      .then(() => this.process(frame as Deliver | Delivered | Refused))
      .catch((err) => {
        // Not acked: the hub delivers it again on the next connection.
        if (this.session === session && !(err instanceof ConnectionLost)) console.warn("MiSS: frame held", err);
      });
  }

  private async process(frame: Deliver | Delivered | Refused): Promise<void> {
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
    let inner;
    try {
      inner = unpackPlaintext(openEnvelope(frame.env, this.keys, sender.box_pk));
    } catch {
      this.refuse(frame.seq, "undecryptable");
      return;
    }
    const ownCopy = frame.from_user === this.me;
    if (toHex(inner.id) !== id || inner.fromUser !== frame.from_user || (inner.toUser !== this.me && !ownCopy)) {
      this.refuse(frame.seq, "undecryptable");
      return;
    }
    const m: MessageRecord = {
      id,
      peer: ownCopy ? inner.toUser : frame.from_user,
      outgoing: ownCopy,
      fromUser: frame.from_user,
      fromDevice: frame.from_device,
      body: inner.body,
      kind: inner.kind,
      sentAt: inner.sentAt,
      at: ownCopy ? inner.sentAt : frame.ts,
      status: ownCopy ? "accepted" : "received",
      targets: [],
      receipts: {},
    };
    await this.state.saveMessage(m); // kept before it is acked
    if (!this.state.conversations.has(m.peer)) {
      this.state.conversation(m.peer);
      void this.watchAll().catch(() => undefined);
    }
    this.ack(frame.seq);
    this.onChange();
    if (!ownCopy) this.onMessage(m, peer);
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
