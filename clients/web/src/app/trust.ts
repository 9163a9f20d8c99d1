/**
 * SPEC §11.2 without I/O, as the Python SDK does it (miss_client/trust.py
 * and LocalState.observe_peer): what a `lookup_ok` is worth once checked
 * against the verification authority, and how it compares with the keys
 * pinned for that clinician.
 *
 * `checkLookup` verifies the attestation (signed by our authority, valid
 * now, about the user looked up) and sorts the listed devices into targets
 * (attested with exactly these keys: the only ones anything is encrypted to
 * or accepted from), substitutes (attested ids with other keys: never
 * encrypted to) and unattested ones. The identity comes from the
 * attestation, never from the hub's fields.
 *
 * `observePeer` compares the attested devices with the pins: the first
 * verified lookup pins them; later, a device added, a key changed or a
 * substitute listed is a pending change that blocks sending until the user
 * accepts it (`acceptPending`), and clears "verified in person".
 */
import * as attestation from "../protocol/attestation";
import { deviceIdentity, equalBytes, toHex } from "../protocol/crypto";
import type { LookupOk } from "../protocol/frames";
import { type AuthorityKeys, verifyAttestation } from "../protocol/rotation";

export interface Device {
  device: string;
  sign_pk: Uint8Array;
  box_pk: Uint8Array;
}

export interface PeerChange {
  user: string;
  firstSeen: boolean;
  added: string[];
  removed: string[];
  changed: string[];
  substituted: string[];
}

/** A verified clinician as one lookup showed them. */
export interface Peer {
  user: string;
  name: string;
  rpps: string;
  profession: string;
  organisation: string;
  /** Targets: attested with the same keys. */
  devices: Device[];
  /** Every active device the hub listed (a safety number's input). */
  listed: Device[];
  substituted: string[];
  unattested: string[];
  attestedUntil: number;
  verified: boolean;
  pending: PeerChange | null;
  /** The hub's hint (`lookup_ok.replies`, SPEC §17.2): false for a service
   * that does not accept replies. Not a security property. */
  acceptsReplies: boolean;
}

/** What this browser remembers of a clinician (sealed in the vault). */
export interface PeerRecord {
  user: string;
  name: string;
  rpps: string;
  profession: string;
  organisation: string;
  pins: Device[];
  acked: Device[];
  pending: { change: PeerChange; attested: Device[]; substitutes: Device[] } | null;
  verifiedAt: number | null;
  attestedUntil: number;
  attestedFrom: number;
  /** Set when the last lookup said this service does not accept replies (SPEC §17.2). */
  repliesRefused?: boolean;
}

/** Why a clinician does not verify (SPEC §11.2 step 1, as trust.py names it). */
export type UnverifiedReason =
  | "missing"
  | "malformed"
  | "signature"
  | "not_yet_valid"
  | "expired"
  | "wrong_user"
  | "stale"
  | "device_not_attested";

export class UnverifiedPeer extends Error {
  constructor(
    readonly user: string,
    readonly reason: UnverifiedReason,
    readonly own: boolean,
  ) {
    super(`${user} is not a verified clinician (${reason})`);
  }
}

export class KeyChangePending extends Error {
  constructor(
    readonly user: string,
    readonly change: PeerChange,
    readonly own: boolean,
  ) {
    super(`a key change of ${user} waits for acceptance`);
  }
}

export interface Checked {
  peer: Peer;
  attested: Device[];
  substitutes: Device[];
  notBefore: number;
}

const sameDevice = (a: Device, b: Device): boolean =>
  a.device === b.device && equalBytes(a.sign_pk, b.sign_pk) && equalBytes(a.box_pk, b.box_pk);

const deviceKey = (d: Device): string => `${d.device}:${toHex(d.sign_pk)}:${toHex(d.box_pk)}`;

/** Steps 1 and 2 of SPEC §11.2 for one `lookup_ok`; throws UnverifiedPeer.
 * `authority`: our key, or our keyring after a rotation (SPEC §15). */
export function checkLookup(
  reply: LookupOk,
  authority: Uint8Array | AuthorityKeys,
  now: number,
  own: boolean,
  rpps?: string,
): Checked {
  if (reply.att === undefined) throw new UnverifiedPeer(reply.user, "missing", own);
  let att: attestation.Attestation;
  try {
    att = verifyAttestation(reply.att, authority, now);
  } catch (err) {
    const reason = (err as { reason?: string }).reason;
    const known = ["malformed", "signature", "not_yet_valid", "expired"];
    throw new UnverifiedPeer(
      reply.user,
      (known.includes(reason ?? "") ? reason : "malformed") as UnverifiedReason,
      own,
    );
  }
  if (att.user !== reply.user || (rpps !== undefined && att.rpps !== rpps)) {
    throw new UnverifiedPeer(reply.user, "wrong_user", own);
  }
  const attested = new Map<string, Device>();
  for (const d of att.devices) attested.set(d.device, { device: d.device, sign_pk: d.sign_pk, box_pk: d.box_pk });
  const listed = new Map<string, Device>();
  for (const d of reply.devices) listed.set(d.device, { device: d.device, sign_pk: d.sign_pk, box_pk: d.box_pk });
  const targets: Device[] = [];
  const substitutes: Device[] = [];
  const unattested: string[] = [];
  for (const d of listed.values()) {
    const vouched = attested.get(d.device);
    if (vouched === undefined) unattested.push(d.device);
    else if (!sameDevice(vouched, d)) substitutes.push(d);
    else targets.push(d);
  }
  return {
    peer: {
      user: att.user,
      name: att.name,
      rpps: att.rpps,
      profession: att.profession,
      organisation: att.organisation,
      devices: targets,
      listed: reply.devices.map((d) => ({ device: d.device, sign_pk: d.sign_pk, box_pk: d.box_pk })),
      substituted: substitutes.map((d) => d.device),
      unattested,
      attestedUntil: att.notAfter,
      verified: false,
      pending: null,
      acceptsReplies: reply.replies !== false,
    },
    attested: [...attested.values()],
    substitutes,
    notBefore: att.notBefore,
  };
}

export interface Observation {
  record: PeerRecord;
  /** A change to show the user (new pending change, or devices removed). */
  report: PeerChange | null;
}

/**
 * Compare a verified lookup with the pins (LocalState.observe_peer).
 * `trusted` (this very device, for our own user) counts as pinned.
 */
export function observePeer(
  old: PeerRecord | undefined,
  checked: Checked,
  trusted: Device | null,
): Observation {
  const { peer } = checked;
  const viewA = new Map(checked.attested.map((d) => [d.device, d]));
  const viewS = new Map(checked.substitutes.map((d) => [deviceKey(d), d]));
  const firstSeen = old === undefined;
  const pins = new Map<string, Device>(
    firstSeen ? viewA : old.pins.map((d): [string, Device] => [d.device, d]),
  );
  const acked = new Map<string, Device>(firstSeen ? [] : old.acked.map((d): [string, Device] => [deviceKey(d), d]));
  let verifiedAt = firstSeen ? null : old.verifiedAt;
  if (trusted !== null) {
    const vouched = viewA.get(trusted.device);
    if (vouched !== undefined && sameDevice(vouched, trusted)) pins.set(trusted.device, trusted);
  }
  const removed = [...pins.keys()].filter((k) => !viewA.has(k)).sort();
  for (const k of removed) pins.delete(k);
  for (const k of [...acked.keys()]) if (!viewS.has(k)) acked.delete(k);
  const added = [...viewA.keys()].filter((k) => !pins.has(k)).sort();
  const changed = [...viewA.keys()].filter((k) => pins.has(k) && !sameDevice(pins.get(k)!, viewA.get(k)!)).sort();
  const substituted = [...new Set([...viewS.keys()].filter((k) => !acked.has(k)).map((k) => viewS.get(k)!.device))].sort();
  let pending: PeerRecord["pending"] = null;
  if (added.length || changed.length || substituted.length) {
    pending = {
      change: { user: peer.user, firstSeen, added, removed: [], changed, substituted },
      attested: [...viewA.values()],
      substitutes: [...viewS.values()],
    };
    verifiedAt = null; // a key change clears "verified in person"
  }
  const signature = (p: PeerRecord["pending"]): string =>
    p === null
      ? ""
      : JSON.stringify([p.attested.map(deviceKey), p.substitutes.map(deviceKey), p.change]);
  let report: PeerChange | null = null;
  if ((pending !== null && signature(pending) !== signature(old?.pending ?? null)) || (removed.length && !firstSeen)) {
    report = { user: peer.user, firstSeen, added, removed, changed, substituted };
  }
  return {
    record: {
      user: peer.user,
      name: peer.name,
      rpps: peer.rpps,
      profession: peer.profession,
      organisation: peer.organisation,
      pins: [...pins.values()],
      acked: [...acked.values()],
      pending,
      verifiedAt,
      attestedUntil: peer.attestedUntil,
      attestedFrom: Math.max(checked.notBefore, old?.attestedFrom ?? 0),
      ...(peer.acceptsReplies ? {} : { repliesRefused: true }),
    },
    report,
  };
}

/** Pin the view of the pending change (LocalState.accept_pending). */
export function acceptPending(record: PeerRecord): PeerRecord {
  if (record.pending === null) return record;
  return { ...record, pins: record.pending.attested, acked: record.pending.substitutes, pending: null };
}

/** The 64-byte identities of a safety number (SPEC §8): every listed device. */
export function identities(peer: Peer): Uint8Array[] {
  return (peer.listed.length ? peer.listed : peer.devices).map((d) => deviceIdentity(d.sign_pk, d.box_pk));
}
