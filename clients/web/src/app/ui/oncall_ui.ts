/**
 * Pieces of the interface for on-call roles and urgent messages (SPEC §14):
 * the red "URGENT" band of a message, its "Acquitter" button and who
 * acknowledged it, the sender's escalation line ("Escalade : étape 1 →
 * Cardiologie — senior 2", "Acquitté par Dr X à 03:12", "Aucun
 * acquittement"), the alert banners that ring until acknowledged (with a
 * notification and a beep at each ring), and the role rows of the
 * directory (holders, "Prendre la garde", "Quitter", "Écrire").
 *
 * Names come from the attested identities this device pinned (a user it
 * never looked up shows as their id); role names are the hub's words, as
 * `role_ok` gave them: a role is a routing fact, not an identity.
 */
import type { MissClient } from "../client";
import { formatTime, formatDateTime, language, t } from "../i18n";
import type { Alert } from "../oncall";
import type { MessageRecord } from "../store";
import { isRoleId, type Policy, type RoleInfo } from "../../protocol/oncall";
import { h } from "./dom";
import { formatDelay } from "./team_ui";

/** "300 ms", "1,5 s", "2 min", "1 h": an escalation delay (the protocol allows 100 ms). */
export function formatInterval(ms: number): string {
  if (ms < 1000) return t("duration.ms", { n: ms });
  if (ms < 60_000) {
    const n = (ms / 1000).toLocaleString(language() === "fr" ? "fr-FR" : "en-GB", { maximumFractionDigits: 1 });
    return t("duration.seconds", { n });
  }
  return formatDelay(ms);
}

/** The policy in a sentence: reminders, steps, end. */
export function policyText(policy: Policy): string {
  const interval = formatInterval(policy.interval);
  const final = formatInterval(policy.final);
  return policy.steps.length
    ? t("role.policy_steps", { interval, count: policy.steps.length, final })
    : t("role.policy", { interval, final });
}

/** A role's name as the hub last gave it, or its id said in words. */
export function roleName(client: MissClient, role: string): string {
  return client.oncall.role(role)?.name ?? t("role.unknown", { role });
}

/** The red band of an urgent message. */
export function urgentTag(): HTMLElement {
  return h("span", { class: "urgent-tag", "data-testid": "urgent-tag" }, t("urgent.tag"));
}

/**
 * Under an urgent message we received: "Acquitter" while nobody did, then
 * who did and when. `acknowledge` sends it (the button waits meanwhile).
 */
export function ackLine(client: MissClient, m: MessageRecord, nameOf: (u: string) => string, acknowledge: (m: MessageRecord) => Promise<void>): HTMLElement {
  if (m.ack) {
    const time = formatTime(m.ack.at);
    const text = m.ack.user === client.me ? t("urgent.acked_by_you", { time }) : t("urgent.acked_by", { name: nameOf(m.ack.user), time });
    return h("span", { class: "ack-state", "data-testid": "ack-state", "data-user": m.ack.user, title: formatDateTime(m.ack.at) }, ` · ✓ ${text}`);
  }
  const button = h("button", { class: "danger small acknowledge", "data-testid": "acknowledge" }, t("urgent.acknowledge"));
  button.addEventListener("click", () => {
    button.disabled = true;
    button.textContent = t("urgent.acknowledging");
    acknowledge(m).finally(() => {
      button.disabled = false;
      button.textContent = t("urgent.acknowledge");
    });
  });
  return button;
}

/** The sender's view of an urgent message's escalation; `roleOf` names a
 * step's role (fetching it when this device never saw it). */
export function escalationLine(
  m: MessageRecord,
  nameOf: (u: string) => string,
  roleOf: (role: string) => string,
): HTMLElement | null {
  const e = m.escalation;
  if (!m.urgent || !m.outgoing || m.status === "pending" || m.status === "failed") return null;
  let text: string;
  let state: string = e?.state ?? "waiting";
  if (m.ack || e?.state === "acknowledged") {
    state = "acknowledged";
    const ack = m.ack;
    text = ack ? t("urgent.acked_by", { name: nameOf(ack.user), time: formatTime(ack.at) }) : t("urgent.acked_by", { name: "?", time: formatTime(e!.ts) });
  } else if (e?.state === "unacknowledged") {
    text = t("urgent.unacknowledged");
  } else if (e?.state === "escalated" && e.step > 0) {
    const target = e.targets[e.step];
    const name = target === undefined ? "?" : isRoleId(target) ? roleOf(target) : nameOf(target);
    text = t("urgent.escalated", { step: e.step, target: name });
  } else {
    text = t("urgent.waiting");
  }
  return h("span", { class: `escalation ${state}`, "data-testid": "escalation", "data-state": state, "data-step": e?.step ?? 0 }, ` · ${text}`);
}

/**
 * The banners of the alerts ringing: who, for which role, the ring count
 * (`data-alerts`), "Voir" and "Acquitter".
 */
export function alertBanners(
  client: MissClient,
  nameOf: (u: string) => string,
  open: (conversation: string) => void,
  acknowledge: (m: MessageRecord) => Promise<void>,
): HTMLElement[] {
  const out: HTMLElement[] = [];
  for (const alert of client.oncall.alerts.values()) {
    const m = client.state.message(alert.sender, alert.id);
    if (!m || m.recalled || m.expired) continue;
    const name = nameOf(alert.sender);
    const text = m.role ? t("urgent.alert_role", { name, role: roleName(client, m.role) }) : t("urgent.alert", { name });
    out.push(
      h("div", { class: "banner urgent-alert", role: "alert", "data-testid": "urgent-alert", "data-id": alert.id, "data-alerts": alert.count },
        urgentTag(),
        h("strong", {}, " ", text),
        h("span", { class: "small", "data-testid": "alert-count" }, ` · ${t("urgent.alert_count", { count: alert.count })}`),
        h("span", { class: "spacer" }),
        h("button", { class: "secondary small", "data-testid": "alert-view", onclick: () => open(m.peer) }, t("urgent.view")),
        " ",
        ackLine(client, m, nameOf, acknowledge)),
    );
  }
  return out;
}

let audio: AudioContext | null = null;

/** Browsers start audio only after a user gesture: the first click or key unlocks it. */
export function unlockAudio(): void {
  const resume = (): void => {
    try {
      audio ??= new AudioContext();
      void audio.resume();
    } catch {
      // no audio here: the banner and the notification still say it
    }
  };
  addEventListener("pointerdown", resume, { once: true });
  addEventListener("keydown", resume, { once: true });
}

/** Two short high beeps (WebAudio), if audio is available and allowed. */
export function beep(): void {
  try {
    audio ??= new AudioContext();
    const ctx = audio;
    const now = ctx.currentTime;
    for (const start of [0, 0.3]) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "square";
      osc.frequency.value = 988;
      gain.gain.setValueAtTime(0.15, now + start);
      gain.gain.exponentialRampToValueAtTime(0.001, now + start + 0.2);
      osc.connect(gain).connect(ctx.destination);
      osc.start(now + start);
      osc.stop(now + start + 0.2);
    }
    document.documentElement.dataset.beeps = String(Number(document.documentElement.dataset.beeps ?? 0) + 1);
  } catch {
    // no audio: the banner and the notification still say it
  }
}

/** The system notification of one ring: who, never what (a lock screen is not private). */
export function notifyUrgent(client: MissClient, m: MessageRecord, alert: Alert, name: string, onClick: () => void): void {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const body = m.role ? t("notify.urgent_body_role", { name, role: roleName(client, m.role) }) : t("notify.urgent_body", { name });
  const options: NotificationOptions & { renotify?: boolean } = { body, tag: `urgent:${alert.key}`, requireInteraction: true, renotify: true };
  const note = new Notification(t("notify.urgent_title"), options);
  note.onclick = () => {
    window.focus();
    onClick();
    note.close();
  };
}

/** What a role row can do. */
export interface RoleActions {
  write(info: RoleInfo): void;
  take(info: RoleInfo, join: boolean): void;
  leave(info: RoleInfo): void;
}

/** One role of the directory: name, organisation, holders, policy, actions. */
export function roleRow(client: MissClient, info: RoleInfo, nameOf: (u: string) => string, act: RoleActions): HTMLElement {
  const me = client.me;
  const mine = info.holders.includes(me);
  const holders = info.holders.map((u) => (u === me ? t("role.you") : nameOf(u)));
  return h(
    "li",
    { class: "role", "data-testid": "role-result", "data-role": info.role, "data-mine": String(mine), "data-holders": info.holders.join(" ") },
    h("span", { class: "role-name" },
      h("strong", {}, h("span", { class: "role-tag" }, t("role.tag")), info.name),
      h("span", { class: "muted small" }, [info.org, info.reserved ? t("role.reserved") : null].filter(Boolean).join(" · ")),
      h("span", { class: `small holders${info.holders.length ? "" : " vacant"}`, "data-testid": "role-holders" },
        info.holders.length ? t("role.holders", { names: holders.join(", ") }) : t("role.vacant")),
      h("span", { class: "muted small" }, policyText(info.policy))),
    h("span", { class: "role-actions" },
      h("button", { class: "secondary small", "data-testid": "role-write", disabled: info.holders.length === 0 || (mine && info.holders.length === 1), onclick: () => act.write(info) }, t("role.write")),
      !mine && !info.reserved
        ? h("button", { class: "primary small", "data-testid": "role-take", onclick: () => act.take(info, false) }, t("role.take"))
        : null,
      !mine && !info.reserved && info.holders.length > 0
        ? h("button", { class: "secondary small", "data-testid": "role-join", onclick: () => act.take(info, true) }, t("role.join"))
        : null,
      mine && !info.reserved
        ? h("button", { class: "danger small", "data-testid": "role-leave", onclick: () => act.leave(info) }, t("role.leave"))
        : null),
  );
}
