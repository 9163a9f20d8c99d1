/**
 * The local state of one unlocked device: clinicians (pins), messages (the
 * history and the outbox: outgoing messages not yet accepted), and
 * conversations (read marks), in memory and written through to the sealed
 * vault. Every mutation is persisted before the promise it returns
 * resolves, so a caller that awaits it may ack or send next (SPEC §6.4: a
 * device acks only what it durably kept).
 */
import type { Attachment } from "../protocol/attachments";
import type { Notice } from "../protocol/notices";
import type { RoleInfo } from "../protocol/oncall";
import type { StoredTeam } from "./teams";
import type { PeerRecord } from "./trust";
import type { Vault } from "./vault";

export type MessageStatus = "pending" | "accepted" | "failed" | "received";

export interface Receipt {
  ts: number;
  /** Set for a refusal (SPEC §6.5), absent for "delivered". */
  reason?: string;
}

export interface MessageRecord {
  /** Message id, lowercase hex. */
  id: string;
  /** The conversation: the other clinician's user id ("u_…"), or a team id ("t_…"). */
  peer: string;
  outgoing: boolean;
  fromUser: string;
  fromDevice: string;
  body: string;
  kind: string;
  /** Sender's clock (ms). */
  sentAt: number;
  /** Ordering time: sentAt for ours, the hub's acceptance time for theirs. */
  at: number;
  status: MessageStatus;
  failure?: string;
  /** Devices it was sealed for, at the last send. */
  targets: string[];
  receipts: Record<string, Receipt>;
  /** Users who sent a read notice for it (SPEC §13.5), outgoing messages only. */
  readBy?: string[];
  /** Set when its sender recalled it (SPEC §13.6): `body` is then "" (the
   * plaintext is deleted) and the interface says "message retiré". */
  recalled?: boolean;
  /** ms (sender's clock): the plaintext is deleted at this time (SPEC §13.6). */
  expiresAt?: number;
  /** Set once `expiresAt` passed: `body` is "" and the interface says "message expiré". */
  expired?: boolean;
  /** Lifespan asked for at send time (ms), sent as `ttl`; outgoing only. */
  ttl?: number;
  /** Team messages: the head of the chain it was (or will be) sent under, hex. */
  head?: string;
  /** Read notice sent (or not needed) for this incoming message. */
  readNoticed?: boolean;
  /** Notices (`kind` "read" or "recall"): the message ids concerned, hex. */
  refs?: string[];
  /** Notices about team messages: the team. */
  team?: string;
  /** Urgent (SPEC §14): as its plaintext says; alerts until acknowledged. */
  urgent?: boolean;
  /** The role it was sent to (a role message, SPEC §14.4). */
  role?: string;
  /** Incoming: the escalation step that released this copy (absent: a primary recipient). */
  step?: number;
  /** The first acknowledgement, as the hub reported it. */
  ack?: Acknowledgement;
  /** Incoming urgent: the hub refused our acknowledgement (`not_recipient`,
   * e.g. long after its escalation ended): it rings no more here. */
  silenced?: boolean;
  /** Outgoing urgent messages: where the escalation stands (urgent_status rows). */
  escalation?: Escalation;
  /** Attachments (SPEC §16) as the plaintext carries them: received, or ours once uploaded. */
  atts?: Attachment[];
  /** Ours, before their upload: what the interface shows meanwhile. */
  files?: PendingFile[];
  /** A notice (SPEC §17.3) as its plaintext carries it: shown as a card, `body`
   * being only its text fallback. Dropped with the text on recall or expiry. */
  notice?: Notice;
}

/** An attachment of ours not uploaded yet (its bytes are in the page's memory). */
export interface PendingFile {
  name: string;
  type: string;
  size: number;
  thumb?: Uint8Array;
}

/** Who acknowledged an urgent message first, and when (hub's clock, ms). */
export interface Acknowledgement {
  user: string;
  device: string;
  at: number;
}

/** The sender's view of an urgent message's escalation. */
export interface Escalation {
  /** "waiting": accepted, nothing reported yet. */
  state: "waiting" | "escalated" | "acknowledged" | "unacknowledged";
  /** The last step released (0: only the primary recipients). */
  step: number;
  /** The target (role or user id) of each released step, by step number. */
  targets: Record<number, string>;
  /** When the hub reported the last change (ms). */
  ts: number;
}

/** Kinds shown as messages; the others ("read", "recall") are notices. */
export function isShown(m: MessageRecord): boolean {
  return m.kind === "text";
}

export interface Conversation {
  peer: string;
  /** Incoming messages at or before this time are read. */
  lastRead: number;
  opened: number;
}

export interface Settings {
  status?: string;
  /** Send read notices to senders (SPEC §13.5); default true. When off, a
   * device notifies only its own user's other devices. */
  readReceipts?: boolean;
  /** Default lifespan (ms) of 1:1 conversations, by peer user id (SPEC §13.6). */
  lifespans?: Record<string, number>;
}

/** Records written before optional fields were left out held them as nil. */
function withoutNulls<T extends object>(record: T): T {
  const out = { ...record } as Record<string, unknown>;
  for (const k of Object.keys(out)) if (out[k] === null) delete out[k];
  return out as T;
}

const key = {
  peer: (user: string) => `peer:${user}`,
  message: (m: { fromUser: string; id: string }) => `msg:${m.fromUser}/${m.id}`,
  conversation: (user: string) => `conv:${user}`,
  team: (id: string) => `team:${id}`,
  role: (id: string) => `role:${id}`,
  settings: "settings",
  recalls: "recalls",
};

export class LocalState {
  readonly peers = new Map<string, PeerRecord>();
  /** By `fromUser/id`: one sender cannot collide with another's ids. */
  readonly messages = new Map<string, MessageRecord>();
  readonly conversations = new Map<string, Conversation>();
  /** Teams by id, as verified (see teams.ts). */
  readonly teams = new Map<string, StoredTeam>();
  /** `fromUser/id` of messages recalled before they arrived (SPEC §13.5). */
  readonly recalls = new Set<string>();
  /** On-call roles this device looked up, as the hub last described them (SPEC §14). */
  readonly roles = new Map<string, RoleInfo>();
  settings: Settings = {};

  constructor(
    private readonly vault: Vault,
    readonly me: string,
  ) {}

  async load(): Promise<void> {
    for (const [k, v] of await this.vault.loadAll()) {
      if (k.startsWith("peer:")) this.peers.set(k.slice(5), v as PeerRecord);
      else if (k.startsWith("msg:")) this.messages.set(k.slice(4), withoutNulls(v as MessageRecord));
      else if (k.startsWith("conv:")) this.conversations.set(k.slice(5), v as Conversation);
      else if (k.startsWith("team:")) this.teams.set(k.slice(5), v as StoredTeam);
      else if (k.startsWith("role:")) this.roles.set(k.slice(5), v as RoleInfo);
      else if (k === key.settings) this.settings = v as Settings;
      else if (k === key.recalls) for (const r of v as string[]) this.recalls.add(r);
    }
  }

  savePeer(record: PeerRecord): Promise<void> {
    this.peers.set(record.user, record);
    return this.vault.put(key.peer(record.user), record);
  }

  message(fromUser: string, id: string): MessageRecord | undefined {
    return this.messages.get(`${fromUser}/${id}`);
  }

  saveMessage(m: MessageRecord): Promise<void> {
    this.messages.set(`${m.fromUser}/${m.id}`, m);
    return this.vault.put(key.message(m), m);
  }

  conversation(peer: string): Conversation {
    let c = this.conversations.get(peer);
    if (c === undefined) {
      c = { peer, lastRead: 0, opened: Date.now() };
      this.conversations.set(peer, c);
      void this.vault.put(key.conversation(peer), c);
    }
    return c;
  }

  markRead(peer: string, upTo: number): void {
    const c = this.conversation(peer);
    if (upTo > c.lastRead) {
      c.lastRead = upTo;
      void this.vault.put(key.conversation(peer), c);
    }
  }

  saveTeam(team: StoredTeam): Promise<void> {
    this.teams.set(team.id, team);
    return this.vault.put(key.team(team.id), team);
  }

  saveRole(info: RoleInfo): Promise<void> {
    this.roles.set(info.role, info);
    return this.vault.put(key.role(info.role), info);
  }

  /** Remember a recall of a message not received (yet). */
  addRecall(fromUser: string, id: string): Promise<void> {
    this.recalls.add(`${fromUser}/${id}`);
    return this.vault.put(key.recalls, [...this.recalls].slice(-4096));
  }

  saveSettings(settings: Settings): Promise<void> {
    this.settings = settings;
    return this.vault.put(key.settings, settings);
  }

  /** Messages of one conversation (a user or a team id), oldest first;
   * notices are not messages. */
  thread(peer: string): MessageRecord[] {
    return [...this.messages.values()].filter((m) => m.peer === peer && isShown(m)).sort((a, b) => a.at - b.at);
  }

  /** The `reply` line of the newest notice `from` sent (SPEC §17.3: whom
   * to call instead of replying), or undefined. */
  lastReply(from: string): string | undefined {
    let best: MessageRecord | undefined;
    for (const m of this.messages.values()) {
      if (m.fromUser === from && !m.outgoing && m.notice?.reply !== undefined && (best === undefined || m.at > best.at)) best = m;
    }
    return best?.notice?.reply;
  }

  /** Outgoing messages recorded but never seen accepted, oldest first. */
  outbox(): MessageRecord[] {
    return [...this.messages.values()]
      .filter((m) => m.outgoing && m.status === "pending" && !m.recalled)
      .sort((a, b) => a.at - b.at);
  }

  unread(peer: string): number {
    const read = this.conversations.get(peer)?.lastRead ?? 0;
    let n = 0;
    for (const m of this.messages.values()) {
      if (m.peer === peer && !m.outgoing && m.at > read && isShown(m) && !m.recalled && !m.readNoticed) n++;
    }
    return n;
  }

  /** Conversations, the one with the newest message (or newest opened) first. */
  conversationList(): Array<{ peer: string; last: MessageRecord | undefined; at: number }> {
    const last = new Map<string, MessageRecord>();
    for (const m of this.messages.values()) {
      if (!isShown(m)) continue;
      const seen = last.get(m.peer);
      if (seen === undefined || m.at > seen.at) last.set(m.peer, m);
    }
    const peers = new Set([...this.conversations.keys(), ...last.keys()]);
    return [...peers]
      .filter((p) => p !== this.me)
      .map((peer) => {
        const m = last.get(peer);
        return { peer, last: m, at: m?.at ?? this.conversations.get(peer)?.opened ?? 0 };
      })
      .sort((a, b) => b.at - a.at);
  }
}
