/**
 * Crypto v1 (protocol/crypto.py): device keys, authentication signatures,
 * envelopes, the inner plaintext, message ids, safety numbers.
 *
 * Everything is deterministic given its inputs (keys, nonces, times), so
 * that protocol/vectors/crypto.json pins every byte; callers that want fresh
 * randomness leave the optional `nonce`/`rand` arguments out.
 *
 * - Each device has an Ed25519 signing key and an X25519 box key (SPEC §5).
 * - The hub authenticates a device by a signature over its fresh 32-byte
 *   challenge, bound to a context string (SPEC §5.2).
 * - A message is sealed for each target device with NaCl `crypto_box`
 *   under a random 24-byte nonce: `nonce ‖ crypto_box_easy(...)` (SPEC §6.1).
 * - The inner plaintext repeats the message id and both users (SPEC §6.3),
 *   padded to a multiple of 256 bytes by reference clients (SPEC §13.5).
 * - A team message is sealed once (a signed body under a fresh key K,
 *   XChaCha20-Poly1305) and K is wrapped for each device (SPEC §13.3).
 *
 * Needs `await ready()` (sodium.ts) first.
 */
import { compareBytes, compareCodePoints, concatBytes, toHex, utf8Encode } from "./bytes";
import { MsgMap, type MsgValue, pack, RepeatedKeyError, unpack } from "./codec";
import { sodium } from "./sodium";
import { type Attachment, AttachmentError, MAX_ATTACHMENTS_WIRE, attachmentFromMap, attachmentToMap } from "./attachments";
import { type Notice, NoticeError, noticeFromMap, noticeToMap } from "./notices";

export { compareBytes, concatBytes, equalBytes, fromHex, toHex } from "./bytes";

export const AUTH_CONTEXT = utf8Encode("miss.v1/auth\0");
export const ENROLL_CONTEXT = utf8Encode("miss.v1/enroll\0");
export const SAFETY_CONTEXT = utf8Encode("miss.v1/safety\0");
/** Signed and authenticated with every sealed body (SPEC §13.3). */
export const BODY_CONTEXT = utf8Encode("miss.v1/body\0");
/** Length of a body key K and of the plaintext of a wrap. */
export const BODY_KEY_BYTES = 32;
/** A wrap: nonce ‖ crypto_box(K). */
export const WRAP_BYTES = 24 + 32 + 16;
/** XChaCha20-Poly1305 nonce of a sealed body. */
export const BODY_NONCE_BYTES = 24;
/** len(body) − len(plaintext): nonce, Ed25519 signature, Poly1305 tag. */
export const BODY_OVERHEAD = 24 + 64 + 16;
/** Plaintext kinds of revision 3 (SPEC §13.5). */
export const KINDS = ["text", "read", "recall"] as const;
/** Most ids in a notice's `refs`. */
export const MAX_REFS = 256;
/** crypto_box nonce length. */
export const NONCE_BYTES = 24;
/** Poly1305 tag length. */
export const MAC_BYTES = 16;
/** Message id length (SPEC §9). */
export const MESSAGE_ID_BYTES = 16;

/** An envelope that does not open (wrong key, tampered, truncated), or a
 * plaintext that is not a v1 plaintext. */
export class EnvelopeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EnvelopeError";
  }
}

/** What signs for a device: DeviceKeys, or anything with its public keys
 * and a detached Ed25519 `sign`. */
export interface Signer {
  readonly signPk: Uint8Array;
  readonly boxPk: Uint8Array;
  sign(message: Uint8Array): Uint8Array;
}

/** A device's two private keys (32-byte seeds), which never leave it, and
 * their public keys. */
export class DeviceKeys implements Signer {
  /** Ed25519 seed (RFC 8032). */
  readonly signSeed: Uint8Array;
  /** X25519 secret. */
  readonly boxSecret: Uint8Array;
  /** Ed25519 public key (`crypto_sign_seed_keypair`). */
  readonly signPk: Uint8Array;
  /** X25519 public key (`crypto_scalarmult_base`). */
  readonly boxPk: Uint8Array;
  private readonly signSk: Uint8Array;

  /** From stored secret material; throws RangeError unless both are 32 bytes. */
  constructor(signSeed: Uint8Array, boxSecret: Uint8Array) {
    if (signSeed.length !== 32 || boxSecret.length !== 32) throw new RangeError("device secrets are 32 bytes each");
    const s = sodium();
    this.signSeed = Uint8Array.from(signSeed);
    this.boxSecret = Uint8Array.from(boxSecret);
    const pair = s.crypto_sign_seed_keypair(this.signSeed);
    this.signPk = pair.publicKey;
    this.signSk = pair.privateKey;
    this.boxPk = s.crypto_scalarmult_base(this.boxSecret);
  }

  /** Fresh keys from libsodium's secure random source. */
  static generate(): DeviceKeys {
    const s = sodium();
    return new DeviceKeys(s.randombytes_buf(32), s.randombytes_buf(32));
  }

  /** Alias of `boxSecret`. */
  get boxSk(): Uint8Array {
    return this.boxSecret;
  }

  /** Detached Ed25519 signature (64 bytes). */
  sign(message: Uint8Array): Uint8Array {
    return sodium().crypto_sign_detached(message, this.signSk);
  }
}

/** Fresh device keys (DeviceKeys.generate). */
export function generateKeys(): DeviceKeys {
  return DeviceKeys.generate();
}

/** Device keys from stored secret material. */
export function keysFromSecrets(signSeed: Uint8Array, boxSecret: Uint8Array): DeviceKeys {
  return new DeviceKeys(signSeed, boxSecret);
}

/** What a device signs to authenticate on a connection (SPEC §5.2). */
export function authMessage(nonce: Uint8Array, deviceId: string): Uint8Array {
  return concatBytes(AUTH_CONTEXT, nonce, utf8Encode(deviceId));
}

/** What a new device signs to enroll: proves it holds the signing key and
 * binds its box key to it, with the code exactly as sent (SPEC §5.1). */
export function enrollMessage(nonce: Uint8Array, code: string, signPk: Uint8Array, boxPk: Uint8Array): Uint8Array {
  return concatBytes(ENROLL_CONTEXT, nonce, signPk, boxPk, utf8Encode(code));
}

/** True if `sig` is a valid Ed25519 signature of `message` by `signPk`
 * (false, never an exception, for keys or signatures of the wrong size). */
export function verifySignature(signPk: Uint8Array, message: Uint8Array, sig: Uint8Array): boolean {
  try {
    return sodium().crypto_sign_verify_detached(sig, message, signPk);
  } catch {
    return false;
  }
}

/** Encrypt for one device: `nonce(24) ‖ crypto_box_easy(plaintext)`, sealed
 * with the sender's box secret; `nonce` only for test vectors. */
export function seal(
  plaintext: Uint8Array,
  sender: { readonly boxSecret: Uint8Array },
  recipientBoxPk: Uint8Array,
  nonce?: Uint8Array,
): Uint8Array {
  const s = sodium();
  const n = nonce ?? s.randombytes_buf(NONCE_BYTES);
  if (n.length !== NONCE_BYTES) throw new RangeError(`the nonce is ${NONCE_BYTES} bytes`);
  return concatBytes(n, s.crypto_box_easy(plaintext, n, recipientBoxPk, sender.boxSecret));
}

/** Decrypt an envelope sealed for `recipient` by the device whose box key
 * is `senderBoxPk`; throws EnvelopeError if it does not open. */
export function openEnvelope(
  envelope: Uint8Array,
  recipient: { readonly boxSecret: Uint8Array },
  senderBoxPk: Uint8Array,
): Uint8Array {
  if (envelope.length < NONCE_BYTES + MAC_BYTES) throw new EnvelopeError("envelope too short");
  try {
    // A malformed or low-order sender key also fails here.
    return sodium().crypto_box_open_easy(
      envelope.subarray(NONCE_BYTES),
      envelope.subarray(0, NONCE_BYTES),
      senderBoxPk,
      recipient.boxSecret,
    );
  } catch {
    throw new EnvelopeError("envelope does not open");
  }
}

/** The inner message, visible only to devices (SPEC §6.3). */
export interface Plaintext {
  /** The message id, equal to the `send`'s. */
  id: Uint8Array;
  /** Sending user id (wire key `from`). */
  fromUser: string;
  /** Recipient user id, also in the copies for the sender's devices (`to`). */
  toUser: string;
  /** ms since the Unix epoch, sender's clock (`sent_at`). */
  sentAt: number;
  /** `"text"` in v1. */
  kind: string;
  body: string;
  /** Id of the message this one answers (`reply_to`). */
  replyTo?: Uint8Array;
  /** Team messages: the sender's head of the chain (32 bytes, SPEC §13.5). */
  head?: Uint8Array;
  /** ms, sender's clock: delete the plaintext then (`expires_at`, SPEC §13.6). */
  expiresAt?: number;
  /** Notices (`read`, `recall`): the message ids concerned (1–256). */
  refs?: readonly Uint8Array[];
  /** Notices about team messages: the team. */
  team?: string;
  /** An urgent message (SPEC §14.6): shown as urgent, acknowledged. */
  urgent?: boolean;
  /** Attachments (SPEC §16): 1-16 descriptors; absent when none. */
  atts?: readonly Attachment[];
  /** A notice (SPEC §17.3): shown as a card; `body` is only its text fallback. */
  notice?: Notice;
}

/** The canonical msgpack of a plaintext (SPEC §6.3, §13.5): `v`, `id`,
 * `from`, `to`, `sent_at`, `kind`, `body`, then those of `reply_to`, `head`,
 * `expires_at`, `refs`, `team`, `urgent` (only when true), `atts` (when not empty),
 * `notice` (SPEC §17.3) that are set; with `padTo` > 0 (clients pass
 * 256), a last key `pad` of n zero bytes, n the smallest that makes the
 * packed length a multiple of `padTo`. */
export function packPlaintext(p: Plaintext, padTo = 0): Uint8Array {
  const m = new MsgMap([
    ["v", 1],
    ["id", p.id],
    ["from", p.fromUser],
    ["to", p.toUser],
    ["sent_at", p.sentAt],
    ["kind", p.kind],
    ["body", p.body],
  ]);
  if (p.replyTo !== undefined) m.set("reply_to", p.replyTo);
  if (p.head !== undefined) m.set("head", p.head);
  if (p.expiresAt !== undefined) m.set("expires_at", p.expiresAt);
  if (p.refs !== undefined) m.set("refs", [...p.refs]);
  if (p.team !== undefined) m.set("team", p.team);
  if (p.urgent === true) m.set("urgent", true);
  if (p.atts !== undefined && p.atts.length > 0) {
    if (p.atts.length > MAX_ATTACHMENTS_WIRE) throw new RangeError("at most 16 attachments");
    m.set("atts", p.atts.map(attachmentToMap));
  }
  if (p.notice !== undefined) m.set("notice", noticeToMap(p.notice));
  if (padTo <= 0) return pack(m);
  if (padTo > 256) throw new RangeError("padTo is at most 256");
  // With an empty pad first: the key and its bin-8 header are then counted,
  // and n < 256 keeps the header at two bytes.
  m.set("pad", new Uint8Array(0));
  const bare = pack(m).length;
  m.set("pad", new Uint8Array((padTo - (bare % padTo)) % padTo));
  return pack(m);
}

/**
 * Parse an opened envelope; throws EnvelopeError unless it is a v1
 * plaintext: a map with `v` the integer 1 (not `true`, not `1.0`), a 16-byte
 * `id`, `from`/`to`/`kind`/`body` strings, an integer `sent_at`, and a
 * `reply_to` of 16 bytes if present (nil counts as absent). Unknown keys are
 * ignored; a map holding a key twice is refused (SPEC §3.1). `sent_at` beyond ±(2^53 − 1)
 * is refused (the Python accepts any msgpack integer).
 */
export function unpackPlaintext(data: Uint8Array): Plaintext {
  let m: MsgValue;
  try {
    m = unpack(data);
  } catch (e) {
    throw new EnvelopeError(e instanceof RepeatedKeyError ? `bad plaintext: ${e.message}` : "bad plaintext: not msgpack");
  }
  if (!(m instanceof MsgMap)) throw new EnvelopeError("bad plaintext: not a map");
  if (!m.has("v")) throw new EnvelopeError("bad plaintext: no 'v'");
  if (m.get("v") !== 1) throw new EnvelopeError("unknown plaintext version");
  for (const key of ["id", "from", "to", "sent_at", "kind", "body"]) {
    if (!m.has(key)) throw new EnvelopeError(`bad plaintext: no '${key}'`);
  }
  const id = m.get("id");
  const fromUser = m.get("from");
  const toUser = m.get("to");
  const sentAt = m.get("sent_at");
  const kind = m.get("kind");
  const body = m.get("body");
  const replyTo = m.get("reply_to") ?? undefined;
  const head = m.get("head") ?? undefined;
  const expiresAt = m.get("expires_at") ?? undefined;
  const refs = m.get("refs") ?? undefined;
  const team = m.get("team") ?? undefined;
  const urgent = m.get("urgent") ?? undefined;
  const atts = m.get("atts") ?? undefined;
  const notice = m.has("notice") ? m.get("notice") : undefined; // nil is not a notice: refused, as the Python does
  const pad = m.get("pad"); // nil is not bytes: refused, as the Python does
  if (
    !(id instanceof Uint8Array && id.length === MESSAGE_ID_BYTES) ||
    typeof fromUser !== "string" ||
    typeof toUser !== "string" ||
    typeof sentAt !== "number" ||
    typeof kind !== "string" ||
    typeof body !== "string" ||
    !(replyTo === undefined || (replyTo instanceof Uint8Array && replyTo.length === MESSAGE_ID_BYTES)) ||
    !(head === undefined || (head instanceof Uint8Array && head.length === 32)) ||
    !(expiresAt === undefined || (typeof expiresAt === "number" && Number.isSafeInteger(expiresAt) && expiresAt >= 0)) ||
    !(
      refs === undefined ||
      (Array.isArray(refs) &&
        refs.length >= 1 &&
        refs.length <= MAX_REFS &&
        refs.every((r) => r instanceof Uint8Array && r.length === MESSAGE_ID_BYTES))
    ) ||
    !(team === undefined || typeof team === "string") ||
    !(urgent === undefined || typeof urgent === "boolean") ||
    !(pad === undefined || pad instanceof Uint8Array) ||
    (atts !== undefined && kind !== "text") ||
    (notice !== undefined && kind !== "text")
  ) {
    throw new EnvelopeError("bad plaintext fields");
  }
  const p: Plaintext = { id, fromUser, toUser, sentAt, kind, body };
  if (replyTo !== undefined) p.replyTo = replyTo;
  if (head !== undefined) p.head = head as Uint8Array;
  if (expiresAt !== undefined) p.expiresAt = expiresAt as number;
  if (refs !== undefined) p.refs = refs as Uint8Array[];
  if (team !== undefined) p.team = team as string;
  if (urgent === true) p.urgent = true;
  if (atts !== undefined) {
    if (!Array.isArray(atts) || atts.length < 1 || atts.length > MAX_ATTACHMENTS_WIRE) throw new EnvelopeError("bad plaintext: atts");
    try {
      p.atts = atts.map(attachmentFromMap);
    } catch (e) {
      if (e instanceof AttachmentError) throw new EnvelopeError(`bad plaintext: ${e.message}`);
      throw e;
    }
  }
  if (notice !== undefined) {
    try {
      p.notice = noticeFromMap(notice);
    } catch (e) {
      if (e instanceof NoticeError) throw new EnvelopeError(`bad plaintext: ${e.message}`);
      throw e;
    }
  }
  return p;
}

// --- sealed bodies (SPEC §13.3) -------------------------------------------------------

/**
 * Seal a team message once: `[K, body]` with `body = nonce(24) ‖
 * XChaCha20-Poly1305(sig ‖ plaintext, ad = BODY_CONTEXT ‖ id)` under the
 * fresh key K, `sig` the sender's Ed25519 signature of `BODY_CONTEXT ‖ id ‖
 * plaintext`. `key` and `nonce` only for test vectors.
 */
export function sealBody(
  plaintext: Uint8Array,
  messageId: Uint8Array,
  sender: Signer,
  options: { key?: Uint8Array; nonce?: Uint8Array } = {},
): [Uint8Array, Uint8Array] {
  const s = sodium();
  const key = options.key ?? s.randombytes_buf(BODY_KEY_BYTES);
  const nonce = options.nonce ?? s.randombytes_buf(NONCE_BYTES);
  if (key.length !== BODY_KEY_BYTES) throw new RangeError("the body key is 32 bytes");
  if (nonce.length !== NONCE_BYTES) throw new RangeError(`the nonce is ${NONCE_BYTES} bytes`);
  if (messageId.length !== MESSAGE_ID_BYTES) throw new RangeError("a message id is 16 bytes");
  const sig = sender.sign(concatBytes(BODY_CONTEXT, messageId, plaintext));
  const ad = concatBytes(BODY_CONTEXT, messageId);
  const sealed = s.crypto_aead_xchacha20poly1305_ietf_encrypt(concatBytes(sig, plaintext), ad, null, nonce, key);
  return [key, concatBytes(nonce, sealed)];
}

/** Open a sealed body with its key K and check the sending device's
 * signature; throws EnvelopeError on any failure. */
export function openBody(body: Uint8Array, key: Uint8Array, messageId: Uint8Array, senderSignPk: Uint8Array): Uint8Array {
  if (body.length < NONCE_BYTES + 64 + MAC_BYTES) throw new EnvelopeError("body too short");
  if (key.length !== BODY_KEY_BYTES) throw new EnvelopeError("bad body key");
  let opened: Uint8Array;
  try {
    opened = sodium().crypto_aead_xchacha20poly1305_ietf_decrypt(
      null,
      body.subarray(NONCE_BYTES),
      concatBytes(BODY_CONTEXT, messageId),
      body.subarray(0, NONCE_BYTES),
      key,
    );
  } catch {
    throw new EnvelopeError("body does not open");
  }
  const sig = opened.subarray(0, 64);
  const plaintext = opened.slice(64);
  if (!verifySignature(senderSignPk, concatBytes(BODY_CONTEXT, messageId, plaintext), sig)) {
    throw new EnvelopeError("body signature does not verify");
  }
  return plaintext;
}

/** Wrap a body key for one device: an envelope (SPEC §6.1) of K, 72 bytes. */
export function wrapKey(
  key: Uint8Array,
  sender: { readonly boxSecret: Uint8Array },
  recipientBoxPk: Uint8Array,
  nonce?: Uint8Array,
): Uint8Array {
  if (key.length !== BODY_KEY_BYTES) throw new RangeError("the body key is 32 bytes");
  return seal(key, sender, recipientBoxPk, nonce);
}

/** Unwrap a body key sealed for `recipient`; EnvelopeError unless it opens
 * to 32 bytes. */
export function unwrapKey(wrap: Uint8Array, recipient: { readonly boxSecret: Uint8Array }, senderBoxPk: Uint8Array): Uint8Array {
  if (wrap.length !== WRAP_BYTES) throw new EnvelopeError("a wrap is 72 bytes");
  const key = openEnvelope(wrap, recipient, senderBoxPk);
  if (key.length !== BODY_KEY_BYTES) throw new EnvelopeError("a wrap holds a 32-byte key");
  return key;
}

/**
 * A 128-bit, time-ordered message id laid out as a UUIDv7 (SPEC §9): 48
 * bits of Unix ms, version 7, 74 random bits, variant 10. `nowMs` defaults
 * to the clock, `rand` (10 bytes) to libsodium's random source.
 */
export function newMessageId(nowMs: number = Date.now(), rand?: Uint8Array): Uint8Array {
  if (!Number.isSafeInteger(nowMs) || nowMs < 0 || nowMs >= 2 ** 48) throw new RangeError("time out of the 48-bit range");
  const r = rand ?? sodium().randombytes_buf(10);
  if (r.length !== 10) throw new RangeError("rand is 10 bytes");
  const id = new Uint8Array(MESSAGE_ID_BYTES);
  let t = nowMs;
  for (let i = 5; i >= 0; i--) {
    id[i] = t % 256;
    t = Math.floor(t / 256);
  }
  id.set(r, 6);
  id[6] = 0x70 | (id[6]! & 0x0f);
  id[8] = 0x80 | (id[8]! & 0x3f);
  return id;
}

/** The creation time (ms) carried by a message id. */
export function messageIdTimeMs(messageId: Uint8Array): number {
  let t = 0;
  for (let i = 0; i < Math.min(6, messageId.length); i++) t = t * 256 + messageId[i]!;
  return t;
}

/** A message id in text, as a UUID: `019b76da-acd2-70f1-b2f3-f4f5f6f7f8f9`. */
export function messageIdUuid(messageId: Uint8Array): string {
  const h = toHex(messageId);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** What a safety number covers of one device: both its public keys
 * (`sign_pk ‖ box_pk`, 64 bytes). */
export function deviceIdentity(signPk: Uint8Array, boxPk: Uint8Array): Uint8Array {
  return concatBytes(signPk, boxPk);
}

/** The 30-digit fingerprint of one user (SPEC §8): SHA-512 of the context,
 * the user id and the sorted identities, six 40-bit chunks mod 100000. */
export function safetyFingerprint(userId: string, identities: readonly Uint8Array[]): string {
  const uid = utf8Encode(userId);
  if (uid.length > 0xffff) throw new RangeError("user id too long");
  const sorted = [...identities].sort(compareBytes);
  const digest = sodium().crypto_hash_sha512(
    concatBytes(SAFETY_CONTEXT, Uint8Array.of(uid.length >> 8, uid.length & 0xff), uid, ...sorted),
  );
  let digits = "";
  for (let i = 0; i < 30; i += 5) {
    let chunk = 0; // 40 bits: exact in a double, too wide for bitwise operators
    for (let j = i; j < i + 5; j++) chunk = chunk * 256 + digest[j]!;
    digits += String(chunk % 100000).padStart(5, "0");
  }
  return digits;
}

/**
 * The 60-digit safety number of a conversation (SPEC §8), in 12 groups of
 * 5. `keysA`/`keysB` hold each active device's `deviceIdentity`. Both sides
 * get the same number; any added, removed or substituted key changes it.
 */
export function safetyNumber(
  userA: string,
  keysA: readonly Uint8Array[],
  userB: string,
  keysB: readonly Uint8Array[],
): string {
  const fa = safetyFingerprint(userA, keysA);
  const fb = safetyFingerprint(userB, keysB);
  const digits = compareCodePoints(userA, userB) <= 0 ? fa + fb : fb + fa;
  const groups: string[] = [];
  for (let i = 0; i < 60; i += 5) groups.push(digits.slice(i, i + 5));
  return groups.join(" ");
}

/** Constant-time equality of two secrets (`sodium.memcmp`); false if their
 * lengths differ. */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && sodium().memcmp(a, b);
}
