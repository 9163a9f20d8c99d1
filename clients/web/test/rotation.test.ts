/**
 * Authority key rotation in the browser (src/protocol/rotation.ts, SPEC §15):
 * every vector of protocol/vectors/rotation.json (written by the Python
 * reference, protocol/vectors/generate_rotation.py) reproduced byte for byte
 * and judged as the reference judges it; then what the client does with a
 * challenge's statements (`consider`), attestations and team records signed
 * by an older key while it counts, the `challenge.rotations` field, and
 * MissClient's side: the new key kept in the vault, the notice, a refused
 * chain, and reconnection after a hub went away (1001).
 */
import { readFileSync } from "node:fs";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";

import * as attestation from "../src/protocol/attestation";
import { MsgMap, unpack } from "../src/protocol/codec";
import { DeviceKeys, fromHex, toHex } from "../src/protocol/crypto";
import { decode, encode, type Challenge } from "../src/protocol/frames";
import * as rotation from "../src/protocol/rotation";
import { ready, sodium } from "../src/protocol/sodium";
import { SignedRecord, nextRecord, signRecord, signRecordAuthority, verifyChain as verifyTeam } from "../src/protocol/teams";
import { MissClient } from "../src/app/client";
import { checkLookup } from "../src/app/trust";
import { LocalState } from "../src/app/store";
import type { Vault } from "../src/app/vault";

interface StatementVector {
  name: string;
  old_seed: string;
  new_seed: string;
  old: string;
  new: string;
  at: number;
  until: number;
  body: string;
  blob: string;
  text: string;
  new_fingerprint: string;
}
interface ChainVector {
  name: string;
  trusted: string;
  statements: string[];
  now: number;
  current?: string;
  previous?: { key: string; until: number }[];
  error?: string;
}

const V = JSON.parse(readFileSync(new URL("../../../protocol/vectors/rotation.json", import.meta.url), "utf8")) as {
  context: string;
  max_bytes: number;
  max_statements: number;
  statements: StatementVector[];
  bad_signatures: { name: string; of: string; blob: string; error: string }[];
  chains: ChainVector[];
};

/** The Python classes, by the reason rotation.ts gives. */
const PYTHON_ERROR: Record<rotation.RotationFailure, string> = {
  malformed: "RotationMalformed",
  signature: "RotationSignatureInvalid",
  broken_chain: "RotationChainBroken",
  unknown_key: "RotationNotTrusted",
};

const DAY = 86_400_000;

function refusal(fn: () => unknown): rotation.RotationRefused {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(rotation.RotationRefused);
    expect((err as rotation.RotationRefused).code).toBe("rotation_refused");
    return err as rotation.RotationRefused;
  }
  throw new Error("not refused");
}

function seedKey(seed: Uint8Array): { seed: Uint8Array; pk: Uint8Array } {
  return { seed, pk: sodium().crypto_sign_seed_keypair(seed).publicKey };
}

beforeAll(async () => {
  await ready();
  (globalThis as { addEventListener?: unknown }).addEventListener ??= () => undefined;
});

describe("rotation.json", () => {
  const blobs = new Map<string, Uint8Array>();

  it("has the constants of rotation.ts", () => {
    expect(toHex(rotation.CONTEXT)).toBe(V.context);
    expect(V.max_bytes).toBe(rotation.MAX_STATEMENT_BYTES);
    expect(V.max_statements).toBe(rotation.MAX_STATEMENTS);
    expect(V.statements.length).toBeGreaterThanOrEqual(2);
    expect(V.chains.length).toBeGreaterThanOrEqual(5);
  });

  it("statements: signed from the seeds to the same bytes, decoded to their fields, both signatures verify", () => {
    for (const v of V.statements) {
      const oldKey = seedKey(fromHex(v.old_seed));
      const newKey = seedKey(fromHex(v.new_seed));
      expect(toHex(oldKey.pk), v.name).toBe(v.old);
      expect(toHex(newKey.pk), v.name).toBe(v.new);
      const fields = { old: oldKey.pk, new: newKey.pk, at: v.at, until: v.until };
      expect(toHex(rotation.body(fields)), v.name).toBe(v.body);
      const blob = rotation.sign(oldKey.seed, newKey.seed, v.at, v.until);
      expect(toHex(blob), v.name).toBe(v.blob); // Ed25519 is deterministic
      expect(Buffer.from(blob).toString("base64"), v.name).toBe(v.text);
      const st = rotation.verifyStatement(fromHex(v.blob));
      expect([toHex(st.old), toHex(st.new), st.at, st.until], v.name).toEqual([v.old, v.new, v.at, v.until]);
      expect(attestation.authorityFingerprint(st.new), v.name).toBe(v.new_fingerprint);
      blobs.set(v.name, fromHex(v.blob));
    }
  });

  it("bad signatures are refused with the reference's error", () => {
    for (const v of V.bad_signatures) {
      const err = refusal(() => rotation.verifyStatement(fromHex(v.blob)));
      expect(PYTHON_ERROR[err.reason], v.name).toBe(v.error);
      // peek still reads it: the damage is in a signature, not the body
      expect(toHex(rotation.peek(fromHex(v.blob)).blob), v.name).toBe(v.blob);
      blobs.set(v.name, fromHex(v.blob));
    }
  });

  it("chains: the keys a client trusting `trusted` holds at `now`, or the reference's error", () => {
    for (const c of V.chains) {
      const list = c.statements.map((n) => blobs.get(n)!);
      if (c.error !== undefined) {
        const err = refusal(() => rotation.verifyChain(fromHex(c.trusted), list));
        expect(PYTHON_ERROR[err.reason], c.name).toBe(c.error);
        continue;
      }
      const chain = rotation.verifyChain(fromHex(c.trusted), list);
      const keys = new rotation.AuthorityKeys(chain[chain.length - 1]!.new, chain);
      expect(toHex(keys.current), c.name).toBe(c.current);
      expect(keys.live(c.now).map((p) => ({ key: toHex(p.key), until: p.until })), c.name).toEqual(c.previous);
      // What the browser does with it when the hub announces the last key.
      const outcome = rotation.consider(fromHex(c.trusted), [], keys.current, list);
      expect(outcome.kind, c.name).toBe(c.trusted === c.current ? "same" : "rotated");
    }
  });
});

describe("statements", () => {
  it("refuse what is not one canonical statement", () => {
    const k1 = sodium().randombytes_buf(32);
    const k2 = sodium().randombytes_buf(32);
    const good = rotation.sign(k1, k2, 1000, 2000);
    expect(rotation.verifyStatement(good).until).toBe(2000);
    expect(() => rotation.sign(k1, k1, 1000, 2000)).toThrow(RangeError);
    expect(() => rotation.sign(k1, k2, 2000, 2000)).toThrow(RangeError);
    const pk1 = seedKey(k1).pk;
    const pk2 = seedKey(k2).pk;
    const unsigned = (f: rotation.RotationFields) => Uint8Array.from([...new Uint8Array(128), ...rotation.body(f)]);
    const cases: [string, Uint8Array][] = [
      ["short", good.subarray(0, 128)],
      ["trailing byte", Uint8Array.from([...good, 0])],
      ["too long", new Uint8Array(513)],
      ["at = until", unsigned({ old: pk1, new: pk2, at: 2000, until: 2000 })],
      ["old = new", unsigned({ old: pk1, new: pk1, at: 1000, until: 2000 })],
      ["a 31-byte key", unsigned({ old: pk1.subarray(1), new: pk2, at: 1000, until: 2000 })],
    ];
    for (const [name, blob] of cases) expect(refusal(() => rotation.verifyStatement(blob)).reason, name).toBe("malformed");
    // The same fields, keys in another order: not canonical.
    const body = Uint8Array.from([0x86, ...pack("v"), 1, ...pack("t"), ...pack("miss-rot"), ...rotation.body({ old: pk1, new: pk2, at: 1000, until: 2000 }).subarray(15)]);
    expect(unpack(body)).toBeInstanceOf(MsgMap); // valid msgpack, same six keys
    expect(refusal(() => rotation.peek(Uint8Array.from([...new Uint8Array(128), ...body]))).reason).toBe("malformed");
  });
});

function pack(s: string): number[] {
  return [0xa0 | s.length, ...new TextEncoder().encode(s)];
}

type Key = { seed: Uint8Array; pk: Uint8Array };
const fresh = (n: number): Key[] => Array.from({ length: n }, () => seedKey(sodium().randombytes_buf(32)));

describe("consider", () => {
  let a: Key, b: Key, c: Key, x: Key;
  beforeAll(() => {
    [a, b, c, x] = fresh(4) as [Key, Key, Key, Key];
  });
  const ab = () => rotation.sign(a.seed, b.seed, 1000, 5000);
  const bc = () => rotation.sign(b.seed, c.seed, 6000, 9000);

  it("moves to the announced key along a chain from ours, the whole chain kept", () => {
    const out = rotation.consider(a.pk, [], c.pk, [ab(), bc()]);
    expect(out.kind).toBe("rotated");
    if (out.kind !== "rotated") return;
    expect(toHex(out.current)).toBe(toHex(c.pk));
    expect(out.stored.length).toBe(2);
    expect(out.fingerprint).toBe(attestation.authorityFingerprint(c.pk));
    const keys = rotation.keyring(out.current, out.stored);
    expect(keys.at(4000).map(toHex)).toEqual([c.pk, b.pk, a.pk].map(toHex));
    expect(keys.at(5001).map(toHex)).toEqual([c.pk, b.pk].map(toHex));
    expect(keys.at(9001).map(toHex)).toEqual([c.pk].map(toHex));
  });

  it("from a middle key too (already rotated once)", () => {
    const out = rotation.consider(b.pk, [ab()], c.pk, [ab(), bc()]);
    expect(out.kind === "rotated" && out.stored.length).toBe(2);
  });

  it("refuses a statement not signed by our key, a bad signature, or a chain not ending at the announced key", () => {
    const xb = rotation.sign(x.seed, b.seed, 1000, 5000);
    expect(refusal(() => rotation.consider(a.pk, [], b.pk, [xb])).reason).toBe("unknown_key");
    const forged = ab();
    forged[3] = forged[3]! ^ 1;
    expect(refusal(() => rotation.consider(a.pk, [], b.pk, [forged])).reason).toBe("signature");
    expect(refusal(() => rotation.consider(a.pk, [], c.pk, [ab()])).reason).toBe("unknown_key"); // as check_authority: not ending at the announced key
    expect(refusal(() => rotation.consider(a.pk, [], c.pk, [bc(), ab()])).reason).toBe("broken_chain");
  });

  it("another key without statements is a mismatch; our key announced changes nothing but may teach older keys", () => {
    expect(rotation.consider(a.pk, [], b.pk, []).kind).toBe("mismatch");
    expect(rotation.consider(a.pk, [], null, [ab()])).toEqual({ kind: "same", stored: [] });
    // A device enrolled under b learns that a counted until 5000.
    const learnt = rotation.consider(b.pk, [], b.pk, [ab()]);
    expect(learnt.kind === "same" && learnt.stored.length).toBe(1);
    // A bad chain next to our own key: nothing learnt, nothing refused.
    expect(rotation.consider(b.pk, [], b.pk, [bc()])).toEqual({ kind: "same", stored: [] });
  });
});

describe("older keys while they count", () => {
  const old = () => seedKey(Uint8Array.from({ length: 32 }, (_, i) => i + 1));
  const neu = () => seedKey(Uint8Array.from({ length: 32 }, (_, i) => 100 + i));
  let device: DeviceKeys;
  beforeAll(() => {
    device = DeviceKeys.generate();
  });
  const att = (seed: Uint8Array, user = "u_alice") =>
    attestation.sign(
      {
        user,
        rpps: "10000000001",
        name: "Alice Martin",
        profession: "Médecin",
        organisation: "CHU",
        devices: [{ device: "d_alice", sign_pk: device.signPk, box_pk: device.boxPk }],
        notBefore: 0,
        notAfter: 100 * DAY,
      },
      seed,
    );

  it("attestations of the old key verify until `until`, then not; the new key's always", () => {
    const until = 30 * DAY;
    const keys = new rotation.AuthorityKeys(neu().pk, [rotation.verifyStatement(rotation.sign(old().seed, neu().seed, DAY, until))]);
    expect(rotation.verifyAttestation(att(old().seed), keys, until).user).toBe("u_alice");
    expect(() => rotation.verifyAttestation(att(old().seed), keys, until + 1)).toThrow(attestation.AttestationSignatureInvalid);
    expect(rotation.verifyAttestation(att(neu().seed), keys, until + 1).user).toBe("u_alice");
    expect(() => rotation.verifyAttestation(att(neu().seed), keys, 100 * DAY)).toThrow(attestation.AttestationExpired);
    const reply = { t: "lookup_ok" as const, rid: 1, user: "u_alice", name: "", rpps: "", profession: "", organisation: "", devices: [{ device: "d_alice", sign_pk: device.signPk, box_pk: device.boxPk }], att: att(old().seed) };
    expect(checkLookup(reply, keys, until, false).peer.devices.length).toBe(1);
    expect(() => checkLookup(reply, keys, until + 1, false)).toThrow(/signature/);
    expect(() => checkLookup(reply, neu().pk, until, false)).toThrow(/signature/); // a bare new key does not know the old
  });

  it("team records signed under the old key stay valid after `until` (their own time counts), later ones do not", () => {
    const until = 30 * DAY;
    const keys = new rotation.AuthorityKeys(neu().pk, [rotation.verifyStatement(rotation.sign(old().seed, neu().seed, DAY, until))]);
    const team = "t_00112233445566aa";
    const create = signRecordAuthority(nextRecord(null, "create", "u_alice", { by: "authority", team, at: 10 * DAY, name: "Réa" }), old().seed);
    const state = verifyTeam([create], keys, team);
    const add = signRecord(
      nextRecord(state, "add", "u_bob", { by: "u_alice", device: "d_alice", att: att(old().seed), at: 20 * DAY }),
      device,
    );
    expect(verifyTeam([create, add], keys, team).members).toEqual(["u_alice", "u_bob"]);
    const late = signRecordAuthority(nextRecord(null, "create", "u_alice", { by: "authority", team, at: until + 1, name: "Réa" }), old().seed);
    expect(() => verifyTeam([late], keys, team)).toThrow(/authority/);
    expect(() => verifyTeam([new SignedRecord(create.rec, create.sig)], neu().pk, team)).toThrow(/authority/);
  });
});

describe("challenge.rotations", () => {
  it("encodes after caps and decodes back; more than 8 or one over 512 bytes is malformed", () => {
    const st = fromHex(V.statements[0]!.blob);
    const frame: Challenge = { t: "challenge", v: 1, nonce: new Uint8Array(32), authority: new Uint8Array(32).fill(7), caps: ["rotation"], rotations: [st, st] };
    const bytes = encode(frame);
    const back = decode(bytes, "hub") as Challenge;
    expect(back.rotations!.map(toHex)).toEqual([toHex(st), toHex(st)]);
    expect(() => decode(encode({ ...frame, rotations: Array(9).fill(st) }), "hub")).toThrow();
    expect(() => decode(encode({ ...frame, rotations: [new Uint8Array(513)] }), "hub")).toThrow();
    expect((decode(encode({ t: "challenge", v: 1, nonce: new Uint8Array(32) }), "hub") as Challenge).rotations).toBeUndefined();
  });
});

// --- MissClient -------------------------------------------------------------------------

class MemoryVault {
  readonly records = new Map<string, unknown>();
  readonly writes: { authority: Uint8Array; rotations: Uint8Array[] }[] = [];
  constructor(readonly profile: { user: string; device: string; server: string; authority: Uint8Array; rotations?: Uint8Array[] }) {}
  async put(key: string, value: unknown): Promise<void> {
    this.records.set(key, structuredClone(value));
  }
  async loadAll(): Promise<Array<[string, unknown]>> {
    return [...this.records.entries()];
  }
  async setAuthority(authority: Uint8Array, rotations: Uint8Array[]): Promise<void> {
    this.profile.authority = authority;
    this.profile.rotations = rotations;
    this.writes.push({ authority, rotations });
  }
}

async function client(authority: Uint8Array): Promise<{ c: MissClient; vault: MemoryVault }> {
  const vault = new MemoryVault({ user: "u_alice", device: "d_alice", server: "ws://127.0.0.1:1/", authority });
  const state = new LocalState(vault as unknown as Vault, "u_alice");
  await state.load();
  return { c: new MissClient(vault as unknown as Vault, DeviceKeys.generate(), state), vault };
}

/** What considerAuthority reads of a session. */
const challenged = (announced: Uint8Array, rotations: Uint8Array[]) => ({
  hubAuthority: announced,
  challenge: { t: "challenge", v: 1, nonce: new Uint8Array(32), authority: announced, rotations },
});

describe("MissClient and a challenge", () => {
  let a: Key, b: Key, x: Key;
  beforeAll(() => {
    [a, b, x] = fresh(3) as [Key, Key, Key];
  });
  const consider = (c: MissClient, s: unknown) => (c as unknown as { considerAuthority(s: unknown): void }).considerAuthority(s);

  it("accepts the new key along a valid chain: kept in the vault, the notice set, old attestations still good", async () => {
    const { c, vault } = await client(a.pk);
    const st = rotation.sign(a.seed, b.seed, Date.now(), Date.now() + 30 * DAY);
    consider(c, challenged(b.pk, [st]));
    expect(toHex(vault.profile.authority)).toBe(toHex(b.pk));
    expect(vault.writes.length).toBe(1);
    expect(vault.writes[0]!.rotations.map(toHex)).toEqual([toHex(st)]);
    expect(c.rotationNotice).toBe(attestation.authorityFingerprint(b.pk));
    expect(c.authorityMismatch).toBe(false);
    expect(c.rotationRefused).toBeNull();
    expect(c.authorityKeys.at(Date.now()).map(toHex)).toEqual([toHex(b.pk), toHex(a.pk)]);
    // Reconnecting to the same hub: nothing new, no second write.
    consider(c, challenged(b.pk, [st]));
    expect(vault.writes.length).toBe(1);
    c.dismissRotationNotice();
    expect(c.rotationNotice).toBeNull();
  });

  it("refuses a statement not signed by the known key: the key stays, the mismatch is flagged", async () => {
    const { c, vault } = await client(a.pk);
    consider(c, challenged(b.pk, [rotation.sign(x.seed, b.seed, 1000, 2000)]));
    expect(toHex(vault.profile.authority)).toBe(toHex(a.pk));
    expect(vault.writes.length).toBe(0);
    expect(c.rotationRefused?.reason).toBe("unknown_key");
    expect(c.authorityMismatch).toBe(true);
    expect(c.rotationNotice).toBeNull();
    // Another key and no statement: a wrong authority, as before revision 5.
    consider(c, challenged(b.pk, []));
    expect([c.authorityMismatch, c.rotationRefused]).toEqual([true, null]);
  });
});

describe("reconnection", () => {
  afterEach(() => {
    vi.restoreAllMocks();
    vi.useRealTimers();
  });

  type Internals = { closed(err: Error | null): void; wentAwayAt: number | null; attempt: number };

  it("uses full jitter: the delay is drawn from 0 up to the backoff, which doubles to 30 s", async () => {
    vi.useFakeTimers({ now: 1_000_000 });
    const { c } = await client(new Uint8Array(32));
    const inner = c as unknown as Internals;
    const delays: number[] = [];
    for (const r of [0, 0.999, 0.999, 0.999, 0.999, 0.999, 0.999]) {
      vi.spyOn(Math, "random").mockReturnValue(r);
      inner.closed(null);
      if (c.conn.kind !== "offline") throw new Error(c.conn.kind);
      delays.push(c.conn.retryAt - Date.now());
      expect(c.conn.quietUntil).toBeUndefined();
    }
    expect(delays.map(Math.round)).toEqual([0, 1998, 3996, 7992, 15984, 29970, 29970]);
    c.stop();
  });

  it("after a 1001 (a draining hub), reconnecting is quiet for 10 s, and soon", async () => {
    vi.useFakeTimers({ now: 5_000_000 });
    const { c } = await client(new Uint8Array(32));
    const inner = c as unknown as Internals;
    inner.wentAwayAt = Date.now();
    vi.spyOn(Math, "random").mockReturnValue(0.5);
    inner.closed(null);
    expect(c.conn).toEqual({ kind: "offline", retryAt: Date.now() + 500, quietUntil: Date.now() + 10_000 });
    vi.setSystemTime(Date.now() + 10_001);
    inner.closed(null);
    expect(c.conn).toEqual({ kind: "offline", retryAt: Date.now() + 1000 }); // second attempt: 0.5 × 2 s
    c.stop();
  });
});
