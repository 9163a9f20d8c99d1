/**
 * Services and notices in the interface (SPEC §17): the « Service » badge
 * of an account whose verified attestation says `profession: "service"`
 * (shown with its organisation, never as a clinician: no profession, no
 * RPPS), the card of a notice (event, title, fields in order, event time,
 * whom to call), and what replaces the composer when a service does not
 * accept replies.
 *
 * The card is drawn from the plaintext's `notice` map only, never from
 * `body` (SPEC §17.3: `body` is a fallback for older clients and need not
 * match). Every text is set as text (dom.ts), so nothing a sender writes
 * becomes markup. The event is said in words and with a symbol, not only
 * with the card's colour.
 */
import { isServiceProfession, shownEvent, type Notice, type NoticeEvent } from "../../protocol/notices";
import { formatDateTime, t, type MessageKey } from "../i18n";
import type { PeerRecord } from "../trust";
import { h } from "./dom";

/** A symbol per event, beside its name (hidden from screen readers: the name says it). */
const EVENT_SYMBOL: Record<NoticeEvent, string> = {
  admission: "⊕",
  transfer: "⇄",
  discharge: "⇥",
  death: "✝",
  update: "↻",
  other: "ℹ",
};

/** True if this identity is a service's (its verified attestation says so). */
export function isService(record: Pick<PeerRecord, "profession"> | undefined): boolean {
  return isServiceProfession(record?.profession);
}

/** The « Service » badge. */
export function serviceTag(): HTMLElement {
  return h("span", { class: "service-tag", "data-testid": "service-badge", title: t("service.tag_hint") }, t("service.tag"));
}

/** The event's name in the interface's language (« Admission », « Mutation »…). */
export function eventLabel(event: string): string {
  return t(`notice.event.${shownEvent(event)}` as MessageKey);
}

/** One line for the conversation list: « Admission — Admission de M. DUPONT Jean ». */
export function noticePreview(notice: Notice): string {
  return `${eventLabel(notice.event)} — ${notice.title}`;
}

let cards = 0;
const MAX_DATE_MS = 8.64e15;

/**
 * The card of a notice: an `article` named by its title (a heading), the
 * event in words, the fields as a definition list in their order, the
 * event's time, and the reply line. `from`, when given, names a sender
 * that is not a service (a clinician's notice is shown as theirs).
 */
export function noticeCard(notice: Notice, from?: string): HTMLElement {
  const event = shownEvent(notice.event);
  const titleId = `notice-title-${++cards}`;
  return h(
    "article",
    { class: `notice-card event-${event}`, "data-testid": "notice-card", "data-event": event, "aria-labelledby": titleId },
    h(
      "header",
      { class: "notice-head" },
      h("p", { class: "notice-event", "data-testid": "notice-event" }, h("span", { class: "notice-symbol", "aria-hidden": "true" }, EVENT_SYMBOL[event]), " ", eventLabel(notice.event)),
      h("h3", { class: "notice-title", id: titleId, "data-testid": "notice-title" }, notice.title),
      from ? h("p", { class: "notice-from small", "data-testid": "notice-from" }, t("notice.from", { name: from })) : null,
    ),
    notice.fields.length
      ? h(
          "dl",
          { class: "notice-fields", "data-testid": "notice-fields", "aria-label": t("notice.fields") },
          notice.fields.map(([label, value]) =>
            h("div", { class: "notice-field", "data-testid": "notice-field" }, h("dt", {}, label), h("dd", {}, value || "—")),
          ),
        )
      : null,
    // A date beyond what Date holds (the protocol allows any safe integer) is not shown.
    Math.abs(notice.at) <= MAX_DATE_MS
      ? h(
          "p",
          { class: "notice-at small", "data-testid": "notice-at" },
          t("notice.at"),
          " ",
          h("time", { datetime: new Date(notice.at).toISOString() }, formatDateTime(notice.at)),
        )
      : null,
    notice.reply !== undefined ? h("p", { class: "notice-reply", "data-testid": "notice-reply" }, t("notice.reply", { reply: notice.reply })) : null,
  );
}

/** What stands instead of the composer when a service does not accept replies. */
export function noReplyPanel(reply: string | undefined): HTMLElement {
  return h(
    "div",
    { class: "no-reply", role: "note", "data-testid": "no-reply" },
    h("strong", {}, t("service.no_reply")),
    reply !== undefined ? h("p", { "data-testid": "no-reply-line" }, t("notice.reply", { reply })) : null,
  );
}
