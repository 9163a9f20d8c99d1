/**
 * The dialogs over the main view: directory search (to start a
 * conversation), a new care team, a team's members (admin actions, adding
 * from the directory, leaving), a confirmation, safety number and
 * "verified in person", own devices (revocation, link codes) and settings
 * (language, read receipts, notifications, the application's fingerprint,
 * identity, lock). One shows at a time.
 */
import { authorityFingerprint } from "../../protocol/attestation";
import { MIN_SEARCH_CHARS } from "../../protocol/frames";
import type { DirectoryEntry, MissClient } from "../client";
import { LANGUAGES, formatDate, formatDateTime, language, setLanguage, t } from "../i18n";
import { bundleHash } from "../bundle";
import { fill, h } from "./dom";
import { displayName } from "./main_view";
import { describeError } from "./screens";
import { UnverifiedPeer } from "../trust";
import { chosenLifespan, lifespanSelect, problemBanner } from "./team_ui";
import { roleRow } from "./oncall_ui";
import { isService, serviceTag } from "./notice_ui";
import type { RoleInfo } from "../../protocol/oncall";

export class Dialogs {
  readonly root = h("div", { class: "overlay", hidden: true, "data-testid": "dialog-overlay" });
  /** Team members looked up once for their names (never again in a loop). */
  private readonly looked = new Set<string>();

  constructor(
    private readonly client: MissClient,
    private readonly openConversation: (id: string) => void,
    private readonly lock: () => void,
  ) {
    this.root.addEventListener("click", (ev) => {
      if (ev.target === this.root) this.close();
    });
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && !this.root.hidden) this.close();
    });
  }

  close(): void {
    this.root.hidden = true;
    fill(this.root);
  }

  private show(testid: string, title: string, ...body: HTMLElement[]): HTMLElement {
    const dialog = h(
      "div",
      { class: "dialog card", role: "dialog", "aria-modal": "true", "aria-label": title, "data-testid": testid },
      h("header", {}, h("h2", {}, title), h("button", { class: "icon", title: t("nav.close"), "data-testid": "dialog-close", onclick: () => this.close() }, "✕")),
      ...body,
    );
    fill(this.root, dialog);
    this.root.hidden = false;
    return dialog;
  }

  /** Ask before doing something that cannot be undone; `act` on "yes". */
  confirm(question: string, yes: string, act: () => void): void {
    this.show(
      "confirm-dialog",
      yes,
      h("p", {}, question),
      h("div", { class: "actions" },
        h("button", { class: "secondary", "data-testid": "confirm-cancel", onclick: () => this.close() }, t("confirm.cancel")),
        h("button", {
          class: "danger",
          "data-testid": "confirm-ok",
          onclick: () => {
            this.close();
            act();
          },
        }, yes)),
    );
  }

  search(): void {
    const { box, status } = this.directory((e, status) => {
      this.client.startConversation(e.user)
        .then(() => {
          this.close();
          this.openConversation(e.user);
        })
        .catch((err) => (status.textContent = this.lookupError(err, e.name)));
    });
    const roles = this.client.oncallHub ? this.roles(box.querySelector("input")!) : null;
    this.show("search-dialog", t("search.heading"), box, status, ...(roles ? [roles] : []));
    box.querySelector("input")?.focus();
  }

  /**
   * The on-call roles of the directory (SPEC §14.3), searched with the same
   * field: each with its holders now, "Écrire" (a conversation with the
   * role), "Prendre la garde" / "Rejoindre" / "Quitter". With the field
   * empty: the roles we hold ("Mes gardes").
   */
  private roles(input: HTMLInputElement): HTMLElement {
    const list = h("ul", { class: "results roles", "data-testid": "role-results" });
    const heading = h("h3", {}, t("role.heading"));
    const status = h("p", { class: "muted small", role: "status", "data-testid": "role-status" });
    const names = new Set<string>();
    const nameOf = (user: string): string => {
      const record = this.client.state.peers.get(user);
      if (record === undefined && !names.has(user) && !this.looked.has(user)) {
        names.add(user);
        this.looked.add(user);
        void this.client.lookup(user).then(() => void run(), () => undefined);
      }
      return displayName(record, user);
    };
    let asked = 0;
    let shown: RoleInfo[] = [];
    const draw = (roles: RoleInfo[]): void => {
      shown = roles;
      fill(list, roles.map((info) => roleRow(this.client, info, nameOf, actions)));
    };
    const act = (work: Promise<RoleInfo>, done: (info: RoleInfo) => string): void => {
      status.textContent = "…";
      work.then((info) => {
        draw(shown.map((r) => (r.role === info.role ? info : r)));
        status.textContent = done(info);
      }, (err) => (status.textContent = describeError(err)));
    };
    const actions = {
      write: (info: RoleInfo) => {
        this.client.state.conversation(info.role);
        this.close();
        this.openConversation(info.role);
      },
      take: (info: RoleInfo, join: boolean) => act(this.client.oncall.take(info.role, join), (r) => t("role.taken", { role: r.name })),
      leave: (info: RoleInfo) => act(this.client.oncall.leave(info.role), (r) => t("role.left", { role: r.name })),
    };
    const run = async (): Promise<void> => {
      const query = input.value.trim();
      const mine = ++asked;
      try {
        const found = query.length === 0 ? await this.client.oncall.mine() : await this.client.oncall.search(query);
        if (mine !== asked) return;
        heading.textContent = query.length === 0 ? t("role.mine") : t("role.heading");
        status.textContent = found.length ? "" : query.length === 0 ? t("role.none_mine") : t("role.none");
        draw(found);
      } catch (err) {
        if (mine === asked) status.textContent = describeError(err);
      }
    };
    let timer: ReturnType<typeof setTimeout> | undefined;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => void run(), 250);
    });
    void run();
    return h("section", { class: "role-search", "data-testid": "role-search" }, heading, h("p", { class: "muted small" }, t("role.search_hint")), list, status);
  }

  /**
   * The directory search (SPEC §8: attested entries only): a field and its
   * results; `pick` is called with the entry clicked and the status line.
   * `mark` may label an entry (and disables it), e.g. "already a member".
   */
  private directory(
    pick: (e: DirectoryEntry, status: HTMLElement) => void,
    mark: (e: DirectoryEntry) => string | null = () => null,
  ): { box: HTMLElement; status: HTMLElement } {
    const results = h("ul", { class: "results", "data-testid": "search-results" });
    const status = h("p", { class: "muted small", role: "status", "data-testid": "search-status" });
    const input = h("input", { type: "search", "data-testid": "search-input", autofocus: true, maxlength: 64, "aria-label": t("search.label") });
    let asked = 0;
    const run = async (): Promise<void> => {
      const query = input.value.trim();
      const mine = ++asked;
      if (query.length < MIN_SEARCH_CHARS) {
        fill(results);
        status.textContent = "";
        return;
      }
      status.textContent = t("search.searching");
      try {
        const found = await this.client.search(query);
        if (mine !== asked) return;
        status.textContent = found.length ? "" : t("search.none");
        fill(results, found.map((e) => {
          const note = mark(e);
          return h("li", {},
            h("button", {
              class: "result",
              "data-testid": "search-result",
              "data-user": e.user,
              disabled: note !== null,
              onclick: () => pick(e, status),
            },
            h("strong", {}, isService(e) ? serviceTag() : null, e.name, note ? h("span", { class: "muted small" }, ` (${note})`) : null),
            // A service (SPEC §17.1): its organisation, never a profession or an RPPS.
            h("span", { class: "muted small" }, isService(e) ? e.organisation : [e.profession, e.organisation, t("search.rpps", { rpps: e.rpps })].filter(Boolean).join(" · "))),
          );
        }));
      } catch (err) {
        if (mine === asked) status.textContent = describeError(err);
      }
    };
    let timer: ReturnType<typeof setTimeout> | undefined;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => void run(), 250);
    });
    return { box: h("div", {}, h("label", {}, t("search.label"), input), results), status };
  }

  /** A new care team (SPEC §13.1): name, organisation, default lifespan. */
  newTeam(): void {
    const name = h("input", { name: "name", required: true, maxlength: 64, autofocus: true, "data-testid": "team-name" });
    const org = h("input", { name: "org", maxlength: 128, "data-testid": "team-org" });
    const lifespan = lifespanSelect("team-lifespan", undefined, t("team.lifespan"));
    const error = h("p", { class: "form-error", role: "alert", "data-testid": "team-error", hidden: true });
    const submit = h("button", { type: "submit", class: "primary", "data-testid": "team-create" }, t("team.create"));
    const form = h("form", { autocomplete: "off" },
      h("label", {}, t("team.name"), name),
      h("label", {}, t("team.org"), org),
      h("label", {}, t("team.lifespan"), lifespan),
      error,
      submit);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = name.value.trim();
      if (!text || [...text].length > 64) {
        error.textContent = t("team.name_missing");
        error.hidden = false;
        return;
      }
      error.hidden = true;
      submit.disabled = true;
      submit.textContent = t("team.creating");
      this.client.createTeam(text, org.value.trim(), chosenLifespan(lifespan))
        .then((team) => {
          this.close();
          this.openConversation(team.id);
        })
        .catch((err) => {
          error.textContent = describeError(err);
          error.hidden = false;
          submit.disabled = false;
          submit.textContent = t("team.create");
        });
    });
    this.show("new-team-dialog", t("team.new_heading"), form);
    name.focus();
  }

  /**
   * A team's members, admins marked; for an admin, add (from the
   * directory), remove, promote and demote; for any member, leave. Every
   * change is a record this device signs (SPEC §13.2); the list redraws
   * from the verified chain once the hub stored it.
   */
  team(id: string): void {
    const view = this.client.team(id);
    if (!view) return;
    const status = h("p", { class: "muted small", role: "status", "data-testid": "team-status" });
    const me = this.client.me;
    const name = (user: string): string => displayName(this.client.state.peers.get(user), user);
    const unknown = view.members.filter((user) => !this.client.state.peers.has(user) && !this.looked.has(user));
    if (unknown.length) {
      for (const user of unknown) this.looked.add(user);
      // Members never met: their attested names, then this list again.
      void Promise.allSettled(unknown.map((user) => this.client.lookup(user))).then(() => {
        if (this.root.querySelector(`[data-testid="team-dialog"]`)) this.team(id);
      });
    }
    const act = (work: Promise<void>): void => {
      status.textContent = "…";
      work.then(() => this.team(id)).catch((err) => {
        this.team(id);
        const again = this.root.querySelector<HTMLElement>('[data-testid="team-status"]');
        if (again) again.textContent = describeError(err);
      });
    };
    const blocked = view.problem !== null || !view.member || view.closed;
    const isAdmin = view.admin && !blocked;
    const rows = view.members.map((user) => {
      const admin = view.admins.includes(user);
      return h("li", { class: "member", "data-testid": "team-member", "data-user": user, "data-admin": String(admin) },
        h("span", { class: "member-name" },
          h("strong", {}, name(user)),
          user === me ? h("span", { class: "muted small" }, ` (${t("team.you")})`) : null,
          admin ? h("span", { class: "admin-badge", "data-testid": "admin-badge" }, t("team.admin")) : null),
        h("span", { class: "member-actions" },
          isAdmin && user !== me && !admin
            ? h("button", { class: "secondary small", "data-testid": "member-promote", onclick: () => act(this.client.promote(id, user)) }, t("team.promote"))
            : null,
          isAdmin && user !== me && admin
            ? h("button", { class: "secondary small", "data-testid": "member-demote", onclick: () => act(this.client.demote(id, user)) }, t("team.demote"))
            : null,
          isAdmin && user !== me
            ? h("button", {
              class: "danger small",
              "data-testid": "member-remove",
              onclick: () => this.confirm(t("team.remove_confirm", { name: name(user), team: view.name }), t("team.remove"), () => {
                this.team(id);
                act(this.client.removeMember(id, user));
              }),
            }, t("team.remove"))
            : null));
    });
    const add = isAdmin
      ? h("button", { class: "primary", "data-testid": "team-add", onclick: () => this.addMember(id) }, "+ ", t("team.add_member"))
      : null;
    const leave = view.member && !view.closed
      ? h("button", {
        class: "danger",
        "data-testid": "team-leave",
        onclick: () => this.confirm(t("team.leave_confirm", { team: view.name }), t("team.leave"), () => {
          this.team(id);
          act(this.client.leaveTeam(id));
        }),
      }, t("team.leave"))
      : null;
    this.show(
      "team-dialog",
      t("team.heading", { name: view.name }),
      view.problem ? problemBanner(view.problem) : h("span", { hidden: true }),
      h("p", { class: "muted small" }, [view.org, t("team.members_count", { count: view.members.length })].filter(Boolean).join(" · ")),
      h("h3", {}, t("team.members")),
      h("ul", { class: "members", "data-testid": "team-members" }, rows),
      status,
      h("div", { class: "actions" }, add ?? h("span", {}), leave ?? h("span", {})),
    );
  }

  /** Add a member to a team, found in the directory (admins only). */
  private addMember(id: string): void {
    const view = this.client.team(id);
    if (!view) return;
    const { box, status } = this.directory(
      (e, status) => {
        status.textContent = "…";
        this.client.addMember(id, e.user)
          .then(() => {
            this.team(id);
            const again = this.root.querySelector<HTMLElement>('[data-testid="team-status"]');
            if (again) again.textContent = t("team.added", { name: e.name });
          })
          .catch((err) => (status.textContent = this.lookupError(err, e.name)));
      },
      // A service is not made a member of a team (SPEC §17.1 allows refusing it).
      (e) => (view.members.includes(e.user) ? t("team.already_member") : isService(e) ? t("service.not_member") : null),
    );
    this.show("team-add-dialog", t("team.add_heading", { name: view.name }), box, status,
      h("button", { class: "secondary", "data-testid": "team-add-back", onclick: () => this.team(id) }, t("nav.back")));
    box.querySelector("input")?.focus();
  }

  private lookupError(err: unknown, name: string): string {
    if (err instanceof UnverifiedPeer) return t("error.unverified_peer", { name, reason: t(`unverified_reason.${err.reason}`) });
    return describeError(err);
  }

  safety(user: string): void {
    const name = displayName(this.client.state.peers.get(user), user);
    const number = h("p", { class: "safety-number", "data-testid": "safety-number" }, t("safety.loading"));
    const error = h("p", { class: "form-error", role: "alert", hidden: true });
    const verified = this.client.state.peers.get(user)?.verifiedAt;
    const mark = h("button", { class: "primary", "data-testid": "safety-mark", disabled: true }, verified ? t("safety.marked") : t("safety.mark"));
    mark.addEventListener("click", () => {
      mark.disabled = true;
      this.client.markVerified(user)
        .then(() => (mark.textContent = t("safety.marked")))
        .catch((err) => {
          error.textContent = this.lookupError(err, name);
          error.hidden = false;
          mark.disabled = false;
        });
    });
    this.show("safety-dialog", t("safety.heading", { name }), h("p", { class: "muted" }, t("safety.explain", { name })), number, error, mark);
    this.client.safetyNumber(user)
      .then((digits) => {
        number.textContent = digits;
        mark.disabled = false;
      })
      .catch((err) => {
        number.textContent = "";
        error.textContent = this.lookupError(err, name);
        error.hidden = false;
      });
  }

  devices(): void {
    const list = h("ul", { class: "devices", "data-testid": "devices-list" });
    const status = h("p", { class: "muted small", role: "status" });
    const linkOut = h("div", { class: "link-code", "data-testid": "link-code-box" });
    const load = (): void => {
      this.client.devices()
        .then((devices) =>
          fill(list, devices.map((d) => {
            const self = d.device === this.client.device;
            return h("li", { "data-testid": "device", "data-device": d.device },
              h("strong", {}, d.label || t("devices.unnamed")),
              self ? h("span", { class: "badge-this" }, ` (${t("devices.this")})`) : null,
              h("span", { class: "muted small" }, ` ${d.device} · ${t("devices.enrolled", { date: formatDate(d.created) })} · ${d.attested ? t("devices.attested") : t("devices.not_attested")}`),
              h("button", {
                class: "danger small",
                "data-testid": "device-revoke",
                onclick: () => {
                  const question = self ? t("devices.revoke_self_confirm") : t("devices.revoke_confirm", { label: d.label || t("devices.unnamed"), device: d.device });
                  if (!confirm(question)) return;
                  this.client.revoke(d.device)
                    .then(() => {
                      status.textContent = t("devices.revoked");
                      load();
                    })
                    .catch((err) => (status.textContent = describeError(err)));
                },
              }, t("devices.revoke")));
          })))
        .catch((err) => (status.textContent = describeError(err)));
    };
    const link = h("button", {
      class: "secondary",
      "data-testid": "device-link",
      onclick: () => {
        this.client.linkCode()
          .then(({ code, expires }) =>
            fill(linkOut,
              h("p", {}, h("strong", { "data-testid": "link-code" }, t("devices.link_code", { code }))),
              h("p", { class: "muted small" }, t("devices.link_expires", { time: formatDateTime(expires) }))))
          .catch((err) => (status.textContent = describeError(err)));
      },
    }, t("devices.link"));
    this.show("devices-dialog", t("devices.heading"), list, status, link, linkOut);
    load();
  }

  settings(): void {
    const profile = this.client.vault.profile;
    const languages = h("select", { "data-testid": "language-select", "aria-label": t("settings.language") },
      LANGUAGES.map((l) => h("option", { value: l, selected: l === language() }, l === "fr" ? "Français" : "English")));
    languages.addEventListener("change", () => {
      setLanguage(languages.value as "fr" | "en");
      location.reload(); // every text is drawn again in the new language
    });
    const notifyState = h("p", { class: "muted small", "data-testid": "notify-state" });
    const notifyButton = h("button", { class: "secondary", "data-testid": "notify-enable" }, t("settings.notifications_enable"));
    const drawNotify = (): void => {
      if (!("Notification" in window)) {
        notifyState.textContent = t("settings.notifications_unsupported");
        notifyButton.hidden = true;
      } else if (Notification.permission === "granted") {
        notifyState.textContent = t("settings.notifications_on");
        notifyButton.hidden = true;
      } else if (Notification.permission === "denied") {
        notifyState.textContent = t("settings.notifications_denied");
        notifyButton.hidden = true;
      }
    };
    notifyButton.addEventListener("click", () => void Notification.requestPermission().then(drawNotify));
    drawNotify();
    const receipts = h("input", { type: "checkbox", "data-testid": "read-receipts-toggle", checked: this.client.readReceipts });
    receipts.addEventListener("change", () => {
      const on = receipts.checked;
      this.client.setReadReceipts(on).catch(() => (receipts.checked = !on));
    });
    const hash = h("code", { class: "hash", "data-testid": "bundle-hash" }, "…");
    void bundleHash().then((value) => (hash.textContent = value)).catch(() => (hash.textContent = "?"));
    this.show(
      "settings-dialog",
      t("settings.heading"),
      h("section", {},
        h("h3", {}, t("settings.identity")),
        h("p", { class: "small" }, t("settings.user", { user: profile.user })),
        h("p", { class: "small" }, t("settings.device", { device: `${profile.device} (${profile.label})` })),
        h("p", { class: "small" }, t("settings.server", { server: profile.server })),
        h("p", { class: "small" }, t("settings.authority", { fingerprint: authorityFingerprint(profile.authority) })),
        // During a rotation's overlap (SPEC §15): the older keys that still count, and until when.
        ...this.client.authorityKeys.live(Date.now()).map((p) =>
          h("p", { class: "muted small", "data-testid": "authority-previous" },
            t("settings.authority_previous", { fingerprint: authorityFingerprint(p.key), until: formatDateTime(p.until) })))),
      h("section", {}, h("h3", {}, t("settings.language")), languages),
      h("section", {},
        h("h3", {}, t("settings.read_receipts")),
        h("label", { class: "check" }, receipts, " ", t("settings.read_receipts_toggle")),
        h("p", { class: "muted small" }, t("settings.read_receipts_explain"))),
      h("section", {}, h("h3", {}, t("settings.notifications")), notifyState, notifyButton),
      h("section", {}, h("h3", {}, t("settings.bundle")), h("p", { class: "muted small" }, t("settings.bundle_explain")), hash),
      h("button", { class: "secondary", "data-testid": "lock", onclick: () => this.lock() }, t("settings.lock")),
    );
  }
}
