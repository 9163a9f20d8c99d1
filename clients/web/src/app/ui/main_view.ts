/**
 * The unlocked application: the conversation list (newest first, unread
 * counts, presence and status), the open conversation (attested identity,
 * day separators, per-device receipts, the key-change warning that pauses
 * sending), the composer, and the connection state. On a phone-sized
 * screen one pane shows at a time.
 *
 * `render()` redraws what state may have changed; the composer and the
 * dialogs' inputs are built once so that typing is never interrupted.
 */
import { ProtocolError } from "../../protocol/errors";
import { STATUSES } from "../../protocol/frames";
import type { MissClient } from "../client";
import { dayLabel, formatDateTime, formatTime, startOfDay, t, type MessageKey } from "../i18n";
import type { MessageRecord } from "../store";
import { KeyChangePending, UnverifiedPeer, type PeerChange, type PeerRecord } from "../trust";
import { fill, h } from "./dom";
import { Dialogs } from "./dialogs";
import { describeError } from "./screens";

export function describeChange(change: PeerChange): string {
  const parts: string[] = [];
  if (change.added.length) parts.push(t("keys.added", { count: change.added.length }));
  if (change.changed.length) parts.push(t("keys.changed", { count: change.changed.length }));
  if (change.substituted.length) parts.push(t("keys.substituted", { count: change.substituted.length }));
  if (change.removed.length) parts.push(t("keys.removed", { count: change.removed.length }));
  return parts.join(", ");
}

export function statusLabel(status: string): string {
  return (STATUSES as readonly string[]).includes(status) ? t(`status.${status}` as MessageKey) : status;
}

export function displayName(record: PeerRecord | undefined, user: string): string {
  return record?.name ?? user;
}

export class MainView {
  readonly root: HTMLElement;
  private readonly connPill = h("span", { class: "conn", "data-testid": "conn-state", role: "status" });
  private readonly retryButton = h("button", { class: "link", "data-testid": "conn-retry", hidden: true }, t("conn.retry"));
  private readonly statusSelect = h("select", { "data-testid": "status-select", "aria-label": t("status.label") });
  private readonly banners = h("div", { class: "banners" });
  private readonly list = h("ul", { class: "conv-list", "data-testid": "conv-list" });
  private readonly convHeader = h("header", { class: "conv-header" });
  private readonly convWarning = h("div", { class: "conv-warning" });
  private readonly messages = h("ol", { class: "messages", "data-testid": "messages", "aria-live": "polite" });
  private readonly input = h("textarea", { rows: 2, placeholder: t("conv.placeholder"), "data-testid": "composer-input", "aria-label": t("conv.placeholder") });
  private readonly sendButton = h("button", { type: "submit", class: "primary", "data-testid": "composer-send" }, t("conv.send"));
  private readonly composer = h("form", { class: "composer", "data-testid": "composer" }, this.input, this.sendButton);
  private readonly convPane: HTMLElement;
  private readonly dialogs: Dialogs;
  private selected: string | null = null;
  /** Receipts the user unfolded, by message id: redraws keep them open. */
  private readonly unfolded = new Set<string>();
  private scheduled = false;
  private tick: ReturnType<typeof setInterval>;

  constructor(
    private readonly client: MissClient,
    onLock: () => void,
  ) {
    this.dialogs = new Dialogs(client, (user) => this.open(user), onLock);
    for (const s of STATUSES) this.statusSelect.append(h("option", { value: s }, statusLabel(s)));
    this.statusSelect.addEventListener("change", () => {
      client.setStatus(this.statusSelect.value).catch((err) => this.toast(describeError(err)));
    });
    this.retryButton.addEventListener("click", () => client.reconnectNow());
    this.composer.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.submit();
      }
    });
    this.convPane = h(
      "section",
      { class: "conv-pane", "data-testid": "conversation" },
      this.convHeader,
      this.convWarning,
      this.messages,
      this.composer,
    );
    this.root = h(
      "div",
      { class: "app" },
      h(
        "header",
        { class: "topbar" },
        h("strong", { class: "brand" }, t("app.name")),
        this.connPill,
        this.retryButton,
        h("span", { class: "spacer" }),
        h("label", { class: "status" }, h("span", { class: "sr-only" }, t("status.label")), this.statusSelect),
        h("button", { class: "icon", title: t("nav.new"), "data-testid": "nav-new", onclick: () => this.dialogs.search() }, "+", h("span", { class: "wide-only" }, " ", t("nav.new"))),
        h("button", { class: "icon", title: t("nav.devices"), "data-testid": "nav-devices", onclick: () => this.dialogs.devices() }, "⌨", h("span", { class: "wide-only" }, " ", t("nav.devices"))),
        h("button", { class: "icon", title: t("nav.settings"), "data-testid": "nav-settings", onclick: () => this.dialogs.settings() }, "⚙", h("span", { class: "wide-only" }, " ", t("nav.settings"))),
      ),
      this.banners,
      h("div", { class: "panes" }, h("nav", { class: "list-pane" }, this.list), this.convPane),
      this.dialogs.root,
    );
    // "retrying in 5 s" counts down.
    this.tick = setInterval(() => this.drawConnection(), 1000);
    document.addEventListener("visibilitychange", this.onVisible);
    this.render();
  }

  private readonly onVisible = (): void => this.markRead();

  /** Detach from the document (the app is locked). */
  destroy(): void {
    clearInterval(this.tick);
    document.removeEventListener("visibilitychange", this.onVisible);
  }

  /** Redraw soon (many changes coalesce). A timer, not an animation frame:
   * a hidden tab gets no frames, and its title must still count unread. */
  render(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setTimeout(() => {
      this.scheduled = false;
      this.draw();
    }, 16);
  }

  open(user: string | null): void {
    this.selected = user;
    this.root.classList.toggle("show-conv", user !== null);
    this.input.value = "";
    this.markRead();
    this.draw();
    if (user !== null) this.input.focus();
  }

  /** The open conversation, seen by the user, has nothing unread. */
  private markRead(): void {
    const peer = this.selected;
    const state = this.client.state;
    if (peer === null || document.visibilityState !== "visible" || state.unread(peer) === 0) return;
    // Up to the newest message's own time: hub and browser clocks differ.
    state.markRead(peer, Math.max(...state.thread(peer).map((m) => m.at)));
    this.render();
  }

  private submit(): void {
    const peer = this.selected;
    const text = this.input.value;
    if (!peer || !text.trim()) return;
    this.input.value = "";
    this.client.send(peer, text).catch((err) => {
      this.input.value = text;
      this.toast(describeError(err));
    });
  }

  toast(text: string): void {
    const el = h("div", { class: "toast", role: "alert", "data-testid": "toast" }, text);
    this.root.append(el);
    setTimeout(() => el.remove(), 6000);
  }

  private draw(): void {
    this.markRead();
    this.drawConnection();
    this.drawBanners();
    this.drawList();
    this.drawConversation();
    const unread = this.client.state.conversationList().reduce((n, c) => n + this.client.state.unread(c.peer), 0);
    document.title = unread ? `(${unread}) ${t("app.title")}` : t("app.title");
  }

  private drawConnection(): void {
    const conn = this.client.conn;
    this.connPill.dataset.state = conn.kind;
    this.retryButton.hidden = conn.kind !== "offline" && conn.kind !== "stopped";
    if (conn.kind === "online") this.connPill.textContent = t("conn.online");
    else if (conn.kind === "connecting") this.connPill.textContent = t("conn.connecting");
    else if (conn.kind === "offline") {
      const seconds = Math.ceil((conn.retryAt - Date.now()) / 1000);
      this.connPill.textContent = seconds > 0 ? t("conn.offline", { seconds }) : t("conn.offline_now");
    } else this.connPill.textContent = `${t("conn.stopped")} — ${describeError(conn.error)}`;
    const mine = this.client.presence.get(this.client.me)?.status ?? this.client.state.settings.status;
    if (mine && document.activeElement !== this.statusSelect) this.statusSelect.value = mine;
  }

  private drawBanners(): void {
    const out: HTMLElement[] = [];
    const self = this.client.selfCheck;
    if (self instanceof UnverifiedPeer) {
      out.push(
        h("div", { class: "banner warn", "data-testid": "self-unverified" },
          t("self.unverified", { device: this.client.device }),
          " ",
          h("button", { class: "link", onclick: () => void this.client.recheckSelf() }, t("self.check_again"))),
      );
    }
    if (this.client.authorityMismatch) {
      out.push(h("div", { class: "banner danger" }, t("error.authority_mismatch")));
    }
    const own = this.client.pendingChange(this.client.me);
    if (own) out.push(this.keyWarning(own, true));
    fill(this.banners, out);
  }

  private keyWarning(change: PeerChange, own: boolean): HTMLElement {
    const name = displayName(this.client.state.peers.get(change.user), change.user);
    const text = own ? t("keys.warning_own", { change: describeChange(change) }) : t("keys.warning", { name, change: describeChange(change) });
    return h(
      "div",
      { class: "banner danger", "data-testid": own ? "own-key-warning" : "key-warning" },
      h("strong", {}, text),
      " ",
      t("keys.advice"),
      " ",
      !own && h("button", { class: "link", onclick: () => this.dialogs.safety(change.user) }, t("conv.safety")),
      " ",
      h("button", {
        class: "danger",
        "data-testid": own ? "own-key-accept" : "key-accept",
        onclick: () => void this.client.acceptKeys(change.user),
      }, t("keys.accept")),
    );
  }

  private presenceLine(user: string): HTMLElement {
    const p = this.client.presence.get(user);
    const dot = h("span", { class: `dot ${p?.online ? "on" : "off"}` });
    const text = p ? `${p.online ? t("presence.online") : t("presence.offline")} · ${statusLabel(p.status)}` : t("presence.unknown");
    return h("span", { class: "presence", "data-testid": "presence", "data-online": p ? String(p.online) : "unknown", "data-status": p?.status ?? "" }, dot, text);
  }

  private drawList(): void {
    const state = this.client.state;
    const items = state.conversationList().map(({ peer, last }) => {
      const record = state.peers.get(peer);
      const unread = state.unread(peer);
      const preview = last ? (last.outgoing ? t("list.you") : "") + last.body.replace(/\s+/g, " ").slice(0, 80) : "";
      return h(
        "li",
        {},
        h(
          "button",
          {
            class: `conv-item${peer === this.selected ? " selected" : ""}`,
            "data-testid": "conv-item",
            "data-peer": peer,
            onclick: () => this.open(peer),
          },
          h("span", { class: "conv-line" },
            h("strong", { class: "conv-name" }, displayName(record, peer)),
            last && h("time", { class: "muted small" }, formatTime(last.at)),
          ),
          h("span", { class: "conv-line" },
            this.presenceLine(peer),
            unread > 0 && h("span", { class: "badge", "data-testid": "unread", title: t("list.unread", { count: unread }) }, String(unread)),
          ),
          h("span", { class: "preview muted small" }, preview),
        ),
      );
    });
    if (items.length === 0) items.push(h("li", { class: "empty muted" }, t("list.empty")));
    fill(this.list, items);
  }

  private drawConversation(): void {
    const peer = this.selected;
    this.convPane.hidden = false;
    if (peer === null) {
      fill(this.convHeader, h("p", { class: "muted" }, t("conv.none")));
      fill(this.convWarning);
      fill(this.messages);
      this.composer.hidden = true;
      return;
    }
    const record = this.client.state.peers.get(peer);
    this.composer.hidden = false;
    fill(
      this.convHeader,
      h("button", { class: "icon back", "data-testid": "nav-back", onclick: () => this.open(null), title: t("nav.back") }, "‹"),
      h(
        "div",
        { class: "identity", "data-testid": "peer-identity" },
        h("strong", {}, displayName(record, peer)),
        record?.verifiedAt ? h("span", { class: "verified", "data-testid": "verified-badge" }, " ✓ ", t("conv.verified_badge")) : null,
        h("span", { class: "muted small" }, [record?.profession, record?.organisation, record ? t("conv.rpps", { rpps: record.rpps }) : null].filter(Boolean).join(" · ")),
        this.presenceLine(peer),
      ),
      h("button", { class: "secondary", "data-testid": "safety-button", onclick: () => this.dialogs.safety(peer) }, t("conv.safety")),
    );
    const pending = this.client.pendingChange(peer);
    fill(this.convWarning, pending ? this.keyWarning(pending, false) : null);
    this.input.placeholder = pending ? t("conv.paused") : t("conv.placeholder");
    const atBottom = this.messages.scrollHeight - this.messages.scrollTop - this.messages.clientHeight < 40;
    const thread = this.client.state.thread(peer);
    const items: HTMLElement[] = [];
    let day = -1;
    for (const m of thread) {
      const d = startOfDay(m.at);
      if (d !== day) {
        day = d;
        items.push(h("li", { class: "day", "data-testid": "day-separator" }, h("span", {}, dayLabel(m.at))));
      }
      items.push(this.bubble(m));
    }
    if (thread.length === 0) items.push(h("li", { class: "empty muted" }, t("conv.empty")));
    fill(this.messages, items);
    if (atBottom) this.messages.scrollTop = this.messages.scrollHeight;
  }

  private bubble(m: MessageRecord): HTMLElement {
    return h(
      "li",
      { class: `msg ${m.outgoing ? "out" : "in"}`, "data-testid": "message", "data-id": m.id, "data-status": m.status },
      h("p", { class: "body" }, m.body),
      h("span", { class: "meta muted small" },
        h("time", { title: formatDateTime(m.at) }, formatTime(m.at)),
        m.outgoing && m.fromDevice !== this.client.device ? ` · ${t("msg.other_device")}` : "",
        m.outgoing ? this.receipts(m) : null),
    );
  }

  private receipts(m: MessageRecord): HTMLElement {
    if (m.status === "pending") {
      const why = this.client.held.get(m.id);
      const text = why instanceof KeyChangePending ? t("msg.pending_keys") : t("msg.pending");
      // The cause, for whoever hovers (the protocol's words, not a sentence).
      return h("span", { class: "receipt pending", "data-testid": "receipt", "data-state": "pending", title: why?.message ?? "" }, " · ◷ ", text);
    }
    if (m.status === "failed") {
      const name = displayName(this.client.state.peers.get(m.peer), m.peer);
      return h("span", { class: "receipt failed", "data-testid": "receipt", "data-state": "failed" }, " · ✗ ", t("msg.failed", { reason: failureText(m.failure ?? "", name) }));
    }
    const entries = Object.entries(m.receipts);
    const delivered = entries.filter(([, r]) => r.reason === undefined);
    const refused = entries.filter(([, r]) => r.reason !== undefined);
    const total = Math.max(m.targets.length, entries.length);
    let summary: string;
    let state: string;
    if (refused.length) {
      summary = ` · ✗ ${t("msg.refused")}`;
      state = "refused";
    } else if (delivered.length === 0) {
      summary = ` · ✓ ${t("msg.accepted")}`;
      state = "accepted";
    } else {
      summary = ` · ✓✓ ${total > 1 ? t("msg.delivered_count", { count: delivered.length, total }) : t("msg.delivered")}`;
      state = "delivered";
    }
    if (entries.length === 0) return h("span", { class: `receipt ${state}`, "data-testid": "receipt", "data-state": state }, summary);
    return h(
      "details",
      {
        class: `receipt ${state}`,
        "data-testid": "receipt",
        "data-state": state,
        "data-delivered": delivered.length,
        open: this.unfolded.has(m.id),
        ontoggle: (ev: Event) => {
          if ((ev.target as HTMLDetailsElement).open) this.unfolded.add(m.id);
          else this.unfolded.delete(m.id);
        },
      },
      h("summary", {}, summary),
      h("ul", {}, entries.map(([device, r]) =>
        h("li", { "data-testid": "receipt-device", "data-device": device },
          r.reason === undefined
            ? t("msg.delivered_to", { device, time: formatDateTime(r.ts) })
            : t("msg.refused_to", { device, time: formatDateTime(r.ts), reason: refusalText(r.reason) })),
      )),
    );
  }
}

/** Why a message was refused for good, as a sentence (codes of SPEC §7). */
function failureText(code: string, name: string): string {
  if (code === "too_large") return t("error.too_large");
  if (code === "no_devices") return t("error.no_devices", { name });
  if (code === "recipient_not_verified") return t("error.unverified_peer", { name, reason: t("unverified_reason.missing") });
  return describeError(new ProtocolError(code));
}

function refusalText(reason: string): string {
  return reason === "sender_unverified" || reason === "undecryptable" ? t(`refusal.${reason}`) : reason;
}
