/**
 * The msgpack codec of the protocol (SPEC §3.1, §3.2), written for it rather
 * than borrowed, so that it behaves as msgpack-python does in the reference:
 *
 * - `pack` writes the canonical form: the shortest format for every value
 *   (non-negative integers as positive fixint / uint 8/16/32/64, negative
 *   ones as negative fixint / int 8/16/32/64), `str` for strings, `bin` for
 *   bytes, maps in their insertion order: what `msgpack.packb(m,
 *   use_bin_type=True)` writes. A JavaScript `number` is packed as an
 *   integer, never as a float (a timestamp above 2^32 becomes uint 64), and
 *   must be a safe integer; larger integers are `bigint`s. Floats are packed
 *   only when wrapped in `MsgFloat`.
 * - `unpack` reads exactly one msgpack object (trailing bytes refused) and
 *   keeps every distinction the field checks need: integers (`number`, or
 *   `bigint` beyond 2^53 - 1) apart from floats (`MsgFloat`, so that `1.0`
 *   is not `1`), `str` (strict UTF-8) apart from `bin` (`Uint8Array`), ext
 *   values (`MsgExt`). Maps are `MsgMap`s: keys must be `str` or `bin`
 *   (anything else is refused, like `strict_map_key=True`); a map holding
 *   one key twice is refused, at any depth (SPEC §3.1: two readers must not
 *   disagree on which occurrence counts), like the reference's
 *   `object_pairs_hook`. `str` "t" and `bin` "t" are two keys.
 *   Containers nest at most 1024 deep, msgpack-python's limit; an ext of
 *   type -1 (timestamp) must be a valid timestamp and other negative (reserved)
 *   ext types are refused, as msgpack-python does.
 *
 * Any failure of `unpack` is a `MsgpackError`, never anything else.
 */
import { toHex, utf8Decode, utf8Encode } from "./bytes";

/** A msgpack float (float 32 or float 64), kept apart from integers. */
export class MsgFloat {
  constructor(readonly value: number) {}
}

/** A msgpack extension value (never valid in a frame field). */
export class MsgExt {
  constructor(
    readonly type: number,
    readonly data: Uint8Array,
  ) {}
}

/** A decoded msgpack value. */
export type MsgValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | MsgFloat
  | MsgExt
  | MsgValue[]
  | MsgMap;

/**
 * A msgpack map with `str` and `bin` keys, in insertion order (a Python
 * dict decoded with `raw=False`): `"a"` and `b"a"` are different keys;
 * setting a key again keeps its position and replaces its value.
 */
export class MsgMap {
  private readonly items = new Map<string, [string | Uint8Array, MsgValue]>();

  constructor(entries?: Iterable<readonly [string | Uint8Array, MsgValue]>) {
    if (entries) for (const [k, v] of entries) this.set(k, v);
  }

  private static slot(key: string | Uint8Array): string {
    return typeof key === "string" ? "s" + key : "b" + toHex(key);
  }

  /** Number of distinct keys. */
  get size(): number {
    return this.items.size;
  }

  set(key: string | Uint8Array, value: MsgValue): this {
    const slot = MsgMap.slot(key);
    const old = this.items.get(slot);
    this.items.set(slot, [old ? old[0] : key, value]);
    return this;
  }

  /** The value of the `str` key `key`. */
  get(key: string): MsgValue | undefined {
    return this.items.get("s" + key)?.[1];
  }

  has(key: string): boolean {
    return this.items.has("s" + key);
  }

  /** Keys and values, in order (keys `string` for `str`, `Uint8Array` for `bin`). */
  *entries(): IterableIterator<[string | Uint8Array, MsgValue]> {
    for (const [k, v] of this.items.values()) yield [k, v];
  }

  *keys(): IterableIterator<string | Uint8Array> {
    for (const [k] of this.items.values()) yield k;
  }
}

/** Bytes that are not exactly one msgpack object of the supported kinds. */
export class MsgpackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MsgpackError";
  }
}

/** A map holding one key twice (SPEC §3.1); the reference's `RepeatedKey`. */
export class RepeatedKeyError extends MsgpackError {
  constructor() {
    super("a key twice in one map");
    this.name = "RepeatedKeyError";
  }
}

/** msgpack-python's nesting limit (its unpacker's stack). */
export const MAX_DEPTH = 1024;

const TWO_32 = 2 ** 32;
const MAX_SAFE_BIG = BigInt(Number.MAX_SAFE_INTEGER);
const MIN_SAFE_BIG = BigInt(Number.MIN_SAFE_INTEGER);

// --- unpacking ---------------------------------------------------------------------

class Reader {
  pos = 0;
  readonly view: DataView;

  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  need(n: number): number {
    const at = this.pos;
    if (n > this.buf.length - at) throw new MsgpackError("truncated msgpack data");
    this.pos = at + n;
    return at;
  }

  u8(): number {
    return this.view.getUint8(this.need(1));
  }
  u16(): number {
    return this.view.getUint16(this.need(2));
  }
  u32(): number {
    return this.view.getUint32(this.need(4));
  }
  bytes(n: number): Uint8Array {
    const at = this.need(n);
    return this.buf.slice(at, at + n);
  }
}

function bigToValue(v: bigint): number | bigint {
  return v <= MAX_SAFE_BIG && v >= MIN_SAFE_BIG ? Number(v) : v;
}

function readStr(r: Reader, n: number): string {
  const at = r.need(n);
  try {
    return utf8Decode(r.buf.subarray(at, at + n));
  } catch {
    throw new MsgpackError("str is not valid UTF-8");
  }
}

function readExt(r: Reader, n: number): MsgExt {
  const type = r.view.getInt8(r.need(1));
  const data = r.bytes(n);
  if (type === -1) {
    // msgpack-python turns type -1 into a Timestamp, refusing invalid ones.
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (n === 8) {
      if (view.getUint32(0) >>> 2 >= 1e9) throw new MsgpackError("invalid timestamp");
    } else if (n === 12) {
      if (view.getUint32(0) >= 1e9) throw new MsgpackError("invalid timestamp");
    } else if (n !== 4) {
      throw new MsgpackError("invalid timestamp length");
    }
  } else if (type < 0) {
    throw new MsgpackError("reserved ext type"); // msgpack-python: "code must be 0~127"
  }
  return new MsgExt(type, data);
}

function readArray(r: Reader, n: number, depth: number): MsgValue[] {
  if (depth >= MAX_DEPTH) throw new MsgpackError("msgpack nested too deep");
  const out: MsgValue[] = [];
  for (let i = 0; i < n; i++) out.push(readValue(r, depth + 1));
  return out;
}

function readMap(r: Reader, n: number, depth: number): MsgMap {
  if (depth >= MAX_DEPTH) throw new MsgpackError("msgpack nested too deep");
  const out = new MsgMap();
  for (let i = 0; i < n; i++) {
    const key = readValue(r, depth + 1);
    if (typeof key !== "string" && !(key instanceof Uint8Array)) {
      throw new MsgpackError("map key is neither str nor bin");
    }
    const before = out.size;
    out.set(key, readValue(r, depth + 1));
    if (out.size === before) throw new RepeatedKeyError();
  }
  return out;
}

/** `depth`: how many containers enclose the value. */
function readValue(r: Reader, depth: number): MsgValue {
  const b = r.u8();
  if (b <= 0x7f) return b;
  if (b >= 0xe0) return b - 0x100;
  if (b <= 0x8f) return readMap(r, b & 0x0f, depth);
  if (b <= 0x9f) return readArray(r, b & 0x0f, depth);
  if (b <= 0xbf) return readStr(r, b & 0x1f);
  switch (b) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
      return r.bytes(r.u8());
    case 0xc5:
      return r.bytes(r.u16());
    case 0xc6:
      return r.bytes(r.u32());
    case 0xc7:
      return readExt(r, r.u8());
    case 0xc8:
      return readExt(r, r.u16());
    case 0xc9:
      return readExt(r, r.u32());
    case 0xca:
      return new MsgFloat(r.view.getFloat32(r.need(4)));
    case 0xcb:
      return new MsgFloat(r.view.getFloat64(r.need(8)));
    case 0xcc:
      return r.u8();
    case 0xcd:
      return r.u16();
    case 0xce:
      return r.u32();
    case 0xcf:
      return bigToValue(r.view.getBigUint64(r.need(8)));
    case 0xd0:
      return r.view.getInt8(r.need(1));
    case 0xd1:
      return r.view.getInt16(r.need(2));
    case 0xd2:
      return r.view.getInt32(r.need(4));
    case 0xd3:
      return bigToValue(r.view.getBigInt64(r.need(8)));
    case 0xd4:
      return readExt(r, 1);
    case 0xd5:
      return readExt(r, 2);
    case 0xd6:
      return readExt(r, 4);
    case 0xd7:
      return readExt(r, 8);
    case 0xd8:
      return readExt(r, 16);
    case 0xd9:
      return readStr(r, r.u8());
    case 0xda:
      return readStr(r, r.u16());
    case 0xdb:
      return readStr(r, r.u32());
    case 0xdc:
      return readArray(r, r.u16(), depth);
    case 0xdd:
      return readArray(r, r.u32(), depth);
    case 0xde:
      return readMap(r, r.u16(), depth);
    case 0xdf:
      return readMap(r, r.u32(), depth);
    default: // 0xc1, never used
      throw new MsgpackError(`invalid msgpack byte 0x${b.toString(16)}`);
  }
}

/** Exactly one msgpack object; throws MsgpackError for anything else. */
export function unpack(data: Uint8Array): MsgValue {
  try {
    const r = new Reader(data);
    const value = readValue(r, 0);
    if (r.pos !== data.length) throw new MsgpackError("trailing bytes after the msgpack object");
    return value;
  } catch (err) {
    if (err instanceof MsgpackError) throw err;
    throw new MsgpackError(`not msgpack: ${err instanceof Error ? err.name : "error"}`);
  }
}

// --- packing -----------------------------------------------------------------------

class Writer {
  buf = new Uint8Array(256);
  view = new DataView(this.buf.buffer);
  pos = 0;

  reserve(n: number): number {
    if (this.pos + n > this.buf.length) {
      let size = this.buf.length * 2;
      while (size < this.pos + n) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.buf.subarray(0, this.pos));
      this.buf = bigger;
      this.view = new DataView(bigger.buffer);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }
  // reserve() may replace buf and view: call it before reading them.
  u8(v: number): void {
    const at = this.reserve(1);
    this.view.setUint8(at, v);
  }
  head8(b: number, v: number): void {
    const at = this.reserve(2);
    this.view.setUint8(at, b);
    this.view.setUint8(at + 1, v);
  }
  head16(b: number, v: number): void {
    const at = this.reserve(3);
    this.view.setUint8(at, b);
    this.view.setUint16(at + 1, v);
  }
  head32(b: number, v: number): void {
    const at = this.reserve(5);
    this.view.setUint8(at, b);
    this.view.setUint32(at + 1, v);
  }
  raw(bytes: Uint8Array): void {
    const at = this.reserve(bytes.length);
    this.buf.set(bytes, at);
  }
}

function packInt(w: Writer, v: number | bigint): void {
  if (typeof v === "number") {
    if (v >= 0) {
      if (v < 0x80) return w.u8(v);
      if (v < 0x100) return w.head8(0xcc, v);
      if (v < 0x10000) return w.head16(0xcd, v);
      if (v < TWO_32) return w.head32(0xce, v);
      const at = w.reserve(9);
      w.view.setUint8(at, 0xcf);
      w.view.setUint32(at + 1, Math.floor(v / TWO_32));
      w.view.setUint32(at + 5, v % TWO_32);
      return;
    }
    if (v >= -32) return w.u8(v & 0xff);
    if (v >= -0x80) return w.head8(0xd0, v & 0xff);
    if (v >= -0x8000) return w.head16(0xd1, v & 0xffff);
    if (v >= -0x80000000) return w.head32(0xd2, v >>> 0);
    const at = w.reserve(9);
    w.view.setUint8(at, 0xd3);
    w.view.setBigInt64(at + 1, BigInt(v));
    return;
  }
  if (v <= MAX_SAFE_BIG && v >= MIN_SAFE_BIG) return packInt(w, Number(v));
  const at = w.reserve(9);
  if (v > 0n) {
    if (v >= 1n << 64n) throw new RangeError("integer above 2^64 - 1: not encodable in msgpack");
    w.view.setUint8(at, 0xcf);
    w.view.setBigUint64(at + 1, v);
  } else {
    if (v < -(1n << 63n)) throw new RangeError("integer below -2^63: not encodable in msgpack");
    w.view.setUint8(at, 0xd3);
    w.view.setBigInt64(at + 1, v);
  }
}

function packValue(w: Writer, v: MsgValue, depth: number): void {
  if (depth > MAX_DEPTH) throw new RangeError("value nested too deep");
  if (v === null) return w.u8(0xc0);
  if (v === false) return w.u8(0xc2);
  if (v === true) return w.u8(0xc3);
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) {
      throw new TypeError(`${v} is not a safe integer (wrap floats in MsgFloat; use bigint beyond 2^53)`);
    }
    return packInt(w, v);
  }
  if (typeof v === "bigint") return packInt(w, v);
  if (typeof v === "string") {
    const bytes = utf8Encode(v);
    const n = bytes.length;
    if (n < 32) w.u8(0xa0 | n);
    else if (n < 0x100) w.head8(0xd9, n);
    else if (n < 0x10000) w.head16(0xda, n);
    else w.head32(0xdb, n);
    return w.raw(bytes);
  }
  if (v instanceof Uint8Array) {
    const n = v.length;
    if (n < 0x100) w.head8(0xc4, n);
    else if (n < 0x10000) w.head16(0xc5, n);
    else w.head32(0xc6, n);
    return w.raw(v);
  }
  if (Array.isArray(v)) {
    const n = v.length;
    if (n < 16) w.u8(0x90 | n);
    else if (n < 0x10000) w.head16(0xdc, n);
    else w.head32(0xdd, n);
    for (const item of v) packValue(w, item, depth + 1);
    return;
  }
  if (v instanceof MsgMap) {
    const n = v.size;
    if (n < 16) w.u8(0x80 | n);
    else if (n < 0x10000) w.head16(0xde, n);
    else w.head32(0xdf, n);
    for (const [key, value] of v.entries()) {
      packValue(w, key, depth + 1);
      packValue(w, value, depth + 1);
    }
    return;
  }
  if (v instanceof MsgFloat) {
    const at = w.reserve(9);
    w.view.setUint8(at, 0xcb);
    w.view.setFloat64(at + 1, v.value);
    return;
  }
  if (v instanceof MsgExt) {
    const n = v.data.length;
    const fixed: Record<number, number> = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 };
    const head = fixed[n];
    if (head !== undefined) w.u8(head);
    else if (n < 0x100) w.head8(0xc7, n);
    else if (n < 0x10000) w.head16(0xc8, n);
    else w.head32(0xc9, n);
    const at = w.reserve(1);
    w.view.setInt8(at, v.type);
    return w.raw(v.data);
  }
  throw new TypeError("value has no msgpack encoding");
}

/** The canonical msgpack bytes of `value` (see the module's doc). Throws
 * TypeError/RangeError for a value with no encoding (a non-integer
 * `number`, a string with a lone surrogate, an object that is not a MsgMap). */
export function pack(value: MsgValue): Uint8Array {
  const w = new Writer();
  packValue(w, value, 0);
  return w.buf.slice(0, w.pos);
}
