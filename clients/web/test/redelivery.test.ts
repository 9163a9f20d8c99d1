/**
 * After a restore of the hub's store (docs/OPERATIONS.md, "Backup and
 * restore"), messages this device had already kept and acked come again:
 * SPEC §6.4 says a client drops a `deliver` whose (from_user, id) it kept,
 * and acks its seq again. MissClient does so before any lookup or
 * decryption (src/app/client.ts, `process`), from the messages its vault
 * keeps (none is ever deleted: a recalled or expired one keeps its row).
 * The Python SDK does the same with its `seen` table
 * (tests/support/backup_scenario.py checks it across a real restore).
 */
import { beforeAll, describe, expect, it } from "vitest";

import { fromHex } from "../src/protocol/bytes";
import { DeviceKeys } from "../src/protocol/crypto";
import { ready } from "../src/protocol/sodium";
import { MissClient } from "../src/app/client";
import { LocalState, type MessageRecord } from "../src/app/store";
import type { Vault } from "../src/app/vault";

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

beforeAll(async () => {
  await ready();
  (globalThis as { addEventListener?: unknown }).addEventListener ??= () => undefined;
});

describe("a message delivered again (a restored hub)", () => {
  it("is acked again and neither shown nor stored twice, after a reload too", async () => {
    const vault = new MemoryVault({ user: "u_alice", device: "d_alice", server: "ws://127.0.0.1:1/", authority: new Uint8Array(32) });
    const id = "0a".repeat(16);
    const kept: MessageRecord = {
      id,
      peer: "u_bob",
      outgoing: false,
      fromUser: "u_bob",
      fromDevice: "d_bob",
      body: "Patient chambre 12",
      kind: "text",
      sentAt: 1,
      at: 2,
      status: "received",
      targets: [],
      receipts: {},
    };
    await new LocalState(vault as unknown as Vault, "u_alice").saveMessage(kept);
    // The page reloaded since: the state comes from the vault.
    const state = new LocalState(vault as unknown as Vault, "u_alice");
    await state.load();
    const c = new MissClient(vault as unknown as Vault, DeviceKeys.generate(), state);
    const shown: MessageRecord[] = [];
    c.onMessage = (m) => shown.push(m);
    const records = vault.records.size;
    // The envelope is not even opened: garbage would be refused if it were.
    const again = { t: "deliver", seq: 41, id: fromHex(id), from_user: "u_bob", from_device: "d_bob", ts: 9, env: new Uint8Array(80) };
    const inner = c as unknown as { process(frame: unknown): Promise<void>; acks: number[]; refusals: unknown[] };
    await inner.process(again);
    expect(shown).toEqual([]);
    expect(inner.acks).toEqual([41]);
    expect(inner.refusals).toEqual([]);
    expect(vault.records.size).toBe(records);
    expect(state.message("u_bob", id)?.body).toBe("Patient chambre 12");
  });
});
