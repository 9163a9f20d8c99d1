/**
 * What this browser keeps, sealed under the passphrase (IndexedDB).
 *
 * Contract: nothing secret and no message text is ever written in clear.
 * The passphrase derives a 32-byte key with Argon2id (libsodium
 * `crypto_pwhash`, salt and cost stored beside it); every record (device
 * keys, messages, outbox, pinned peer keys) is a `crypto_secretbox` under
 * that key with its own random nonce. In clear stay only the `profile`
 * record's routing facts: server URL, user and device ids, the authority's
 * public key and the rotation statements that led to it (public, signed),
 * the device label, the salt and cost. A wrong passphrase fails
 * the MAC of the sealed device keys: `WrongPassphrase`.
 */
import { openDB, type IDBPDatabase } from "idb";
import { decode as unpack, encode as pack } from "@msgpack/msgpack";
import { sodium } from "../protocol/sodium";

const DB_NAME = "miss";
const DB_VERSION = 1;
const PROFILE_KEY = "profile";

export const MIN_PASSPHRASE_CHARS = 8;

export class WrongPassphrase extends Error {}

/** The clear part of the profile: routing facts and the KDF's parameters. */
export interface Profile {
  v: 1;
  server: string;
  user: string;
  device: string;
  label: string;
  /** The authority key this browser trusts now (the enrolled one, or the
   * last one a rotation led to). */
  authority: Uint8Array;
  /** Rotation statements accepted (SPEC §15), a chain ending at `authority`:
   * the older keys, each counting until its statement's `until`. */
  rotations?: Uint8Array[];
  salt: Uint8Array;
  opslimit: number;
  memlimit: number;
  /** secretbox(nonce ‖ box) of the device's secret keys. */
  keys: Uint8Array;
  created: number;
}

/** The device's secret key material, as sealed in the profile. */
export interface SecretKeys {
  signSeed: Uint8Array;
  boxSk: Uint8Array;
}

type Db = IDBPDatabase<unknown>;

async function open(): Promise<Db> {
  return openDB(DB_NAME, DB_VERSION, {
    upgrade(db) {
      db.createObjectStore("meta");
      db.createObjectStore("records");
    },
  });
}

function seal(key: Uint8Array, value: unknown): Uint8Array {
  const s = sodium();
  const nonce = s.randombytes_buf(s.crypto_secretbox_NONCEBYTES);
  // An undefined property is left out (not stored as nil): optional fields
  // read back as absent, never as null.
  const box = s.crypto_secretbox_easy(pack(value, { ignoreUndefined: true }), nonce, key);
  const out = new Uint8Array(nonce.length + box.length);
  out.set(nonce);
  out.set(box, nonce.length);
  return out;
}

function unseal(key: Uint8Array, sealed: Uint8Array): unknown {
  const s = sodium();
  const n = s.crypto_secretbox_NONCEBYTES;
  let opened: Uint8Array;
  try {
    opened = s.crypto_secretbox_open_easy(sealed.subarray(n), sealed.subarray(0, n), key);
  } catch {
    throw new WrongPassphrase("the record does not open with this key");
  }
  return unpack(opened);
}

function deriveKey(passphrase: string, salt: Uint8Array, opslimit: number, memlimit: number): Uint8Array {
  const s = sodium();
  return s.crypto_pwhash(
    s.crypto_secretbox_KEYBYTES,
    passphrase,
    salt,
    opslimit,
    memlimit,
    s.crypto_pwhash_ALG_ARGON2ID13,
  );
}

/** The stored profile, if this browser holds one (no passphrase needed). */
export async function storedProfile(): Promise<Profile | null> {
  const db = await open();
  try {
    return ((await db.get("meta", PROFILE_KEY)) as Profile | undefined) ?? null;
  } finally {
    db.close();
  }
}

/** Erase everything this browser holds for MiSS. */
export async function erase(): Promise<void> {
  const db = await open();
  try {
    await db.clear("meta");
    await db.clear("records");
  } finally {
    db.close();
  }
}

/**
 * An unlocked vault: the passphrase key in memory, records read and written
 * sealed. Writes are queued in order; `flushed()` resolves once every write
 * so far reached IndexedDB.
 */
export class Vault {
  private writes: Promise<void> = Promise.resolve();

  private constructor(
    private readonly db: Db,
    private readonly key: Uint8Array,
    readonly profile: Profile,
    readonly secrets: SecretKeys,
  ) {}

  /** Create the profile of a device just enrolled, sealed under `passphrase`. */
  static async create(
    passphrase: string,
    facts: Omit<Profile, "v" | "salt" | "opslimit" | "memlimit" | "keys" | "created">,
    secrets: SecretKeys,
  ): Promise<Vault> {
    const s = sodium();
    const salt = s.randombytes_buf(s.crypto_pwhash_SALTBYTES);
    const opslimit = s.crypto_pwhash_OPSLIMIT_INTERACTIVE;
    const memlimit = s.crypto_pwhash_MEMLIMIT_INTERACTIVE;
    const key = deriveKey(passphrase, salt, opslimit, memlimit);
    const profile: Profile = {
      v: 1,
      ...facts,
      salt,
      opslimit,
      memlimit,
      keys: seal(key, { sign_seed: secrets.signSeed, box_sk: secrets.boxSk }),
      created: Date.now(),
    };
    const db = await open();
    await db.clear("records");
    await db.put("meta", profile, PROFILE_KEY);
    return new Vault(db, key, profile, secrets);
  }

  /** Open the stored profile with `passphrase`; raises WrongPassphrase. */
  static async unlock(passphrase: string): Promise<Vault> {
    const db = await open();
    const profile = (await db.get("meta", PROFILE_KEY)) as Profile | undefined;
    if (profile === undefined) {
      db.close();
      throw new Error("no profile in this browser");
    }
    const key = deriveKey(passphrase, profile.salt, profile.opslimit, profile.memlimit);
    try {
      const opened = unseal(key, profile.keys) as { sign_seed: Uint8Array; box_sk: Uint8Array };
      return new Vault(db, key, profile, { signSeed: opened.sign_seed, boxSk: opened.box_sk });
    } catch (err) {
      db.close();
      throw err;
    }
  }

  /** Trust `authority` from now on, with the rotation statements that led
   * to it (SPEC §15): the clear profile is rewritten (after every earlier write). */
  setAuthority(authority: Uint8Array, rotations: Uint8Array[]): Promise<void> {
    this.profile.authority = authority;
    this.profile.rotations = rotations;
    const profile = { ...this.profile };
    return this.queue(() => this.db.put("meta", profile, PROFILE_KEY).then(() => undefined));
  }

  /** Every record, opened: `[key, value]` pairs. */
  async loadAll(): Promise<Array<[string, unknown]>> {
    const tx = this.db.transaction("records");
    const out: Array<[string, unknown]> = [];
    for (let cursor = await tx.store.openCursor(); cursor; cursor = await cursor.continue()) {
      out.push([String(cursor.key), unseal(this.key, cursor.value as Uint8Array)]);
    }
    await tx.done;
    return out;
  }

  /** Seal and store `value` under `key` (after every earlier write). */
  put(key: string, value: unknown): Promise<void> {
    const sealed = seal(this.key, value);
    return this.queue(() => this.db.put("records", sealed, key).then(() => undefined));
  }

  delete(key: string): Promise<void> {
    return this.queue(() => this.db.delete("records", key));
  }

  /** Chain a write after the others; one failed write does not stop the next. */
  private queue(write: () => Promise<void>): Promise<void> {
    const done = this.writes.catch(() => undefined).then(write);
    this.writes = done;
    return done;
  }

  flushed(): Promise<void> {
    return this.writes;
  }

  close(): void {
    this.key.fill(0);
    this.db.close();
  }
}
