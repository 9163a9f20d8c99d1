/**
 * The unlocked application: the conversation list (1:1 conversations and
 * care teams, newest first, unread counts, presence and status), the open
 * conversation (attested identity or the team, day separators, the team's
 * membership changes, per-device receipts, read marks, lifespan and recall,
 * the key-change warning and the team-problem banner that pause sending),
 * the composer (with its lifespan picker), and the connection state. On a
 * phone-sized screen one pane shows at a time.
 *
 * `render()` redraws what state may have changed; the composer and the
 * dialogs' inputs are built once so that typing is never interrupted.
 */
import { ProtocolError } from "../../protocol/errors";
import { STATUSES } from "../../protocol/frames";
import { TeamProblemError, isTeamId, type MissClient } from "../client";
import { dayLabel, formatDateTime, formatTime, startOfDay, t, type MessageKey } from "../i18n";
import type { MessageRecord } from "../store";
import type { TeamEvent, TeamView } from "../teams";
import { KeyChangePending, UnverifiedPeer, type PeerChange, type PeerRecord } from "../trust";
import { fill, h } from "./dom";
import { Dialogs } from "./dialogs";
import { describeError } from "./screens";
import { chosenLifespan, eventText, fillLifespans, formatDelay, lifespanSelect, problemBanner } from "./team_ui";
import { isRoleId } from "../oncall";
import { AttachPicker, Viewer, attachmentsBlock } from "./attach_ui";
import { ackLine, alertBanners, escalationLine, policyText, roleName, urgentTag } from "./oncall_ui";
import { isService, noReplyPanel, noticeCard, noticePreview, serviceTag } from "./notice_ui";

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
  /** Instead of the composer, for a service that does not accept replies (SPEC §17.2). */
  private readonly noReply = h("div", { class: "no-reply-slot", hidden: true });
  private readonly input = h("textarea", { rows: 2, placeholder: t("conv.placeholder"), "data-testid": "composer-input", "aria-label": t("conv.placeholder") });
  private readonly sendButton = h("button", { type: "submit", class: "primary", "data-testid": "composer-send" }, t("conv.send"));
  private readonly lifespan = lifespanSelect("lifespan-select", undefined, t("lifespan.label"));
  private readonly urgent = h("input", { type: "checkbox", "data-testid": "urgent-toggle", "aria-label": t("urgent.toggle") });
  private readonly picker: AttachPicker;
  private readonly viewer: Viewer;
  private readonly composer: HTMLFormElement;
  private readonly convPane: HTMLElement;
  private readonly dialogs: Dialogs;
  private selected: string | null = null;
  /** Receipts and read lists the user unfolded, by message id: redraws keep them open. */
  private readonly unfolded = new Set<string>();
  /** Conversations whose markRead is under way (one at a time each). */
  private readonly marking = new Set<string>();
  private scheduled = false;
  private tick: ReturnType<typeof setInterval>;

  constructor(
    private readonly client: MissClient,
    onLock: () => void,
  ) {
    this.dialogs = new Dialogs(client, (id) => this.open(id), onLock);
    this.picker = new AttachPicker(client, () => undefined);
    this.viewer = new Viewer(client, (text) => this.toast(text));
    this.composer = h(
      "form",
      { class: "composer", "data-testid": "composer" },
      this.picker.tray,
      this.picker.error,
      h("label", { class: "lifespan-pick", title: t("lifespan.label") }, h("span", { class: "lifespan-icon wide-only muted small" }, t("lifespan.label")), this.lifespan),
      h("label", { class: "urgent-pick", title: t("urgent.toggle_hint") }, this.urgent, h("span", {}, t("urgent.toggle"))),
      this.picker.buttons,
      this.input,
      this.sendButton,
    );
    for (const s of STATUSES) this.statusSelect.append(h("option", { value: s }, statusLabel(s)));
    this.statusSelect.addEventListener("change", () => {
      client.setStatus(this.statusSelect.value).catch((err) => this.toast(describeError(err)));
    });
    this.retryButton.addEventListener("click", () => client.reconnectNow());
    // In a 1:1 conversation the lifespan picked stays its default on this
    // device (SPEC §13.6); a team's default is in its chain, the pick is per message.
    this.lifespan.addEventListener("change", () => {
      const id = this.selected;
      if (id === null || isTeamId(id)) return;
      client.setLifespan(id, chosenLifespan(this.lifespan) ?? null).catch((err) => this.toast(describeError(err)));
    });
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
      this.noReply,
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
        h("button", { class: "icon", title: t("nav.new_team"), "data-testid": "nav-new-team", onclick: () => this.dialogs.newTeam() }, "+", h("span", { class: "wide-only" }, " ", t("nav.new_team")), h("span", { class: "narrow-only" }, " ", t("team.tag"))),
        h("button", { class: "icon", title: t("nav.devices"), "data-testid": "nav-devices", onclick: () => this.dialogs.devices() }, "⌨", h("span", { class: "wide-only" }, " ", t("nav.devices"))),
        h("button", { class: "icon", title: t("nav.settings"), "data-testid": "nav-settings", onclick: () => this.dialogs.settings() }, "⚙", h("span", { class: "wide-only" }, " ", t("nav.settings"))),
      ),
      this.banners,
      h("div", { class: "panes" }, h("nav", { class: "list-pane" }, this.list), this.convPane),
      this.dialogs.root,
      this.viewer.root,
    );
    // "retrying in 5 s" and "expire dans …" count down.
    this.tick = setInterval(() => {
      this.drawConnection();
      this.drawExpiries();
    }, 1000);
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

  /** Open a conversation: a user id, a team id, or none (null). */
  open(id: string | null): void {
    const changed = id !== this.selected;
    this.selected = id;
    this.root.classList.toggle("show-conv", id !== null);
    if (changed) {
      this.input.value = "";
      this.picker.clear();
      this.urgent.checked = false;
      // The conversation's default lifespan (a team's, or the 1:1 setting).
      fillLifespans(this.lifespan, id === null ? undefined : this.lifespanFor(id), id !== null && isTeamId(id));
    }
    this.markRead();
    this.draw();
    if (id !== null && !this.input.disabled && !this.composer.hidden) this.input.focus();
    // Whether a service accepts replies is the hub's word of the moment (SPEC §17.2): asked again.
    if (changed && id !== null && isService(this.client.state.peers.get(id)) && this.client.conn.kind === "online") {
      this.client.lookup(id, true).then(() => this.render(), () => undefined);
    }
  }

  private lifespanFor(id: string): number | undefined {
    try {
      return this.client.lifespanFor(id);
    } catch {
      return undefined;
    }
  }

  /**
   * The open conversation, seen by the user, has nothing unread: marked
   * read, with the read notices it calls for (SPEC §13.5; the client sends
   * them to the senders, or to our own devices only when receipts are off).
   */
  private markRead(): void {
    const id = this.selected;
    const state = this.client.state;
    if (id === null || document.visibilityState !== "visible" || state.unread(id) === 0 || this.marking.has(id)) return;
    this.marking.add(id);
    this.client
      .markRead(id)
      .catch((err) => console.warn("MiSS: read notices not sent", err))
      .finally(() => {
        this.marking.delete(id);
        this.render();
      });
  }

  private submit(): void {
    const id = this.selected;
    const text = this.input.value;
    const withFiles = this.picker.count > 0;
    if (!id || (!text.trim() && !withFiles) || this.input.disabled) return;
    this.input.value = "";
    const lifespanMs = chosenLifespan(this.lifespan);
    const urgent = this.urgent.checked;
    this.urgent.checked = false;
    const options = { ...(lifespanMs === undefined ? {} : { lifespanMs }), ...(urgent ? { urgent } : {}) };
    const sent = withFiles
      ? this.picker.take().then((files) => this.client.send(id, text, { ...options, files }))
      : this.client.send(id, text, options);
    sent.catch((err) => {
      this.input.value = text;
      this.urgent.checked = urgent;
      this.toast(describeError(err));
    });
  }

  /** Acknowledge an urgent message we received: the alert stops here and everywhere. */
  private readonly acknowledge = (m: MessageRecord): Promise<void> =>
    this.client.oncall.acknowledge(m.fromUser, m.id).then(
      () => this.render(),
      (err) => this.toast(describeError(err)),
    );

  /** Recall one of our messages, once the user confirmed. */
  private recall(m: MessageRecord): void {
    this.dialogs.confirm(t("msg.recall_confirm"), t("msg.recall"), () =>
      this.client.recall(m.id).catch((err) => this.toast(describeError(err))));
  }

  /** Update the "expire dans …" marks; redraw when one ran out. */
  private drawExpiries(): void {
    const now = Date.now();
    for (const el of this.messages.querySelectorAll<HTMLElement>("[data-expires]")) {
      const left = Number(el.dataset.expires) - now;
      if (left <= 0) {
        this.render();
        return;
      }
      el.textContent = ` · ${t("msg.expires_in", { delay: formatDelay(left) })}`;
    }
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
    const unread = this.conversations().reduce((n, c) => n + this.client.state.unread(c.id), 0);
    document.title = unread ? `(${unread}) ${t("app.title")}` : t("app.title");
  }

  private drawConnection(): void {
    const conn = this.client.conn;
    // After a hub went away (1001, a rolling restart), reconnecting is routine: said discreetly.
    const quiet = conn.kind === "offline" && Date.now() < (conn.quietUntil ?? 0);
    this.connPill.dataset.state = quiet ? "reconnecting" : conn.kind;
    this.retryButton.hidden = quiet || (conn.kind !== "offline" && conn.kind !== "stopped");
    if (conn.kind === "online") this.connPill.textContent = t("conn.online");
    else if (conn.kind === "connecting") this.connPill.textContent = t("conn.connecting");
    else if (quiet) this.connPill.textContent = t("conn.reconnecting");
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
    if (this.client.rotationRefused !== null) {
      out.push(h("div", { class: "banner danger", "data-testid": "rotation-refused" }, t("authority.rotation_refused")));
    } else if (this.client.authorityMismatch) {
      out.push(h("div", { class: "banner danger" }, t("error.authority_mismatch")));
    }
    const rotated = this.client.rotationNotice;
    if (rotated !== null) {
      out.push(
        h("div", { class: "banner info", "data-testid": "authority-rotated" },
          t("authority.rotated", { fingerprint: rotated }),
          " ",
          h("button", { class: "link", onclick: () => this.client.dismissRotationNotice() }, t("authority.notice_ok"))),
      );
    }
    const own = this.client.pendingChange(this.client.me);
    if (own) out.push(this.keyWarning(own, true));
    out.push(...alertBanners(this.client, this.nameOf, (id) => this.open(id), this.acknowledge));
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

  /** 1:1 conversations and teams, the one with the newest activity first. */
  private conversations(): Array<{ id: string; last: MessageRecord | undefined; at: number }> {
    const list = this.client.state.conversationList().map(({ peer, last, at }) => ({ id: peer, last, at }));
    const seen = new Set(list.map((c) => c.id));
    for (const team of this.client.teams()) {
      if (seen.has(team.id)) continue;
      list.push({ id: team.id, last: undefined, at: team.events.at(-1)?.at ?? 0 });
    }
    return list.sort((a, b) => b.at - a.at);
  }

  /** Users whose attested names are being looked up (team members never met). */
  private readonly naming = new Set<string>();

  /**
   * A user's attested name, or "authority" said in words; a team member
   * this device never looked up shows as their id meanwhile, and is looked
   * up (verified against the authority, SPEC §11.2) for the next redraw.
   */
  private readonly nameOf = (user: string): string => {
    if (user === "authority") return t("team.event.authority");
    const record = this.client.state.peers.get(user);
    if (record === undefined && !this.naming.has(user) && this.client.conn.kind === "online") {
      this.naming.add(user);
      this.client.lookup(user).then(() => this.render(), () => undefined);
    }
    return displayName(record, user);
  };

  /** The text of a message as the list and the thread show it. */
  private bodyText(m: MessageRecord): string {
    if (m.recalled) return t("msg.recalled");
    if (m.expired || (m.expiresAt !== undefined && m.expiresAt <= Date.now())) return t("msg.expired");
    return m.notice ? noticePreview(m.notice) : m.body;
  }

  private drawList(): void {
    const state = this.client.state;
    const items = this.conversations().map(({ id, last }) => {
      const unread = state.unread(id);
      const team = isTeamId(id) ? this.client.team(id) : undefined;
      const preview = last
        ? (last.outgoing ? t("list.you") : team ? `${this.nameOf(last.fromUser)} : ` : "") + this.bodyText(last).replace(/\s+/g, " ").slice(0, 80)
        : "";
      if (isRoleId(id)) {
        const info = this.roleInfo(id);
        return h(
          "li",
          {},
          h(
            "button",
            {
              class: `conv-item role${id === this.selected ? " selected" : ""}`,
              "data-testid": "conv-item",
              "data-peer": id,
              "data-role": "true",
              onclick: () => this.open(id),
            },
            h("span", { class: "conv-line" },
              h("strong", { class: "conv-name" }, h("span", { class: "role-tag" }, t("role.tag")), roleName(this.client, id)),
              last && h("time", { class: "muted small" }, formatTime(last.at)),
            ),
            h("span", { class: "conv-line" },
              h("span", { class: "muted small" }, info ? (info.holders.length ? t("role.holders", { names: info.holders.map(this.nameOf).join(", ") }) : t("role.vacant")) : "")),
            h("span", { class: "preview muted small" }, preview),
          ),
        );
      }
      if (isTeamId(id)) {
        return h(
          "li",
          {},
          h(
            "button",
            {
              class: `conv-item team${id === this.selected ? " selected" : ""}`,
              "data-testid": "conv-item",
              "data-peer": id,
              "data-team": "true",
              onclick: () => this.open(id),
            },
            h("span", { class: "conv-line" },
              h("strong", { class: "conv-name" }, h("span", { class: "team-tag" }, t("team.tag")), team?.name ?? id),
              last && h("time", { class: "muted small" }, formatTime(last.at)),
            ),
            h("span", { class: "conv-line" },
              h("span", { class: "muted small", "data-testid": "member-count" },
                team ? t("team.members_count", { count: team.members.length }) : "",
                team?.problem ? h("span", { class: "problem-dot", title: team.problem === "tampered" ? t("team.tampered") : t("team.diverged") }, " ⚠") : null),
              unread > 0 && h("span", { class: "badge", "data-testid": "unread", title: t("list.unread", { count: unread }) }, String(unread)),
            ),
            h("span", { class: "preview muted small" }, preview),
          ),
        );
      }
      const peer = id;
      const record = state.peers.get(peer);
      return h(
        "li",
        {},
        h(
          "button",
          {
            class: `conv-item${peer === this.selected ? " selected" : ""}`,
            "data-testid": "conv-item",
            "data-peer": peer,
            "data-service": isService(record) ? "true" : null,
            onclick: () => this.open(peer),
          },
          h("span", { class: "conv-line" },
            h("strong", { class: "conv-name" }, isService(record) ? serviceTag() : null, displayName(record, peer)),
            last && h("time", { class: "muted small" }, formatTime(last.at)),
          ),
          h("span", { class: "conv-line" },
            isService(record) ? h("span", { class: "muted small", "data-testid": "conv-organisation" }, record?.organisation ?? "") : this.presenceLine(peer),
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
    this.noReply.hidden = true;
    if (peer === null) {
      fill(this.convHeader, h("p", { class: "muted" }, t("conv.none")));
      fill(this.convWarning);
      fill(this.messages);
      this.composer.hidden = true;
      return;
    }
    this.composer.hidden = false;
    if (isTeamId(peer)) {
      this.drawTeam(peer);
      return;
    }
    if (isRoleId(peer)) {
      this.drawRole(peer);
      return;
    }
    this.setComposer(null);
    const record = this.client.state.peers.get(peer);
    const service = isService(record);
    fill(
      this.convHeader,
      h("button", { class: "icon back", "data-testid": "nav-back", onclick: () => this.open(null), title: t("nav.back") }, "‹"),
      h(
        "div",
        { class: "identity", "data-testid": "peer-identity", "data-service": service ? "true" : null },
        h("strong", {}, service ? serviceTag() : null, displayName(record, peer)),
        record?.verifiedAt ? h("span", { class: "verified", "data-testid": "verified-badge" }, " ✓ ", t("conv.verified_badge")) : null,
        // A service is shown with its organisation only: no profession, no RPPS (SPEC §17.1).
        service
          ? h("span", { class: "muted small", "data-testid": "peer-organisation" }, record?.organisation ?? "")
          : h("span", { class: "muted small" }, [record?.profession, record?.organisation, record ? t("conv.rpps", { rpps: record.rpps }) : null].filter(Boolean).join(" · ")),
        service ? null : this.presenceLine(peer),
      ),
      h("button", { class: "secondary", "data-testid": "safety-button", onclick: () => this.dialogs.safety(peer) }, t("conv.safety")),
    );
    const pending = this.client.pendingChange(peer);
    fill(this.convWarning, pending ? this.keyWarning(pending, false) : null);
    this.input.placeholder = pending ? t("conv.paused") : t("conv.placeholder");
    if (service && record?.repliesRefused) {
      this.composer.hidden = true;
      fill(this.noReply, noReplyPanel(this.client.state.lastReply(peer)));
      this.noReply.hidden = false;
    }
    this.drawThread(this.client.state.thread(peer), [], undefined);
  }

  /** Enable the composer, or disable it saying why (`reason`). */
  private setComposer(reason: string | null): void {
    const blocked = reason !== null;
    this.input.disabled = blocked;
    this.sendButton.disabled = blocked;
    this.lifespan.disabled = blocked;
    this.urgent.disabled = blocked;
    for (const b of this.picker.buttons.querySelectorAll("button")) b.disabled = blocked;
    this.composer.dataset.blocked = String(blocked);
    this.input.placeholder = reason ?? t("conv.placeholder");
  }

  /** Roles asked of the hub once for their names and holders (never again in a loop). */
  private readonly rolesAsked = new Set<string>();

  /** A role's description, fetched once when this device never had it. */
  private roleInfo(id: string) {
    const info = this.client.oncall.role(id);
    if (!this.rolesAsked.has(id) && this.client.conn.kind === "online") {
      this.rolesAsked.add(id);
      this.client.oncall.get(id).then(() => this.render(), () => undefined);
    }
    return info;
  }

  /** A role's name, fetched once when this device never saw the role. */
  private readonly roleOf = (id: string): string => {
    this.roleInfo(id);
    return roleName(this.client, id);
  };

  /** A role's conversation (our messages to it): who holds it now, its policy, take or leave. */
  private drawRole(id: string): void {
    const info = this.roleInfo(id);
    const mine = info?.holders.includes(this.client.me) ?? false;
    const act = (work: Promise<unknown>): void => void work.then(() => this.render(), (err) => this.toast(describeError(err)));
    fill(
      this.convHeader,
      h("button", { class: "icon back", "data-testid": "nav-back", onclick: () => this.open(null), title: t("nav.back") }, "‹"),
      h(
        "div",
        { class: "identity", "data-testid": "role-identity", "data-role": id },
        h("strong", {}, h("span", { class: "role-tag" }, t("role.tag")), roleName(this.client, id)),
        h("span", { class: "muted small", "data-testid": "role-holders" },
          [info?.org, info ? (info.holders.length ? t("role.holders", { names: info.holders.map((u) => (u === this.client.me ? t("role.you") : this.nameOf(u))).join(", ") }) : t("role.vacant")) : null]
            .filter(Boolean).join(" · ")),
        info ? h("span", { class: "muted small" }, policyText(info.policy)) : null,
      ),
      info && !info.reserved && !mine
        ? h("button", { class: "secondary", "data-testid": "role-take", onclick: () => act(this.client.oncall.take(id)) }, t("role.take"))
        : null,
      info && mine
        ? h("button", { class: "secondary", "data-testid": "role-leave", onclick: () => act(this.client.oncall.leave(id)) }, t("role.leave"))
        : null,
    );
    fill(this.convWarning);
    this.setComposer(info && info.holders.length === 0 ? t("error.role_vacant") : null);
    this.drawThread(this.client.state.thread(id), [], undefined);
  }

  /** A team's conversation: its header, the problem banner, the thread with its changes. */
  private drawTeam(id: string): void {
    const team = this.client.team(id);
    const count = team ? team.members.length : 0;
    fill(
      this.convHeader,
      h("button", { class: "icon back", "data-testid": "nav-back", onclick: () => this.open(null), title: t("nav.back") }, "‹"),
      h(
        "div",
        { class: "identity", "data-testid": "team-identity", "data-team": id },
        h("strong", {}, h("span", { class: "team-tag" }, t("team.tag")), team?.name ?? id),
        h("span", { class: "muted small" },
          [team?.org, t("team.members_count", { count }), team?.lifespanMs ? t("team.default_lifespan", { value: formatDelay(team.lifespanMs) }) : null]
            .filter(Boolean).join(" · ")),
      ),
      h("button", { class: "secondary", "data-testid": "team-manage", onclick: () => this.dialogs.team(id) }, t("team.manage")),
    );
    const problem = team?.problem ?? null;
    fill(this.convWarning, problem ? problemBanner(problem) : null);
    if (problem) this.setComposer(t("team.blocked"));
    else if (!team || !team.member || team.closed) this.setComposer(t("team.left"));
    else this.setComposer(null);
    this.drawThread(this.client.state.thread(id), team?.events ?? [], team);
  }

  /** Messages and (for a team) membership changes, in time order, by day. */
  private drawThread(thread: MessageRecord[], events: TeamEvent[], team: TeamView | undefined): void {
    const atBottom = this.messages.scrollHeight - this.messages.scrollTop - this.messages.clientHeight < 40;
    const entries: Array<{ at: number; el: () => HTMLElement }> = [
      ...thread.map((m) => ({ at: m.at, el: () => this.bubble(m, team) })),
      ...events.map((ev) => ({ at: ev.at, el: () => this.teamEvent(ev, team!) })),
    ];
    entries.sort((a, b) => a.at - b.at);
    const items: HTMLElement[] = [];
    let day = -1;
    for (const e of entries) {
      const d = startOfDay(e.at);
      if (d !== day) {
        day = d;
        items.push(h("li", { class: "day", "data-testid": "day-separator" }, h("span", {}, dayLabel(e.at))));
      }
      items.push(e.el());
    }
    if (entries.length === 0) items.push(h("li", { class: "empty muted" }, t("conv.empty")));
    fill(this.messages, items);
    if (atBottom) this.messages.scrollTop = this.messages.scrollHeight;
  }

  private teamEvent(ev: TeamEvent, team: TeamView): HTMLElement {
    return h(
      "li",
      { class: "team-event", "data-testid": "team-event", "data-op": ev.op, "data-user": ev.user, "data-seq": ev.seq },
      h("span", {}, eventText(ev, team, this.nameOf), " · ", h("time", { title: formatDateTime(ev.at) }, formatTime(ev.at))),
    );
  }

  private bubble(m: MessageRecord, team: TeamView | undefined): HTMLElement {
    const expired = m.expired === true || (m.expiresAt !== undefined && m.expiresAt <= Date.now());
    const gone = m.recalled === true || expired;
    const canRecall = m.outgoing && !gone && m.status !== "failed" && m.fromUser === this.client.me;
    const urgent = m.urgent === true && !gone;
    return h(
      "li",
      {
        class: `msg ${m.outgoing ? "out" : "in"}${gone ? " gone" : ""}${urgent ? " urgent" : ""}${urgent && !m.outgoing && !m.ack ? " ringing" : ""}${m.notice && !gone ? " notice" : ""}`,
        "data-testid": "message",
        "data-id": m.id,
        "data-status": m.status,
        "data-recalled": m.recalled ? "true" : null,
        "data-expired": expired ? "true" : null,
        "data-urgent": m.urgent ? "true" : null,
        "data-notice": m.notice && !gone ? "true" : null,
        "data-acknowledged": m.urgent ? String(m.ack !== undefined) : null,
      },
      urgent ? urgentTag() : null,
      team && !m.outgoing ? h("span", { class: "sender small", "data-testid": "sender", "data-user": m.fromUser }, this.nameOf(m.fromUser)) : null,
      m.role && !m.outgoing
        ? h("span", { class: "to-role small", "data-testid": "to-role", "data-role": m.role },
          t("urgent.to_role", { role: roleName(this.client, m.role) }),
          m.step ? ` · ${t("urgent.backup", { step: m.step })}` : "")
        : null,
      m.notice && !gone
        ? noticeCard(m.notice, isService(this.client.state.peers.get(m.fromUser)) || m.outgoing ? undefined : this.nameOf(m.fromUser))
        : h("p", { class: "body" }, m.recalled ? h("em", { "data-testid": "recalled" }, t("msg.recalled")) : expired ? h("em", { "data-testid": "expired" }, t("msg.expired")) : m.body),
      gone ? null : attachmentsBlock(this.client, m, this.viewer),
      h("span", { class: "meta muted small" },
        h("time", { title: formatDateTime(m.at) }, formatTime(m.at)),
        m.outgoing && m.fromDevice !== this.client.device ? ` · ${t("msg.other_device")}` : "",
        !gone && m.expiresAt !== undefined
          ? h("span", { class: "expiry", "data-testid": "expiry", "data-expires": m.expiresAt, title: formatDateTime(m.expiresAt) },
            ` · ${t("msg.expires_in", { delay: formatDelay(m.expiresAt - Date.now()) })}`)
          : null,
        m.outgoing && !gone ? this.receipts(m, team) : null,
        m.outgoing && !gone ? this.readMark(m, team) : null,
        urgent && m.outgoing ? escalationLine(m, this.nameOf, this.roleOf) : null,
        urgent && !m.outgoing ? ackLine(this.client, m, this.nameOf, this.acknowledge) : null,
        canRecall ? h("button", { class: "link small recall", "data-testid": "recall", onclick: () => this.recall(m) }, t("msg.recall")) : null),
    );
  }

  /**
   * Who read one of our messages (SPEC §13.5 read notices): "✓✓ Lu" in a
   * 1:1 conversation; "✓✓ Lu par N" in a team, unfolding to the names.
   * Nothing while nobody did (or those who did keep receipts off).
   */
  private readMark(m: MessageRecord, team: TeamView | undefined): HTMLElement | null {
    const readers = (m.readBy ?? []).filter((u) => u !== this.client.me);
    if (readers.length === 0) return null;
    if (!team) return h("span", { class: "read-mark", "data-testid": "read-mark", "data-count": readers.length }, ` · ✓✓ ${t("msg.read")}`);
    const key = `read:${m.id}`;
    return h(
      "details",
      {
        class: "read-mark",
        "data-testid": "read-mark",
        "data-count": readers.length,
        open: this.unfolded.has(key),
        ontoggle: (ev: Event) => {
          if ((ev.target as HTMLDetailsElement).open) this.unfolded.add(key);
          else this.unfolded.delete(key);
        },
      },
      h("summary", {}, ` · ✓✓ ${t("msg.read_by", { count: readers.length })}`),
      h("ul", {}, readers.map((u) => h("li", { "data-testid": "read-by-user", "data-user": u }, this.nameOf(u)))),
    );
  }

  private receipts(m: MessageRecord, team: TeamView | undefined): HTMLElement {
    if (m.status === "pending") {
      const why = this.client.held.get(m.id);
      const text = why instanceof KeyChangePending ? t("msg.pending_keys") : why instanceof TeamProblemError ? t("team.blocked") : t("msg.pending");
      // The cause, for whoever hovers (the protocol's words, not a sentence).
      return h("span", { class: "receipt pending", "data-testid": "receipt", "data-state": "pending", title: why?.message ?? "" }, " · ◷ ", text);
    }
    if (m.status === "failed") {
      const name = displayName(this.client.state.peers.get(m.peer), m.peer);
      let reason = failureText(m.failure ?? "", name);
      if (m.failure === "replies_refused") {
        // Whom to call instead (SPEC §17.5): the reply line of the service's notices.
        const reply = this.client.state.lastReply(m.peer);
        if (reply !== undefined) reason = `${reason} ${t("notice.reply", { reply })}`;
      }
      return h("span", { class: "receipt failed", "data-testid": "receipt", "data-state": "failed", "data-failure": m.failure ?? null }, " · ✗ ", t("msg.failed", { reason }));
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
      summary = ` · ${t("msg.accepted")}`;
      state = "accepted";
    } else {
      summary = ` · ✓ ${total > 1 || team ? t("msg.delivered_count", { count: delivered.length, total }) : t("msg.delivered")}`;
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
  if (code === "replies_refused") return t("error.replies_refused");
  return describeError(new ProtocolError(code));
}

function refusalText(reason: string): string {
  return reason === "sender_unverified" || reason === "undecryptable" ? t(`refusal.${reason}`) : reason;
}
