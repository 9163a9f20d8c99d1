/**
 * Notices (SPEC §17.3, revision 7), as protocol/notices.py: what a system
 * (a service account, SPEC §17.1) tells a clinician, carried in a `text`
 * plaintext under the key `notice`, beside a `body` that renders it as
 * plain text for clients that predate it.
 *
 * A notice is a map, keys in this order: `title` (1–200 characters),
 * `event` (1–32 of `[a-z_]`), `at` (ms since the epoch, the sender's
 * statement), `fields` (0–32 pairs `[label, value]`: label 1–64
 * characters, value 0–512) and, optional, `reply` (1–256 characters: whom
 * to call instead of replying). Lengths count code points, as Python's
 * `len` does. `noticeFromMap` refuses anything else with a NoticeError;
 * `unpackPlaintext` (crypto.ts) turns that into an EnvelopeError.
 *
 * A client shows a notice as a card from the map, never from `body`.
 */
import { codePointLength } from "./bytes";
import { MsgMap, type MsgValue } from "./codec";

/** The `profession` of a service's attestation (SPEC §17.1), and only of a service's. */
export const SERVICE_PROFESSION = "service";
/** The prefix of a service's identifier, in the attestation's `rpps`. */
export const SERVICE_ID_PREFIX = "svc:";
/** Bounds of SPEC §17.3, in code points (names as protocol/notices.py). */
export const MAX_TITLE = 200;
export const MAX_EVENT = 32;
export const MAX_FIELDS = 32;
export const MAX_LABEL = 64;
export const MAX_VALUE = 512;
export const MAX_REPLY = 256;
/** What precedes `reply` on a card and in the text rendering (French). */
export const REPLY_PREFIX = "Pour toute question : ";
/** The events of revision 7; a later name is shown as `other`. */
export const EVENTS = ["admission", "transfer", "discharge", "death", "update", "other"] as const;
export type NoticeEvent = (typeof EVENTS)[number];

const EVENT_RE = /^[a-z_]{1,32}$/;
const SERVICE_ID_RE = /^svc:[a-z0-9-]{1,28}$/;

/** A notice as its map carries it. */
export interface Notice {
  title: string;
  /** As sent; `shownEvent` maps an unknown one to `other`. */
  event: string;
  /** ms since the epoch: when the event happened (the sender's word). */
  at: number;
  /** `[label, value]` pairs, shown in this order. */
  fields: Array<[string, string]>;
  /** Whom to call instead of replying. */
  reply?: string;
}

/** The French label of each event (protocol/notices.py's EVENT_LABELS). */
export const EVENT_LABELS: Readonly<Record<NoticeEvent, string>> = {
  admission: "Admission",
  transfer: "Mutation",
  discharge: "Sortie",
  death: "Décès",
  update: "Mise à jour",
  other: "Autre",
};

/** A notice map that breaks the types or bounds of SPEC §17.3. */
export class NoticeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NoticeError";
  }
}

/** True if `profession` (from a verified attestation) names a service. */
export function isServiceProfession(profession: string | undefined): boolean {
  return profession === SERVICE_PROFESSION;
}

/** True if `id` is a service identifier (`svc:` and 1–28 of `[a-z0-9-]`). */
export function isServiceId(id: string): boolean {
  return SERVICE_ID_RE.test(id);
}

/** The event as a client of revision 7 shows it: a known one, or `other`. */
export function shownEvent(event: string): NoticeEvent {
  return (EVENTS as readonly string[]).includes(event) ? (event as NoticeEvent) : "other";
}

function text(v: unknown, min: number, max: number): v is string {
  if (typeof v !== "string") return false;
  const n = codePointLength(v);
  return n >= min && n <= max;
}

/** Throws NoticeError unless `n` keeps every bound of SPEC §17.3. */
export function checkNotice(n: Notice): Notice {
  if (!text(n.title, 1, MAX_TITLE)) throw new NoticeError("bad notice: title");
  if (typeof n.event !== "string" || !EVENT_RE.test(n.event)) throw new NoticeError("bad notice: event");
  if (typeof n.at !== "number" || !Number.isSafeInteger(n.at)) throw new NoticeError("bad notice: at");
  if (!Array.isArray(n.fields) || n.fields.length > MAX_FIELDS) throw new NoticeError("bad notice: fields");
  for (const pair of n.fields) {
    if (!Array.isArray(pair) || pair.length !== 2 || !text(pair[0], 1, MAX_LABEL) || !text(pair[1], 0, MAX_VALUE)) {
      throw new NoticeError("bad notice: a field");
    }
  }
  if (n.reply !== undefined && !text(n.reply, 1, MAX_REPLY)) throw new NoticeError("bad notice: reply");
  return n;
}

/** The canonical map of a notice (keys in the order of SPEC §17.3). */
export function noticeToMap(n: Notice): MsgMap {
  checkNotice(n);
  const m = new MsgMap([
    ["title", n.title],
    ["event", n.event],
    ["at", n.at],
    ["fields", n.fields.map(([label, value]) => [label, value])],
  ]);
  if (n.reply !== undefined) m.set("reply", n.reply);
  return m;
}

/**
 * A notice from its decoded map; throws NoticeError unless it is a map with
 * `title`, `event`, `at` and `fields` of the right types and bounds, and a
 * `reply` that is absent or a string within bounds (nil is refused). Unknown
 * keys are ignored. `at` beyond ±(2^53 − 1) is refused (the Python accepts
 * any msgpack integer), as the plaintext's `sent_at` is.
 */
export function noticeFromMap(v: MsgValue): Notice {
  if (!(v instanceof MsgMap)) throw new NoticeError("bad notice: not a map");
  for (const k of ["title", "event", "at", "fields"]) {
    if (!v.has(k)) throw new NoticeError(`bad notice: no '${k}'`);
  }
  const fields = v.get("fields");
  if (!Array.isArray(fields)) throw new NoticeError("bad notice: fields");
  const n: Notice = {
    title: v.get("title") as string,
    event: v.get("event") as string,
    at: v.get("at") as number,
    fields: fields.map((pair) => (Array.isArray(pair) ? [...pair] : pair) as [string, string]),
  };
  // Present, `reply` is a string: nil is refused (as the Python does).
  if (v.has("reply")) n.reply = v.get("reply") as string;
  return checkNotice(n);
}

/** The French label of `event` (« Autre » for a later name). */
export function eventLabel(event: string): string {
  return EVENT_LABELS[shownEvent(event)];
}

/**
 * The notice as French plain text (protocol/notices.py `render_text`), the
 * `body` a notice is sent with: the title, one `label : value` line per
 * field (`label :` for an empty value), then `Pour toute question : reply`
 * when there is a reply; joined by LF, no final newline.
 */
export function renderText(n: Notice): string {
  const lines = [n.title, ...n.fields.map(([label, value]) => (value ? `${label} : ${value}` : `${label} :`))];
  if (n.reply !== undefined) lines.push(REPLY_PREFIX + n.reply);
  return lines.join("\n");
}
