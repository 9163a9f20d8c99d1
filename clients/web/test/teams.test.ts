/**
 * SPEC §13 in the browser without a hub, with real Ed25519/X25519 keys and
 * real attestations: team chains verify or are refused with the reason the
 * Python gives (protocol/teams.py), a team message is sealed once and opens
 * only with its wrap and the sender's signature, plaintexts are padded to
 * 256 bytes, and the app's team bookkeeping (src/app/teams.ts) computes
 * targets from the verified chain only and calls a hub that asks for a
 * non-member's devices "tampered".
 */
import { beforeAll, describe, expect, it } from "vitest";

import * as attestation from "../src/protocol/attestation";
import * as crypto from "../src/protocol/crypto";
import { DeviceKeys, EnvelopeError, fromHex, toHex } from "../src/protocol/crypto";
import { decode, encode } from "../src/protocol/frames";
import { ready, sodium } from "../src/protocol/sodium";
import {
  AUTHORITY,
  SignedRecord,
  TeamChainError,
  type TeamRecord,
  type TeamState,
  applyRecord,
  isTeamId,
  newTeamId,
  nextRecord,
  packRecord,
  signRecord,
  signRecordAuthority,
  unpackRecord,
  verifyChain,
} from "../src/protocol/teams";
import { emptyTeam, extendTeam, loadTeam, membersAt, strangers, teamTargets, teamView } from "../src/app/teams";

const NOW = 1_800_000_000_000;
const DAY = 86_400_000;
const TEAM = "t_00112233445566aa";

interface Clinician {
  user: string;
  device: string;
  keys: DeviceKeys;
  att: Uint8Array;
}

let authority: { seed: Uint8Array; pk: Uint8Array };
let alice: Clinician;
let bob: Clinician;
let carol: Clinician;

function clinician(user: string, device: string, notBefore = NOW - DAY, notAfter = NOW + 90 * DAY): Clinician {
  const keys = DeviceKeys.generate();
  const att = attestation.sign(
    {
      user,
      rpps: "10000000001",
      name: `Dr ${user}`,
      profession: "infirmier",
      organisation: "CHU",
      devices: [{ device, sign_pk: keys.signPk, box_pk: keys.boxPk }],
      notBefore,
      notAfter,
    },
    authority.seed,
  );
  return { user, device, keys, att };
}

beforeAll(async () => {
  await ready();
  const seed = sodium().randombytes_buf(32);
  authority = { seed, pk: sodium().crypto_sign_seed_keypair(seed).publicKey };
  alice = clinician("u_alice", "d_alice");
  bob = clinician("u_bob", "d_bob");
  carol = clinician("u_carol", "d_carol");
});

/** The next record signed by `who`. */
function by(who: Clinician, state: TeamState | null, op: TeamRecord["op"], user: string, extra: Partial<TeamRecord> = {}): SignedRecord {
  const r = nextRecord(state, op, user, { by: who.user, device: who.device, att: who.att, at: NOW, team: TEAM, ...extra });
  return signRecord(r, who.keys);
}

/** alice creates, adds bob and carol, promotes bob. */
function chain(): SignedRecord[] {
  const recs: SignedRecord[] = [];
  let state: TeamState | null = null;
  const push = (s: SignedRecord) => {
    recs.push(s);
    state = applyRecord(state, s, authority.pk, TEAM);
  };
  push(by(alice, null, "create", alice.user, { name: "Cardiologie nuit", org: "CHU de Lille", lifespan: 7 * DAY }));
  push(by(alice, state, "add", bob.user));
  push(by(alice, state, "add", carol.user));
  push(by(alice, state, "promote", bob.user));
  return recs;
}

function reason(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    if (err instanceof TeamChainError) return err.reason;
    throw err;
  }
  return "accepted";
}

describe("team records", () => {
  it("pack canonically and unpack to the same record", () => {
    const s = by(alice, null, "create", alice.user, { name: "Équipe", org: "" });
    const r = unpackRecord(s.rec);
    expect(packRecord(r)).toEqual(s.rec);
    expect(r).toMatchObject({ team: TEAM, seq: 0, op: "create", user: "u_alice", by: "u_alice", device: "d_alice", name: "Équipe" });
    expect(s.hash()).toEqual(sodium().crypto_generichash(32, crypto.concatBytes(s.rec, s.sig), null));
  });

  it("team ids are t_ and 16 hex digits", () => {
    expect(isTeamId(newTeamId())).toBe(true);
    expect(isTeamId("t_00112233445566AA")).toBe(false);
    expect(isTeamId("u_00112233445566aa")).toBe(false);
  });

  it("refuse what is not a record as malformed", () => {
    expect(reason(() => unpackRecord(fromHex("c0")))).toBe("malformed");
    const s = by(alice, null, "create", alice.user, { name: "x" });
    expect(reason(() => unpackRecord(s.rec.subarray(0, s.rec.length - 1)))).toBe("malformed");
    expect(reason(() => verifyChain([by(alice, null, "create", alice.user, { name: "" })], authority.pk, TEAM))).toBe("malformed");
  });
});

describe("chain verification", () => {
  it("a good chain gives its members, admins, name and head", () => {
    const recs = chain();
    const state = verifyChain(recs, authority.pk, TEAM);
    expect(state.members).toEqual(["u_alice", "u_bob", "u_carol"]);
    expect(state.admins).toEqual(["u_alice", "u_bob"]);
    expect(state.name).toBe("Cardiologie nuit");
    expect(state.org).toBe("CHU de Lille");
    expect(state.lifespan).toBe(7 * DAY);
    expect(state.seq).toBe(4);
    expect(state.head).toEqual(recs[3]!.hash());
    expect(state.closed).toBe(false);
  });

  it("a changed byte, a dropped or reordered record breaks it", () => {
    const recs = chain();
    const forged = Uint8Array.from(recs[2]!.rec);
    forged[forged.length - 1]! ^= 1; // inside att: the signature no longer verifies
    expect(reason(() => verifyChain([recs[0]!, recs[1]!, new SignedRecord(forged, recs[2]!.sig)], authority.pk, TEAM))).not.toBe("accepted");
    expect(reason(() => verifyChain([recs[0]!, recs[2]!], authority.pk, TEAM))).toBe("broken_chain");
    expect(reason(() => verifyChain([recs[1]!], authority.pk, TEAM))).toBe("broken_chain");
    expect(reason(() => verifyChain(recs, authority.pk, "t_ffffffffffffffff"))).toBe("malformed"); // another team's record
    expect(reason(() => verifyChain([], authority.pk, TEAM))).toBe("broken_chain");
  });

  it("signatures: another device's key, an attestation of another user or outside its dates", () => {
    const state = verifyChain(chain(), authority.pk, TEAM);
    const mallory = clinician("u_mallory", "d_mallory");
    // bob's record signed with mallory's keys
    const r = nextRecord(state, "add", "u_mallory", { by: bob.user, device: bob.device, att: bob.att, at: NOW });
    expect(reason(() => applyRecord(state, signRecord(r, mallory.keys), authority.pk, TEAM))).toBe("bad_signature");
    // mallory claims to be bob with her own attestation
    const r2 = nextRecord(state, "add", "u_mallory", { by: bob.user, device: mallory.device, att: mallory.att, at: NOW });
    expect(reason(() => applyRecord(state, signRecord(r2, mallory.keys), authority.pk, TEAM))).toBe("bad_signature");
    // bob's record dated after his attestation ended
    const r3 = nextRecord(state, "add", "u_mallory", { by: bob.user, device: bob.device, att: bob.att, at: NOW + 100 * DAY });
    expect(reason(() => applyRecord(state, signRecord(r3, bob.keys), authority.pk, TEAM))).toBe("bad_signature");
    // an attestation by another authority
    const other = sodium().randombytes_buf(32);
    const fake = attestation.sign({ ...attestation.peek(bob.att) }, other);
    const r4 = nextRecord(state, "add", "u_mallory", { by: bob.user, device: bob.device, att: fake, at: NOW });
    expect(reason(() => applyRecord(state, signRecord(r4, bob.keys), authority.pk, TEAM))).toBe("bad_signature");
  });

  it("a record outlives its attestation: verified at the record's time", () => {
    const old = clinician("u_old", "d_old", NOW - 200 * DAY, NOW - 100 * DAY);
    const r = nextRecord(null, "create", old.user, { by: old.user, device: old.device, att: old.att, at: NOW - 150 * DAY, team: TEAM, name: "x" });
    expect(verifyChain([signRecord(r, old.keys)], authority.pk, TEAM).members).toEqual(["u_old"]);
  });

  it("the authority creates and administers", () => {
    const create = signRecordAuthority(nextRecord(null, "create", alice.user, { by: AUTHORITY, at: NOW, team: TEAM, name: "Garde" }), authority.seed);
    let state = verifyChain([create], authority.pk, TEAM);
    expect(state.admins).toEqual(["u_alice"]);
    state = applyRecord(state, signRecordAuthority(nextRecord(state, "add", bob.user, { by: AUTHORITY, at: NOW }), authority.seed), authority.pk, TEAM);
    expect(state.members).toEqual(["u_alice", "u_bob"]);
    const forged = signRecordAuthority(nextRecord(state, "add", carol.user, { by: AUTHORITY, at: NOW }), sodium().randombytes_buf(32));
    expect(reason(() => applyRecord(state, forged, authority.pk, TEAM))).toBe("bad_signature");
  });

  it("rule 3: only what the roles allow", () => {
    const recs = chain();
    const state = verifyChain(recs, authority.pk, TEAM); // alice, bob admins; carol member
    const f = (s: SignedRecord) => reason(() => applyRecord(state, s, authority.pk, TEAM));
    expect(f(by(carol, state, "add", "u_dave"))).toBe("forbidden"); // not an admin
    expect(f(by(alice, state, "add", bob.user))).toBe("forbidden"); // already a member
    expect(f(by(alice, state, "remove", alice.user))).toBe("forbidden"); // not oneself
    expect(f(by(alice, state, "remove", "u_dave"))).toBe("forbidden"); // not a member
    expect(f(by(carol, state, "promote", carol.user))).toBe("forbidden");
    expect(f(by(alice, state, "promote", bob.user))).toBe("forbidden"); // already admin
    expect(f(by(alice, state, "demote", carol.user))).toBe("forbidden"); // not an admin
    expect(f(by(alice, state, "leave", bob.user))).toBe("forbidden"); // leaves only oneself
    expect(f(by(alice, state, "create", alice.user, { name: "again" }))).toBe("forbidden");
    expect(f(by(carol, state, "leave", carol.user))).toBe("accepted");
    expect(f(by(alice, state, "demote", bob.user))).toBe("accepted");
    expect(f(by(alice, state, "remove", bob.user))).toBe("accepted");
  });

  it("the last admin cannot leave while others remain; the last member closes the team", () => {
    let state = verifyChain(chain().slice(0, 2), authority.pk, TEAM); // alice admin, bob member
    expect(reason(() => applyRecord(state, by(alice, state, "leave", alice.user), authority.pk, TEAM))).toBe("forbidden");
    expect(reason(() => applyRecord(state, by(alice, state, "demote", alice.user), authority.pk, TEAM))).toBe("forbidden");
    state = applyRecord(state, by(bob, state, "leave", bob.user), authority.pk, TEAM);
    state = applyRecord(state, by(alice, state, "leave", alice.user), authority.pk, TEAM);
    expect(state.closed).toBe(true);
    expect(state.members).toEqual([]);
    expect(reason(() => applyRecord(state, by(alice, state, "add", bob.user), authority.pk, TEAM))).toBe("forbidden");
  });
});

describe("sealed bodies and wraps", () => {
  it("a body opens with its key and the sender's signing key, and nothing else", () => {
    const id = crypto.newMessageId(NOW);
    const plaintext = crypto.packPlaintext({ id, fromUser: alice.user, toUser: TEAM, sentAt: NOW, kind: "text", body: "Patient chambre 12" }, 256);
    const [key, body] = crypto.sealBody(plaintext, id, alice.keys);
    expect(body.length).toBe(24 + 64 + plaintext.length + 16);
    expect(crypto.openBody(body, key, id, alice.keys.signPk)).toEqual(plaintext);
    const wrap = crypto.wrapKey(key, alice.keys, bob.keys.boxPk);
    expect(wrap.length).toBe(72);
    expect(crypto.unwrapKey(wrap, bob.keys, alice.keys.boxPk)).toEqual(key);
    expect(() => crypto.unwrapKey(wrap, carol.keys, alice.keys.boxPk)).toThrow(EnvelopeError);
    expect(() => crypto.openBody(body, key, id, bob.keys.signPk)).toThrow(EnvelopeError); // not bob's signature
    expect(() => crypto.openBody(body, key, crypto.newMessageId(NOW), alice.keys.signPk)).toThrow(EnvelopeError);
    const tampered = Uint8Array.from(body);
    tampered[40]! ^= 1;
    expect(() => crypto.openBody(tampered, key, id, alice.keys.signPk)).toThrow(EnvelopeError);
    expect(() => crypto.openBody(body.subarray(0, 100), key, id, alice.keys.signPk)).toThrow(EnvelopeError);
  });

  it("a member who knows K cannot forge a body under the sender's name", () => {
    const id = crypto.newMessageId(NOW);
    const [key] = crypto.sealBody(fromHex("80"), id, alice.keys);
    const [, forged] = crypto.sealBody(fromHex("81"), id, bob.keys, { key });
    expect(() => crypto.openBody(forged, key, id, alice.keys.signPk)).toThrow(EnvelopeError);
  });

  it("plaintexts are padded to multiples of 256, and keep their new keys", () => {
    const id = crypto.newMessageId(NOW);
    const read = crypto.packPlaintext({ id, fromUser: "u_a", toUser: "u_b", sentAt: NOW, kind: "read", body: "", refs: [id], team: TEAM }, 256);
    const text = crypto.packPlaintext({ id, fromUser: "u_a", toUser: "u_b", sentAt: NOW, kind: "text", body: "ok" }, 256);
    expect(read.length).toBe(256);
    expect(text.length).toBe(256);
    for (let n = 0; n < 600; n += 7) {
      const p = crypto.packPlaintext({ id, fromUser: "u_a", toUser: TEAM, sentAt: NOW, kind: "text", body: "x".repeat(n), head: new Uint8Array(32), expiresAt: NOW + DAY }, 256);
      expect(p.length % 256).toBe(0);
      const back = crypto.unpackPlaintext(p);
      expect(back.body).toBe("x".repeat(n));
      expect(back.head).toEqual(new Uint8Array(32));
      expect(back.expiresAt).toBe(NOW + DAY);
    }
    const back = crypto.unpackPlaintext(read);
    expect(back.refs).toEqual([id]);
    expect(back.team).toBe(TEAM);
    expect(crypto.packPlaintext({ id, fromUser: "u_a", toUser: "u_b", sentAt: NOW, kind: "text", body: "ok" }).length).toBeLessThan(100);
  });
});

describe("frames of revision 3", () => {
  it("round-trip and refuse out-of-range values", () => {
    const head = new Uint8Array(32).fill(9);
    const send = { t: "send" as const, id: new Uint8Array(16), from: "d_1", to: TEAM, envs: new Map([["d_2", new Uint8Array(72)]]), body: new Uint8Array(200), head, ttl: 3_600_000 };
    expect(decode(encode(send), "client")).toEqual(send);
    expect(() => encode({ ...send, ttl: 1000 })).toThrow();
    const many = new Map<string, Uint8Array>();
    for (let i = 0; i < 100; i++) many.set(`d_${i}`, new Uint8Array(72));
    expect(() => encode({ ...send, envs: many })).not.toThrow();
    expect(() => encode({ t: "send", id: new Uint8Array(16), from: "d_1", to: "u_2", envs: many })).toThrow();
    const changed = { t: "team_changed" as const, team: TEAM, seq: 3, head };
    expect(decode(encode(changed), "hub")).toEqual(changed);
    const page = { t: "team_chain_ok" as const, rid: 4, team: TEAM, recs: [{ rec: new Uint8Array(10), sig: new Uint8Array(64) }], more: true };
    expect(decode(encode(page), "hub")).toEqual(page);
    expect(() => encode({ t: "team_chain", rid: 1, team: "t_bad", from: 0 })).toThrow();
  });
});

describe("the app's teams", () => {
  it("views, heads and membership at a past head", () => {
    const recs = chain();
    let known = extendTeam(emptyTeam(TEAM), recs.slice(0, 2).map((s) => ({ rec: s.rec, sig: s.sig })), authority.pk);
    const headAfterBob = known.heads[1]!;
    known = extendTeam(known, recs.slice(2).map((s) => ({ rec: s.rec, sig: s.sig })), authority.pk);
    const view = teamView(known, carol.user);
    expect(view).toMatchObject({ id: TEAM, name: "Cardiologie nuit", member: true, admin: false, problem: null, lifespanMs: 7 * DAY });
    expect(view.events.map((e) => [e.op, e.by, e.user])).toEqual([
      ["create", "u_alice", "u_alice"],
      ["add", "u_alice", "u_bob"],
      ["add", "u_alice", "u_carol"],
      ["promote", "u_alice", "u_bob"],
    ]);
    expect(view.head).toBe(toHex(recs[3]!.hash()));
    expect(membersAt(known, headAfterBob, authority.pk)).toEqual(["u_alice", "u_bob"]);
    expect(membersAt(known, "00".repeat(32), authority.pk)).toBeUndefined();
  });

  it("a record that does not verify leaves the team as it was (the client then marks it tampered)", () => {
    const recs = chain();
    const known = extendTeam(emptyTeam(TEAM), recs.slice(0, 2).map((s) => ({ rec: s.rec, sig: s.sig })), authority.pk);
    const mallory = clinician("u_mallory", "d_mallory");
    // the hub slips in a member signed by someone who is not an admin
    const slipped = by(mallory, known.state, "add", mallory.user);
    expect(() => extendTeam(known, [{ rec: slipped.rec, sig: slipped.sig }], authority.pk)).toThrow(TeamChainError);
    expect(known.state!.members).toEqual(["u_alice", "u_bob"]);
    // a stored chain that no longer verifies loads as tampered, with no members
    const loaded = loadTeam({ id: TEAM, recs: [{ rec: recs[1]!.rec, sig: recs[1]!.sig }], problem: null }, authority.pk);
    expect(loaded.stored.problem).toBe("tampered");
    expect(loaded.state).toBeNull();
  });

  it("targets come from the verified chain; a device of a non-member is a stranger", () => {
    const state = verifyChain(chain().slice(0, 2), authority.pk, TEAM); // alice, bob
    const devices: Record<string, { device: string; box_pk: Uint8Array }[]> = {
      u_alice: [{ device: "d_alice", box_pk: alice.keys.boxPk }, { device: "d_alice2", box_pk: new Uint8Array(32) }],
      u_bob: [{ device: "d_bob", box_pk: bob.keys.boxPk }],
      u_carol: [{ device: "d_carol", box_pk: carol.keys.boxPk }],
    };
    const targets = teamTargets(state, "d_alice", (u) => devices[u] ?? []);
    expect([...targets.keys()].sort()).toEqual(["d_alice2", "d_bob"]);
    const memberDevices = new Set(["d_alice", "d_alice2", "d_bob"]);
    expect(strangers(["d_bob"], memberDevices)).toEqual([]);
    expect(strangers(["d_bob", "d_carol"], memberDevices)).toEqual(["d_carol"]);
  });
});
