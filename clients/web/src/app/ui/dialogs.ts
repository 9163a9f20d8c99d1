/**
 * The dialogs over the main view: directory search (to start a
 * conversation), safety number and "verified in person", own devices
 * (revocation, link codes) and settings (language, notifications, the
 * application's fingerprint, identity, lock). One shows at a time.
 */
import { authorityFingerprint } from "../../protocol/attestation";
import { MIN_SEARCH_CHARS } from "../../protocol/frames";
import type { MissClient } from "../client";
import { LANGUAGES, formatDate, formatDateTime, language, setLanguage, t } from "../i18n";
import { bundleHash } from "../bundle";
import { fill, h } from "./dom";
import { displayName } from "./main_view";
import { describeError } from "./screens";
import { UnverifiedPeer } from "../trust";

export class Dialogs {
  readonly root = h("div", { class: "overlay", hidden: true, "data-testid": "dialog-overlay" });

  constructor(
    private readonly client: MissClient,
    private readonly openConversation: (user: string) => void,
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

  search(): void {
    const results = h("ul", { class: "results", "data-testid": "search-results" });
    const status = h("p", { class: "muted small", role: "status" });
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
        fill(results, found.map((e) =>
          h("li", {},
            h("button", {
              class: "result",
              "data-testid": "search-result",
              "data-user": e.user,
              onclick: () => {
                this.client.startConversation(e.user)
                  .then(() => {
                    this.close();
                    this.openConversation(e.user);
                  })
                  .catch((err) => (status.textContent = this.lookupError(err, e.name)));
              },
            },
            h("strong", {}, e.name),
            h("span", { class: "muted small" }, [e.profession, e.organisation, t("search.rpps", { rpps: e.rpps })].filter(Boolean).join(" · "))),
          )));
      } catch (err) {
        if (mine === asked) status.textContent = describeError(err);
      }
    };
    let timer: ReturnType<typeof setTimeout> | undefined;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => void run(), 250);
    });
    this.show("search-dialog", t("search.heading"), h("label", {}, t("search.label"), input), status, results);
    input.focus();
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
        h("p", { class: "small" }, t("settings.authority", { fingerprint: authorityFingerprint(profile.authority) }))),
      h("section", {}, h("h3", {}, t("settings.language")), languages),
      h("section", {}, h("h3", {}, t("settings.notifications")), notifyState, notifyButton),
      h("section", {}, h("h3", {}, t("settings.bundle")), h("p", { class: "muted small" }, t("settings.bundle_explain")), hash),
      h("button", { class: "secondary", "data-testid": "lock", onclick: () => this.lock() }, t("settings.lock")),
    );
  }
}
