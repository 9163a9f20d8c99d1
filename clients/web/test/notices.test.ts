/**
 * Services and notices (SPEC §17) in the browser's protocol layer: every
 * vector of protocol/vectors/notices.json reproduced byte for byte (the
 * notice map and its text rendering, the padded plaintext carrying one and
 * its envelope, the maps and plaintexts a receiver must refuse, the
 * service's attestation), `lookup_ok.replies`, the `replies_refused` error,
 * and what trust.ts makes of a service's lookup.
 */
import { readFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";

import * as attestation from "../src/protocol/attestation";
import { MsgMap, pack, unpack } from "../src/protocol/codec";
import { EnvelopeError, fromHex, keysFromSecrets, openEnvelope, packPlaintext, seal, toHex, unpackPlaintext } from "../src/protocol/crypto";
import { RepliesRefused, errorClass, errorFromFrame } from "../src/protocol/errors";
import { type LookupOk, decode, encode } from "../src/protocol/frames";
import {
  EVENTS,
  MAX_EVENT,
  MAX_FIELDS,
  MAX_LABEL,
  MAX_REPLY,
  MAX_TITLE,
  MAX_VALUE,
  type Notice,
  NoticeError,
  REPLY_PREFIX,
  eventLabel,
  isServiceId,
  isServiceProfession,
  noticeFromMap,
  noticeToMap,
  renderText,
  shownEvent,
} from "../src/protocol/notices";
import { ready } from "../src/protocol/sodium";
import { checkLookup, observePeer } from "../src/app/trust";
import { MissClient } from "../src/app/client";
import { LocalState, type MessageRecord } from "../src/app/store";
import type { Vault } from "../src/app/vault";
import { DeviceKeys } from "../src/protocol/crypto";

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any
const load = (name: string): Json => JSON.parse(readFileSync(new URL(`../../../protocol/vectors/${name}`, import.meta.url), "utf8"));
const N = load("notices.json");
const CRYPTO = load("crypto.json");

beforeAll(ready);

/** A notice map of the vectors (JSON) as a Notice. */
function noticeOf(f: Json): Notice {
  const n: Notice = { title: f.title, event: f.event, at: f.at, fields: f.fields.map((p: [string, string]) => [p[0], p[1]]) };
  if (f.reply !== undefined) n.reply = f.reply;
  return n;
}

function keys(device: string) {
  const seeds = N.service_attestation.device_seeds[device];
  if (seeds) return keysFromSecrets(fromHex(seeds.sign_seed), fromHex(seeds.box_secret));
  const k = CRYPTO.keys.find((x: Json) => x.device === device);
  return keysFromSecrets(fromHex(k.sign_seed), fromHex(k.box_secret));
}

describe("notices.json", () => {
  it("constants and event labels", () => {
    expect(N.constants).toEqual({ MAX_TITLE, MAX_EVENT, MAX_FIELDS, MAX_LABEL, MAX_VALUE, MAX_REPLY, REPLY_PREFIX });
    for (const { event, label } of N.events) expect(eventLabel(event)).toBe(label);
    expect(N.events.map((e: Json) => e.event).filter((e: string) => (EVENTS as readonly string[]).includes(e))).toEqual([...EVENTS]);
    expect(shownEvent("planned_readmission")).toBe("other");
  });

  it("valid notices: canonical bytes, decoded back, French label and text", () => {
    expect(N.notices.valid.length).toBeGreaterThanOrEqual(4);
    for (const v of N.notices.valid) {
      const n = noticeOf(v.fields);
      expect(toHex(pack(noticeToMap(n)))).toBe(v.msgpack);
      expect(noticeFromMap(unpack(fromHex(v.msgpack)))).toEqual(n);
      expect(eventLabel(n.event)).toBe(v.label);
      expect(renderText(n)).toBe(v.text);
    }
  });

  it("bounds are counted in code points, not UTF-16 units", () => {
    const astral = N.notices.valid.find((v: Json) => [...v.fields.title].length === MAX_TITLE);
    expect(astral.fields.title.length).toBe(2 * MAX_TITLE);
    expect(() => noticeFromMap(unpack(fromHex(astral.msgpack)))).not.toThrow();
  });

  it("invalid notices are refused", () => {
    expect(N.notices.invalid.length).toBeGreaterThanOrEqual(20);
    for (const v of N.notices.invalid) {
      expect(() => noticeFromMap(unpack(fromHex(v.msgpack))), v.description).toThrow(NoticeError);
    }
  });

  it("an unknown key in the notice is ignored", () => {
    const admission = noticeOf(N.notices.valid[0].fields);
    for (const v of N.notices.edge_valid) expect(noticeFromMap(unpack(fromHex(v.msgpack)))).toEqual(admission);
  });

  it("the plaintext carrying a notice: padded bytes, envelope, opened by the recipient", () => {
    const v = N.plaintexts.valid[0];
    const notice = noticeOf(N.notices.valid[0].fields);
    const p = unpackPlaintext(fromHex(v.packed_plaintext));
    expect(toHex(p.id)).toBe(v.message_id);
    expect(p.kind).toBe("text");
    expect(p.notice).toEqual(notice);
    expect(p.body).toBe(renderText(notice));
    expect(toHex(packPlaintext(p, v.pad_to))).toBe(v.packed_plaintext);
    expect(fromHex(v.packed_plaintext).length % 256).toBe(0);
    // `notice` after every other key, before `pad`.
    const m = unpack(fromHex(v.packed_plaintext)) as MsgMap;
    expect([...m.keys()].slice(-2)).toEqual(["notice", "pad"]);
    const sender = keys(v.sender_device);
    const recipient = keys(v.recipient_device);
    expect(toHex(seal(fromHex(v.packed_plaintext), sender, recipient.boxPk, fromHex(v.nonce)))).toBe(v.envelope);
    expect(unpackPlaintext(openEnvelope(fromHex(v.envelope), recipient, sender.boxPk)).notice).toEqual(notice);
  });

  it("plaintexts with a malformed notice are undecryptable", () => {
    expect(N.plaintexts.invalid.length).toBeGreaterThanOrEqual(5);
    for (const v of N.plaintexts.invalid) expect(() => unpackPlaintext(fromHex(v.packed)), v.description).toThrow(EnvelopeError);
  });

  it("the service's attestation names a service, and trust.ts keeps it so", () => {
    const s = N.service_attestation;
    const now = s.not_before + 1000;
    const att = attestation.verify(fromHex(s.att), fromHex(s.authority_pk), now);
    expect([att.user, att.rpps, att.name, att.profession, att.organisation]).toEqual([s.user, s.rpps, s.name, s.profession, s.organisation]);
    expect(isServiceProfession(att.profession)).toBe(true);
    expect(isServiceId(att.rpps)).toBe(true);
    const devices = s.devices.map(([device, signPk, boxPk]: string[]) => ({ device, sign_pk: fromHex(signPk!), box_pk: fromHex(boxPk!) }));
    const reply: LookupOk = { t: "lookup_ok", rid: 1, user: s.user, name: "x", rpps: s.rpps, profession: "cardiologue", organisation: "x", devices, att: fromHex(s.att), replies: false };
    const checked = checkLookup(reply, fromHex(s.authority_pk), now, false, s.rpps);
    // The identity is the attestation's, whatever the hub's fields say.
    expect(checked.peer.profession).toBe("service");
    expect(checked.peer.acceptsReplies).toBe(false);
    const record = observePeer(undefined, checked, null).record;
    expect(record.repliesRefused).toBe(true);
    const open = observePeer(record, checkLookup({ ...reply, replies: undefined }, fromHex(s.authority_pk), now, false), null).record;
    expect(open.repliesRefused).toBeUndefined();
  });
});

describe("SPEC §17 on the wire", () => {
  it("lookup_ok.replies: after att, a bool, absent unless false", () => {
    const base: LookupOk = { t: "lookup_ok", rid: 3, user: "u_1", name: "n", rpps: "svc:provins-adt", profession: "service", organisation: "o", devices: [], att: new Uint8Array(3) };
    const bytes = encode({ ...base, replies: false });
    const m = unpack(bytes) as MsgMap;
    expect([...m.keys()].slice(-2)).toEqual(["att", "replies"]);
    expect(m.get("replies")).toBe(false);
    expect(decode(bytes, "hub")).toStrictEqual({ ...base, replies: false });
    expect(decode(encode(base), "hub")).toStrictEqual(base);
    m.set("replies", 0);
    expect(() => decode(pack(m), "hub")).toThrow();
  });

  it("replies_refused is a request error that carries the message id", () => {
    expect(errorClass("replies_refused")).toBe(RepliesRefused);
    const err = errorFromFrame({ code: "replies_refused", message: "this service does not accept replies", fatal: false });
    expect(err).toBeInstanceOf(RepliesRefused);
    expect([err.fatal, err.retryable]).toEqual([false, false]);
  });

  it("a notice is only in a text, and packs and refuses as the SPEC says", () => {
    const n: Notice = { title: "Sortie de Mme MARTIN", event: "discharge", at: 1, fields: [["Patient", "MARTIN Anne"], ["IPP", ""]] };
    const p = { id: new Uint8Array(16), fromUser: "u_s", toUser: "u_b", sentAt: 2, kind: "text", body: renderText(n), notice: n };
    expect(unpackPlaintext(packPlaintext(p, 256)).notice).toEqual(n);
    expect(renderText(n)).toBe("Sortie de Mme MARTIN\nPatient : MARTIN Anne\nIPP :");
    expect(() => unpackPlaintext(packPlaintext({ ...p, kind: "read", refs: [new Uint8Array(16)] }))).toThrow(EnvelopeError);
    expect(() => noticeToMap({ ...n, title: "" })).toThrow(NoticeError);
    expect(() => noticeToMap({ ...n, fields: Array.from({ length: 33 }, () => ["a", "b"] as [string, string]) })).toThrow(NoticeError);
    expect(() => noticeToMap({ ...n, at: 2 ** 53 })).toThrow(NoticeError);
    expect(isServiceId("svc:a")).toBe(true);
    expect(isServiceId("svc:")).toBe(false);
    expect(isServiceId("svc:A")).toBe(false);
    expect(isServiceId(`svc:${"a".repeat(29)}`)).toBe(false);
    expect(isServiceProfession("médecin")).toBe(false);
  });
});

describe("notices kept by the client", () => {
  class MemoryVault {
    readonly records = new Map<string, unknown>();
    readonly profile = { user: "u_alice", device: "d_alice", server: "ws://127.0.0.1:1/", authority: new Uint8Array(32) };
    async put(key: string, value: unknown): Promise<void> {
      this.records.set(key, structuredClone(value));
    }
    async loadAll(): Promise<Array<[string, unknown]>> {
      return [...this.records.entries()];
    }
  }
  const notice = (title: string, reply?: string): Notice => ({ title, event: "admission", at: 5, fields: [["Patient", "DUPONT Jean"]], ...(reply ? { reply } : {}) });
  const received = (id: string, at: number, n: Notice, extra: Partial<MessageRecord> = {}): MessageRecord => ({
    id, peer: "u_svc", outgoing: false, fromUser: "u_svc", fromDevice: "d_svc", body: renderText(n), kind: "text",
    sentAt: at, at, status: "received", targets: [], receipts: {}, notice: n, ...extra,
  });

  it("the newest reply line of a service is whom to call; an expired notice loses its map with its text", async () => {
    (globalThis as { addEventListener?: unknown }).addEventListener ??= () => undefined;
    const vault = new MemoryVault();
    const state = new LocalState(vault as unknown as Vault, "u_alice");
    const c = new MissClient(vault as unknown as Vault, DeviceKeys.generate(), state);
    expect(state.lastReply("u_svc")).toBeUndefined();
    await state.saveMessage(received("01".repeat(16), 10, notice("Admission A", "Bureau : 01")));
    await state.saveMessage(received("02".repeat(16), 20, notice("Admission B", "Bureau : 02")));
    await state.saveMessage(received("03".repeat(16), 30, notice("Admission C"), { expiresAt: 31 }));
    expect(state.lastReply("u_svc")).toBe("Bureau : 02");
    await c.sweepExpired(40);
    const gone = state.message("u_svc", "03".repeat(16))!;
    expect(gone).toMatchObject({ expired: true, body: "" });
    expect(gone.notice).toBeUndefined();
    expect(JSON.stringify(vault.records.get(`msg:u_svc/${"03".repeat(16)}`))).not.toContain("DUPONT");
  });

  it("read notices of a service's notices go to our own devices when it refuses replies", async () => {
    (globalThis as { addEventListener?: unknown }).addEventListener ??= () => undefined;
    const vault = new MemoryVault();
    const state = new LocalState(vault as unknown as Vault, "u_alice");
    const c = new MissClient(vault as unknown as Vault, DeviceKeys.generate(), state);
    const record = { user: "u_svc", name: "CH Provins — Admissions", rpps: "svc:provins-adt", profession: "service", organisation: "CH de Provins", pins: [], acked: [], pending: null, verifiedAt: null, attestedUntil: 0, attestedFrom: 0 };
    await state.savePeer({ ...record, repliesRefused: true });
    await state.saveMessage(received("04".repeat(16), 10, notice("Admission D")));
    await c.markRead("u_svc");
    expect(state.outbox().filter((m) => m.kind === "read").map((m) => m.peer)).toEqual(["u_alice"]);
    await state.savePeer(record);
    await state.saveMessage(received("05".repeat(16), 20, notice("Admission E")));
    await c.markRead("u_svc");
    expect(state.outbox().filter((m) => m.kind === "read").map((m) => m.peer).sort()).toEqual(["u_alice", "u_svc"]);
  });
});
