/**
 * MissClient's revision 3 logic that needs no hub (src/app/client.ts): read
 * notices go to the senders, or only to our own devices when read receipts
 * are off, and are queued in the outbox like messages; a recalled or expired
 * message loses its text on this device (the vault record is rewritten
 * without it); a stored chain that no longer verifies shows its team as
 * "tampered", and nothing is sent to it. Real keys and real chains; the
 * vault is an in-memory map with the Vault's put/loadAll (IndexedDB is the
 * browser's), and no connection is opened.
 */
import { beforeAll, describe, expect, it } from "vitest";

import * as attestation from "../src/protocol/attestation";
import { DeviceKeys, toHex } from "../src/protocol/crypto";
import { ready, sodium } from "../src/protocol/sodium";
import { nextRecord, signRecord } from "../src/protocol/teams";
import { MissClient, TeamProblemError, isTeamId } from "../src/app/client";
import { LocalState, type MessageRecord } from "../src/app/store";
import type { Vault } from "../src/app/vault";

const DAY = 86_400_000;
const TEAM = "t_0011223344556677";

/** The Vault's storage half, in memory: what LocalState and MissClient use. */
class MemoryVault {
  readonly records = new Map<string, unknown>();
  constructor(readonly profile: { user: string; device: string; server: string; authority: Uint8Array }) {}
  async put(key: string, value: unknown): Promise<void> {
    this.records.set(key, structuredClone(value));
  }
  async loadAll(): Promise<Array<[string, unknown]>> {
    return [...this.records.entries()];
  }
}

let authority: { seed: Uint8Array; pk: Uint8Array };

beforeAll(async () => {
  await ready();
  const seed = sodium().randombytes_buf(32);
  authority = { seed, pk: sodium().crypto_sign_seed_keypair(seed).publicKey };
  // The client listens for the browser's "online" event.
  (globalThis as { addEventListener?: unknown }).addEventListener ??= () => undefined;
});

async function client(user = "u_alice"): Promise<{ c: MissClient; vault: MemoryVault; state: LocalState }> {
  const vault = new MemoryVault({ user, device: "d_alice", server: "ws://127.0.0.1:1/", authority: authority.pk });
  const state = new LocalState(vault as unknown as Vault, user);
  await state.load();
  const c = new MissClient(vault as unknown as Vault, DeviceKeys.generate(), state);
  return { c, vault, state };
}

function incoming(peer: string, fromUser: string, id: string, at: number, extra: Partial<MessageRecord> = {}): MessageRecord {
  return {
    id,
    peer,
    outgoing: false,
    fromUser,
    fromDevice: "d_x",
    body: "Patient chambre 12",
    kind: "text",
    sentAt: at,
    at,
    status: "received",
    targets: [],
    receipts: {},
    ...extra,
  };
}

const notices = (state: LocalState) => state.outbox().filter((m) => m.kind === "read");

describe("read notices", () => {
  it("go to each sender of the messages newly read, once, with the team for team messages", async () => {
    const { c, state } = await client();
    await state.saveMessage(incoming(TEAM, "u_bob", "01".repeat(16), 1));
    await state.saveMessage(incoming(TEAM, "u_carol", "02".repeat(16), 2));
    await state.saveMessage(incoming(TEAM, "u_bob", "03".repeat(16), 3));
    expect(state.unread(TEAM)).toBe(3);
    await c.markRead(TEAM);
    const sent = notices(state);
    expect(sent.map((n) => [n.peer, n.refs, n.team]).sort()).toEqual([
      ["u_bob", ["01".repeat(16), "03".repeat(16)], TEAM],
      ["u_carol", ["02".repeat(16)], TEAM],
    ]);
    expect(state.unread(TEAM)).toBe(0);
    // Notices are not messages: no conversation shows them.
    expect(state.thread("u_bob")).toEqual([]);
    expect(state.conversationList().map((x) => x.peer)).toEqual([TEAM]);
    await c.markRead(TEAM);
    expect(notices(state)).toHaveLength(2); // nothing read twice
  });

  it("go only to our own devices when read receipts are off (persisted setting)", async () => {
    const { c, state, vault } = await client();
    expect(c.readReceipts).toBe(true);
    await c.setReadReceipts(false);
    expect(c.readReceipts).toBe(false);
    expect(vault.records.get("settings")).toMatchObject({ readReceipts: false });
    await state.saveMessage(incoming("u_bob", "u_bob", "04".repeat(16), 4));
    await c.markRead("u_bob");
    expect(notices(state).map((n) => [n.peer, n.refs, n.team])).toEqual([["u_alice", ["04".repeat(16)], undefined]]);
  });
});

describe("recall and lifespan", () => {
  it("a message recalled before it was sent is never sent, and its text is gone from the vault", async () => {
    const { c, state, vault } = await client();
    const m = await c.send("u_bob", "Mauvais patient", { lifespanMs: DAY });
    expect(m.ttl).toBe(DAY);
    expect(m.expiresAt).toBe(m.sentAt + DAY);
    expect(state.outbox().map((x) => x.id)).toEqual([m.id]);
    await c.recall(m.id);
    const after = state.message("u_alice", m.id)!;
    expect(after).toMatchObject({ recalled: true, body: "" });
    expect(state.outbox()).toEqual([]);
    expect(JSON.stringify(vault.records.get(`msg:u_alice/${m.id}`))).not.toContain("Mauvais patient");
  });

  it("the sweep deletes expired plaintexts, kept as 'expired'", async () => {
    const { c, state, vault } = await client();
    await state.saveMessage(incoming("u_bob", "u_bob", "05".repeat(16), 5, { expiresAt: 1000, body: "Résultat INR" }));
    await state.saveMessage(incoming("u_bob", "u_bob", "06".repeat(16), 6, { expiresAt: Date.now() + DAY, body: "Reste" }));
    await c.sweepExpired(2000);
    expect(state.message("u_bob", "05".repeat(16))).toMatchObject({ expired: true, body: "" });
    expect(state.message("u_bob", "06".repeat(16))).toMatchObject({ body: "Reste" });
    expect(JSON.stringify(vault.records.get(`msg:u_bob/${"05".repeat(16)}`))).not.toContain("INR");
  });

  it("lifespans: out of bounds refused, a 1:1 default is a setting", async () => {
    const { c } = await client();
    await expect(c.send("u_bob", "x", { lifespanMs: 1000 })).rejects.toThrow(RangeError);
    await expect(c.setLifespan("u_bob", 10)).rejects.toThrow(RangeError);
    await c.setLifespan("u_bob", 8 * 3_600_000);
    expect(c.lifespanFor("u_bob")).toBe(8 * 3_600_000);
    expect((await c.send("u_bob", "y")).ttl).toBe(8 * 3_600_000);
    await c.setLifespan("u_bob", null);
    expect(c.lifespanFor("u_bob")).toBeUndefined();
  });
});

describe("teams from the vault", () => {
  function member(user: string, device: string) {
    const keys = DeviceKeys.generate();
    const att = attestation.sign(
      {
        user,
        rpps: "1",
        name: user,
        profession: "",
        organisation: "",
        devices: [{ device, sign_pk: keys.signPk, box_pk: keys.boxPk }],
        notBefore: Date.now() - DAY,
        notAfter: Date.now() + DAY,
      },
      authority.seed,
    );
    return { user, device, keys, att };
  }

  it("a verified chain shows its team; a chain that no longer verifies is 'tampered' and blocks sending", async () => {
    const alice = member("u_alice", "d_alice");
    const create = signRecord(
      nextRecord(null, "create", alice.user, { by: alice.user, device: alice.device, att: alice.att, at: Date.now(), team: TEAM, name: "Garde", lifespan: DAY }),
      alice.keys,
    );
    const { c, state } = await client();
    await state.saveTeam({ id: TEAM, recs: [{ rec: create.rec, sig: create.sig }], problem: null });
    const view = c.team(TEAM)!;
    expect(view).toMatchObject({ id: TEAM, name: "Garde", members: ["u_alice"], admins: ["u_alice"], problem: null, member: true, admin: true, lifespanMs: DAY });
    expect(view.head).toBe(toHex(create.hash()));
    expect(c.lifespanFor(TEAM)).toBe(DAY);
    expect(isTeamId(TEAM)).toBe(true);

    // The same record with one byte of its signature changed, as a vault a
    // hostile page could have rewritten: no longer a team anyone is in.
    const forged = Uint8Array.from(create.sig);
    forged[0]! ^= 1;
    const other = await client();
    await other.state.saveTeam({ id: TEAM, recs: [{ rec: create.rec, sig: forged }], problem: null });
    const bad = other.c.team(TEAM)!;
    expect(bad.problem).toBe("tampered");
    expect(bad.members).toEqual([]);
    expect(new TeamProblemError(TEAM, "tampered").problem).toBe("tampered");
  });
});

describe("a team's chain as a hostile hub serves it", () => {
  /**
   * The hub's answers to `team_chain` are scripted here (a hub that lies is
   * the point; the real hub never does): `serve` returns the records the
   * "hub" holds, from the asked seq on.
   */
  function scriptedHub(c: MissClient, serve: () => { rec: Uint8Array; sig: Uint8Array }[]) {
    (c as unknown as { request: (build: (rid: number) => { t: string; from?: number; team?: string }) => Promise<unknown> }).request = async (
      build,
    ) => {
      const frame = build(1);
      if (frame.t !== "team_chain") throw new Error(`unexpected ${frame.t}`);
      return { t: "team_chain_ok", rid: 1, team: frame.team, recs: serve().slice(frame.from), more: false };
    };
  }

  function person(user: string, device: string) {
    const keys = DeviceKeys.generate();
    const att = attestation.sign(
      {
        user,
        rpps: "1",
        name: user,
        profession: "",
        organisation: "",
        devices: [{ device, sign_pk: keys.signPk, box_pk: keys.boxPk }],
        notBefore: Date.now() - DAY,
        notAfter: Date.now() + DAY,
      },
      authority.seed,
    );
    return { user, device, keys, att, by: { by: user, device, att, at: Date.now() } };
  }

  it("a head not in the chain after a fetch is 'diverged' until the hub's head is ours again; a bad record is 'tampered'", async () => {
    const alice = person("u_alice", "d_alice");
    const bob = person("u_bob", "d_bob");
    const mallory = person("u_mallory", "d_mallory");
    const create = signRecord(nextRecord(null, "create", alice.user, { ...alice.by, team: TEAM, name: "Garde" }), alice.keys);
    const s0 = { team: TEAM, name: "Garde", org: null, lifespan: undefined, members: [alice.user], admins: [alice.user], seq: 1, head: create.hash(), closed: false };
    const add = signRecord(nextRecord(s0, "add", bob.user, alice.by), alice.keys);
    const held = [create, add].map((s) => ({ rec: s.rec, sig: s.sig }));

    const { c } = await client("u_bob");
    scriptedHub(c, () => held);
    let known = await c.syncTeam(TEAM, add.hash());
    expect(known.stored.problem).toBeNull();
    expect(c.team(TEAM)).toMatchObject({ members: ["u_alice", "u_bob"], member: true, problem: null });

    // The hub announces a head its chain does not lead to.
    known = await c.syncTeam(TEAM, sodium().randombytes_buf(32));
    expect(c.team(TEAM)!.problem).toBe("diverged");
    known = await c.syncTeam(TEAM, add.hash());
    expect(c.team(TEAM)!.problem).toBeNull();

    // Then it slips in a member that no admin added: tampered, for good,
    // and the team stays as the verified chain says.
    const s1 = { ...s0, members: [alice.user, bob.user], seq: 2, head: add.hash() };
    const slipped = signRecord(nextRecord(s1, "add", mallory.user, mallory.by), mallory.keys);
    held.push({ rec: slipped.rec, sig: slipped.sig });
    await c.syncTeam(TEAM, slipped.hash());
    expect(c.team(TEAM)).toMatchObject({ members: ["u_alice", "u_bob"], problem: "tampered" });
    held.pop();
    await c.syncTeam(TEAM, add.hash());
    expect(c.team(TEAM)!.problem).toBe("tampered");
  });
});

describe("typed text in frame strings (SPEC §3.1: U+0000 is malformed_frame)", () => {
  it("a directory search and a role search are sent without control characters", async () => {
    const { c } = await client();
    const sent: Array<Record<string, unknown>> = [];
    (c as unknown as { request: (build: (rid: number) => Record<string, unknown>) => Promise<unknown> }).request = async (build) => {
      const frame = build(1);
      sent.push(frame);
      return frame.t === "search" ? { t: "search_ok", rid: 1, atts: [] } : { t: "role_search_ok", rid: 1, roles: [] };
    };
    expect(await c.search(" Du\0pont\n")).toStrictEqual([]);
    expect(await c.oncall.search("car\0di\to")).toStrictEqual([]);
    expect(await c.search("\0\0ab")).toStrictEqual([]); // two characters once cleaned: not sent
    expect(sent).toStrictEqual([
      { t: "search", rid: 1, query: "Dupont" },
      { t: "role_search", rid: 1, query: "cardio" },
    ]);
  });
});

describe("liveness (SPEC §4.1)", () => {
  type Live = {
    conn: { kind: string };
    ws: { close: () => void } | null;
    session: { hubCaps: Set<string> } | null;
    heardAt: number;
    pingedAt: number | null;
    checkLiveness: () => void;
    request: (build: (rid: number) => Record<string, unknown>) => Promise<unknown>;
  };
  async function online(caps: string[]): Promise<{ live: Live; sent: string[]; closed: number[] }> {
    const { c } = await client();
    const live = c as unknown as Live;
    const sent: string[] = [];
    const closed: number[] = [];
    live.conn = { kind: "online" };
    live.ws = { close: () => closed.push(1) };
    live.session = { hubCaps: new Set(caps) };
    live.request = async (build) => {
      sent.push(String(build(1).t));
      return { t: "ok", rid: 1 };
    };
    return { live, sent, closed };
  }

  it("a quiet connection is pinged after 18 s, and dropped when nothing answers 10 s more", async () => {
    const { live, sent, closed } = await online(["ping"]);
    live.heardAt = Date.now() - 17_000;
    live.checkLiveness();
    expect(sent).toStrictEqual([]); // not quiet long enough
    live.heardAt = Date.now() - 19_000;
    live.checkLiveness();
    live.checkLiveness(); // one ping at a time
    expect(sent).toStrictEqual(["ping"]);
    live.pingedAt = Date.now() - 11_000;
    live.checkLiveness();
    expect(closed).toStrictEqual([1]);
    expect(live.conn.kind).toBe("offline");
    expect(live.ws).toBeNull();
  });

  it("a hub that does not name the capability is never sent a ping (it would close on it)", async () => {
    const { live, sent, closed } = await online(["refusals", "teams"]);
    live.heardAt = Date.now() - 60_000;
    live.checkLiveness();
    expect(sent).toStrictEqual([]);
    expect(closed).toStrictEqual([]);
    expect(live.conn.kind).toBe("online");
  });
});
