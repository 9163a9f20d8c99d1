/**
 * Attestations of the verification authority (protocol/attestation.py,
 * SPEC §11.1).
 *
 * An attestation is the administrators' signed statement that a user id is
 * a verified clinician (RPPS number, name, profession, organisation) whose
 * devices hold exactly these public keys, between two instants, signed with
 * the authority key (Ed25519) that the hub does not hold:
 *
 *     att  = sig (64 bytes) ‖ body
 *     body = msgpack [ "miss-att", 1, user, rpps, name, profession,
 *                      organisation, [[device, sign_pk, box_pk], ...],
 *                      not_before_ms, not_after_ms ]      devices sorted by id
 *     sig  = Ed25519(authority, "miss.v1/attestation\0" ‖ body)
 *
 * `verify` is what a client runs before it encrypts anything to a peer; it
 * throws an AttestationError subclass (with its `reason`) and nothing else.
 * Needs `await ready()` (sodium.ts) first.
 */
import { compareCodePoints, concatBytes, toHex, utf8Encode } from "./bytes";
import { MsgFloat, MsgMap, type MsgValue, pack, unpack } from "./codec";
import { sodium } from "./sodium";

export const CONTEXT = utf8Encode("miss.v1/attestation\0");
const AUTHORITY_CONTEXT = utf8Encode("miss.v1/authority\0");
const MAGIC = "miss-att";
const VERSION = 1;
/** Largest attestation accepted (bytes). */
export const MAX_BYTES = 8192;

/** Why an attestation cannot be trusted (as clients/miss_client/trust.py names it). */
export type AttestationFailure = "malformed" | "signature" | "expired" | "not_yet_valid";

/** The attestation cannot be trusted; `message` says why, for a user. */
export class AttestationError extends Error {
  constructor(
    readonly reason: AttestationFailure,
    message: string,
  ) {
    super(message);
    this.name = "AttestationError";
  }
}
/** Not an attestation of this version. */
export class AttestationMalformed extends AttestationError {
  constructor(message = "not an attestation of this version") {
    super("malformed", message);
    this.name = "AttestationMalformed";
  }
}
/** Not signed by the authority key this client trusts. */
export class AttestationSignatureInvalid extends AttestationError {
  constructor(message = "not signed by the verification authority") {
    super("signature", message);
    this.name = "AttestationSignatureInvalid";
  }
}
/** Past its validity period: the clinician must be verified again. */
export class AttestationExpired extends AttestationError {
  constructor(message = "attestation expired: the clinician must be verified again") {
    super("expired", message);
    this.name = "AttestationExpired";
  }
}
/** Its validity period has not started. */
export class AttestationNotYetValid extends AttestationError {
  constructor(message = "attestation not valid yet") {
    super("not_yet_valid", message);
    this.name = "AttestationNotYetValid";
  }
}

/** One device the authority vouches for (the shape of `lookup_ok.devices`). */
export interface AttestedDevice {
  readonly device: string;
  readonly sign_pk: Uint8Array;
  readonly box_pk: Uint8Array;
}

/** The fields of an attestation (times in ms since the epoch). */
export interface AttestationFields {
  readonly user: string;
  readonly rpps: string;
  readonly name: string;
  readonly profession: string;
  readonly organisation: string;
  readonly devices: readonly AttestedDevice[];
  /** First instant of validity (inclusive). */
  readonly notBefore: number;
  /** End of validity (exclusive). */
  readonly notAfter: number;
}

/** What the authority vouches for. */
export class Attestation implements AttestationFields {
  readonly user: string;
  readonly rpps: string;
  readonly name: string;
  readonly profession: string;
  readonly organisation: string;
  readonly devices: readonly AttestedDevice[];
  readonly notBefore: number;
  readonly notAfter: number;

  constructor(fields: AttestationFields) {
    this.user = fields.user;
    this.rpps = fields.rpps;
    this.name = fields.name;
    this.profession = fields.profession;
    this.organisation = fields.organisation;
    this.devices = fields.devices;
    this.notBefore = fields.notBefore;
    this.notAfter = fields.notAfter;
  }

  /** The attested device `deviceId`, if any. */
  device(deviceId: string): AttestedDevice | undefined {
    return this.devices.find((d) => d.device === deviceId);
  }

  /** The signed body: canonical msgpack, devices sorted by id (code point order). */
  body(): Uint8Array {
    const devices = [...this.devices]
      .sort((a, b) => compareCodePoints(a.device, b.device))
      .map((d): MsgValue => [d.device, d.sign_pk, d.box_pk]);
    return pack([
      MAGIC,
      VERSION,
      this.user,
      this.rpps,
      this.name,
      this.profession,
      this.organisation,
      devices,
      this.notBefore,
      this.notAfter,
    ]);
  }
}

/** The wire form of `attestation` signed with the authority's 32-byte
 * Ed25519 seed (what `miss-admin verify` does; clients never sign). */
export function sign(attestation: AttestationFields, authoritySeed: Uint8Array): Uint8Array {
  const body = new Attestation(attestation).body();
  if (body.length + 64 > MAX_BYTES) throw new RangeError("attestation too large (too many devices?)");
  const s = sodium();
  const { privateKey } = s.crypto_sign_seed_keypair(authoritySeed);
  return concatBytes(s.crypto_sign_detached(concatBytes(CONTEXT, body), privateKey), body);
}

/** Python's `a, b, c = value` on a decoded value: a list gives its items, a
 * str its characters, bytes their values, a map its keys; others fail (an
 * ext value too: Python's ExtType is a pair, and no position takes two). */
function unpackAs(value: MsgValue, n: number): MsgValue[] {
  let items: MsgValue[];
  if (Array.isArray(value)) items = value;
  else if (typeof value === "string") items = Array.from(value);
  else if (value instanceof Uint8Array) items = Array.from(value);
  else if (value instanceof MsgMap) items = Array.from(value.keys());
  else throw new TypeError("not iterable");
  if (items.length !== n) throw new TypeError(`expected ${n} values`);
  return items;
}

/** Python's `value == 1`. */
function equalsOne(value: MsgValue): boolean {
  return value === 1 || value === true || (value instanceof MsgFloat && value.value === 1);
}

/**
 * Decode without checking the signature or the dates (for display of *why*
 * an entry was refused, never for trust). Throws AttestationMalformed.
 * Integers beyond 2^53 − 1 are refused (the Python takes any integer).
 */
export function peek(blob: Uint8Array): Attestation {
  if (!(blob instanceof Uint8Array) || !(blob.length > 64 && blob.length <= MAX_BYTES)) {
    throw new AttestationMalformed("not an attestation");
  }
  try {
    const [magic, version, user, rpps, name, profession, org, devices, nbf, naf] = unpackAs(unpack(blob.subarray(64)), 10);
    if (magic !== MAGIC || !equalsOne(version!)) throw new TypeError("version");
    for (const v of [user, rpps, name, profession, org]) if (typeof v !== "string") throw new TypeError("field");
    if (typeof nbf !== "number" || typeof naf !== "number" || !Array.isArray(devices)) throw new TypeError("field");
    const parsed: AttestedDevice[] = [];
    for (const d of devices) {
      const [device, signPk, boxPk] = unpackAs(d, 3);
      if (typeof device !== "string" || !(signPk instanceof Uint8Array) || !(boxPk instanceof Uint8Array)) {
        throw new TypeError("device");
      }
      if (signPk.length !== 32 || boxPk.length !== 32) throw new TypeError("key");
      parsed.push({ device, sign_pk: signPk, box_pk: boxPk });
    }
    return new Attestation({
      user: user as string,
      rpps: rpps as string,
      name: name as string,
      profession: profession as string,
      organisation: org as string,
      devices: parsed,
      notBefore: nbf,
      notAfter: naf,
    });
  } catch {
    throw new AttestationMalformed();
  }
}

/**
 * The attestation in `blob` if it is signed by `authorityPk` and valid at
 * `nowMs` (not_before ≤ now < not_after); throws AttestationMalformed,
 * AttestationSignatureInvalid, AttestationNotYetValid or AttestationExpired.
 */
export function verify(blob: Uint8Array, authorityPk: Uint8Array, nowMs: number): Attestation {
  const attestation = peek(blob);
  let good = false;
  try {
    good = sodium().crypto_sign_verify_detached(blob.subarray(0, 64), concatBytes(CONTEXT, blob.subarray(64)), authorityPk);
  } catch {
    good = false;
  }
  if (!good) throw new AttestationSignatureInvalid();
  if (nowMs < attestation.notBefore) throw new AttestationNotYetValid();
  if (nowMs >= attestation.notAfter) throw new AttestationExpired();
  return attestation;
}

// --- the authority key in text -------------------------------------------------------

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Text form of an authority public key: standard base64, padded (SPEC §11.1). */
export function encodeAuthorityKey(publicKey: Uint8Array): string {
  let out = "";
  for (let i = 0; i < publicKey.length; i += 3) {
    const a = publicKey[i]!;
    const b = publicKey[i + 1];
    const c = publicKey[i + 2];
    out += B64[a >> 2]! + B64[((a & 3) << 4) | ((b ?? 0) >> 4)]!;
    out += b === undefined ? "=" : B64[((b & 15) << 2) | ((c ?? 0) >> 6)]!;
    out += c === undefined ? "=" : B64[c & 63]!;
  }
  return out;
}

/** The characters Python's `str.strip()` removes (`str.isspace()`). */
const PY_SPACE = "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000";

function pyStrip(text: string): string {
  let start = 0;
  let end = text.length;
  while (start < end && PY_SPACE.includes(text[start]!)) start++;
  while (end > start && PY_SPACE.includes(text[end - 1]!)) end--;
  return text.slice(start, end);
}

const STRICT_B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** A text that is not an authority key. */
export class InvalidAuthorityKey extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InvalidAuthorityKey";
  }
}

/**
 * Parse `encodeAuthorityKey`'s text, with white space around it (as
 * Python's `str.strip()` removes it); throws InvalidAuthorityKey for
 * anything else: what the Python accepts, exactly (44 characters ending
 * with one `=`; the unused low bits of the last character are ignored).
 */
export function decodeAuthorityKey(text: string): Uint8Array {
  const s = pyStrip(text);
  if (!STRICT_B64.test(s)) throw new InvalidAuthorityKey("the authority key is not base64");
  const data = s.replace(/=+$/, "");
  const out: number[] = [];
  let bits = 0;
  let acc = 0;
  for (const ch of data) {
    acc = ((acc << 6) | B64.indexOf(ch)) & 0xffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
  }
  if (out.length !== 32) throw new InvalidAuthorityKey("the authority key is not a 32-byte Ed25519 public key");
  return Uint8Array.from(out);
}

/** A short form for people to compare: the first 16 bytes of
 * SHA-256("miss.v1/authority\0" ‖ key), as 8 groups of 4 hex digits. */
export function authorityFingerprint(publicKey: Uint8Array): string {
  const digest = toHex(sodium().crypto_hash_sha256(concatBytes(AUTHORITY_CONTEXT, publicKey))).slice(0, 32);
  const groups: string[] = [];
  for (let i = 0; i < 32; i += 4) groups.push(digest.slice(i, i + 4));
  return groups.join(" ");
}
