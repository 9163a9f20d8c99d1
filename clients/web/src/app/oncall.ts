/**
 * On-call roles and urgent messages on this device (SPEC §14), beside
 * MissClient (client.ts), which owns the connection and hands this module
 * what it needs (`OncallHost`).
 *
 * Contract:
 * - Roles: `search(query)` / `mine()` (`role_search`), `get(id)`
 *   (`role_get`), `take(id, join?)`, `leave(id)`; every RoleInfo the hub
 *   answers is kept in the vault (`state.roles`) for names and holders.
 *   Holdership is the hub's word (roles have no signed chain); what this
 *   device checks is who a message is encrypted to: only the attested
 *   devices of verified clinicians (client.ts's lookups, SPEC §11.2).
 * - `targets(info, urgent, sender)`: the users an urgent (or plain) role
 *   message is sealed for, level by level as the hub computes them
 *   (protocol/oncall.ts `escalationLevels`).
 * - Receiving: `received(m)` raises an alert for an urgent message from
 *   someone else that nobody acknowledged; `reminder(frame)` raises it
 *   again (`urgent_reminder`, n = 1, 2, …); `status(frame)` records an
 *   `urgent_status` (the sender's escalation state, or that someone
 *   acknowledged: the alert stops); `acknowledge(sender, id)` sends the
 *   acknowledgement and stops the alert. `alerts` lists the alerts
 *   running, each with how many times it rang (`count`).
 * - `onAlert(m, alert)` fires at each ring (the interface notifies and
 *   beeps); `host.changed()` after any change it may show.
 */
import { fromHex } from "../protocol/crypto";
import type { AcknowledgeOk, HubFrame, RoleChanged, RoleOk, RoleSearchOk, UrgentReminder, UrgentStatus } from "../protocol/frames";
import { escalationLevels, isRoleId, type RoleInfo } from "../protocol/oncall";
import { toHex } from "../protocol/crypto";
import { ProtocolError } from "../protocol/errors";
import { fieldText } from "../protocol/text";
import type { Escalation, LocalState, MessageRecord } from "./store";

/** True for a role id ("r_" + 16 lowercase hex digits), i.e. a role conversation. */
export { isRoleId };

/** What the oncall module needs of the client. */
export interface OncallHost {
  readonly me: string;
  readonly device: string;
  readonly state: LocalState;
  /** Send a request for a fresh rid and wait for its answer (errors thrown). */
  request<T extends HubFrame>(build: (rid: number) => unknown): Promise<T>;
  /** Something the interface shows changed. */
  changed(): void;
}

/** An urgent message ringing on this device until it is acknowledged. */
export interface Alert {
  /** `sender/id` (hex), as messages are keyed. */
  key: string;
  sender: string;
  id: string;
  /** How many times it rang here: at arrival, then once per reminder. */
  count: number;
  /** The last reminder number the hub sent (0: none yet). */
  reminder: number;
}

const key = (sender: string, id: string): string => `${sender}/${id}`;

export class Oncall {
  /** Alerts running, by `sender/id`. */
  readonly alerts = new Map<string, Alert>();
  /** Called at each ring of an alert (arrival and reminders). */
  onAlert: (m: MessageRecord, alert: Alert) => void = () => undefined;
  /** Called when a role we held was handed over to someone else. */
  onReleased: (info: RoleInfo) => void = () => undefined;

  constructor(private readonly host: OncallHost) {}

  /** Alerts for urgent messages kept unacknowledged in the vault (after an unlock). */
  restore(): void {
    for (const m of this.host.state.messages.values()) {
      if (rings(m)) this.ring(m, 0);
    }
  }

  // --- roles ---------------------------------------------------------------------

  /** A role as last described by the hub, or undefined. */
  role(id: string): RoleInfo | undefined {
    return this.host.state.roles.get(id);
  }

  /** The roles we hold, as last described by the hub. */
  held(): RoleInfo[] {
    return [...this.host.state.roles.values()].filter((r) => r.holders.includes(this.host.me));
  }

  /** Roles whose name or organisation contains `query` (at most 20). */
  async search(query: string): Promise<RoleInfo[]> {
    const reply = await this.host.request<RoleSearchOk>((rid) => ({ t: "role_search", rid, query: fieldText(query).slice(0, 64) }));
    return this.keep(reply.roles);
  }

  /** The roles we hold now (the hub's answer; the schedule's included). */
  async mine(): Promise<RoleInfo[]> {
    const reply = await this.host.request<RoleSearchOk>((rid) => ({ t: "role_search", rid, query: "", mine: true }));
    const roles = await this.keep(reply.roles);
    // Roles we believed we held and the hub no longer lists: not ours any more.
    for (const r of this.held()) {
      if (!roles.some((x) => x.role === r.role)) await this.host.state.saveRole({ ...r, holders: r.holders.filter((u) => u !== this.host.me) });
    }
    return roles;
  }

  /** One role now (holders, effective policy). */
  async get(id: string): Promise<RoleInfo> {
    const reply = await this.host.request<RoleOk>((rid) => ({ t: "role_get", rid, role: id }));
    return (await this.keep([reply.info]))[0]!;
  }

  /** Take a role: alone (a handover), or with `join` beside its holders. */
  async take(id: string, join = false): Promise<RoleInfo> {
    const reply = await this.host.request<RoleOk>((rid) => (join ? { t: "role_take", rid, role: id, join } : { t: "role_take", rid, role: id }));
    return (await this.keep([reply.info]))[0]!;
  }

  /** Stop holding a role (a scheduled shift stays). */
  async leave(id: string): Promise<RoleInfo> {
    const reply = await this.host.request<RoleOk>((rid) => ({ t: "role_leave", rid, role: id }));
    return (await this.keep([reply.info]))[0]!;
  }

  private async keep(roles: readonly RoleInfo[]): Promise<RoleInfo[]> {
    for (const info of roles) await this.host.state.saveRole(info);
    if (roles.length) this.host.changed();
    return [...roles];
  }

  /** `role_changed`: holders changed; a handover away from us is said. */
  async roleChanged(frame: RoleChanged): Promise<void> {
    const before = this.role(frame.role);
    const wasMine = before?.holders.includes(this.host.me) ?? false;
    let info: RoleInfo | undefined;
    if (before) {
      info = { ...before, holders: [...frame.holders] };
      await this.host.state.saveRole(info);
    } else {
      info = await this.get(frame.role).catch(() => undefined);
    }
    if (info && wasMine && !frame.holders.includes(this.host.me)) this.onReleased(info);
    this.host.changed();
  }

  /**
   * The users a message to `info` is sealed for, by escalation level: [0]
   * the holders now and ourselves (our other devices), then for an urgent
   * message each step's new users (SPEC §14.5).
   */
  targets(info: RoleInfo, urgent: boolean): string[][] {
    return escalationLevels(info.holders, urgent ? info.policy : null, this.host.me);
  }

  // --- urgent messages -------------------------------------------------------------

  /** A message just stored: an urgent one from someone else rings until acknowledged. */
  received(m: MessageRecord): void {
    if (rings(m)) this.ring(m, 0);
  }

  private ring(m: MessageRecord, reminder: number): void {
    const k = key(m.fromUser, m.id);
    const alert = this.alerts.get(k) ?? { key: k, sender: m.fromUser, id: m.id, count: 0, reminder: 0 };
    if (reminder > 0 && reminder <= alert.reminder) return; // the same reminder twice (another node)
    alert.count += 1;
    alert.reminder = Math.max(alert.reminder, reminder);
    this.alerts.set(k, alert);
    this.onAlert(m, alert);
    this.host.changed();
  }

  /** `urgent_reminder`: ring again, unless it was acknowledged meanwhile. */
  reminder(frame: UrgentReminder): void {
    const m = this.host.state.message(frame.sender, toHex(frame.id));
    if (!m || !rings(m)) {
      this.alerts.delete(key(frame.sender, toHex(frame.id)));
      return;
    }
    this.ring(m, frame.n);
  }

  /** Acknowledge an urgent message we received: its escalation stops everywhere. */
  async acknowledge(sender: string, id: string): Promise<AcknowledgeOk> {
    let reply: AcknowledgeOk;
    try {
      reply = await this.host.request<AcknowledgeOk>((rid) => ({ t: "acknowledge", rid, id: fromHex(id), sender }));
    } catch (err) {
      if (err instanceof ProtocolError && err.code === "not_recipient") {
        // The hub knows no escalation of it for us (over long ago): stop ringing.
        const m = this.host.state.message(sender, id);
        if (m) await this.host.state.saveMessage({ ...m, silenced: true });
        this.alerts.delete(key(sender, id));
        this.host.changed();
      }
      throw err;
    }
    await this.acknowledged(sender, id, { user: reply.user, device: reply.device, at: reply.at });
    return reply;
  }

  private async acknowledged(sender: string, id: string, ack: { user: string; device: string; at: number }): Promise<void> {
    const m = this.host.state.message(sender, id);
    if (m && !m.ack) await this.host.state.saveMessage({ ...m, ack });
    this.alerts.delete(key(sender, id));
    this.host.changed();
  }

  /**
   * An `urgent_status` row (queued: the caller acks it once this resolves).
   * About our own message: its escalation state. About one we received:
   * someone acknowledged it, the alert stops.
   */
  async status(frame: UrgentStatus): Promise<void> {
    const id = toHex(frame.id);
    const ack = frame.state === "acknowledged" && frame.user !== undefined
      ? { user: frame.user, device: frame.device ?? "", at: frame.ts }
      : undefined;
    if (frame.sender !== this.host.me) {
      if (ack) await this.acknowledged(frame.sender, id, ack);
      return;
    }
    const m = this.host.state.message(this.host.me, id);
    if (!m) return;
    await this.host.state.saveMessage({ ...m, escalation: nextEscalation(m.escalation, frame), ...(ack && !m.ack ? { ack } : {}) });
    this.host.changed();
  }
}

/** Whether an incoming message rings: urgent text from someone else that
 * nobody acknowledged, neither recalled, expired nor silenced. */
function rings(m: MessageRecord): boolean {
  return m.urgent === true && !m.outgoing && m.kind === "text" && !m.ack && !m.recalled && !m.expired && !m.silenced;
}

/** The escalation after an `urgent_status`; an acknowledgement is final,
 * and a late `escalated` never undoes a later state. */
export function nextEscalation(before: Escalation | undefined, frame: UrgentStatus): Escalation {
  const current: Escalation = before ?? { state: "waiting", step: 0, targets: {}, ts: 0 };
  const targets = { ...current.targets };
  if (frame.state === "escalated" && frame.target !== undefined) targets[frame.step] = frame.target;
  if (current.state === "acknowledged") return { ...current, targets };
  if (frame.state === "escalated" && current.state === "unacknowledged") return { ...current, targets };
  const step = Math.max(current.step, frame.step);
  return { state: frame.state, step, targets, ts: frame.ts };
}
