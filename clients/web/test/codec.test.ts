/**
 * Where the TypeScript codec must behave as msgpack-python and the Python
 * frame checks do beyond what the vectors pin (each expectation was taken
 * from protocol/frames.py): unknown keys of any value, ext types, nesting
 * depth, duplicate and bin keys, integer widths, code point lengths; and
 * text.ts's printable, and the authority key's text form.
 */
import { beforeAll, describe, expect, it } from "vitest";

import { decodeAuthorityKey, encodeAuthorityKey } from "../src/protocol/attestation";
import { MAX_DEPTH, MsgFloat, MsgMap, MsgpackError, RepeatedKeyError, pack, unpack } from "../src/protocol/codec";
import { fromHex, toHex } from "../src/protocol/crypto";
import { ProtocolError } from "../src/protocol/errors";
import { type Frame, decode, encode } from "../src/protocol/frames";
import { ready } from "../src/protocol/sodium";
import { fieldText, printable } from "../src/protocol/text";

/** `{t: "link_code", rid: 1, x: <value>}`: an unknown key "x" of the given value. */
const withX = (valueHex: string) => fromHex("83a174a96c696e6b5f636f6465a3726964" + "01" + "a178" + valueHex);

function outcome(data: Uint8Array): Frame | string {
  try {
    return decode(data);
  } catch (err) {
    return (err as ProtocolError).code;
  }
}

beforeAll(async () => {
  await ready();
});

describe("unknown keys are ignored, whatever msgpack-python can read in them", () => {
  it.each([
    ["an ext of type 5", "d40500"],
    ["a valid timestamp", "d6ff00000001"],
    ["a float", "ca3f800000"],
    ["an integer above 2^63", "cfffffffffffffffff"],
    ["nil", "c0"],
  ])("%s", (_what, hex) => {
    expect(outcome(withX(hex))).toStrictEqual({ t: "link_code", rid: 1 });
  });

  it.each([
    ["a reserved (negative) ext type", "d4fe00"],
    ["a timestamp of 8 bytes with nanoseconds over 10^9", "d7ffffffffffffffffff"],
    ["a timestamp of 2 bytes", "d5ff0000"],
    ["an integer map key", "8101c0"],
  ])("but %s is malformed_frame, as in Python", (_what, hex) => {
    expect(outcome(withX(hex))).toBe("malformed_frame");
  });

  it(`nests at most ${MAX_DEPTH} containers, counting the frame's map`, () => {
    const nested = (n: number, inner: string) => withX("91".repeat(n) + inner);
    expect(outcome(nested(MAX_DEPTH - 2, "90"))).toStrictEqual({ t: "link_code", rid: 1 });
    expect(outcome(nested(MAX_DEPTH - 1, "01"))).toStrictEqual({ t: "link_code", rid: 1 });
    expect(outcome(nested(MAX_DEPTH - 1, "90"))).toBe("malformed_frame");
    expect(() => unpack(fromHex("91".repeat(MAX_DEPTH + 1) + "01"))).toThrow(MsgpackError);
  });
});

describe("keys", () => {
  it("a frame holding a key twice is malformed_frame, whichever value comes first (SPEC §3.1)", () => {
    expect(outcome(fromHex("83a174a96c696e6b5f636f6465a372696401a372696402"))).toBe("malformed_frame");
    expect(outcome(fromHex("83a174a96c696e6b5f636f6465a372696401a372696401"))).toBe("malformed_frame");
    expect(outcome(fromHex("83a174a96c696e6b5f636f6465a372696401a174a96c696e6b5f636f6465"))).toBe("malformed_frame");
  });

  it("a bin key is ignored like any unknown key, but never names a device in envs", () => {
    expect(decode(fromHex("83a174a96c696e6b5f636f6465a372696401c4017801"))).toStrictEqual({ t: "link_code", rid: 1 });
    const m = unpack(fromHex("82a17401c4017402")) as MsgMap; // "t" and b"t" are two keys
    expect(m.size).toBe(2);
    expect(m.get("t")).toBe(1); // (a bin key in envs: vector send_bin_device_key)
  });

  it("a map holding a key twice is refused, at any depth", () => {
    expect(() => unpack(fromHex("83a16101a16202a16103"))).toThrow(MsgpackError);
    expect(() => unpack(fromHex("83a16101a16202a16103"))).toThrow("a key twice in one map");
    expect(() => unpack(fromHex("83a16101a16202a16103"))).toThrow(RepeatedKeyError);
    expect(() => unpack(fromHex("82c4016101c4016102"))).toThrow(RepeatedKeyError); // bin keys too
    expect(() => unpack(fromHex("9191" + "82a16101a16102"))).toThrow(RepeatedKeyError); // nested in arrays
    expect(() => unpack(fromHex("81a17882a16101a16102"))).toThrow(RepeatedKeyError); // nested in a map
    // Unknown keys of a frame are still read (and refused when repeated).
    expect(outcome(fromHex("83a174a96c696e6b5f636f6465a372696401a178" + "82a16101a16102"))).toBe("malformed_frame");
    expect(outcome(fromHex("83a174a96c696e6b5f636f6465a372696401a178" + "82a16101a16202"))).toStrictEqual({ t: "link_code", rid: 1 });
    const m = unpack(fromHex("82a16101a16202")) as MsgMap;
    expect([...m.entries()]).toStrictEqual([
      ["a", 1],
      ["b", 2],
    ]);
  });
});

describe("integers", () => {
  it("any width is accepted, and the shortest is written", () => {
    expect(decode(fromHex("82a174a96c696e6b5f636f6465a3726964cd0001"))).toStrictEqual({ t: "link_code", rid: 1 });
    const cases: [number | bigint, string][] = [
      [0, "00"],
      [127, "7f"],
      [128, "cc80"],
      [255, "ccff"],
      [256, "cd0100"],
      [65535, "cdffff"],
      [65536, "ce00010000"],
      [2 ** 32 - 1, "ceffffffff"],
      [2 ** 32, "cf0000000100000000"],
      [1767225601234, "cf0000019b76daacd2"],
      [Number.MAX_SAFE_INTEGER, "cf001fffffffffffff"],
      [2n ** 63n - 1n, "cf7fffffffffffffff"],
      [2n ** 64n - 1n, "cfffffffffffffffff"],
      [-1, "ff"],
      [-32, "e0"],
      [-33, "d0df"],
      [-128, "d080"],
      [-129, "d1ff7f"],
      [-32768, "d18000"],
      [-32769, "d2ffff7fff"],
      [-(2 ** 31), "d280000000"],
      [-(2 ** 31) - 1, "d3ffffffff7fffffff"],
      [-(2n ** 63n), "d38000000000000000"],
    ];
    for (const [value, hex] of cases) {
      expect(toHex(pack(value))).toBe(hex);
      const back = unpack(fromHex(hex));
      expect(typeof back === "bigint" ? back : BigInt(back as number)).toBe(BigInt(value));
    }
  });

  it("floats stay floats: 1.0 is not an integer", () => {
    expect(unpack(fromHex("cb3ff0000000000000"))).toStrictEqual(new MsgFloat(1));
    expect(toHex(pack(new MsgFloat(1)))).toBe("cb3ff0000000000000");
    expect(() => pack(1.5)).toThrow(TypeError);
  });

  it("frame integers up to 2^53 - 1 are accepted; above, refused (Python: up to 2^63 - 1)", () => {
    expect(decode(fromHex("82a174a96c696e6b5f636f6465a3726964cf001fffffffffffff"))).toStrictEqual({
      t: "link_code",
      rid: Number.MAX_SAFE_INTEGER,
    });
    expect(outcome(fromHex("82a174a96c696e6b5f636f6465a3726964cf0020000000000000"))).toBe("malformed_frame");
    expect(() => encode({ t: "link_code", rid: 2 ** 53 })).toThrow(ProtocolError);
  });
});

describe("strings", () => {
  const enroll = (label: string): Frame => ({
    t: "enroll",
    v: 1,
    code: "C",
    sign_pk: new Uint8Array(32),
    box_pk: new Uint8Array(32),
    label,
    sig: new Uint8Array(64),
  });

  it("lengths count code points, not UTF-16 units", () => {
    const label = "\u{1F600}".repeat(64); // 128 UTF-16 units
    expect(decode(encode(enroll(label)))).toStrictEqual(enroll(label));
    expect(() => encode(enroll("\u{1F600}".repeat(65)))).toThrow(ProtocolError);
  });

  it("a leading BOM is a character, kept", () => {
    expect(decode(encode(enroll("\ufeffx")))).toStrictEqual(enroll("\ufeffx"));
  });

  it("invalid UTF-8 is refused, and a lone surrogate is never written", () => {
    expect(outcome(fromHex("81a174a2eda080"))).toBe("malformed_frame"); // an encoded surrogate
    expect(() => pack("\ud800")).toThrow(TypeError);
  });
});

describe("U+0000 in a frame string (SPEC §3.1)", () => {
  it("is malformed_frame, in any str field, as the hub refuses it; never encoded", () => {
    // lookup {rid: 1, user: "u_a\0b"}, search {rid: 1, query: "Du\0pont"}
    expect(outcome(fromHex("83a174a66c6f6f6b7570a372696401a475736572a5755f610062"))).toBe("malformed_frame");
    expect(outcome(fromHex("83a174a6736561726368a372696401a57175657279a7447500706f6e74"))).toBe("malformed_frame");
    expect(outcome(fromHex("83a174a66c6f6f6b7570a372696401a475736572a5755f610162"))).toStrictEqual({ t: "lookup", rid: 1, user: "u_a\x01b" });
    expect(() => encode({ t: "search", rid: 1, query: "Du\0pont" } as Frame)).toThrow(ProtocolError);
    const enroll = { t: "enroll", v: 1, code: "7K3M-9QXR", sign_pk: new Uint8Array(32), box_pk: new Uint8Array(32), label: "Pixel 8", sig: new Uint8Array(64) };
    expect(decode(encode(enroll as Frame))).toStrictEqual(enroll);
    expect(() => encode({ ...enroll, label: "Pixel\x008" } as Frame)).toThrow("without NUL");
  });
});

describe("text.fieldText", () => {
  it("removes C0, DEL and C1 controls (U+0000 first), trims, and keeps everything else", () => {
    expect(fieldText(" Du\0pont\t\r\n")).toBe("Dupont");
    expect(fieldText("\x00\x1f\x7f\x80\x9f")).toBe("");
    expect(fieldText("  Dr Élodie\u00a0Müller \u{1F600} ")).toBe("Dr Élodie\u00a0Müller \u{1F600}");
    expect(fieldText("a\u0000b\u200bc")).toBe("ab\u200bc"); // only controls: printable() shows the rest
  });
});

describe("text.printable", () => {
  it("shows every character that could act, and keeps the others", () => {
    expect(printable("a\x1b[2K\r\u202eb\u200b\u{1F600}\u200d\u{1F600}\x7f\x85\ud800é")).toBe(
      "a\u241b[2K\u240d\ufffdb\ufffd\u{1F600}\u200d\u{1F600}\u2421\ufffd\ufffdé",
    );
  });
});

describe("the authority key in text", () => {
  const text = "i7BOHBuD3d8xH1vN33xQ7ePAgC9H7HluKhMc9BKY2fM=";

  it("accepts what Python's strip() and strict base64 accept", () => {
    const key = decodeAuthorityKey(text);
    expect(encodeAuthorityKey(key)).toBe(text);
    for (const padded of [` ${text}\n`, `\x1c${text}`, `\x85${text}`, `\u3000${text}\u3000`]) {
      expect(decodeAuthorityKey(padded)).toStrictEqual(key);
    }
    // The unused low bits of the last character are ignored, as in Python.
    expect(decodeAuthorityKey(text.replace("fM=", "fN="))).toStrictEqual(key);
  });

  it.each([
    text.slice(0, -1),
    `${text}=`,
    `\ufeff${text}`,
    `\u200b${text}`,
    `${text.slice(0, 20)}\n${text.slice(20)}`,
    `=${text.slice(0, -1)}`,
    `${text.slice(0, -1)}A`,
  ])("refuses %j", (bad) => {
    expect(() => decodeAuthorityKey(bad)).toThrow();
  });
});
