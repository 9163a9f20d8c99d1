/**
 * The screens before the app is unlocked: enrolling this browser as a
 * device, and unlocking it with its passphrase. Each reports success
 * through a callback and shows every failure as a sentence in the form.
 */
import { AttachmentError, AttachmentRefused, AttachmentUnavailable } from "../attachments";
import { ProtocolError } from "../../protocol/errors";
import { RotationRefused } from "../../protocol/rotation";
import { WrongAuthority } from "../../protocol/session";
import { ConnectionLost, TeamProblemError } from "../client";
import { BadAuthorityKey, Unreachable, defaultServer, enroll, type Enrolled } from "../enroll";
import { t, type MessageKey } from "../i18n";
import { MIN_PASSPHRASE_CHARS, Vault, WrongPassphrase, erase, type Profile } from "../vault";
import { field, h } from "./dom";

/** The sentence for an error met while connecting or enrolling. */
export function describeError(err: unknown): string {
  if (err instanceof ProtocolError) {
    const seconds = Math.ceil((err.retryAfter ?? 1000) / 1000);
    const known: Record<string, MessageKey> = {
      invalid_code: "error.code_invalid",
      too_many_devices: "error.too_many_devices",
      too_many_connections: "error.too_many_connections",
      storage_unavailable: "error.storage_unavailable",
      not_verified: "error.not_verified",
      auth_failed: "error.auth_failed",
      device_revoked: "error.device_revoked",
      account_suspended: "error.account_suspended",
      session_replaced: "error.session_replaced",
      unsupported_version: "error.unsupported_version",
      unknown_user: "error.unknown_user",
      unknown_team: "error.unknown_team",
      not_member: "error.not_member",
      team_forbidden: "error.team_forbidden",
      team_conflict: "error.team_conflict",
      team_full: "error.team_full",
      bad_team_record: "error.bad_team_record",
      team_changed: "error.team_changed",
      unknown_role: "error.unknown_role",
      role_vacant: "error.role_vacant",
      role_reserved: "error.role_reserved",
      role_forbidden: "error.role_forbidden",
      role_full: "error.role_full",
      policy_out_of_bounds: "error.policy_out_of_bounds",
      not_recipient: "error.not_recipient",
      urgent_limit: "error.urgent_limit",
      too_many_attachments: "error.too_many_attachments",
      blob_too_large: "error.blob_too_large",
      blob_quota: "error.blob_quota",
      unknown_blob: "error.unknown_blob",
      replies_refused: "error.replies_refused",
    };
    if (err.code === "rate_limited") return t("error.rate_limited", { seconds });
    const key = known[err.code];
    return key ? t(key) : t("error.generic", { message: err.code });
  }
  if (err instanceof AttachmentRefused || err instanceof AttachmentUnavailable) return err.message;
  if (err instanceof AttachmentError) return t("att.corrupt");
  if (err instanceof WrongAuthority) return t("error.authority_mismatch");
  if (err instanceof RotationRefused) return t("authority.rotation_refused");
  if (err instanceof ConnectionLost) return t("error.offline");
  if (err instanceof TeamProblemError) return err.problem === "tampered" ? t("team.tampered") : t("team.diverged");
  if (err instanceof BadAuthorityKey) return t("error.authority_invalid");
  if (err instanceof Unreachable) return t("error.unreachable");
  if (err instanceof WrongPassphrase) return t("error.passphrase_wrong");
  return t("error.generic", { message: err instanceof Error ? err.message : String(err) });
}

function errorLine(): HTMLParagraphElement {
  return h("p", { class: "form-error", role: "alert", "data-testid": "form-error", hidden: true });
}

function showError(el: HTMLElement, text: string): void {
  el.textContent = text;
  el.hidden = false;
}

export function enrollScreen(onEnrolled: (e: Enrolled) => void): HTMLElement {
  const error = errorLine();
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "enroll-submit" }, t("enroll.submit"));
  const form = h(
    "form",
    { class: "card", "data-testid": "enroll-form", autocomplete: "off" },
    h("h1", {}, t("enroll.heading")),
    h("p", { class: "muted" }, t("enroll.intro")),
    h("label", {}, t("enroll.server"), h("input", { name: "server", value: defaultServer(), required: true, "data-testid": "enroll-server" })),
    h("label", {}, t("enroll.code"), h("input", { name: "code", required: true, "data-testid": "enroll-code", autocapitalize: "characters", spellcheck: "false" })),
    h("label", {}, t("enroll.authority"), h("input", { name: "authority", required: true, "data-testid": "enroll-authority", spellcheck: "false" })),
    h("label", {}, t("enroll.label"), h("input", { name: "label", value: t("enroll.label_default"), maxlength: 64, "data-testid": "enroll-label" })),
    h("label", {}, t("enroll.passphrase", { min: MIN_PASSPHRASE_CHARS }), h("input", { name: "passphrase", type: "password", required: true, autocomplete: "new-password", "data-testid": "enroll-passphrase" })),
    h("label", {}, t("enroll.passphrase_again"), h("input", { name: "passphrase2", type: "password", required: true, autocomplete: "new-password", "data-testid": "enroll-passphrase2" })),
    h("p", { class: "muted small" }, t("enroll.passphrase_hint")),
    error,
    submit,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.hidden = true;
    const server = field(form, "server").trim();
    const passphrase = field(form, "passphrase");
    if (!/^wss?:\/\/[^\s]+$/.test(server)) return showError(error, t("error.server_invalid"));
    if (!field(form, "code").trim()) return showError(error, t("error.code_missing"));
    if ([...passphrase].length < MIN_PASSPHRASE_CHARS) return showError(error, t("error.passphrase_short", { min: MIN_PASSPHRASE_CHARS }));
    if (passphrase !== field(form, "passphrase2")) return showError(error, t("error.passphrase_mismatch"));
    submit.disabled = true;
    submit.textContent = t("enroll.working");
    enroll({ server, code: field(form, "code"), authority: field(form, "authority"), label: field(form, "label").trim().slice(0, 64), passphrase })
      .then(onEnrolled)
      .catch((err: unknown) => {
        showError(error, describeError(err));
        submit.disabled = false;
        submit.textContent = t("enroll.submit");
      });
  });
  return h("main", { class: "screen" }, form);
}

export function unlockScreen(profile: Profile, onUnlocked: (v: Vault) => void, onErased: () => void): HTMLElement {
  const error = errorLine();
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "unlock-submit" }, t("unlock.submit"));
  const input = h("input", { name: "passphrase", type: "password", required: true, autocomplete: "current-password", autofocus: true, "data-testid": "unlock-passphrase" });
  const form = h(
    "form",
    { class: "card", "data-testid": "unlock-form" },
    h("h1", {}, t("unlock.heading")),
    h("p", { class: "muted" }, t("unlock.who", { device: profile.label || profile.device, user: profile.user })),
    h("label", {}, t("unlock.passphrase"), input),
    error,
    submit,
    h("button", {
      type: "button",
      class: "link danger",
      "data-testid": "unlock-forget",
      onclick: () => {
        if (confirm(t("unlock.forget_confirm"))) void erase().then(onErased);
      },
    }, t("unlock.forget")),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    submit.textContent = t("unlock.working");
    // Let the button repaint before Argon2id takes the thread.
    setTimeout(() => {
      Vault.unlock(input.value)
        .then(onUnlocked)
        .catch((err: unknown) => {
          showError(error, describeError(err));
          input.select();
          submit.disabled = false;
          submit.textContent = t("unlock.submit");
        });
    }, 30);
  });
  return h("main", { class: "screen" }, form);
}
