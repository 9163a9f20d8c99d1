/**
 * SPEC §11.2 in the browser (src/app/trust.ts), as the SDK's
 * tests/clients/test_verification.py and test_local_state.py hold it:
 * attestations checked against the authority with real Ed25519 keys, the
 * identity taken from the attestation, substituted keys never targets, and
 * the pins: a key change waits for the user's acceptance.
 */
import { beforeAll, describe, expect, it } from "vitest";

import * as attestation from "../src/protocol/attestation";
import type { LookupOk } from "../src/protocol/frames";
import { ready, sodium } from "../src/protocol/sodium";
import { UnverifiedPeer, acceptPending, checkLookup, observePeer, type Device, type PeerRecord } from "../src/app/trust";

const NOW = 1_800_000_000_000;
const DAY = 86_400_000;

let authority: { seed: Uint8Array; pk: Uint8Array };

beforeAll(async () => {
  await ready();
  const s = sodium();
  const seed = s.randombytes_buf(32);
  authority = { seed, pk: s.crypto_sign_seed_keypair(seed).publicKey };
});

function device(id: string): Device {
  const s = sodium();
  return { device: id, sign_pk: s.randombytes_buf(32), box_pk: s.randombytes_buf(32) };
}

function lookup(user: string, attested: Device[], listed: Device[] = attested, notBefore = NOW - DAY, seed?: Uint8Array): LookupOk {
  const att = attestation.sign(
    {
      user,
      rpps: "10000000002",
      name: "Dr Bob Durand",
      profession: "cardiologue",
      organisation: "CHRU de Lille",
      devices: attested,
      notBefore,
      notAfter: NOW + 90 * DAY,
    },
    seed ?? authority.seed,
  );
  return {
    t: "lookup_ok",
    rid: 1,
    user,
    name: "Hub's own name for them",
    rpps: "99999999999",
    profession: "",
    organisation: "",
    devices: listed,
    att,
  };
}

function observe(old: PeerRecord | undefined, reply: LookupOk) {
  return observePeer(old, checkLookup(reply, authority.pk, NOW, false), null);
}

describe("checkLookup", () => {
  it("takes the identity from the attestation and only attested keys as targets", () => {
    const a = device("d_a");
    const b = device("d_b");
    const forged = { ...device("d_b") }; // listed under b's id with other keys
    const c = device("d_c"); // linked since the attestation
    const checked = checkLookup(lookup("u_bob", [a, b], [a, forged, c]), authority.pk, NOW, false);
    expect(checked.peer.name).toBe("Dr Bob Durand");
    expect(checked.peer.rpps).toBe("10000000002");
    expect(checked.peer.devices.map((d) => d.device)).toEqual(["d_a"]);
    expect(checked.peer.substituted).toEqual(["d_b"]);
    expect(checked.peer.unattested).toEqual(["d_c"]);
    expect(checked.peer.listed.map((d) => d.device)).toEqual(["d_a", "d_b", "d_c"]);
  });

  it("refuses a missing, foreign, expired or misaddressed attestation", () => {
    const a = device("d_a");
    const cases: Array<[LookupOk, string, number]> = [
      [{ ...lookup("u_bob", [a]), att: undefined }, "missing", NOW],
      [lookup("u_bob", [a], [a], NOW - DAY, sodium().randombytes_buf(32)), "signature", NOW],
      [lookup("u_bob", [a]), "expired", NOW + 91 * DAY],
      [lookup("u_bob", [a]), "not_yet_valid", NOW - 2 * DAY],
      [{ ...lookup("u_mallory", [a]), user: "u_bob" }, "wrong_user", NOW],
    ];
    for (const [reply, reason, now] of cases) {
      let caught: unknown;
      try {
        checkLookup(reply, authority.pk, now, false);
      } catch (err) {
        caught = err;
      }
      expect(caught, reason).toBeInstanceOf(UnverifiedPeer);
      expect((caught as UnverifiedPeer).reason).toBe(reason);
    }
  });
});

describe("observePeer", () => {
  it("pins the first verified lookup without a change to accept", () => {
    const a = device("d_a");
    const seen = observe(undefined, lookup("u_bob", [a]));
    expect(seen.record.pending).toBeNull();
    expect(seen.report).toBeNull();
    expect(seen.record.pins.map((d) => d.device)).toEqual(["d_a"]);
  });

  it("holds a new device as a pending change until accepted, and clears 'verified'", () => {
    const a = device("d_a");
    const b = device("d_b");
    const first = { ...observe(undefined, lookup("u_bob", [a])).record, verifiedAt: NOW };
    const second = observe(first, lookup("u_bob", [a, b]));
    expect(second.record.pending?.change.added).toEqual(["d_b"]);
    expect(second.report?.added).toEqual(["d_b"]);
    expect(second.record.verifiedAt).toBeNull();
    // Seen again: still pending, not reported twice.
    const third = observe(second.record, lookup("u_bob", [a, b]));
    expect(third.record.pending).not.toBeNull();
    expect(third.report).toBeNull();
    const accepted = acceptPending(third.record);
    expect(accepted.pending).toBeNull();
    expect(observe(accepted, lookup("u_bob", [a, b])).record.pending).toBeNull();
  });

  it("reports new keys for a pinned device as a change, never silently", () => {
    const a = device("d_a");
    const first = observe(undefined, lookup("u_bob", [a])).record;
    const rekeyed = { ...device("d_a") };
    const seen = observe(first, lookup("u_bob", [rekeyed]));
    expect(seen.record.pending?.change.changed).toEqual(["d_a"]);
  });

  it("reports a removed device without anything to accept", () => {
    const a = device("d_a");
    const b = device("d_b");
    const first = observe(undefined, lookup("u_bob", [a, b])).record;
    const seen = observe(first, lookup("u_bob", [a]));
    expect(seen.record.pending).toBeNull();
    expect(seen.report?.removed).toEqual(["d_b"]);
    expect(seen.record.pins.map((d) => d.device)).toEqual(["d_a"]);
  });

  it("makes substituted keys a change to accept, even on first sight", () => {
    const a = device("d_a");
    const forged = { ...device("d_a") };
    const seen = observe(undefined, lookup("u_bob", [a], [forged]));
    expect(seen.record.pending?.change.substituted).toEqual(["d_a"]);
  });

  it("remembers the newest attestation start (a stale one is refused by the client)", () => {
    const a = device("d_a");
    const first = observe(undefined, lookup("u_bob", [a], [a], NOW - DAY)).record;
    const newer = observe(first, lookup("u_bob", [a], [a], NOW - 1000)).record;
    expect(newer.attestedFrom).toBe(NOW - 1000);
    expect(observe(newer, lookup("u_bob", [a], [a], NOW - DAY)).record.attestedFrom).toBe(NOW - 1000);
  });
});
