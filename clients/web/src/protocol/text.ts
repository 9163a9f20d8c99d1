/**
 * Text from other people, made safe to show (protocol/text.py).
 *
 * Labels, names, organisations and message bodies come from someone else.
 * `printable` replaces every character that could act on a terminal or
 * disguise what is shown with a visible stand-in, so that whatever someone
 * typed is shown, and cannot act:
 *
 * - C0 controls (U+0000 to U+001F, newline and tab included) become their
 *   Control Pictures (U+2400 to U+241F), DEL becomes U+2421;
 * - C1 controls (U+0080 to U+009F), bidi marks, embeddings, overrides and
 *   isolates (U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069), the
 *   zero-width U+200B and U+FEFF, the line and paragraph separators (U+2028,
 *   U+2029) and lone surrogates become U+FFFD.
 *
 * Everything else (accents, other scripts, emoji with their joiners) is
 * kept. Pure and total; a caller that wants several lines splits on "\n"
 * first. (In the DOM, text set with `textContent` cannot act either; this
 * keeps bidi overrides and look-alike blanks from disguising a name.)
 */

const ACTIVE =
  /[\u0000-\u001f\u007f-\u009f\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** The stand-in of one active character. */
function standIn(ch: string): string {
  const c = ch.charCodeAt(0);
  if (c < 0x20) return String.fromCharCode(0x2400 + c);
  if (c === 0x7f) return "\u2421";
  return "\ufffd";
}

/** `text` with every character that could act replaced by a visible stand-in. */
export function printable(text: string): string {
  return text.replace(ACTIVE, standIn);
}

const CONTROLS = /[\u0000-\u001f\u007f-\u009f]/g;

/**
 * What a user typed in a one-line field (a search, a device label, an
 * invitation code, a team name), made fit for a frame's string field: C0
 * controls (U+0000 to U+001F), DEL and C1 controls (U+0080 to U+009F)
 * removed, then blanks trimmed at both ends. A frame string holding U+0000
 * is malformed_frame to the hub, which closes the connection (SPEC §3.1);
 * the other controls have no place in one line either (a paste can bring a
 * tab or a line break). Everything else is kept. Pure and total.
 */
export function fieldText(text: string): string {
  return text.replace(CONTROLS, "").trim();
}
