/**
 * Every vector of protocol/vectors/*.json, reproduced byte for byte by the
 * TypeScript protocol layer (SPEC §3.5): frames.json (valid frames encode to
 * their exact bytes and decode back to their fields; invalid ones are refused
 * with their error code) and crypto.json (keys, auth and enroll signatures,
 * envelopes and plaintexts, message ids, the attestation and the authority
 * key, safety numbers). Where SPEC gives a formula, the value is also
 * recomputed from it. The last test checks that the number of vectors
 * checked is the number of vectors in the files.
 */
import { encode as genericPack } from "@msgpack/msgpack";
import { readFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";

import * as attestation from "../src/protocol/attestation";
import { MsgMap, pack, unpack } from "../src/protocol/codec";
import * as crypto from "../src/protocol/crypto";
import { fromHex, toHex } from "../src/protocol/crypto";
import { ProtocolError, errorClass } from "../src/protocol/errors";
import {
  CLIENT_FRAME_TYPES,
  HUB_FRAME_TYPES,
  MAX_ACK_BYTES,
  MAX_ACK_REFUSALS,
  MAX_ACK_SEQS,
  STATUSES,
  SUBPROTOCOL,
  type Direction,
  type Frame,
  decode,
  decodePolicy,
  encode,
} from "../src/protocol/frames";
import { ClientSession } from "../src/protocol/session";
import * as teams from "../src/protocol/teams";
import * as oncall from "../src/protocol/oncall";
import { ready, sodium } from "../src/protocol/sodium";

// --- the files ---------------------------------------------------------------------

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
interface ValidFrame {
  name: string;
  description: string;
  direction: "client->hub" | "hub->client";
  type: string;
  fields: { [key: string]: Json };
  msgpack: string;
}
interface InvalidFrame {
  name: string;
  description: string;
  decode_as: "client" | "server" | "any";
  msgpack: string;
  error: string;
}
interface KeyVector {
  device: string;
  sign_seed: string;
  sign_pk: string;
  box_secret: string;
  box_pk: string;
}
interface EnvelopeVector {
  description: string;
  sender_device: string;
  recipient_device: string;
  nonce: string;
  plaintext: PlaintextJson;
  packed_plaintext: string;
  envelope: string;
}
interface BadEnvelope {
  description: string;
  sender_device: string;
  recipient_device: string;
  envelope: string;
}
interface BadPlaintext {
  description: string;
  packed_plaintext: string;
}
interface MessageIdVector {
  description: string;
  now_ms: number;
  rand: string;
  id: string;
  uuid: string;
}
interface PlaintextJson {
  id: string;
  from: string;
  to: string;
  sent_at: number;
  kind: string;
  body: string;
  reply_to?: string;
  head?: string;
  expires_at?: number;
  refs?: string[];
  team?: string;
  urgent?: boolean;
}

const load = (name: string) => JSON.parse(readFileSync(new URL(`../../../protocol/vectors/${name}`, import.meta.url), "utf8"));
const FRAMES = load("frames.json") as { description: string; protocol: string; valid: ValidFrame[]; invalid: InvalidFrame[] };
const CRYPTO = load("crypto.json");
const TEAMS = load("teams.json");
const ONCALL = load("oncall.json");
const KEYS = new Map<string, KeyVector>((CRYPTO.keys as KeyVector[]).map((k) => [k.device, k]));

const DIRECTIONS: Record<InvalidFrame["decode_as"], Direction> = { client: "client", server: "hub", any: "any" };

/** How many vectors each test checked, by section (see the last test). */
const checked = new Map<string, number>();
const tick = (section: string) => checked.set(section, (checked.get(section) ?? 0) + 1);

/** JSON vector value -> wire value ({"bin": hex} -> bytes). */
function fromJson(value: Json): unknown {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "bin") return fromHex(value.bin as string);
    return Object.fromEntries(keys.map((k) => [k, fromJson(value[k]!)]));
  }
  return value;
}

/** The frame object of a valid vector (envs as a Map, in the listed order). */
function buildFrame(v: ValidFrame): Frame {
  const frame: Record<string, unknown> = { t: v.type };
  for (const [key, raw] of Object.entries(v.fields)) {
    const value = fromJson(raw);
    frame[key] = v.type === "send" && key === "envs" ? new Map(Object.entries(value as object)) : value;
  }
  return frame as unknown as Frame;
}

function keysOf(device: string): crypto.DeviceKeys {
  const k = KEYS.get(device)!;
  return crypto.keysFromSecrets(fromHex(k.sign_seed), fromHex(k.box_secret));
}

function plaintextOf(p: PlaintextJson): crypto.Plaintext {
  const out: crypto.Plaintext = {
    id: fromHex(p.id),
    fromUser: p.from,
    toUser: p.to,
    sentAt: p.sent_at,
    kind: p.kind,
    body: p.body,
  };
  if (p.reply_to !== undefined) out.replyTo = fromHex(p.reply_to);
  if (p.head !== undefined) out.head = fromHex(p.head);
  if (p.expires_at !== undefined) out.expiresAt = p.expires_at;
  if (p.refs !== undefined) out.refs = p.refs.map(fromHex);
  if (p.team !== undefined) out.team = p.team;
  if (p.urgent !== undefined) out.urgent = p.urgent;
  return out;
}

const utf8 = (s: string) => new TextEncoder().encode(s);

beforeAll(async () => {
  await ready();
});

describe("the files", () => {
  it("describe themselves and name the protocol", () => {
    expect(FRAMES.protocol).toBe(SUBPROTOCOL);
    expect(CRYPTO.protocol).toBe(SUBPROTOCOL);
    expect(FRAMES.description).toBeTruthy();
    expect(CRYPTO.description).toBeTruthy();
    const names = [...FRAMES.valid, ...FRAMES.invalid].map((v) => v.name);
    expect(new Set(names).size).toBe(names.length);
  });

  it("have a valid vector for every frame type, and only known types", () => {
    const types = new Set(FRAMES.valid.map((v) => v.type));
    expect([...types].sort()).toEqual([...CLIENT_FRAME_TYPES, ...HUB_FRAME_TYPES].sort());
    const statuses = new Set<string>();
    for (const v of FRAMES.valid) {
      if (v.type === "set_status" || v.type === "presence") statuses.add(v.fields.status as string);
      if (v.type === "watching") for (const p of v.fields.presence as { status: string }[]) statuses.add(p.status);
    }
    expect([...statuses].sort()).toEqual([...STATUSES].sort());
  });
});

// --- frames.json ---------------------------------------------------------------------

describe("frames.json: valid", () => {
  it.each(FRAMES.valid.map((v) => [v.name, v] as const))("%s", (_name, v) => {
    const expected = fromHex(v.msgpack);
    const frame = buildFrame(v);

    expect(toHex(encode(frame))).toBe(v.msgpack);
    expect(decode(expected)).toStrictEqual(frame);
    const direction = v.direction === "client->hub" ? "client" : "hub";
    const decoded = decode(expected, direction);
    expect(decoded).toStrictEqual(frame);
    if (decoded.t === "send") expect([...decoded.envs.keys()]).toEqual(Object.keys(v.fields.envs as object));

    // Canonical: "t" first, then the keys in the listed order, shortest
    // formats: a generic packer given the same map agrees.
    const wire = { t: v.type, ...(fromJson(v.fields) as object) };
    expect(toHex(genericPack(wire))).toBe(v.msgpack);
    const m = unpack(expected) as MsgMap;
    expect([...m.keys()]).toEqual(["t", ...Object.keys(v.fields)]);
    tick("frames.valid");
  });
});

describe("frames.json: invalid", () => {
  it.each(FRAMES.invalid.map((v) => [v.name, v] as const))("%s", (_name, v) => {
    const cls = errorClass(v.error);
    expect(cls).toBeDefined();
    let caught: unknown;
    try {
      decode(fromHex(v.msgpack), DIRECTIONS[v.decode_as]);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(cls!);
    const err = caught as ProtocolError;
    expect(err.code).toBe(v.error);
    expect(err.fatal).toBe(true);
    expect(err.remote).toBe(false);
    // A client refuses it too (as its own error, before welcome by closing):
    // with this code when it is a hub frame; a client frame with a flaw is
    // first of all a type the hub never sends (unknown_frame_type).
    const session = new ClientSession();
    let local: unknown;
    try {
      session.receive(fromHex(v.msgpack));
    } catch (e) {
      local = e;
    }
    expect(local).toBeInstanceOf(ProtocolError);
    expect((local as ProtocolError).remote).toBe(false);
    if (v.decode_as === "server") expect((local as ProtocolError).code).toBe(v.error);
    expect(session.state).toBe("closed");
    tick("frames.invalid");
  });
});

describe("frames: the limits frames.py computes", () => {
  it("MAX_ACK_BYTES is an ack of 1024 seqs and 64 refusals at their widest", () => {
    const widest = 2n ** 63n - 1n;
    const refusal = new MsgMap([
      ["seq", widest],
      ["reason", "x".repeat(32)],
    ]);
    const ack = new MsgMap([
      ["t", "ack"],
      ["seqs", Array(MAX_ACK_SEQS).fill(widest)],
      ["refused", Array(MAX_ACK_REFUSALS).fill(refusal)],
    ]);
    expect(pack(ack).length).toBe(MAX_ACK_BYTES);
  });
});

// --- crypto.json ---------------------------------------------------------------------

describe("crypto.json: keys and signatures", () => {
  it.each((CRYPTO.keys as KeyVector[]).map((k) => [k.device, k] as const))("key %s", (_device, k) => {
    const keys = keysOf(k.device);
    expect(toHex(keys.signPk)).toBe(k.sign_pk);
    expect(toHex(keys.boxPk)).toBe(k.box_pk);
    // libsodium's own derivations, as SPEC §5 names them
    expect(toHex(sodium().crypto_sign_seed_keypair(fromHex(k.sign_seed)).publicKey)).toBe(k.sign_pk);
    expect(toHex(sodium().crypto_scalarmult_base(fromHex(k.box_secret)))).toBe(k.box_pk);
    tick("keys");
  });

  it("auth", () => {
    const v = CRYPTO.auth;
    const nonce = fromHex(v.nonce);
    const message = crypto.authMessage(nonce, v.device);
    expect(toHex(message)).toBe(v.auth_message);
    expect(message).toStrictEqual(crypto.concatBytes(utf8("miss.v1/auth\0"), nonce, utf8(v.device))); // SPEC §5.2
    const keys = keysOf(v.device);
    expect(toHex(keys.sign(message))).toBe(v.signature);
    expect(crypto.verifySignature(keys.signPk, message, fromHex(v.signature))).toBe(true);
    expect(crypto.verifySignature(keys.signPk, crypto.authMessage(nonce, "d_other"), fromHex(v.signature))).toBe(false);

    // The session answers the vector's challenge with exactly the vector's auth frame.
    const byName = new Map(FRAMES.valid.map((f) => [f.name, f]));
    expect((byName.get("challenge")!.fields.nonce as { bin: string }).bin).toBe(v.nonce);
    const session = new ClientSession();
    expect(session.receive(fromHex(byName.get("challenge")!.msgpack)).kind).toBe("challenged");
    expect(toHex(session.auth(v.device, keys))).toBe(byName.get("auth")!.msgpack);
    tick("auth");
  });

  it("enroll", () => {
    const v = CRYPTO.enroll;
    const nonce = fromHex(v.nonce);
    const signPk = fromHex(v.sign_pk);
    const boxPk = fromHex(v.box_pk);
    const keys = keysOf(v.device);
    expect(keys.signPk).toStrictEqual(signPk);
    expect(keys.boxPk).toStrictEqual(boxPk);
    const message = crypto.enrollMessage(nonce, v.code, signPk, boxPk);
    expect(toHex(message)).toBe(v.enroll_message);
    expect(message).toStrictEqual(crypto.concatBytes(utf8("miss.v1/enroll\0"), nonce, signPk, boxPk, utf8(v.code))); // SPEC §5.1
    expect(toHex(keys.sign(message))).toBe(v.signature);
    expect(crypto.verifySignature(signPk, message, fromHex(v.signature))).toBe(true);

    const byName = new Map(FRAMES.valid.map((f) => [f.name, f]));
    const session = new ClientSession();
    session.receive(fromHex(byName.get("challenge")!.msgpack));
    const enroll = byName.get("enroll")!;
    expect(toHex(session.enroll(v.code, keys, enroll.fields.label as string))).toBe(enroll.msgpack);
    tick("enroll");
  });
});

describe("crypto.json: envelopes and plaintexts", () => {
  const envelopes = CRYPTO.envelopes;

  it.each((envelopes.valid as EnvelopeVector[]).map((v) => [v.description, v] as const))("%s", (_d, v) => {
    const sender = keysOf(v.sender_device);
    const recipient = keysOf(v.recipient_device);
    const nonce = fromHex(v.nonce);
    const plaintext = plaintextOf(v.plaintext);
    const packed = crypto.packPlaintext(plaintext);
    expect(toHex(packed)).toBe(v.packed_plaintext);

    const envelope = crypto.seal(packed, sender, recipient.boxPk, nonce);
    expect(toHex(envelope)).toBe(v.envelope);
    expect(envelope.subarray(0, 24)).toStrictEqual(nonce); // SPEC §6.1: nonce ‖ tag ‖ ciphertext
    expect(envelope.length).toBe(24 + 16 + packed.length);

    expect(crypto.openEnvelope(envelope, recipient, sender.boxPk)).toStrictEqual(packed);
    expect(crypto.unpackPlaintext(packed)).toStrictEqual(plaintext);
    // SPEC §6.3: the vector's keys are the wire keys, in the table's order after "v".
    const order = ["id", "from", "to", "sent_at", "kind", "body", "reply_to"];
    expect(Object.keys(v.plaintext)).toEqual(order.filter((k) => k in v.plaintext));
    const wire = Object.fromEntries(
      Object.entries(v.plaintext).map(([k, x]) => [k, k === "id" || k === "reply_to" ? fromHex(x as string) : x]),
    );
    expect(toHex(genericPack({ v: 1, ...wire }))).toBe(v.packed_plaintext);
    tick("envelopes.valid");
  });

  it.each((envelopes.invalid as BadEnvelope[]).map((v) => [v.description, v] as const))("%s", (_d, v) => {
    const sender = keysOf(v.sender_device);
    const recipient = keysOf(v.recipient_device);
    expect(() => crypto.openEnvelope(fromHex(v.envelope), recipient, sender.boxPk)).toThrow(crypto.EnvelopeError);
    tick("envelopes.invalid");
  });

  it.each((envelopes.invalid_plaintexts as BadPlaintext[]).map((v) => [v.description, v] as const))(
    "plaintext refused: %s",
    (_d, v) => {
      expect(() => crypto.unpackPlaintext(fromHex(v.packed_plaintext))).toThrow(crypto.EnvelopeError);
      tick("envelopes.invalid_plaintexts");
    },
  );
});

describe("crypto.json: message ids", () => {
  it.each((CRYPTO.message_ids.vectors as MessageIdVector[]).map((v) => [v.description, v] as const))(
    "%s",
    (_d, v) => {
      const rand = fromHex(v.rand);
      const id = crypto.newMessageId(v.now_ms, rand);
      expect(toHex(id)).toBe(v.id);
      // SPEC §9, from the formula (BigInt: 48 bits do not fit bitwise operators).
      const b = new Uint8Array(16);
      for (let i = 0; i < 6; i++) b[i] = Number((BigInt(v.now_ms) >> BigInt(8 * (5 - i))) & 0xffn);
      b.set(rand, 6);
      b[6] = 0x70 | (b[6]! & 0x0f);
      b[8] = 0x80 | (b[8]! & 0x3f);
      expect(id).toStrictEqual(b);
      expect(crypto.messageIdUuid(id)).toBe(v.uuid);
      expect(id[6]! >> 4).toBe(7); // version 7
      expect(id[8]! >> 6).toBe(2); // variant 10
      expect(crypto.messageIdTimeMs(id)).toBe(v.now_ms);
      tick("message_ids");
    },
  );
});

describe("crypto.json: the attestation", () => {
  it("is the authority's signature over the canonical body (SPEC §11.1)", () => {
    const v = CRYPTO.attestation;
    const seed = fromHex(v.authority_seed);
    const authorityPk = fromHex(v.authority_pk);
    expect(toHex(sodium().crypto_sign_seed_keypair(seed).publicKey)).toBe(v.authority_pk);
    const devices = (v.devices as [string, string, string][]).map(([device, s, b]) => ({
      device,
      sign_pk: fromHex(s),
      box_pk: fromHex(b),
    }));
    const fields = {
      user: v.user,
      rpps: v.rpps,
      name: v.name,
      profession: v.profession,
      organisation: v.organisation,
      devices,
      notBefore: v.not_before,
      notAfter: v.not_after,
    };
    // From the spec's words with a generic packer and libsodium...
    const body = genericPack([
      "miss-att",
      1,
      v.user,
      v.rpps,
      v.name,
      v.profession,
      v.organisation,
      devices.map((d) => [d.device, d.sign_pk, d.box_pk]),
      v.not_before,
      v.not_after,
    ]);
    const s = sodium();
    const sig = s.crypto_sign_detached(crypto.concatBytes(utf8("miss.v1/attestation\0"), body), s.crypto_sign_seed_keypair(seed).privateKey);
    expect(toHex(crypto.concatBytes(sig, body))).toBe(v.att);
    // ... and through attestation.ts, devices given in reverse order.
    expect(toHex(attestation.sign({ ...fields, devices: [...devices].reverse() }, seed))).toBe(v.att);

    const att = fromHex(v.att);
    const checked = attestation.verify(att, authorityPk, v.not_before);
    expect({ ...checked }).toStrictEqual(fields);
    expect(attestation.peek(att).devices.map((d) => d.device)).toEqual(devices.map((d) => d.device));
    // Valid from not_before (inclusive) to not_after (exclusive).
    expect(() => attestation.verify(att, authorityPk, v.not_before - 1)).toThrow(attestation.AttestationNotYetValid);
    attestation.verify(att, authorityPk, v.not_after - 1);
    expect(() => attestation.verify(att, authorityPk, v.not_after)).toThrow(attestation.AttestationExpired);
    expect(() => attestation.verify(att, fromHex(CRYPTO.keys[0].sign_pk), v.not_before)).toThrow(
      attestation.AttestationSignatureInvalid,
    );
    const lookup = FRAMES.valid.find((f) => f.name === "lookup_ok_attested")!;
    expect(lookup.fields.att).toEqual({ bin: v.att });

    // The authority key in text and its fingerprint.
    expect(attestation.encodeAuthorityKey(authorityPk)).toBe(v.authority_key_text);
    expect(Buffer.from(authorityPk).toString("base64")).toBe(v.authority_key_text);
    expect(attestation.decodeAuthorityKey(`  ${v.authority_key_text}\n`)).toStrictEqual(authorityPk);
    expect(() => attestation.decodeAuthorityKey(v.authority_key_text.replace(/=+$/, ""))).toThrow();
    const digest = toHex(s.crypto_hash_sha256(crypto.concatBytes(utf8("miss.v1/authority\0"), authorityPk))).slice(0, 32);
    expect(digest.match(/.{4}/g)!.join(" ")).toBe(v.authority_fingerprint);
    expect(attestation.authorityFingerprint(authorityPk)).toBe(v.authority_fingerprint);
    tick("attestation");
  });
});

describe("crypto.json: safety numbers", () => {
  const vectors = CRYPTO.safety_numbers.vectors as {
    description: string;
    user_a: string;
    keys_a: string[];
    user_b: string;
    keys_b: string[];
    fingerprint_a: string;
    fingerprint_b: string;
    safety_number: string;
  }[];

  it.each(vectors.map((v) => [v.description, v] as const))("%s", (_d, v) => {
    const keysA = v.keys_a.map(fromHex);
    const keysB = v.keys_b.map(fromHex);
    expect([...keysA, ...keysB].every((k) => k.length === 64)).toBe(true);
    const number = crypto.safetyNumber(v.user_a, keysA, v.user_b, keysB);
    expect(number).toBe(v.safety_number);
    const fa = crypto.safetyFingerprint(v.user_a, keysA);
    const fb = crypto.safetyFingerprint(v.user_b, keysB);
    expect([fa, fb]).toEqual([v.fingerprint_a, v.fingerprint_b]);
    const digits = v.user_a <= v.user_b ? fa + fb : fb + fa; // ASCII ids: UTF-16 order is byte order
    expect(number).toBe(digits.match(/.{5}/g)!.join(" "));
    tick("safety_numbers");
  });

  it("are symmetric, and change with the keys", () => {
    const numbers = vectors.map((v) => v.safety_number);
    expect(numbers[0]).toBe(numbers[1]);
    expect(new Set([numbers[0], ...numbers.slice(2)]).size).toBe(numbers.length - 1);
  });
});

// --- none skipped ----------------------------------------------------------------------

// --- revision 3: sealed bodies, padding (crypto.json), chains (teams.json) -----------------

/** A plaintext's wire map from its JSON vector (hex -> bytes for id-like keys). */
function plaintextWire(p: PlaintextJson): Record<string, unknown> {
  const bin = new Set(["id", "reply_to", "head"]);
  return Object.fromEntries(
    Object.entries(p).map(([k, x]) => [k, bin.has(k) ? fromHex(x as string) : k === "refs" ? (x as string[]).map(fromHex) : x]),
  );
}

describe("crypto.json: sealed bodies (SPEC §13.3)", () => {
  const sb = CRYPTO.sealed_bodies;

  it.each((sb.valid as any[]).map((v) => [v.description, v] as const))("%s", (_d, v) => {
    const sender = keysOf(v.sender_device);
    const id = fromHex(v.message_id);
    const plaintext = plaintextOf(v.plaintext);
    const packed = crypto.packPlaintext(plaintext, v.pad_to);
    expect(toHex(packed)).toBe(v.packed_plaintext);
    expect(packed.length % v.pad_to).toBe(0);
    const signed = crypto.concatBytes(utf8("miss.v1/body\0"), id, packed);
    expect(toHex(signed)).toBe(v.signed_message);
    expect(toHex(sender.sign(signed))).toBe(v.signature);
    const [key, body] = crypto.sealBody(packed, id, sender, { key: fromHex(v.key), nonce: fromHex(v.nonce) });
    expect(toHex(key)).toBe(v.key);
    expect(toHex(body)).toBe(v.body);
    expect(body.length).toBe(24 + 64 + packed.length + 16);
    // From the formula with libsodium directly.
    const s = sodium();
    const direct = s.crypto_aead_xchacha20poly1305_ietf_encrypt(
      crypto.concatBytes(fromHex(v.signature), packed),
      crypto.concatBytes(utf8("miss.v1/body\0"), id),
      null,
      fromHex(v.nonce),
      fromHex(v.key),
    );
    expect(toHex(crypto.concatBytes(fromHex(v.nonce), direct))).toBe(v.body);
    expect(crypto.openBody(body, key, id, sender.signPk)).toStrictEqual(packed);
    expect(crypto.unpackPlaintext(packed)).toStrictEqual(plaintext);
    for (const w of v.wraps) {
      const recipient = keysOf(w.recipient_device);
      const wrap = crypto.wrapKey(key, sender, recipient.boxPk, fromHex(w.nonce));
      expect(toHex(wrap)).toBe(w.wrap);
      expect(wrap.length).toBe(crypto.WRAP_BYTES);
      expect(crypto.unwrapKey(wrap, recipient, sender.boxPk)).toStrictEqual(key);
    }
    tick("sealed_bodies.valid");
  });

  it.each((sb.invalid as any[]).map((v) => [v.description, v] as const))("body refused: %s", (_d, v) => {
    const sender = keysOf(v.sender_device);
    expect(() => crypto.openBody(fromHex(v.body), fromHex(v.key), fromHex(v.message_id), sender.signPk)).toThrow(crypto.EnvelopeError);
    tick("sealed_bodies.invalid");
  });

  it.each((sb.invalid_wraps as any[]).map((v) => [v.description, v] as const))("wrap refused: %s", (_d, v) => {
    const sender = keysOf(v.sender_device);
    const recipient = keysOf(v.recipient_device);
    expect(() => crypto.unwrapKey(fromHex(v.wrap), recipient, sender.boxPk)).toThrow(crypto.EnvelopeError);
    tick("sealed_bodies.invalid_wraps");
  });
});

describe("crypto.json: padded plaintexts (SPEC §13.5)", () => {
  it.each((CRYPTO.padded_plaintexts.vectors as any[]).map((v) => [v.description, v] as const))("%s", (_d, v) => {
    const plaintext = plaintextOf(v.plaintext);
    const packed = crypto.packPlaintext(plaintext, v.pad_to);
    expect(toHex(packed)).toBe(v.packed_plaintext);
    expect(packed.length % v.pad_to).toBe(0);
    // From the words: the keys in order, then "pad" as pad_bytes zero bytes.
    const wire = { v: 1, ...plaintextWire(v.plaintext), pad: new Uint8Array(v.pad_bytes) };
    expect(toHex(genericPack(wire))).toBe(v.packed_plaintext);
    expect(crypto.unpackPlaintext(packed)).toStrictEqual(plaintext);
    tick("padded_plaintexts");
  });
});

describe("teams.json: chains (SPEC §13.2)", () => {
  const authorityPk = fromHex(TEAMS.authority_pk);
  const chains = new Map<string, any>((TEAMS.chains as any[]).map((c) => [c.name, c]));

  it("the context is the SPEC's", () => {
    expect(toHex(teams.TEAM_CONTEXT)).toBe(TEAMS.context);
  });

  /** The record object of a vector (prev and att as bytes; v dropped). */
  function recordOf(json: Record<string, Json>): teams.TeamRecord {
    const { v: _v, ...rest } = fromJson(json) as Record<string, unknown>;
    return rest as unknown as teams.TeamRecord;
  }

  /** The expected state in the vector's form (members and admins sorted). */
  function stateJson(st: teams.TeamState) {
    return {
      team: st.team,
      name: st.name,
      org: st.org,
      lifespan: st.lifespan ?? null,
      members: [...st.members].sort(),
      admins: [...st.admins].sort(),
      seq: st.seq,
      head: toHex(st.head),
      closed: st.closed,
    };
  }

  for (const chain of TEAMS.chains as any[]) {
    it.each((chain.records as any[]).map((r, i) => [`${chain.name} #${i}: ${r.description}`, r, i] as const))("%s", (_d, r, i) => {
      const record = recordOf(r.record);
      expect(toHex(teams.packRecord(record))).toBe(r.rec);
      expect(teams.unpackRecord(fromHex(r.rec))).toStrictEqual(record);
      // Canonical: a generic packer of the vector's map in its order agrees.
      expect(toHex(genericPack(fromJson(r.record)))).toBe(r.rec);
      const signed = new teams.SignedRecord(fromHex(r.rec), fromHex(r.sig));
      expect(toHex(signed.hash())).toBe(r.hash);
      if (record.by !== teams.AUTHORITY) {
        const k = (CRYPTO.keys as KeyVector[]).find((x) => x.device === record.device)!;
        expect(toHex(teams.signRecord(record, keysOf(k.device)).sig)).toBe(r.sig);
      }
      const prefix = (chain.records as any[]).slice(0, i + 1).map((x) => new teams.SignedRecord(fromHex(x.rec), fromHex(x.sig)));
      const state = teams.verifyChain(prefix, authorityPk, chain.team);
      expect(stateJson(state)).toEqual(r.state);
      tick("teams.records");
    });
  }

  it("the closing record closes the team", () => {
    const main = chains.get("main");
    const c = TEAMS.closing_record;
    const recs = [...main.records, c].map((x: any) => new teams.SignedRecord(fromHex(x.rec), fromHex(x.sig)));
    const state = teams.verifyChain(recs, authorityPk, main.team);
    expect(toHex(recs.at(-1)!.hash())).toBe(c.hash);
    expect(stateJson(state)).toEqual(c.state);
    tick("teams.closing_record");
  });

  it("Bob's attestation is the authority's", () => {
    const att = attestation.peek(fromHex(TEAMS.bob_att));
    expect(att.user).toBe("u_fedcba9876543210");
    attestation.verify(fromHex(TEAMS.bob_att), authorityPk, att.notBefore);
    tick("teams.bob_att");
  });

  it.each((TEAMS.invalid as any[]).map((v) => [v.name, v] as const))("refused: %s", (_n, v) => {
    const chain = chains.get(v.chain);
    const all = [...chain.records, TEAMS.closing_record];
    const before = all.slice(0, v.after).map((x: any) => new teams.SignedRecord(fromHex(x.rec), fromHex(x.sig)));
    const state = v.after === 0 ? null : teams.verifyChain(before, authorityPk, chain.team);
    const bad = new teams.SignedRecord(fromHex(v.rec), fromHex(v.sig));
    let caught: unknown;
    try {
      teams.applyRecord(state, bad, authorityPk, chain.team);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(teams.TeamChainError);
    expect((caught as teams.TeamChainError).reason).toBe(v.reason);
    // And so is any chain that holds it.
    expect(() => teams.verifyChain([...before, bad], authorityPk, chain.team)).toThrow(teams.TeamChainError);
    tick("teams.invalid");
  });
});

describe("oncall.json: escalation policies (SPEC §14.2)", () => {
  /** A policy of the vectors (store form: no holders) as decoded. */
  const policyOf = (json: Json): oncall.Policy => decodePolicy(unpack(genericPack(fromJson(json))));

  it("the bounds are the protocol's", () => {
    expect(ONCALL.protocol).toBe(SUBPROTOCOL);
    expect(ONCALL.min_escalation_ms).toBe(oncall.MIN_ESCALATION_MS);
    expect(ONCALL.max_escalation_ms).toBe(oncall.MAX_ESCALATION_MS);
    expect(ONCALL.max_escalation_steps).toBe(oncall.MAX_ESCALATION_STEPS);
    tick("oncall.bounds");
  });

  it.each((ONCALL.valid as any[]).map((v) => [v.description, v] as const))("valid: %s", (_d, v) => {
    const policy = policyOf(v.policy);
    expect(toHex(oncall.packPolicy(policy))).toBe(v.packed);
    expect(toHex(genericPack(fromJson(v.policy)))).toBe(v.packed);
    expect(oncall.policyProblem(policy, v.min_ms, v.max_steps)).toBeNull();
    expect(oncall.deadlines(policy, ONCALL.sent_at)).toEqual(v.deadlines);
    tick("oncall.valid");
  });

  it.each((ONCALL.invalid as any[]).map((v) => [v.description, v] as const))("invalid: %s", (_d, v) => {
    let caught: unknown;
    let problem: string | null = null;
    try {
      problem = oncall.policyProblem(policyOf(v.policy), v.min_ms, v.max_steps);
    } catch (err) {
      caught = err;
    }
    if (v.error === "malformed_frame") {
      expect(caught).toBeInstanceOf(ProtocolError);
      expect((caught as ProtocolError).code).toBe("malformed_frame");
    } else {
      expect(v.error).toBe("policy_out_of_bounds");
      expect(caught).toBeUndefined();
      expect(problem).not.toBeNull();
    }
    tick("oncall.invalid");
  });

  it.each((ONCALL.overrides as any[]).map((v, i) => [i, v] as const))("override %i", (_i, v) => {
    const result = oncall.withOverride(policyOf(v.policy), v.urgent.interval, v.urgent.final);
    expect(result).toStrictEqual(policyOf(v.result));
    expect(oncall.deadlines(result, ONCALL.sent_at)).toEqual(v.deadlines);
    tick("oncall.overrides");
  });
});

describe("the count", () => {
  it("every vector of the files was checked", () => {
    // The sections of each file, as their descriptions lay them out: a new
    // section fails here until a test checks it.
    expect(Object.keys(FRAMES).sort()).toEqual(["description", "generator", "invalid", "protocol", "valid"]);
    expect(Object.keys(CRYPTO).sort()).toEqual(
      [
        "attestation",
        "auth",
        "description",
        "enroll",
        "envelopes",
        "generator",
        "keys",
        "message_ids",
        "padded_plaintexts",
        "protocol",
        "safety_numbers",
        "sealed_bodies",
        "users",
      ].sort(),
    );
    expect(Object.keys(CRYPTO.envelopes).sort()).toEqual(["description", "invalid", "invalid_plaintexts", "valid"]);
    const expected: Record<string, number> = {
      "frames.valid": FRAMES.valid.length,
      "frames.invalid": FRAMES.invalid.length,
      keys: CRYPTO.keys.length,
      auth: 1,
      enroll: 1,
      "envelopes.valid": CRYPTO.envelopes.valid.length,
      "envelopes.invalid": CRYPTO.envelopes.invalid.length,
      "envelopes.invalid_plaintexts": CRYPTO.envelopes.invalid_plaintexts.length,
      message_ids: CRYPTO.message_ids.vectors.length,
      attestation: 1,
      safety_numbers: CRYPTO.safety_numbers.vectors.length,
      "sealed_bodies.valid": CRYPTO.sealed_bodies.valid.length,
      "sealed_bodies.invalid": CRYPTO.sealed_bodies.invalid.length,
      "sealed_bodies.invalid_wraps": CRYPTO.sealed_bodies.invalid_wraps.length,
      padded_plaintexts: CRYPTO.padded_plaintexts.vectors.length,
      "teams.records": (TEAMS.chains as { records: unknown[] }[]).reduce((n, c) => n + c.records.length, 0),
      "teams.closing_record": 1,
      "teams.bob_att": 1,
      "teams.invalid": TEAMS.invalid.length,
      "oncall.bounds": 1,
      "oncall.valid": ONCALL.valid.length,
      "oncall.invalid": ONCALL.invalid.length,
      "oncall.overrides": ONCALL.overrides.length,
    };
    expect(Object.keys(ONCALL).sort()).toEqual(
      ["description", "generator", "protocol", "sent_at", "min_escalation_ms", "max_escalation_ms", "max_escalation_steps", "valid", "invalid", "overrides"].sort(),
    );
    expect(Object.keys(TEAMS).sort()).toEqual(
      ["authority_pk", "bob_att", "chains", "closing_record", "context", "description", "generator", "invalid", "protocol"].sort(),
    );
    const total = Object.values(expected).reduce((a, b) => a + b, 0);
    expect(Object.fromEntries(checked)).toEqual(expected);
    expect([...checked.values()].reduce((a, b) => a + b, 0)).toBe(total);
    console.log(`checked ${total} vectors: ${JSON.stringify(expected)}`);
  });
});
