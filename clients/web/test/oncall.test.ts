/**
 * On-call roles and urgent messages on this device (src/app/oncall.ts and
 * MissClient's role sends, SPEC §14), without a hub: the escalation levels
 * a role message is sealed for, the sender's escalation state from
 * `urgent_status` rows, and the alert of an urgent message that rings at
 * arrival and at each reminder until someone acknowledges it. The hub's
 * answers are scripted (role_get, lookups with real attestations signed by
 * a test authority); keys, seals and plaintexts are real.
 */
import { beforeAll, describe, expect, it } from "vitest";

import * as attestation from "../src/protocol/attestation";
import { DeviceKeys, fromHex, openBody, toHex, unpackPlaintext, unwrapKey } from "../src/protocol/crypto";
import type { LookupOk, RoleOk, Send, UrgentStatus } from "../src/protocol/frames";
import { escalationLevels, type Policy, type RoleInfo } from "../src/protocol/oncall";
import { NotRecipient } from "../src/protocol/errors";
import { ready, sodium } from "../src/protocol/sodium";
import { MissClient } from "../src/app/client";
import { nextEscalation } from "../src/app/oncall";
import { LocalState, type MessageRecord } from "../src/app/store";
import type { Vault } from "../src/app/vault";

const DAY = 86_400_000;
const ROLE = "r_00112233445566aa";
const BACKUP_ROLE = "r_00112233445566bb";

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
  (globalThis as { addEventListener?: unknown }).addEventListener ??= () => undefined;
});

interface Person {
  user: string;
  devices: Array<{ device: string; keys: DeviceKeys }>;
  lookup: LookupOk;
}

function person(user: string, ...deviceIds: string[]): Person {
  const devices = deviceIds.map((device) => ({ device, keys: DeviceKeys.generate() }));
  const listed = devices.map((d) => ({ device: d.device, sign_pk: d.keys.signPk, box_pk: d.keys.boxPk }));
  const att = attestation.sign(
    { user, rpps: "1", name: `Dr ${user}`, profession: "", organisation: "CHRU", devices: listed, notBefore: Date.now() - DAY, notAfter: Date.now() + DAY },
    authority.seed,
  );
  return { user, devices, lookup: { t: "lookup_ok", rid: 1, user, name: user, rpps: "1", profession: "", organisation: "CHRU", devices: listed, att } };
}

async function client(me: Person): Promise<{ c: MissClient; state: LocalState }> {
  const vault = new MemoryVault({ user: me.user, device: me.devices[0]!.device, server: "ws://127.0.0.1:1/", authority: authority.pk });
  const state = new LocalState(vault as unknown as Vault, me.user);
  await state.load();
  const c = new MissClient(vault as unknown as Vault, me.devices[0]!.keys, state);
  return { c, state };
}

/** The hub's answers, scripted: role_get → `info`, lookup → the person's attested lookup. */
function scriptedHub(c: MissClient, info: RoleInfo, people: Person[]): void {
  (c as unknown as { request: (build: (rid: number) => Record<string, unknown>) => Promise<unknown> }).request = async (build) => {
    const frame = build(1);
    if (frame.t === "role_get") return { t: "role_ok", rid: 1, info } satisfies RoleOk;
    if (frame.t === "lookup") return people.find((p) => p.user === frame.user)!.lookup;
    throw new Error(`unexpected ${String(frame.t)}`);
  };
  Object.defineProperty(c, "oncallHub", { get: () => true, configurable: true });
}

const policy = (steps: Policy["steps"]): Policy => ({ interval: 60_000, steps, final: 600_000 });

describe("escalation levels (SPEC §14.5)", () => {
  it("holders and the sender first, then each step's users not reached before", () => {
    const levels = escalationLevels(
      ["u_bob", "u_alice"],
      policy([
        { delay: 1, role: BACKUP_ROLE, holders: ["u_bob", "u_carol", "u_dan"] },
        { delay: 1, user: "u_dan", holders: ["u_dan"] },
        { delay: 1, user: "u_erin", holders: ["u_erin"] },
      ]),
      "u_alice",
    );
    expect(levels).toEqual([["u_bob", "u_alice"], ["u_carol", "u_dan"], [], ["u_erin"]]);
    expect(escalationLevels(["u_bob"], null, "u_alice")).toEqual([["u_bob", "u_alice"]]);
  });
});

describe("a message to a role", () => {
  it("is sealed once for the holders' and the backups' attested devices and our other ones, never this device", async () => {
    const alice = person("u_alice", "d_alice", "d_alice_phone");
    const bob = person("u_bob", "d_bob");
    const carol = person("u_carol", "d_carol", "d_carol2");
    const info: RoleInfo = {
      role: ROLE,
      name: "Cardiologie — senior de garde",
      org: "CHRU",
      reserved: false,
      holders: ["u_bob"],
      policy: policy([{ delay: 300_000, user: "u_carol", holders: ["u_carol"] }]),
    };
    const { c, state } = await client(alice);
    scriptedHub(c, info, [alice, bob, carol]);
    const build = (m: MessageRecord, refresh: boolean) =>
      (c as unknown as { buildRoleSend: (m: MessageRecord, r: boolean) => Promise<Send | null> }).buildRoleSend(m, refresh);

    const plain = await c.send(ROLE, "Avis pour le box 3 ?");
    expect(plain.role).toBe(ROLE);
    const frame = (await build(plain, false))!;
    expect([...frame.envs.keys()].sort()).toEqual(["d_alice_phone", "d_bob"]);
    expect(frame.urgent).toBeUndefined();

    const urgent = await c.send(ROLE, "Arrêt cardiaque box 4", { urgent: true });
    expect(urgent.escalation).toMatchObject({ state: "waiting", step: 0 });
    const sent = (await build(urgent, false))!;
    expect([...sent.envs.keys()].sort()).toEqual(["d_alice_phone", "d_bob", "d_carol", "d_carol2"]);
    expect(sent.urgent).toEqual({});
    expect(sent.to).toBe(ROLE);
    // Carol (a backup) opens the same body: to the role, urgent.
    const key = unwrapKey(sent.envs.get("d_carol2")!, carol.devices[1]!.keys, alice.devices[0]!.keys.boxPk);
    const inner = unpackPlaintext(openBody(sent.body!, key, sent.id, alice.devices[0]!.keys.signPk));
    expect(inner).toMatchObject({ toUser: ROLE, fromUser: "u_alice", body: "Arrêt cardiaque box 4", urgent: true });
    expect(state.roles.get(ROLE)?.name).toBe("Cardiologie — senior de garde");

    // Nobody on call: nothing is sealed, the role is vacant.
    scriptedHub(c, { ...info, holders: [] }, [alice, bob, carol]);
    await expect(build(urgent, true)).rejects.toMatchObject({ code: "role_vacant" });
  });
});

describe("urgent messages", () => {
  const status = (state: UrgentStatus["state"], step: number, extra: Partial<UrgentStatus> = {}): UrgentStatus => ({
    t: "urgent_status",
    seq: 1,
    id: fromHex("11".repeat(16)),
    sender: "u_alice",
    state,
    step,
    ts: 1000 + step,
    ...extra,
  });

  it("the sender's escalation: step by step, acknowledged for good", () => {
    let e = nextEscalation(undefined, status("escalated", 1, { target: BACKUP_ROLE }));
    expect(e).toMatchObject({ state: "escalated", step: 1, targets: { 1: BACKUP_ROLE } });
    e = nextEscalation(e, status("acknowledged", 1, { user: "u_carol", device: "d_carol" }));
    expect(e).toMatchObject({ state: "acknowledged", step: 1 });
    expect(nextEscalation(e, status("unacknowledged", 2)).state).toBe("acknowledged");
    const none = nextEscalation(undefined, status("unacknowledged", 0));
    expect(none.state).toBe("unacknowledged");
    expect(nextEscalation(none, status("escalated", 1, { target: "u_dan" })).state).toBe("unacknowledged");
  });

  it("ring at arrival and at each new reminder, stop when someone acknowledged", async () => {
    const bob = person("u_bob", "d_bob");
    const { c, state } = await client(bob);
    const rings: number[] = [];
    c.oncall.onAlert = (_m, alert) => rings.push(alert.count);
    const id = "22".repeat(16);
    const m: MessageRecord = {
      id,
      peer: "u_alice",
      outgoing: false,
      fromUser: "u_alice",
      fromDevice: "d_alice",
      body: "Arrêt cardiaque box 4",
      kind: "text",
      sentAt: 1,
      at: 1,
      status: "received",
      targets: [],
      receipts: {},
      urgent: true,
      role: ROLE,
    };
    await state.saveMessage(m);
    c.oncall.received(m);
    const reminder = (n: number) => c.oncall.reminder({ t: "urgent_reminder", id: fromHex(id), sender: "u_alice", n });
    reminder(1);
    reminder(1); // the same reminder twice (two hub nodes): one ring
    reminder(2);
    expect(rings).toEqual([1, 2, 3]);
    expect(c.oncall.alerts.get(`u_alice/${id}`)?.count).toBe(3);

    // Carol acknowledged on her device: the hub says so, the alert stops.
    await c.oncall.status(status("acknowledged", 0, { id: fromHex(id), user: "u_carol", device: "d_carol", ts: 5000 }));
    expect(c.oncall.alerts.size).toBe(0);
    expect(state.message("u_alice", id)?.ack).toEqual({ user: "u_carol", device: "d_carol", at: 5000 });
    reminder(3);
    expect(rings).toEqual([1, 2, 3]);

    // After an unlock, only urgent messages nobody acknowledged ring again.
    const other = "33".repeat(16);
    await state.saveMessage({ ...m, id: other });
    await state.saveMessage({ ...m, id: "44".repeat(16), recalled: true, body: "" });
    c.oncall.restore();
    expect([...c.oncall.alerts.keys()]).toEqual([`u_alice/${other}`]);

    // The hub no longer knows its escalation for us: it stops ringing here.
    (c as unknown as { request: () => Promise<unknown> }).request = async () => {
      throw new NotRecipient("no urgent message of this sender reached you under this id");
    };
    await expect(c.oncall.acknowledge("u_alice", other)).rejects.toBeInstanceOf(NotRecipient);
    expect(c.oncall.alerts.size).toBe(0);
    expect(state.message("u_alice", other)?.silenced).toBe(true);
    c.oncall.restore();
    expect(c.oncall.alerts.size).toBe(0);
    expect(toHex(fromHex(other))).toBe(other);
  });
});
