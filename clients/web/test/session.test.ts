/**
 * The client's side of a connection (src/protocol/session.ts), as
 * tests/protocol/test_client_session.py holds the Python one: the handshake
 * (SPEC §5), the state table (SPEC §4), answers matched by rid and by
 * message id, errors (SPEC §7). Real keys and real bytes, no sockets; the
 * hub's frames are encoded with frames.ts, and what the client sends is
 * decoded as the hub decodes it.
 */
import { readFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";

import { MsgMap, pack } from "../src/protocol/codec";
import * as crypto from "../src/protocol/crypto";
import {
  AccountSuspended,
  DeviceRevoked,
  ERRORS,
  FatalError,
  ForgedSender,
  FrameNotAllowed,
  MalformedFrame,
  MissingDevices,
  ProtocolError,
  RateLimited,
  SessionReplaced,
  StorageUnavailable,
  UnexpectedFrame,
  UnknownFrameType,
  UnknownUser,
  UnsupportedVersion,
  errorClass,
  errorFromClose,
  errorFromFrame,
} from "../src/protocol/errors";
import {
  type ClientFrame,
  type Enroll,
  type ErrorFrame,
  type HubFrame,
  type Send,
  HUB_FRAME_TYPES,
  decode,
  encode,
} from "../src/protocol/frames";
import {
  ClientSession,
  ClientState,
  RECEIVABLE,
  SENDABLE,
  WrongAuthority,
  answerAuth,
  answerEnroll,
} from "../src/protocol/session";
import { ready } from "../src/protocol/sodium";

const AUTHORITY = Uint8Array.from({ length: 32 }, (_, i) => i);
const OTHER_AUTHORITY = Uint8Array.from({ length: 32 }, (_, i) => i + 1);
const MID = Uint8Array.from({ length: 16 }, (_, i) => i);
const MID_HEX = crypto.toHex(MID);
const NONCE = new Uint8Array(32).fill(7);
const CODE = "ABCD-EFGH-JKMN-PQRS";
const ROLE = "r_0123456789abcdef";
const BLOB = "b_0123456789abcdef0123456789abcdef";

/** One frame of every hub → client type. */
const SAMPLES: Record<HubFrame["t"], HubFrame> = {
  challenge: { t: "challenge", v: 1, nonce: new Uint8Array(32) },
  welcome: { t: "welcome", user: "u_1", device: "d_1" },
  accepted: { t: "accepted", id: MID, dup: false },
  deliver: { t: "deliver", seq: 1, id: MID, from_user: "u_2", from_device: "d_2", ts: 5, env: crypto.fromHex("00ff") },
  delivered: { t: "delivered", seq: 2, id: MID, user: "u_2", device: "d_2", ts: 6 },
  refused: { t: "refused", seq: 3, id: MID, user: "u_2", device: "d_2", ts: 7, reason: "undecryptable" },
  lookup_ok: { t: "lookup_ok", rid: 1, user: "u_2", name: "Dr Two", rpps: "10000000002", profession: "", organisation: "", devices: [] },
  link_code_ok: { t: "link_code_ok", rid: 1, code: CODE, expires: 10 },
  ok: { t: "ok", rid: 1 },
  presence: { t: "presence", user: "u_2", status: "busy", online: true },
  watching: { t: "watching", rid: 1, presence: [] },
  search_ok: { t: "search_ok", rid: 1, atts: [] },
  devices_ok: { t: "devices_ok", rid: 1, devices: [] },
  error: { t: "error", code: "auth_failed", message: "authentication failed", fatal: true },
  team_ok: { t: "team_ok", rid: 1, team: "t_0123456789abcdef", seq: 0, head: new Uint8Array(32) },
  teams_ok: { t: "teams_ok", rid: 1, teams: [] },
  team_chain_ok: { t: "team_chain_ok", rid: 1, team: "t_0123456789abcdef", recs: [], more: false },
  recall_ok: { t: "recall_ok", rid: 1, id: MID, removed: 0 },
  team_changed: { t: "team_changed", team: "t_0123456789abcdef", seq: 1, head: new Uint8Array(32) },
  role_search_ok: { t: "role_search_ok", rid: 1, roles: [] },
  role_ok: {
    t: "role_ok",
    rid: 1,
    info: { role: ROLE, name: "Cardiologie", org: "", reserved: false, holders: [], policy: { interval: 60000, steps: [], final: 600000 } },
  },
  acknowledge_ok: { t: "acknowledge_ok", rid: 1, id: MID, sender: "u_2", user: "u_1", device: "d_1", at: 9, first: true },
  urgent_status: { t: "urgent_status", seq: 4, id: MID, sender: "u_1", state: "escalated", step: 1, ts: 8, target: ROLE },
  urgent_reminder: { t: "urgent_reminder", id: MID, sender: "u_2", n: 1 },
  role_changed: { t: "role_changed", role: ROLE, holders: ["u_1"] },
  blob_ok: { t: "blob_ok", rid: 1, blob: BLOB, have: 0 },
  blob_link_ok: { t: "blob_link_ok", rid: 1, blob: BLOB, url: "/blobs/" + "A".repeat(43), size: 41, expires: 10 },
};

const SEND: Send = { t: "send", id: MID, from: "d_1", to: "u_2", envs: new Map([["d_2", crypto.fromHex("78")]]) };

/** The request each answer of SAMPLES answers. */
const REQUEST_OF: Partial<Record<HubFrame["t"], ClientFrame>> = {
  accepted: SEND,
  lookup_ok: { t: "lookup", rid: 1, user: "u_2" },
  link_code_ok: { t: "link_code", rid: 1 },
  ok: { t: "set_status", rid: 1, status: "busy" },
  watching: { t: "watch", rid: 1, users: [] },
  search_ok: { t: "search", rid: 1, query: "dupont" },
  devices_ok: { t: "devices", rid: 1 },
  team_ok: { t: "team_change", rid: 1, team: "t_0123456789abcdef", rec: new Uint8Array(10), sig: new Uint8Array(64) },
  teams_ok: { t: "teams", rid: 1 },
  team_chain_ok: { t: "team_chain", rid: 1, team: "t_0123456789abcdef", from: 0 },
  blob_ok: { t: "blob_begin", rid: 1, size: 41 },
  blob_link_ok: { t: "blob_link", rid: 1, blob: BLOB },
  recall_ok: { t: "recall", rid: 1, id: MID },
  role_search_ok: { t: "role_search", rid: 1, query: "cardio" },
  role_ok: { t: "role_get", rid: 1, role: ROLE },
  acknowledge_ok: { t: "acknowledge", rid: 1, id: MID, sender: "u_2" },
};

/** The `error` frame the hub sends for `err` (session.py's error_frame). */
function errorFrame(err: ProtocolError, ids: { id?: Uint8Array; rid?: number } = {}): Uint8Array {
  const frame: ErrorFrame = { t: "error", code: err.code, message: err.safeMessage, fatal: err.fatal, ...ids };
  if (err.retryAfter !== undefined) frame.retry_after = err.retryAfter;
  if (err.missing !== undefined) frame.missing = err.missing;
  return encode(frame);
}

function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (err) {
    return err;
  }
  throw new Error("nothing was thrown");
}

function challenged(authority?: Uint8Array): ClientSession {
  const client = new ClientSession();
  const challenge: HubFrame = { t: "challenge", v: 1, nonce: NONCE, caps: ["refusals"] };
  if (authority) challenge.authority = authority;
  const event = client.receive(encode(challenge));
  expect(event.kind).toBe("challenged");
  return client;
}

function authenticated(keys = crypto.generateKeys()): ClientSession {
  const client = challenged();
  client.auth("d_1", keys);
  expect(client.receive(encode({ t: "welcome", user: "u_1", device: "d_1" })).kind).toBe("welcomed");
  return client;
}

function sessionIn(state: ClientState): ClientSession {
  if (state === "awaiting_challenge") return new ClientSession();
  if (state === "challenged") return challenged();
  if (state === "answered") {
    const client = challenged();
    client.auth("d_1", crypto.generateKeys());
    return client;
  }
  const client = authenticated();
  if (state === "closed") client.close();
  return client;
}

beforeAll(async () => {
  await ready();
});

// --- the answers to the challenge (SPEC §5) -----------------------------------------

describe("the handshake", () => {
  it("challenge, then an auth the hub accepts, then welcome authenticates", () => {
    const keys = crypto.generateKeys();
    const client = challenged();
    expect(client.hubCaps).toEqual(new Set(["refusals"]));
    const data = client.auth("d_1", keys, ["refusals"]);
    expect(client.state).toBe(ClientState.ANSWERED);
    const auth = decode(data, "client");
    expect(auth).toMatchObject({ t: "auth", v: 1, device: "d_1", caps: ["refusals"] });
    if (auth.t !== "auth") throw new Error("not an auth");
    // What the hub checks (ServerSession.authenticate): the signature over its own nonce.
    expect(crypto.verifySignature(keys.signPk, crypto.authMessage(NONCE, "d_1"), auth.sig)).toBe(true);
    expect(crypto.verifySignature(keys.signPk, crypto.authMessage(new Uint8Array(32), "d_1"), auth.sig)).toBe(false);
    const event = client.receive(encode({ t: "welcome", user: "u_1", device: "d_1" }));
    expect(event).toStrictEqual({ kind: "welcomed", welcome: { t: "welcome", user: "u_1", device: "d_1" } });
    expect(client.state).toBe(ClientState.AUTHENTICATED);
    expect(client.welcome).toStrictEqual({ t: "welcome", user: "u_1", device: "d_1" });
  });

  it("the auth bytes are those of SPEC §5.2", () => {
    const keys = crypto.generateKeys();
    const client = challenged();
    const sig = keys.sign(crypto.authMessage(NONCE, "d_1"));
    expect(client.auth("d_1", keys)).toStrictEqual(encode({ t: "auth", v: 1, device: "d_1", sig }));
  });

  it("an enroll binds both keys and the code as sent, after checking the authority", () => {
    const keys = crypto.generateKeys();
    const client = challenged(AUTHORITY);
    expect(client.hubAuthority).toStrictEqual(AUTHORITY);
    const frame = decode(client.enroll(CODE, keys, "Pixel 8", ["refusals"], { authority: AUTHORITY }), "client") as Enroll;
    expect(frame).toMatchObject({ t: "enroll", v: 1, code: CODE, label: "Pixel 8", sign_pk: keys.signPk, box_pk: keys.boxPk });
    expect(crypto.verifySignature(keys.signPk, crypto.enrollMessage(NONCE, CODE, keys.signPk, keys.boxPk), frame.sig)).toBe(true);
    expect(crypto.verifySignature(keys.signPk, crypto.enrollMessage(NONCE, CODE.toLowerCase(), keys.signPk, keys.boxPk), frame.sig)).toBe(false);
    expect(client.state).toBe(ClientState.ANSWERED);
  });

  it("a hub announcing another authority gets no enroll", () => {
    const client = challenged(OTHER_AUTHORITY);
    const err = thrown(() => client.enroll(CODE, crypto.generateKeys(), "", undefined, { authority: AUTHORITY }));
    expect(err).toBeInstanceOf(WrongAuthority);
    expect((err as WrongAuthority).expected).toStrictEqual(AUTHORITY);
    expect((err as WrongAuthority).announced).toStrictEqual(OTHER_AUTHORITY);
    expect(client.state).toBe(ClientState.CHALLENGED); // nothing was sent
    expect(client.outstanding.size).toBe(0);
  });

  it("a hub announcing no authority is answered", () => {
    const client = challenged();
    expect(client.hubAuthority).toBeNull();
    expect(decode(client.enroll(CODE, crypto.generateKeys(), "", undefined, { authority: AUTHORITY })).t).toBe("enroll");
  });

  it("the answer functions need only a signer", () => {
    const keys = crypto.generateKeys();
    const signer: crypto.Signer = { signPk: keys.signPk, boxPk: keys.boxPk, sign: (m) => keys.sign(m) };
    const challenge = { t: "challenge" as const, v: 1, nonce: new Uint8Array(32), authority: AUTHORITY };
    const auth = answerAuth(challenge, "d_1", signer);
    expect(auth.caps).toBeUndefined();
    expect(crypto.verifySignature(keys.signPk, crypto.authMessage(new Uint8Array(32), "d_1"), auth.sig)).toBe(true);
    const enroll = answerEnroll(challenge, CODE, signer, "", undefined, { authority: AUTHORITY });
    const message = crypto.enrollMessage(new Uint8Array(32), CODE, keys.signPk, keys.boxPk);
    expect(crypto.verifySignature(keys.signPk, message, enroll.sig)).toBe(true);
  });

  it("a challenge of another version is refused locally, with close code 4426", () => {
    const client = new ClientSession();
    const err = thrown(() => client.receive(encode({ t: "challenge", v: 2, nonce: new Uint8Array(32) })));
    expect(err).toBeInstanceOf(UnsupportedVersion);
    expect((err as ProtocolError).remote).toBe(false);
    expect((err as ProtocolError).closeCode).toBe(4426);
    expect(client.state).toBe(ClientState.CLOSED);
    expect(() => client.auth("d_1", crypto.generateKeys())).toThrow(FrameNotAllowed);
  });

  it("a challenge is answered once", () => {
    const keys = crypto.generateKeys();
    const client = challenged();
    client.auth("d_1", keys);
    expect(() => client.auth("d_1", keys)).toThrow(FrameNotAllowed);
    expect(() => client.enroll(CODE, keys)).toThrow(FrameNotAllowed);
  });
});

// --- the state table (SPEC §4) --------------------------------------------------------

describe("the state table", () => {
  it("the samples cover every hub frame type", () => {
    expect(Object.keys(SAMPLES).sort()).toEqual([...HUB_FRAME_TYPES].sort());
  });

  const states = Object.values(ClientState);
  it.each(states.flatMap((state) => HUB_FRAME_TYPES.map((t) => [state, t] as const)))(
    "%s admits %s exactly as RECEIVABLE says",
    (state, t) => {
      const client = sessionIn(state);
      const request = REQUEST_OF[t];
      if (state === "authenticated" && request) client.send(request);
      let admitted: boolean;
      try {
        client.receive(encode(SAMPLES[t]));
        admitted = true;
      } catch (err) {
        expect(err).toBeInstanceOf(ProtocolError);
        admitted = (err as ProtocolError).remote; // the sample error is fatal: thrown, as reported
        if (!admitted) {
          expect(err).toBeInstanceOf(UnexpectedFrame);
          expect((err as UnexpectedFrame).frameType).toBe(t);
          expect((err as ProtocolError).code).toBe("frame_not_allowed");
          expect((err as ProtocolError).closeCode).toBe(4405);
        }
      }
      expect(admitted).toBe(RECEIVABLE[state].has(t));
    },
  );

  it("a frame out of place before welcome closes the session", () => {
    const client = new ClientSession();
    expect(() => client.receive(encode(SAMPLES.welcome))).toThrow(/'welcome' instead of a challenge/);
    expect(client.state).toBe(ClientState.CLOSED);
    const answered = sessionIn("answered");
    expect(() => answered.receive(encode(SAMPLES.deliver))).toThrow(/'deliver' instead of welcome/);
    expect(answered.state).toBe(ClientState.CLOSED);
  });

  it("a frame out of place after welcome is dropped and the session goes on", () => {
    const client = authenticated();
    const err = thrown(() => client.receive(encode(SAMPLES.challenge)));
    expect(err).toBeInstanceOf(UnexpectedFrame);
    expect((err as ProtocolError).remote).toBe(false);
    expect(client.state).toBe(ClientState.AUTHENTICATED);
    expect(client.receive(encode(SAMPLES.deliver)).kind).toBe("pushed");
  });

  it.each([
    ["not msgpack", Uint8Array.of(0xc1), MalformedFrame],
    ["a field missing", pack(new MsgMap([["t", "welcome"], ["user", "u_1"]])), MalformedFrame],
    ["a client frame from the hub", encode({ t: "auth", v: 1, device: "d_1", sig: new Uint8Array(64) }), UnknownFrameType],
  ] as const)("what does not decode before welcome closes the session: %s", (_what, data, cls) => {
    const client = new ClientSession();
    const err = thrown(() => client.receive(data));
    expect(err).toBeInstanceOf(cls);
    expect((err as ProtocolError).remote).toBe(false);
    expect(client.state).toBe(ClientState.CLOSED);
  });

  it.each(states)("%s lets us send exactly the frames of SENDABLE", (state) => {
    const keys = crypto.generateKeys();
    const frames: ClientFrame[] = [
      { t: "auth", v: 1, device: "d_1", sig: new Uint8Array(64) },
      { t: "enroll", v: 1, code: CODE, sign_pk: keys.signPk, box_pk: keys.boxPk, label: "", sig: new Uint8Array(64) },
      { t: "ack", seqs: [1, 2] },
      ...Object.values(REQUEST_OF),
    ];
    for (const frame of frames) {
      const client = sessionIn(state);
      if (SENDABLE[state].has(frame.t)) {
        expect(client.send(frame)).toStrictEqual(encode(frame));
      } else {
        const err = thrown(() => client.send(frame));
        expect(err).toBeInstanceOf(FrameNotAllowed);
        expect((err as ProtocolError).remote).toBe(false);
        expect(client.state).toBe(state);
        expect(client.outstanding.size).toBe(0);
      }
    }
  });

  it("no request before welcome", () => {
    const client = challenged();
    expect(() => client.request((rid) => ({ t: "lookup", rid, user: "u_2" }))).toThrow(FrameNotAllowed);
    expect(client.outstanding.size).toBe(0);
  });

  it("a frame the hub would refuse is not sent", () => {
    const client = authenticated();
    const bad = { t: "set_status", rid: 9, status: "on call" } as unknown as ClientFrame;
    expect(() => client.send(bad)).toThrow(MalformedFrame);
    expect(client.outstanding.size).toBe(0);
    const float = { t: "lookup", rid: 1.5, user: "u_2" } as ClientFrame;
    expect(() => client.send(float)).toThrow(MalformedFrame);
  });
});

// --- requests and their answers -------------------------------------------------------

describe("requests and answers", () => {
  it("answers are matched by rid, whatever arrives in between", () => {
    const client = authenticated();
    const [ridA, dataA] = client.request((rid) => ({ t: "lookup", rid, user: "u_2" }));
    const [ridB, dataB] = client.request((rid) => ({ t: "set_status", rid, status: "busy" }));
    expect(ridA).not.toBe(ridB);
    expect(decode(dataA, "client")).toStrictEqual({ t: "lookup", rid: ridA, user: "u_2" });
    expect(decode(dataB, "client")).toStrictEqual({ t: "set_status", rid: ridB, status: "busy" });
    expect(client.outstanding).toEqual(new Set([ridA, ridB]));
    expect(client.receive(encode(SAMPLES.presence))).toStrictEqual({ kind: "pushed", frame: SAMPLES.presence });
    expect(client.receive(encode({ t: "ok", rid: ridB }))).toStrictEqual({ kind: "answered", request: ridB, frame: { t: "ok", rid: ridB } });
    expect(client.receive(encode(SAMPLES.deliver)).kind).toBe("pushed");
    const lookupOk = { ...SAMPLES.lookup_ok, rid: ridA } as HubFrame;
    expect(client.receive(encode(lookupOk))).toStrictEqual({ kind: "answered", request: ridA, frame: lookupOk });
    expect(client.outstanding.size).toBe(0);
  });

  it.each(["deliver", "delivered", "refused", "presence", "urgent_status", "urgent_reminder", "role_changed"] as const)("a %s is pushed", (t) => {
    const client = authenticated();
    expect(client.receive(encode(SAMPLES[t]))).toStrictEqual({ kind: "pushed", frame: SAMPLES[t] });
  });

  it("an error answering a request fails that request only", () => {
    const client = authenticated();
    const [rid] = client.request((r) => ({ t: "lookup", rid: r, user: "u_9" }));
    const [other] = client.request((r) => ({ t: "devices", rid: r }));
    const event = client.receive(errorFrame(new UnknownUser(), { rid }));
    expect(event.kind).toBe("failed");
    if (event.kind !== "failed") return;
    expect(event.request).toBe(rid);
    expect(event.error).toBeInstanceOf(UnknownUser);
    expect(event.error.code).toBe("unknown_user");
    expect(event.error.remote).toBe(true);
    expect(event.error.fatal).toBe(false);
    expect(client.state).toBe(ClientState.AUTHENTICATED);
    expect(client.outstanding).toEqual(new Set([other]));
  });

  it("sends are matched by message id (lowercase hex)", () => {
    const client = authenticated();
    const data = client.send(SEND);
    expect(decode(data, "client")).toStrictEqual(SEND);
    expect(client.outstanding).toEqual(new Set([MID_HEX]));
    const event = client.receive(errorFrame(new MissingDevices(["d_3"]), { id: MID }));
    expect(event.kind).toBe("failed");
    if (event.kind !== "failed") return;
    expect(event.request).toBe(MID_HEX);
    expect(event.error).toBeInstanceOf(MissingDevices);
    expect(event.error.missing).toEqual(["d_3"]);
    expect(event.error.remote).toBe(true);
    client.send({ ...SEND, envs: new Map([["d_2", Uint8Array.of(1)], ["d_3", Uint8Array.of(2)]]) });
    const accepted = { t: "accepted" as const, id: MID, dup: false };
    expect(client.receive(encode(accepted))).toStrictEqual({ kind: "answered", request: MID_HEX, frame: accepted });
    expect(client.outstanding.size).toBe(0);
  });

  it("a resend of an outstanding id is answered once more", () => {
    const client = authenticated();
    client.send(SEND);
    client.send(SEND);
    expect(client.receive(encode({ t: "accepted", id: MID, dup: false })).kind).toBe("answered");
    expect(client.receive(encode({ t: "accepted", id: MID, dup: true })).kind).toBe("answered");
    expect(() => client.receive(encode({ t: "accepted", id: MID, dup: true }))).toThrow(UnexpectedFrame);
  });

  it("a non-fatal error naming no request fails none", () => {
    const client = authenticated();
    client.send({ t: "ack", seqs: [1] });
    const event = client.receive(errorFrame(new StorageUnavailable("", { retryAfter: 250 })));
    expect(event.kind).toBe("failed");
    if (event.kind !== "failed") return;
    expect(event.request).toBeNull();
    expect(event.error).toBeInstanceOf(StorageUnavailable);
    expect(event.error.retryable).toBe(true);
    expect(event.error.retryAfter).toBe(250);
    expect(client.state).toBe(ClientState.AUTHENTICATED);
  });

  it.each([
    ["an answer", { t: "ok", rid: 41 }],
    ["an error", { t: "error", code: "unknown_user", message: "no such user", fatal: false, rid: 41 }],
    ["an accepted", { t: "accepted", id: MID, dup: false }],
  ] as const)("%s to no outstanding request is a local error", (_what, frame) => {
    const client = authenticated();
    client.request((rid) => ({ t: "devices", rid }));
    const err = thrown(() => client.receive(encode(frame as HubFrame)));
    expect(err).toBeInstanceOf(UnexpectedFrame);
    expect((err as ProtocolError).remote).toBe(false);
    expect(client.state).toBe(ClientState.AUTHENTICATED);
    expect(client.outstanding.size).toBe(1);
  });

  it("a request is answered once", () => {
    const client = authenticated();
    const [rid] = client.request((r) => ({ t: "set_status", rid: r, status: "busy" }));
    expect(client.receive(encode({ t: "ok", rid })).kind).toBe("answered");
    expect(() => client.receive(encode({ t: "ok", rid }))).toThrow(UnexpectedFrame);
  });

  it("an answer of the wrong type fails its request locally", () => {
    const client = authenticated();
    const [rid] = client.request((r) => ({ t: "lookup", rid: r, user: "u_2" }));
    const event = client.receive(encode({ t: "ok", rid }));
    expect(event.kind).toBe("failed");
    if (event.kind !== "failed") return;
    expect(event.request).toBe(rid);
    expect(event.error).toBeInstanceOf(UnexpectedFrame);
    expect(event.error.remote).toBe(false);
    expect(event.error.detail).toContain("'lookup' with 'ok'");
    expect(client.outstanding.size).toBe(0);
  });

  it("an answer that does not decode fails its request, and the session goes on", () => {
    const client = authenticated();
    const [rid] = client.request((r) => ({ t: "lookup", rid: r, user: "u_2" }));
    // A lookup_ok listing more devices than SPEC §2 allows.
    const device = new MsgMap([["device", "d_2"], ["sign_pk", new Uint8Array(32)], ["box_pk", new Uint8Array(32)]]);
    const bad = pack(
      new MsgMap([
        ["t", "lookup_ok"], ["rid", rid], ["user", "u_2"], ["name", "N"], ["rpps", "1"],
        ["profession", ""], ["organisation", ""], ["devices", Array(65).fill(device)],
      ]),
    );
    const event = client.receive(bad);
    expect(event.kind).toBe("failed");
    if (event.kind !== "failed") return;
    expect(event.request).toBe(rid);
    expect(event.error).toBeInstanceOf(MalformedFrame);
    expect(event.error.remote).toBe(false);
    expect(() => client.receive(Uint8Array.of(0xc1))).toThrow(MalformedFrame); // names no request: thrown, dropped
    expect(client.state).toBe(ClientState.AUTHENTICATED);
    expect(client.receive(encode(SAMPLES.delivered)).kind).toBe("pushed");
  });

  it("rids are fresh even next to rids chosen by the caller", () => {
    const client = authenticated();
    client.send({ t: "link_code", rid: 1 });
    client.send({ t: "link_code", rid: 2 });
    const [rid, data] = client.request((r) => ({ t: "devices", rid: r }));
    expect(rid).toBe(3);
    expect(data).toStrictEqual(encode({ t: "devices", rid: 3 }));
    expect(() => client.send({ t: "link_code", rid: 2 })).toThrow(/already outstanding/);
    expect(() => client.request((r) => ({ t: "devices", rid: r + 1 }))).toThrow(/without that rid/);
  });
});

// --- the hub's reports (SPEC §7) --------------------------------------------------------

describe("errors", () => {
  const codes = Object.keys(ERRORS).sort();

  it("every code of SPEC's error tables has a class, and no other", () => {
    // §7, §13.7 and §14.9 each list their codes as "| `code` | fatal? |" rows.
    const spec = readFileSync(new URL("../../../protocol/SPEC.md", import.meta.url), "utf8");
    const listed = [...spec.matchAll(/^\| `([a-z_]+)` \| (?:yes|no) \|/gm)].map((m) => m[1]!).sort();
    expect(listed.length).toBeGreaterThanOrEqual(38);
    expect(codes).toEqual(listed);
    for (const code of codes) expect(errorClass(code)).toBeDefined();
    expect(errorClass("constructor")).toBeUndefined();
  });

  it("role_vacant carries the role the error frame names", () => {
    const client = authenticated();
    client.send({ t: "send", id: MID, from: "d_1", to: ROLE, envs: new Map([["d_2", crypto.fromHex("78")]]), body: new Uint8Array(120) });
    const frame: ErrorFrame = { t: "error", code: "role_vacant", message: "nobody holds this role now", fatal: false, id: MID, role: ROLE };
    const event = client.receive(encode(frame));
    expect(event.kind).toBe("failed");
    if (event.kind !== "failed") return;
    expect(event.request).toBe(MID_HEX);
    expect(event.error.code).toBe("role_vacant");
    expect(event.error.role).toBe(ROLE);
  });

  it.each(codes)("an error frame %s maps back to its class", (code) => {
    const cls = errorClass(code)!;
    const info = ERRORS[code]!;
    const raised = code === "missing_devices" ? new MissingDevices(["d_3"]) : new cls("", { retryAfter: 500 });
    expect(raised.code).toBe(code);
    const client = authenticated();
    client.send({ t: "devices", rid: 1 });
    let reported: ProtocolError;
    if (info.fatal) {
      reported = thrown(() => client.receive(errorFrame(raised))) as ProtocolError;
      expect(client.state).toBe(ClientState.CLOSED);
      expect(reported).toBeInstanceOf(FatalError);
    } else {
      const event = client.receive(errorFrame(raised, { rid: 1 }));
      expect(event.kind).toBe("failed");
      if (event.kind !== "failed") return;
      expect(event.request).toBe(1);
      reported = event.error;
      expect(client.state).toBe(ClientState.AUTHENTICATED);
    }
    expect(reported).toBeInstanceOf(cls);
    expect(reported.constructor).toBe(cls);
    expect(reported.remote).toBe(true);
    expect(reported.code).toBe(code);
    expect(reported.message).toBe(info.message);
    expect([reported.fatal, reported.closeCode, reported.retryable]).toEqual([info.fatal, info.closeCode, info.retryable]);
    if (code !== "missing_devices") expect(reported.retryAfter).toBe(500);
  });

  it.each(
    ["awaiting_challenge", "challenged", "answered"].flatMap((state) =>
      [
        { t: "error", code: "auth_failed", message: "authentication failed", fatal: true },
        { t: "error", code: "storage_unavailable", message: "storage unavailable", fatal: false, retry_after: 1000 },
        { t: "error", code: "rate_limited", message: "too many requests", fatal: false, retry_after: 200 },
      ].map((frame) => [state as ClientState, frame as ErrorFrame] as const),
    ),
  )("in %s, any error is thrown and closes: %j", (state, frame) => {
    const client = sessionIn(state);
    const err = thrown(() => client.receive(encode(frame))) as ProtocolError;
    expect(err).toBeInstanceOf(ProtocolError);
    expect(err.code).toBe(frame.code);
    expect(err.remote).toBe(true);
    expect(err.retryAfter).toBe(frame.retry_after);
    expect(client.state).toBe(ClientState.CLOSED);
    if (frame.code === "rate_limited") expect(err).toBeInstanceOf(RateLimited);
  });

  it("a fatal error after welcome closes the session", () => {
    const client = authenticated();
    client.request((rid) => ({ t: "devices", rid }));
    const err = thrown(() => client.receive(errorFrame(new ForgedSender()))) as ProtocolError;
    expect(err).toBeInstanceOf(ForgedSender);
    expect(err.remote).toBe(true);
    expect(client.state).toBe(ClientState.CLOSED);
    expect(() => client.receive(encode({ t: "devices_ok", rid: 1, devices: [] }))).toThrow(UnexpectedFrame);
  });

  it("an unknown code keeps what the hub said, and its fatal flag", () => {
    const err = errorFromFrame({ code: "new_code", message: "something new", fatal: false, retry_after: 7 });
    expect(err.constructor).toBe(ProtocolError);
    expect(err.remote).toBe(true);
    expect([err.code, err.message, err.safeMessage, err.retryAfter, err.fatal]).toEqual([
      "new_code",
      "new_code: something new",
      "something new",
      7,
      false,
    ]);
    expect(errorFromFrame({ code: "new_fatal", message: "m", fatal: true }).fatal).toBe(true);
    // The app's own errors of any code:
    const own = new ProtocolError("no_devices", "no verified device", { fatal: false });
    expect([own.code, own.fatal, own.remote, own.retryable]).toEqual(["no_devices", false, false, false]);
  });

  it.each(codes.filter((c) => ERRORS[c]!.fatal))("a close names %s by its reason or by its code", (code) => {
    const cls = errorClass(code)!;
    const closeCode = ERRORS[code]!.closeCode!;
    for (const err of [errorFromClose(closeCode, code), errorFromClose(closeCode, ""), errorFromClose(1008, code)]) {
      expect(err).not.toBeNull();
      expect(err!.constructor).toBe(cls);
      expect(err!.remote).toBe(true);
    }
  });

  it("the close code map is not fooled by local refinements", () => {
    expect(errorFromClose(4405, null)!.constructor).toBe(FrameNotAllowed);
  });

  it.each([
    [1000, ""],
    [1001, ""],
    [1009, "message too big"],
    [1011, "internal error"],
    [1013, "storage_unavailable"],
    [1008, "rate_limited"],
    [1008, "too_many_devices"],
    [null, null],
    [4999, "no_such_code"],
  ] as const)("a close %s %s names no protocol error", (code, reason) => {
    expect(errorFromClose(code, reason)).toBeNull();
  });

  it("connectionClosed closes the session and names the error", () => {
    const client = authenticated();
    const err = client.connectionClosed(4409, "session_replaced");
    expect(err).toBeInstanceOf(SessionReplaced);
    expect(err!.remote).toBe(true);
    expect(client.state).toBe(ClientState.CLOSED);
    expect(new ClientSession().connectionClosed(4410, null)).toBeInstanceOf(DeviceRevoked);
    expect(new ClientSession().connectionClosed(1000, "account_suspended")).toBeInstanceOf(AccountSuspended);
  });
});
