/**
 * Byte and text helpers shared by the protocol modules (no libsodium here).
 *
 * Text rules follow the Python reference: "characters" are Unicode code
 * points (SPEC §1), strings are encoded as strict UTF-8 (a lone surrogate,
 * which Python's `str.encode()` refuses, is refused here too, never
 * replaced), and strings compare in code point order, which is the byte
 * order of their UTF-8 (SPEC §8).
 */

const HEX = "0123456789abcdef";

/** Lowercase hex of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    out += HEX[b >> 4]! + HEX[b & 15]!;
  }
  return out;
}

/** The bytes of a hex string (either case); throws TypeError if it is not hex. */
export function fromHex(text: string): Uint8Array {
  if (text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) throw new TypeError("not a hex string");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** `parts` one after the other, in a new array. */
export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Byte equality, NOT constant-time: for public values (ids, public keys).
 * Secrets compare with `constantTimeEqual` (crypto.ts). */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Python's `bytes` ordering: lexicographic, a prefix first. */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** True if `s` has no lone surrogate, i.e. it encodes to UTF-8 as it is. */
export function isWellFormed(s: string): boolean {
  return !LONE_SURROGATE.test(s);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Strict UTF-8 of `s`; throws TypeError on a lone surrogate (as Python's
 * `str.encode()` does) instead of writing U+FFFD. */
export function utf8Encode(s: string): Uint8Array {
  if (!isWellFormed(s)) throw new TypeError("string holds a lone surrogate: not encodable as UTF-8");
  return encoder.encode(s);
}

/** Strict UTF-8 decoding (a leading BOM is kept as U+FEFF, as in Python);
 * throws TypeError on invalid UTF-8. */
export function utf8Decode(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

/** Number of code points in `s` (Python's `len(str)`), not UTF-16 units. */
export function codePointLength(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

/** Python's `str` ordering (code points; equal to UTF-8 byte order): -1, 0 or 1.
 * JavaScript's `<` compares UTF-16 units, which differs above U+FFFF. */
export function compareCodePoints(a: string, b: string): number {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done) return y.done ? 0 : -1;
    if (y.done) return 1;
    const cx = x.value.codePointAt(0)!;
    const cy = y.value.codePointAt(0)!;
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}
