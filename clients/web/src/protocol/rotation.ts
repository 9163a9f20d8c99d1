/**
 * Authority key rotation (protocol/rotation.py, SPEC §15, revision 5).
 *
 * A statement announces that the verification authority's key `old` hands
 * over to `new`, signed by both (the old key vouches for the new one, the
 * new one proves it is held):
 *
 *     blob    = old_sig (64) ‖ new_sig (64) ‖ body            at most 512 bytes
 *     body    = canonical msgpack {"t": "miss-rot", "v": 1, "old": bin32,
 *               "new": bin32, "at": int ms, "until": int ms}
 *     old_sig = Ed25519(old, "miss.v1/authority-rotation\0" ‖ body)
 *     new_sig = Ed25519(new, "miss.v1/authority-rotation\0" ‖ body)
 *
 * with old ≠ new and at < until: `at` is when the new key starts to count,
 * `until` the old key's last instant (after it, nothing it signs counts).
 *
 * A client that trusts key K accepts a chain [s1, s2, …] (in order) when
 * every statement verifies, each s(i+1).old = s(i).new, and K is the `old`
 * of one of them: it then trusts the last `new` and keeps every older key
 * of the chain for what it signed while that key counted (`AuthorityKeys`).
 * Anything else is RotationRefused (`rotation_refused`): the client keeps
 * its key. A compromised key is not rotated this way (out of band).
 *
 * Needs `await ready()` (sodium.ts) first.
 */
import { concatBytes, equalBytes, toHex, utf8Encode } from "./bytes";
import { MsgMap, type MsgValue, pack, unpack } from "./codec";
import * as attestation from "./attestation";
import { sodium } from "./sodium";

export const CONTEXT = utf8Encode("miss.v1/authority-rotation\0");
const MAGIC = "miss-rot";
const VERSION = 1;
/** Largest statement (bytes), and most statements a challenge carries. */
export const MAX_STATEMENT_BYTES = 512;
export const MAX_STATEMENTS = 8;
/** The client-side error name (SPEC §15). */
export const ROTATION_REFUSED = "rotation_refused";

/** Why a chain is refused. */
export type RotationFailure = "malformed" | "signature" | "broken_chain" | "unknown_key";

/** The hub announced another authority key, and the statements it sent do
 * not lead there from the key this client trusts: the client keeps its key. */
export class RotationRefused extends Error {
  readonly code = ROTATION_REFUSED;
  constructor(
    readonly reason: RotationFailure,
    message: string,
  ) {
    super(message);
    this.name = "RotationRefused";
  }
}

/** The fields of a statement (times in ms since the epoch). */
export interface RotationFields {
  /** The key handing over. */
  readonly old: Uint8Array;
  /** The key taking over. */
  readonly new: Uint8Array;
  /** When the new key starts to count. */
  readonly at: number;
  /** The old key's last instant (inclusive). */
  readonly until: number;
}

/** A statement as decoded (and, from `verifyStatement`, verified). */
export interface Statement extends RotationFields {
  /** The statement's bytes, as received. */
  readonly blob: Uint8Array;
}

const isTime = (v: MsgValue | undefined): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** The signed body: canonical msgpack, keys in this order. */
export function body(fields: RotationFields): Uint8Array {
  return pack(
    new MsgMap([
      ["t", MAGIC],
      ["v", VERSION],
      ["old", fields.old],
      ["new", fields.new],
      ["at", fields.at],
      ["until", fields.until],
    ]),
  );
}

/** The statement handing `oldSeed`'s key over to `newSeed`'s (32-byte
 * Ed25519 seeds), as `miss-admin authority rotate` writes it; for tests.
 * Throws RangeError for a statement that cannot exist (same key, at >= until). */
export function sign(oldSeed: Uint8Array, newSeed: Uint8Array, at: number, until: number): Uint8Array {
  const s = sodium();
  const oldKp = s.crypto_sign_seed_keypair(oldSeed);
  const newKp = s.crypto_sign_seed_keypair(newSeed);
  if (equalBytes(oldKp.publicKey, newKp.publicKey)) throw new RangeError("the new key is the old one");
  if (!isTime(at) || !isTime(until) || !(at < until)) throw new RangeError("'at' must come before 'until'");
  const b = body({ old: oldKp.publicKey, new: newKp.publicKey, at, until });
  const signed = concatBytes(CONTEXT, b);
  return concatBytes(s.crypto_sign_detached(signed, oldKp.privateKey), s.crypto_sign_detached(signed, newKp.privateKey), b);
}

/** Decode without checking the signatures; throws RotationRefused("malformed")
 * for anything but a statement of this version in its canonical form. */
export function peek(blob: Uint8Array): Statement {
  const bad = (why: string) => new RotationRefused("malformed", `not a rotation statement: ${why}`);
  if (!(blob instanceof Uint8Array) || blob.length <= 128 || blob.length > MAX_STATEMENT_BYTES) throw bad("size");
  const b = blob.subarray(128);
  let m: MsgValue;
  try {
    m = unpack(b);
  } catch {
    throw bad("not msgpack");
  }
  if (!(m instanceof MsgMap) || m.size !== 6) throw bad("not a map of six keys");
  const [t, v, old, neu, at, until] = ["t", "v", "old", "new", "at", "until"].map((k) => m.get(k));
  if (t !== MAGIC || v !== VERSION) throw bad("type or version");
  if (!(old instanceof Uint8Array) || old.length !== 32 || !(neu instanceof Uint8Array) || neu.length !== 32) throw bad("keys");
  if (!isTime(at) || !isTime(until)) throw bad("times");
  if (equalBytes(old, neu)) throw bad("old and new are the same key");
  if (!(at < until)) throw bad("at is not before until");
  const fields = { old: Uint8Array.from(old), new: Uint8Array.from(neu), at, until };
  // One encoding per statement: what is signed is what the fields say.
  if (!equalBytes(body(fields), b)) throw bad("not canonical");
  return { ...fields, blob: Uint8Array.from(blob) };
}

function verifies(pk: Uint8Array, message: Uint8Array, sig: Uint8Array): boolean {
  try {
    return sodium().crypto_sign_verify_detached(sig, message, pk);
  } catch {
    return false;
  }
}

/** The statement in `blob` if both its signatures verify; else RotationRefused
 * ("malformed" or "signature"). */
export function verifyStatement(blob: Uint8Array): Statement {
  const st = peek(blob);
  const signed = concatBytes(CONTEXT, blob.subarray(128));
  if (!verifies(st.old, signed, blob.subarray(0, 64))) {
    throw new RotationRefused("signature", "the statement is not signed by the old key");
  }
  if (!verifies(st.new, signed, blob.subarray(64, 128))) {
    throw new RotationRefused("signature", "the statement is not signed by the new key");
  }
  return st;
}

/**
 * The statements of `blobs`, each verified, then linked (each one's `old`
 * is the previous one's `new`); throws RotationRefused ("broken_chain" for
 * more than MAX_STATEMENTS too), as protocol/rotation.py checks, in that
 * order. An empty list is valid.
 */
export function verifyLinked(blobs: readonly Uint8Array[]): Statement[] {
  if (blobs.length > MAX_STATEMENTS) throw new RotationRefused("broken_chain", `more than ${MAX_STATEMENTS} statements`);
  const chain = blobs.map(verifyStatement);
  for (let i = 1; i < chain.length; i++) {
    if (!equalBytes(chain[i]!.old, chain[i - 1]!.new)) {
      throw new RotationRefused("broken_chain", `statement ${i + 1} does not follow statement ${i}`);
    }
  }
  return chain;
}

/**
 * SPEC §15's rule (protocol/rotation.py `accept_chain`) for a client
 * trusting `trusted`: the chain [s1, s2, …] linked, every signature
 * verifying, and `trusted` either s1.old or one of the `new` keys. Returns
 * the statements (the key to trust is the last `new`; an empty chain leaves
 * `trusted`). Throws RotationRefused ("unknown_key": `trusted` is in none).
 */
export function verifyChain(trusted: Uint8Array, blobs: readonly Uint8Array[]): Statement[] {
  const chain = verifyLinked(blobs);
  if (chain.length > 0 && !equalBytes(chain[0]!.old, trusted) && !chain.some((s) => equalBytes(s.new, trusted))) {
    throw new RotationRefused("unknown_key", "the chain does not start at the trusted authority key");
  }
  return chain;
}

/** A key of the authority that counts up to an instant. */
export interface RetiringKey {
  readonly key: Uint8Array;
  /** Its last instant (inclusive). */
  readonly until: number;
}

/**
 * The authority keys a client trusts: the current one, always, and older
 * ones of its accepted chain, each while `t <= until` of the statement that
 * handed it over. `t` is "now" for a lookup or search; for a team record,
 * the record's own time (SPEC §13.2 already checks a record's attestation
 * at that time), so that records signed before a key lapsed stay valid.
 */
export class AuthorityKeys {
  readonly previous: readonly RetiringKey[];

  constructor(
    readonly current: Uint8Array,
    statements: readonly Statement[] = [],
  ) {
    this.previous = statements.filter((s) => !equalBytes(s.old, current)).map((s) => ({ key: s.old, until: s.until }));
  }

  /** A bare key is a keyring of one. */
  static of(keys: Uint8Array | AuthorityKeys): AuthorityKeys {
    return keys instanceof AuthorityKeys ? keys : new AuthorityKeys(keys);
  }

  /** The keys that count at `t`, the current one first. */
  at(t: number): Uint8Array[] {
    return [this.current, ...this.live(t).map((p) => p.key)];
  }

  /** The older keys still counting at `now`, one entry per key (a key
   * handed over twice keeps the later `until`), newest `until` first: what
   * protocol/rotation.py's `accept_chain` keeps as `previous`. */
  live(now: number): RetiringKey[] {
    const until = new Map<string, RetiringKey>();
    for (const p of this.previous) {
      const seen = until.get(toHex(p.key));
      if (seen === undefined || seen.until < p.until) until.set(toHex(p.key), p);
    }
    return [...until.values()].filter((p) => now <= p.until).sort((a, b) => b.until - a.until);
  }
}

/**
 * attestation.verify against every key counting at `t` (the attestation's
 * validity checked at `t` too): the first key whose signature verifies
 * decides. Throws as attestation.verify does; AttestationSignatureInvalid
 * when no such key signed it.
 */
export function verifyAttestation(blob: Uint8Array, keys: Uint8Array | AuthorityKeys, t: number): attestation.Attestation {
  for (const key of AuthorityKeys.of(keys).at(t)) {
    try {
      return attestation.verify(blob, key, t);
    } catch (err) {
      if (!(err instanceof attestation.AttestationSignatureInvalid)) throw err;
    }
  }
  throw new attestation.AttestationSignatureInvalid();
}

/** Whether some key counting at `t` signed `message` with `sig`. */
export function verifyByAuthority(keys: Uint8Array | AuthorityKeys, t: number, message: Uint8Array, sig: Uint8Array): boolean {
  return AuthorityKeys.of(keys).at(t).some((k) => verifies(k, message, sig));
}

/** What a challenge's key and statements mean to a client (`consider`). */
export type Outcome =
  /** The hub announces our key (or none): nothing changes, except that
   * `stored` may learn the older keys of a chain ending at ours. */
  | { kind: "same"; stored: Uint8Array[] }
  /** The hub announces another key and sent no statement: a wrong authority (SPEC §5.1). */
  | { kind: "mismatch" }
  /** A valid chain leads from our key to the announced one: trust `current`. */
  | { kind: "rotated"; current: Uint8Array; stored: Uint8Array[]; fingerprint: string };

function merge(known: readonly Uint8Array[], more: readonly Statement[]): Uint8Array[] {
  const out = [...known];
  const seen = new Set(known.map(toHex));
  for (const s of more) if (!seen.has(toHex(s.blob))) out.push(s.blob), seen.add(toHex(s.blob));
  return out;
}

/**
 * What to trust after a challenge announcing `announced` (null: no key)
 * with the statements `rotations`, for a client trusting `trusted` that
 * keeps the statements `stored` (those it accepted before, each verified
 * then). Throws RotationRefused when the hub announces another key with
 * statements that do not lead there from `trusted`. The hub sends its whole
 * chain, which may start before our key: the part from our key on is what
 * must verify; the older part, signed and linked up to our key (whose
 * holder signed the last of it), tells which older keys counted until when.
 */
export function consider(
  trusted: Uint8Array,
  stored: readonly Uint8Array[],
  announced: Uint8Array | null,
  rotations: readonly Uint8Array[],
): Outcome {
  if (announced === null || equalBytes(announced, trusted)) {
    let chain: Statement[];
    try {
      chain = verifyLinked(rotations);
    } catch {
      return { kind: "same", stored: [...stored] }; // nothing to learn from it, nothing to change
    }
    const last = chain[chain.length - 1];
    return { kind: "same", stored: last !== undefined && equalBytes(last.new, trusted) ? merge(stored, chain) : [...stored] };
  }
  if (rotations.length === 0) return { kind: "mismatch" };
  const chain = verifyChain(trusted, rotations);
  if (!equalBytes(chain[chain.length - 1]!.new, announced)) {
    throw new RotationRefused("unknown_key", "the statements do not end at the key the hub announces");
  }
  return { kind: "rotated", current: Uint8Array.from(announced), stored: merge(stored, chain), fingerprint: attestation.authorityFingerprint(announced) };
}

/** The keyring of a client trusting `current` with the stored statements
 * (a statement that no longer verifies is left out). */
export function keyring(current: Uint8Array, stored: readonly Uint8Array[] = []): AuthorityKeys {
  const statements: Statement[] = [];
  for (const blob of stored) {
    try {
      statements.push(verifyStatement(blob));
    } catch {
      // kept by an older version, or damaged: it vouches for nothing
    }
  }
  return new AuthorityKeys(current, statements);
}
