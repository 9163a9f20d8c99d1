/**
 * The attachment crypto and descriptor of SPEC §16 (protocol/attachments.ts):
 * round trips at the chunk boundaries, every way a blob can be refused,
 * descriptors in plaintexts; and, when protocol/vectors/attachments.json
 * exists, every vector of it reproduced (see vectors below).
 */
import { existsSync, readFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";

import {
  CHUNK,
  AttachmentError,
  Decryptor,
  cipherSize,
  decryptBytes,
  encryptBytes,
  attachmentFromMap,
  attachmentToMap,
  sniffType,
  type Attachment,
} from "../src/protocol/attachments";
import { pack, unpack } from "../src/protocol/codec";
import { EnvelopeError, fromHex, keysFromSecrets, openBody, packPlaintext, sealBody, toHex, unpackPlaintext } from "../src/protocol/crypto";
import { ready, sodium } from "../src/protocol/sodium";

beforeAll(ready);

const bytes = (n: number, seed = 1): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 255);

describe("secretstream blobs", () => {
  it.each([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])("round-trip %i bytes, fed in any split", (n) => {
    const data = bytes(n);
    const [key, blob, hash] = encryptBytes(data);
    expect(blob.length).toBe(cipherSize(n));
    expect(toHex(decryptBytes(blob, key, n, hash))).toBe(toHex(data));
    const d = new Decryptor(key, n, hash);
    const parts: Uint8Array[] = [];
    for (let at = 0; at < blob.length; at += 7001) parts.push(d.feed(blob.subarray(at, at + 7001)));
    d.finish();
    expect(parts.reduce((k, p) => k + p.length, 0)).toBe(n);
  });

  it("refuses a flipped byte, a truncated or extended blob, a wrong hash", () => {
    const data = bytes(CHUNK + 10);
    const [key, blob, hash] = encryptBytes(data);
    const flipped = blob.slice();
    flipped[100] ^= 1;
    expect(() => decryptBytes(flipped, key, data.length, hash)).toThrow(AttachmentError);
    expect(() => decryptBytes(blob.subarray(0, blob.length - 1), key, data.length, hash)).toThrow(AttachmentError);
    const longer = new Uint8Array(blob.length + 1);
    longer.set(blob);
    expect(() => decryptBytes(longer, key, data.length, hash)).toThrow(AttachmentError);
    expect(() => decryptBytes(blob, key, data.length, new Uint8Array(32))).toThrow(AttachmentError);
    // Cut after the first chunk, re-hashed: the first chunk is not FINAL.
    const cut = blob.subarray(0, 24 + CHUNK + 17);
    expect(() => decryptBytes(cut, key, CHUNK, sodium().crypto_hash_sha256(cut))).toThrow(AttachmentError);
  });
});

const DESC: Attachment = {
  blob: "b_" + "0123456789abcdef".repeat(2),
  key: bytes(32, 3),
  hash: bytes(32, 4),
  size: 12345,
  type: "image/jpeg",
  name: "plaie J+3.jpg",
  thumb: bytes(50, 5),
  w: 4032,
  h: 3024,
};

describe("descriptors", () => {
  it("pack in the order of SPEC §16 and come back", () => {
    const m = attachmentToMap(DESC);
    expect([...m.keys()]).toEqual(["blob", "key", "hash", "size", "type", "name", "thumb", "w", "h"]);
    expect(attachmentFromMap(unpack(pack(m)))).toEqual(DESC);
  });

  it("refuse bad names, ids, thumbnails and lone dimensions", () => {
    for (const bad of [{ name: "a/b" }, { name: ".." }, { name: "" }, { blob: "b_XYZ" }, { thumb: new Uint8Array(4097) }, { h: undefined }]) {
      expect(() => attachmentToMap({ ...DESC, ...bad } as Attachment)).toThrow(AttachmentError);
    }
  });

  it("travel in a plaintext's atts, before pad", () => {
    const p = { id: bytes(16), fromUser: "u_a", toUser: "u_b", sentAt: 1, kind: "text", body: "", atts: [DESC] };
    const packed = packPlaintext(p, 256);
    expect(packed.length % 256).toBe(0);
    expect(unpackPlaintext(packed).atts).toEqual([DESC]);
    const noted = packPlaintext({ ...p, kind: "read" }, 0);
    expect(() => unpackPlaintext(noted)).toThrow(EnvelopeError);
  });

  it("sniff types from magic bytes, never from the name", () => {
    expect(sniffType(fromHex("ffd8ffe0"), "x.pdf")).toBe("image/jpeg");
    expect(sniffType(fromHex("89504e470d0a1a0a"))).toBe("image/png");
    expect(sniffType(new TextEncoder().encode("%PDF-1.7"))).toBe("application/pdf");
    expect(sniffType(fromHex("0000001866747970686569630000"))).toBe("image/heic");
    expect(sniffType(fromHex("00000018667479706d6966310000"), "a.HEIC")).toBe("image/heic");
    expect(sniffType(fromHex("00000018667479706d6966310000"), "a.jpg")).toBe("image/heif");
    expect(sniffType(new TextEncoder().encode("GIF89a"), "a.jpg")).toBeNull();
  });
});

// --- protocol/vectors/attachments.json (part A's generator) ----------------------------------

const VECTORS = new URL("../../../protocol/vectors/attachments.json", import.meta.url);
const CRYPTO = new URL("../../../protocol/vectors/crypto.json", import.meta.url);
type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any
const A: Json = existsSync(VECTORS) ? JSON.parse(readFileSync(VECTORS, "utf8")) : null;

/** A descriptor's `fields` ({"bin": hex} for bytes) as an Attachment. */
function fieldsOf(f: Json): Attachment {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(f)) out[k] = v !== null && typeof v === "object" && "bin" in (v as object) ? fromHex((v as Json).bin) : v;
  return out as unknown as Attachment;
}

describe.runIf(A !== null)("attachments.json", () => {
  it("constants and cipher sizes", () => {
    expect(A.constants).toMatchObject({ CHUNK, HEADER_BYTES: 24, ABYTES: 17, THUMB_MAX: 4096, PIECE_MAX: 61440, HTTP_PART_MAX: 1048576, MAX_ATTACHMENTS_WIRE: 16 });
    for (const v of A.cipher_sizes) expect(cipherSize(v.size)).toBe(v.cipher_size);
  });

  it("valid blobs decrypt to their plaintext, in one piece and fed in pieces", () => {
    for (const v of A.blobs.valid) {
      const blob = fromHex(v.blob);
      expect(toHex(sodium().crypto_hash_sha256(blob))).toBe(v.hash);
      const plain = decryptBytes(blob, fromHex(v.key), v.size, fromHex(v.hash));
      expect(plain.length).toBe(v.size);
      expect(plain.every((b, i) => b === (i * 31 + 7) % 256)).toBe(true);
      expect(toHex(sodium().crypto_hash_sha256(plain))).toBe(v.plaintext_sha256);
      const d = new Decryptor(fromHex(v.key), v.size, fromHex(v.hash));
      let n = 0;
      for (let at = 0; at < blob.length; at += 4099) n += d.feed(blob.subarray(at, at + 4099)).length;
      d.finish();
      expect(n).toBe(v.size);
    }
  });

  it("invalid blobs are refused", () => {
    for (const v of A.blobs.invalid) {
      expect(() => decryptBytes(fromHex(v.blob), fromHex(v.key), v.size, fromHex(v.hash)), v.name).toThrow(AttachmentError);
    }
  });

  it("descriptors pack to their exact bytes; invalid ones are refused", () => {
    for (const v of A.descriptors.valid) {
      const a = fieldsOf(v.fields);
      expect(toHex(pack(attachmentToMap(a)))).toBe(v.msgpack);
      expect(attachmentFromMap(unpack(fromHex(v.msgpack)))).toEqual(a);
    }
    for (const v of A.descriptors.edge_valid) expect(() => attachmentFromMap(unpack(fromHex(v.msgpack))), v.description).not.toThrow();
    for (const v of A.descriptors.invalid) expect(() => attachmentFromMap(unpack(fromHex(v.msgpack))), v.description).toThrow(AttachmentError);
  });

  it("the plaintext with atts: packed, sealed as a body, opened; invalid plaintexts refused", () => {
    const keys: Json[] = JSON.parse(readFileSync(CRYPTO, "utf8")).keys;
    for (const v of A.plaintexts.valid) {
      const sender = keys.find((k) => k.device === v.sender_device);
      const signer = keysFromSecrets(fromHex(sender.sign_seed), fromHex(sender.box_secret));
      const packed = fromHex(v.packed_plaintext);
      const p = unpackPlaintext(packed);
      expect(p.atts).toEqual(A.descriptors.valid.map((d: Json) => fieldsOf(d.fields)));
      expect(toHex(packPlaintext(p, v.pad_to))).toBe(v.packed_plaintext);
      const [, body] = sealBody(packed, fromHex(v.message_id), signer, { key: fromHex(v.body_key), nonce: fromHex(v.nonce) });
      expect(toHex(body)).toBe(v.body);
      expect(toHex(openBody(body, fromHex(v.body_key), fromHex(v.message_id), signer.signPk))).toBe(v.packed_plaintext);
    }
    for (const v of A.plaintexts.invalid) expect(() => unpackPlaintext(fromHex(v.packed)), v.description).toThrow(EnvelopeError);
  });

  it("sniffs types as the reference", () => {
    for (const v of A.sniff) expect(sniffType(fromHex(v.first_bytes), v.name), v.name).toBe(v.type);
  });
});
