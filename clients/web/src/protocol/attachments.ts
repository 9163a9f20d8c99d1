/**
 * Encrypted attachments (SPEC §16, revision 6), as protocol/attachments.py.
 *
 * Theory of operation: each file gets a fresh 32-byte key K and is
 * encrypted with libsodium's `crypto_secretstream_xchacha20poly1305` (no
 * additional data) in chunks of CHUNK plaintext bytes: the blob is
 * `header(24) ‖ c_1 ‖ … ‖ c_n`, n = max(1, ceil(size / CHUNK)), each c_i 17
 * bytes longer than its chunk, tagged MESSAGE except the last, FINAL. The
 * hub stores and serves the blob and never sees K. The message's sealed
 * plaintext carries, per file, a descriptor (`Attachment`): the blob id, K,
 * the SHA-256 of the whole blob, the plaintext size, type, name, and for
 * images a small JPEG thumbnail and the picture's size.
 *
 * A recipient accepts the bytes only if their length is `cipherSize(size)`,
 * their SHA-256 is `hash`, every chunk opens, chunk n is tagged FINAL and no
 * earlier chunk is; anything else is an `AttachmentError`.
 *
 * Needs `await ready()` (sodium.ts) first.
 */
import { utf8Encode } from "./bytes";
import { MsgMap, type MsgValue } from "./codec";
import { sodium } from "./sodium";

/** Plaintext bytes per secretstream chunk. */
export const CHUNK = 65536;
/** The secretstream header that opens a blob. */
export const HEADER_BYTES = 24;
/** What each chunk adds (tag byte and Poly1305 MAC). */
export const ABYTES = 17;
/** Largest `blob_put.data` (bytes). */
export const PIECE_MAX = 61440;
/** Largest part one HTTP download response holds (bytes). */
export const HTTP_PART_MAX = 1048576;
/** Most descriptors one plaintext may carry. */
export const MAX_ATTACHMENTS_WIRE = 16;
/** Largest thumbnail (a JPEG). */
export const THUMB_MAX = 4096;
/** Types the reference clients send. */
export const ALLOWED_TYPES = ["image/jpeg", "image/png", "image/heic", "image/heif", "application/pdf"] as const;
const TAG_MESSAGE = 0;
const TAG_FINAL = 3;
const MAX_PIXELS = 100000;
/** Largest plaintext size a descriptor may state (1 TiB). */
export const MAX_SIZE = 2 ** 40;

/** Bytes that are not the blob a descriptor describes (length, hash,
 * a chunk that does not open, a misplaced FINAL tag), or a malformed descriptor. */
export class AttachmentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AttachmentError";
  }
}

/** The blob's length for `size` plaintext bytes. */
export function cipherSize(size: number): number {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError("a size is a non-negative integer");
  const n = Math.max(1, Math.ceil(size / CHUNK));
  return HEADER_BYTES + size + ABYTES * n;
}

/** Streams SHA-256 (`crypto_hash_sha256_init/update/final`). */
export class Sha256 {
  private state = sodium().crypto_hash_sha256_init();
  update(data: Uint8Array): void {
    sodium().crypto_hash_sha256_update(this.state, data);
  }
  digest(): Uint8Array {
    return sodium().crypto_hash_sha256_final(this.state);
  }
}

/** Encrypts one file: `header` first, then `push(chunk, final)` for each
 * chunk of CHUNK bytes (the last one, possibly shorter or empty, final). */
export class Encryptor {
  readonly header: Uint8Array;
  private readonly state: ReturnType<ReturnType<typeof sodium>["crypto_secretstream_xchacha20poly1305_init_push"]>["state"];
  private done = false;

  constructor(key: Uint8Array) {
    if (key.length !== 32) throw new RangeError("a file key is 32 bytes");
    const r = sodium().crypto_secretstream_xchacha20poly1305_init_push(key);
    this.header = r.header;
    this.state = r.state;
  }

  push(chunk: Uint8Array, final: boolean): Uint8Array {
    if (this.done) throw new AttachmentError("the stream is finished");
    if (chunk.length > CHUNK) throw new RangeError("a chunk is at most CHUNK bytes");
    this.done = final;
    return sodium().crypto_secretstream_xchacha20poly1305_push(this.state, chunk, null, final ? TAG_FINAL : TAG_MESSAGE);
  }
}

/**
 * Checks and decrypts one blob as its bytes come (`feed`, any split), then
 * `finish()` checks the length, the hash and the final tag. Plaintext that
 * `feed` returns is not to be trusted before `finish()` returns.
 */
export class Decryptor {
  private readonly hasher = new Sha256();
  private readonly expected: number;
  private pending: Uint8Array = new Uint8Array(0);
  private state: ReturnType<ReturnType<typeof sodium>["crypto_secretstream_xchacha20poly1305_init_pull"]> | null = null;
  private received = 0;
  private left: number;
  private ended = false;

  constructor(
    private readonly key: Uint8Array,
    readonly size: number,
    private readonly hash: Uint8Array,
  ) {
    if (key.length !== 32) throw new AttachmentError("a file key is 32 bytes");
    if (hash.length !== 32) throw new AttachmentError("a hash is 32 bytes");
    this.expected = cipherSize(size);
    this.left = size;
  }

  /** The plaintext that the bytes fed so far complete. */
  feed(data: Uint8Array): Uint8Array {
    if (this.received + data.length > this.expected) throw new AttachmentError("more bytes than the attachment's size");
    this.received += data.length;
    this.hasher.update(data);
    const buf = new Uint8Array(this.pending.length + data.length);
    buf.set(this.pending);
    buf.set(data, this.pending.length);
    let at = 0;
    if (this.state === null) {
      if (buf.length < HEADER_BYTES) {
        this.pending = buf;
        return new Uint8Array(0);
      }
      try {
        this.state = sodium().crypto_secretstream_xchacha20poly1305_init_pull(buf.subarray(0, HEADER_BYTES), this.key);
      } catch {
        throw new AttachmentError("bad stream header");
      }
      at = HEADER_BYTES;
    }
    const out: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      if (this.ended) break;
      const plain = Math.min(CHUNK, this.left);
      const need = plain + ABYTES;
      if (buf.length - at < need) break;
      const last = this.left <= CHUNK;
      let r: { message: Uint8Array; tag: number } | false;
      try {
        r = sodium().crypto_secretstream_xchacha20poly1305_pull(this.state, buf.subarray(at, at + need), null);
      } catch {
        r = false;
      }
      if (r === false) throw new AttachmentError("a chunk does not open");
      if (r.tag !== (last ? TAG_FINAL : TAG_MESSAGE)) throw new AttachmentError(`a chunk carries tag ${r.tag}`);
      at += need;
      this.left -= plain;
      out.push(r.message);
      total += r.message.length;
      if (last) this.ended = true;
    }
    this.pending = buf.slice(at);
    const joined = new Uint8Array(total);
    let o = 0;
    for (const p of out) {
      joined.set(p, o);
      o += p.length;
    }
    return joined;
  }

  /** Throws AttachmentError unless exactly the blob was fed: its length, hash and final chunk. */
  finish(): void {
    if (this.received !== this.expected || !this.ended || this.pending.length !== 0) {
      throw new AttachmentError("the attachment is truncated");
    }
    const digest = this.hasher.digest();
    if (!sodium().memcmp(digest, this.hash)) throw new AttachmentError("the attachment's hash does not match");
  }
}

/** Encrypt a whole file in memory: `[key, blob, hash]` (`key` only for tests). */
export function encryptBytes(data: Uint8Array, key?: Uint8Array): [Uint8Array, Uint8Array, Uint8Array] {
  const k = key ?? sodium().randombytes_buf(32);
  const enc = new Encryptor(k);
  const blob = new Uint8Array(cipherSize(data.length));
  blob.set(enc.header);
  let at = HEADER_BYTES;
  let off = 0;
  do {
    const chunk = data.subarray(off, off + CHUNK);
    off += chunk.length;
    const c = enc.push(chunk, off >= data.length);
    blob.set(c, at);
    at += c.length;
  } while (off < data.length);
  return [k, blob, sodium().crypto_hash_sha256(blob)];
}

/** Check and decrypt a whole blob; AttachmentError if it is not the one described. */
export function decryptBytes(blob: Uint8Array, key: Uint8Array, size: number, hash: Uint8Array): Uint8Array {
  const d = new Decryptor(key, size, hash);
  if (blob.length !== cipherSize(size)) throw new AttachmentError("the attachment's length does not match its size");
  const out = d.feed(blob);
  d.finish();
  return out;
}

// --- descriptors -------------------------------------------------------------------------

/** One attachment, as the sealed plaintext's `atts` carries it. */
export interface Attachment {
  /** The hub's blob id: "b_" + 32 lowercase hex digits. */
  blob: string;
  /** The file key K (32 bytes). */
  key: Uint8Array;
  /** SHA-256 of the whole blob (32 bytes). */
  hash: Uint8Array;
  /** Plaintext bytes. */
  size: number;
  /** MIME type (1-100 ASCII bytes). */
  type: string;
  /** File name (1-255 UTF-8 bytes, no NUL, "/" or "\", not "." or ".."). */
  name: string;
  /** A JPEG of at most THUMB_MAX bytes. */
  thumb?: Uint8Array;
  /** Picture width and height (pixels). */
  w?: number;
  h?: number;
}

const BLOB_ID = /^b_[0-9a-f]{32}$/;

/** True for a blob id ("b_" + 32 lowercase hex digits). */
export function isBlobId(v: unknown): v is string {
  return typeof v === "string" && BLOB_ID.test(v);
}

/** Why `name` is no attachment name, or null if it is one. */
function nameProblem(name: string): string | null {
  let bytes: Uint8Array;
  try {
    bytes = utf8Encode(name);
  } catch {
    return "not UTF-8";
  }
  if (bytes.length < 1 || bytes.length > 255) return "1 to 255 bytes";
  if (/[\0/\\]/.test(name) || name === "." || name === "..") return "not a plain file name";
  return null;
}

/** Throws AttachmentError unless `a` is a valid descriptor. */
export function checkAttachment(a: Attachment): Attachment {
  const bad = (what: string): never => {
    throw new AttachmentError(`bad attachment: ${what}`);
  };
  if (!isBlobId(a.blob)) bad("blob id");
  if (!(a.key instanceof Uint8Array) || a.key.length !== 32) bad("key");
  if (!(a.hash instanceof Uint8Array) || a.hash.length !== 32) bad("hash");
  if (typeof a.size !== "number" || !Number.isSafeInteger(a.size) || a.size < 0 || a.size > MAX_SIZE) bad("size");
  if (typeof a.type !== "string" || a.type.length < 1 || a.type.length > 100 || !/^[!-~]*$/.test(a.type)) bad("type");
  if (typeof a.name !== "string") bad("name");
  const problem = nameProblem(a.name);
  if (problem !== null) bad(`name: ${problem}`);
  if (a.thumb !== undefined && (!(a.thumb instanceof Uint8Array) || a.thumb.length < 1 || a.thumb.length > THUMB_MAX)) bad("thumb");
  if ((a.w === undefined) !== (a.h === undefined)) bad("w and h go together");
  for (const side of [a.w, a.h]) {
    if (side !== undefined && !(typeof side === "number" && Number.isSafeInteger(side) && side >= 1 && side <= MAX_PIXELS)) bad("w/h");
  }
  return a;
}

/** The descriptor as a msgpack map, keys in the order of SPEC §16. */
export function attachmentToMap(a: Attachment): MsgMap {
  checkAttachment(a);
  const m = new MsgMap([
    ["blob", a.blob],
    ["key", a.key],
    ["hash", a.hash],
    ["size", a.size],
    ["type", a.type],
    ["name", a.name],
  ]);
  if (a.thumb !== undefined) m.set("thumb", a.thumb);
  if (a.w !== undefined) m.set("w", a.w);
  if (a.h !== undefined) m.set("h", a.h);
  return m;
}

/** A descriptor from its decoded map; AttachmentError if malformed. */
export function attachmentFromMap(v: MsgValue): Attachment {
  if (!(v instanceof MsgMap)) throw new AttachmentError("bad attachment: not a map");
  for (const k of ["blob", "key", "hash", "size", "type", "name"]) {
    if (!v.has(k)) throw new AttachmentError(`bad attachment: no '${k}'`);
  }
  const a = {
    blob: v.get("blob"),
    key: v.get("key"),
    hash: v.get("hash"),
    size: v.get("size"),
    type: v.get("type"),
    name: v.get("name"),
  } as unknown as Attachment;
  for (const k of ["thumb", "w", "h"] as const) {
    const value = v.get(k);
    if (value !== undefined && value !== null) (a as unknown as Record<string, unknown>)[k] = value;
  }
  return checkAttachment(a);
}

/** The type of a file by its first bytes (magic numbers), or null when it
 * is none of ALLOWED_TYPES. `name` is not trusted for the type. */
export function sniffType(first: Uint8Array, name = ""): (typeof ALLOWED_TYPES)[number] | null {
  const starts = (...bytes: number[]): boolean => bytes.every((b, i) => first[i] === b);
  if (starts(0xff, 0xd8, 0xff)) return "image/jpeg";
  if (starts(0x89, 0x50, 0x4e, 0x47)) return "image/png";
  if (starts(0x25, 0x50, 0x44, 0x46, 0x2d)) return "application/pdf";
  if (first.length >= 12) {
    const brand = String.fromCharCode(...first.subarray(4, 12));
    if (brand === "ftypheic" || brand === "ftypheix") return "image/heic";
    // A generic HEIF brand with a .heic name is HEIC (as the reference does).
    if (brand === "ftypmif1" || brand === "ftypmsf1" || brand === "ftypheif") return name.toLowerCase().endsWith(".heic") ? "image/heic" : "image/heif";
  }
  return null;
}
