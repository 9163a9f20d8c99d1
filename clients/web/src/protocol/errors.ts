/**
 * Every error the MiSS protocol can signal (protocol/errors.py, SPEC §7).
 *
 * An error either ends the connection (`fatal`: a protocol violation, a
 * refused authentication, an event elsewhere; close codes 4400-4426) or
 * answers one request (`fatal` false; the connection stays open; some are
 * `retryable`, with `retryAfter` ms).
 *
 * Every error has a `code` (its wire name: test `err.code === "rate_limited"`)
 * and is a `ProtocolError`; the codes of §7 also have a class each
 * (`MalformedFrame`, `RateLimited`, ...), under `FatalError` or
 * `RequestError`, so `instanceof` works as well. `message` is the detail for
 * logs (or the fixed text); `safeMessage` is the fixed text of the code,
 * safe to show.
 *
 * Local or remote: `remote` is true for an error the hub reported, in an
 * `error` frame (`errorFromFrame`) or as the code and reason of its close
 * (`errorFromClose`); false for one this side found (a frame that does not
 * decode, or is out of place; a frame this side may not send).
 */

/** Close codes the hub uses besides 4400-4426 (RFC 6455), SPEC §2, §7. */
export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_PROTOCOL_ERROR = 1002;
export const CLOSE_INVALID_DATA = 1007;
export const CLOSE_POLICY_VIOLATION = 1008;
export const CLOSE_TOO_BIG = 1009;
export const CLOSE_INTERNAL_ERROR = 1011;
export const CLOSE_TRY_AGAIN_LATER = 1013;

/** What SPEC §7 says of one error code. */
export interface ErrorInfo {
  readonly fatal: boolean;
  /** The WebSocket close code that follows a fatal error. */
  readonly closeCode?: number;
  readonly retryable: boolean;
  /** The fixed, human-readable text of the code (`Error.message` in Python). */
  readonly message: string;
}

/** The table of SPEC §7, by wire code. */
export const ERRORS: { readonly [code: string]: ErrorInfo } = {
  malformed_frame: { fatal: true, closeCode: 4400, retryable: false, message: "frame is not a valid msgpack map for its type" },
  auth_failed: { fatal: true, closeCode: 4401, retryable: false, message: "authentication failed" },
  invalid_code: { fatal: true, closeCode: 4402, retryable: false, message: "enrollment code is unknown, used or expired" },
  forged_sender: { fatal: true, closeCode: 4403, retryable: false, message: "'from' is not the authenticated device" },
  unknown_frame_type: { fatal: true, closeCode: 4404, retryable: false, message: "unknown frame type" },
  frame_not_allowed: { fatal: true, closeCode: 4405, retryable: false, message: "frame not allowed in this connection state" },
  auth_timeout: { fatal: true, closeCode: 4408, retryable: false, message: "no authentication in time" },
  session_replaced: { fatal: true, closeCode: 4409, retryable: false, message: "the same device authenticated on another connection" },
  device_revoked: { fatal: true, closeCode: 4410, retryable: false, message: "this device has been revoked; enroll it again with a new code" },
  account_suspended: { fatal: true, closeCode: 4411, retryable: false, message: "this account is suspended; contact your administrator" },
  unsupported_version: { fatal: true, closeCode: 4426, retryable: false, message: "unsupported protocol version" },
  unknown_user: { fatal: false, retryable: false, message: "no such user" },
  no_devices: { fatal: false, retryable: false, message: "the recipient has no enrolled device yet" },
  unknown_device: { fatal: false, retryable: false, message: "envelope addressed to a device that is not an active device of the recipient or sender" },
  missing_devices: { fatal: false, retryable: false, message: "envelopes missing for some active devices; refresh the device list and resend" },
  storage_unavailable: { fatal: false, retryable: true, message: "storage unavailable; the request was not carried out, retry later" },
  rate_limited: { fatal: false, retryable: true, message: "too many requests; retry later" },
  not_verified: { fatal: false, retryable: false, message: "this account or device is not verified by the authority; ask an administrator" },
  recipient_not_verified: { fatal: false, retryable: false, message: "the recipient is not a verified clinician" },
  too_many_recipients: { fatal: false, retryable: false, message: "more envelopes than this hub accepts in one message" },
  too_many_devices: { fatal: false, retryable: false, message: "this account has as many devices as it may; revoke one first" },
  too_many_connections: { fatal: false, retryable: true, message: "this account has as many connections open as it may; close one, or try again later" },
  forbidden: { fatal: false, retryable: false, message: "not allowed" },
  // Revision 3 (SPEC §13.7).
  unknown_team: { fatal: false, retryable: false, message: "no such team" },
  not_member: { fatal: false, retryable: false, message: "the sender is not a member of this team" },
  team_changed: { fatal: false, retryable: false, message: "the team changed; fetch its chain, verify it and resend" },
  team_forbidden: { fatal: false, retryable: false, message: "this team change or recall is not allowed" },
  bad_team_record: { fatal: false, retryable: false, message: "the team record is malformed or its signature does not verify" },
  team_conflict: { fatal: false, retryable: false, message: "the team record does not follow the current head; fetch the chain and retry" },
  team_full: { fatal: false, retryable: false, message: "the team, or one of its members, has reached its limit" },
  // Revision 4 (SPEC §14).
  unknown_role: { fatal: false, retryable: false, message: "no such role" },
  role_vacant: { fatal: false, retryable: false, message: "nobody holds this role now; choose another recipient" },
  role_reserved: { fatal: false, retryable: false, message: "this role is held only through the schedule or by an administrator" },
  role_forbidden: { fatal: false, retryable: false, message: "this role belongs to another organisation" },
  role_full: { fatal: false, retryable: false, message: "the role, or this user, has reached its limit of holders or roles" },
  policy_out_of_bounds: { fatal: false, retryable: false, message: "the escalation policy is beyond this hub's bounds" },
  not_recipient: { fatal: false, retryable: false, message: "no urgent message of this sender reached you under this id" },
  urgent_limit: { fatal: false, retryable: false, message: "too many of your urgent messages are still awaiting acknowledgement" },
  // Revision 6 (SPEC §16).
  blob_too_large: { fatal: false, retryable: false, message: "this file is larger than this hub accepts" },
  blob_quota: { fatal: false, retryable: true, message: "upload quota reached; retry later or remove older attachments" },
  unknown_blob: { fatal: false, retryable: false, message: "no such attachment is available to you" },
  blob_offset: { fatal: false, retryable: false, message: "the upload is not at this offset; ask where it stands and resume" },
  blob_incomplete: { fatal: false, retryable: false, message: "the upload is not complete" },
  too_many_attachments: { fatal: false, retryable: false, message: "more attachments than this hub accepts in one message" },
  // Revision 7 (SPEC §17.5).
  replies_refused: { fatal: false, retryable: false, message: "this service does not accept replies" },
};

/** What SPEC §7 says of `code`, or undefined for a code it does not name. */
export function errorInfo(code: string): ErrorInfo | undefined {
  return Object.prototype.hasOwnProperty.call(ERRORS, code) ? ERRORS[code] : undefined;
}

export interface ProtocolErrorOptions {
  /** For retryable errors: how long to wait, in ms (`retry_after`). */
  retryAfter?: number;
  /** Overrides the table (for a code it does not know: the frame's flag). */
  fatal?: boolean;
  retryable?: boolean;
  closeCode?: number;
  /** The fixed text, for a code the table does not know. */
  safeMessage?: string;
}

/**
 * Base class. `new ProtocolError(code, detail?, options?)` makes an error of
 * any code, known or not; the classes below make the known ones.
 */
export class ProtocolError extends Error {
  /** The wire name of the error (SPEC §7), e.g. `"rate_limited"`. */
  readonly code: string;
  /** True if the connection ends (close code `closeCode`). */
  readonly fatal: boolean;
  readonly closeCode: number | undefined;
  /** The same request may succeed unchanged later (after `retryAfter` ms). */
  readonly retryable: boolean;
  /** The fixed text of the code, safe to show (never details). */
  readonly safeMessage: string;
  /** Details for logs only; empty if none. */
  readonly detail: string;
  /** For retryable errors: ms to wait before retrying (`retry_after`). */
  retryAfter: number | undefined;
  /** For `missing_devices`: the device ids without an envelope. */
  missing: readonly string[] | undefined;
  /** For `role_vacant`: the role nobody holds now (the `error` frame's `role`). */
  role: string | undefined;
  /** True if the hub reported it, false if this side found it. */
  remote = false;

  constructor(code: string, detail = "", options: ProtocolErrorOptions = {}) {
    const info = errorInfo(code);
    const safeMessage = options.safeMessage ?? info?.message ?? "protocol error";
    super(detail || safeMessage);
    this.name = "ProtocolError";
    this.code = code;
    this.fatal = options.fatal ?? info?.fatal ?? false;
    this.closeCode = options.closeCode ?? info?.closeCode;
    this.retryable = options.retryable ?? info?.retryable ?? false;
    this.safeMessage = safeMessage;
    this.detail = detail;
    this.retryAfter = options.retryAfter;
    this.missing = undefined;
    this.role = undefined;
  }
}

/** A protocol violation: the connection is closed with `closeCode`. */
export class FatalError extends ProtocolError {
  constructor(code: string, detail = "", options: ProtocolErrorOptions = {}) {
    super(code, detail, { ...options, fatal: true });
    this.name = "FatalError";
  }
}

/** An error answering one request; the connection stays open. */
export class RequestError extends ProtocolError {
  constructor(code: string, detail = "", options: ProtocolErrorOptions = {}) {
    super(code, detail, { ...options, fatal: false });
    this.name = "RequestError";
  }
}

type Options = Omit<ProtocolErrorOptions, "fatal">;

export class MalformedFrame extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("malformed_frame", detail, options);
    this.name = "MalformedFrame";
  }
}
export class UnknownFrameType extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("unknown_frame_type", detail, options);
    this.name = "UnknownFrameType";
  }
}
export class FrameNotAllowed extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("frame_not_allowed", detail, options);
    this.name = "FrameNotAllowed";
  }
}
/**
 * A well-formed frame that this side's state does not admit, found by this
 * side: for a client, a hub frame SPEC §4 does not allow at this point of
 * the connection. `frameType` is its `"t"`. Never built from a hub's report
 * (`frame_not_allowed` from the hub is a FrameNotAllowed).
 */
export class UnexpectedFrame extends FrameNotAllowed {
  constructor(
    readonly frameType: string,
    detail = "",
  ) {
    super(detail || `unexpected '${frameType}' frame`);
    this.name = "UnexpectedFrame";
  }
}
export class AuthFailed extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("auth_failed", detail, options);
    this.name = "AuthFailed";
  }
}
export class InvalidCode extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("invalid_code", detail, options);
    this.name = "InvalidCode";
  }
}
export class AuthTimeout extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("auth_timeout", detail, options);
    this.name = "AuthTimeout";
  }
}
export class ForgedSender extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("forged_sender", detail, options);
    this.name = "ForgedSender";
  }
}
export class UnsupportedVersion extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("unsupported_version", detail, options);
    this.name = "UnsupportedVersion";
  }
}
export class SessionReplaced extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("session_replaced", detail, options);
    this.name = "SessionReplaced";
  }
}
/** For ever: erase the keys and enroll anew with a new code. */
export class DeviceRevoked extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("device_revoked", detail, options);
    this.name = "DeviceRevoked";
  }
}
export class AccountSuspended extends FatalError {
  constructor(detail = "", options: Options = {}) {
    super("account_suspended", detail, options);
    this.name = "AccountSuspended";
  }
}

export class UnknownUser extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("unknown_user", detail, options);
    this.name = "UnknownUser";
  }
}
export class UnknownDevice extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("unknown_device", detail, options);
    this.name = "UnknownDevice";
  }
}
export class NoDevices extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("no_devices", detail, options);
    this.name = "NoDevices";
  }
}
/** `missing`: the device ids of the target set without an envelope. */
export class MissingDevices extends RequestError {
  constructor(missing: readonly string[], detail = "", options: Options = {}) {
    super("missing_devices", detail, options);
    this.name = "MissingDevices";
    this.missing = missing;
  }
}
export class StorageUnavailable extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("storage_unavailable", detail, options);
    this.name = "StorageUnavailable";
  }
}
export class RateLimited extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("rate_limited", detail, options);
    this.name = "RateLimited";
  }
}
/** The requesting account or device is not verified by the authority (SPEC §11.4). */
export class NotVerified extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("not_verified", detail, options);
    this.name = "NotVerified";
  }
}
export class RecipientNotVerified extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("recipient_not_verified", detail, options);
    this.name = "RecipientNotVerified";
  }
}
export class TooManyRecipients extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("too_many_recipients", detail, options);
    this.name = "TooManyRecipients";
  }
}
export class TooManyDevices extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("too_many_devices", detail, options);
    this.name = "TooManyDevices";
  }
}
export class Forbidden extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("forbidden", detail, options);
    this.name = "Forbidden";
  }
}

export class UnknownTeam extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("unknown_team", detail, options);
    this.name = "UnknownTeam";
  }
}
export class NotMember extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("not_member", detail, options);
    this.name = "NotMember";
  }
}
/** A team `send` whose head is not the hub's (wire code `team_changed`). */
export class StaleTeamHead extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("team_changed", detail, options);
    this.name = "StaleTeamHead";
  }
}
export class TeamForbidden extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("team_forbidden", detail, options);
    this.name = "TeamForbidden";
  }
}
export class BadTeamRecord extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("bad_team_record", detail, options);
    this.name = "BadTeamRecord";
  }
}
export class TeamConflict extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("team_conflict", detail, options);
    this.name = "TeamConflict";
  }
}
export class TeamFull extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("team_full", detail, options);
    this.name = "TeamFull";
  }
}

export class UnknownRole extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("unknown_role", detail, options);
    this.name = "UnknownRole";
  }
}
/** A send to a role nobody holds now; `role` is that role. */
export class RoleVacant extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("role_vacant", detail, options);
    this.name = "RoleVacant";
  }
}
export class RoleReserved extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("role_reserved", detail, options);
    this.name = "RoleReserved";
  }
}
export class RoleForbidden extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("role_forbidden", detail, options);
    this.name = "RoleForbidden";
  }
}
export class RoleFull extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("role_full", detail, options);
    this.name = "RoleFull";
  }
}
export class PolicyOutOfBounds extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("policy_out_of_bounds", detail, options);
    this.name = "PolicyOutOfBounds";
  }
}
/** An urgent send while too many of our urgent messages are still escalating (SPEC §14.4). */
export class UrgentLimit extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("urgent_limit", detail, options);
    this.name = "UrgentLimit";
  }
}
/** A connection over the account's cap of open connections, on every node (SPEC §11.5): refused after authentication. */
export class TooManyConnections extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("too_many_connections", detail, options);
    this.name = "TooManyConnections";
  }
}
/** Acknowledging a message we did not receive, that was not urgent, or unknown: one error for all. */
export class NotRecipient extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("not_recipient", detail, options);
    this.name = "NotRecipient";
  }
}

/** An upload over the hub's largest attachment (SPEC §16). */
export class BlobTooLarge extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("blob_too_large", detail, options);
    this.name = "BlobTooLarge";
  }
}
/** Daily bytes or uploads, open uploads or stored bytes over the cap. */
export class BlobQuota extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("blob_quota", detail, options);
    this.name = "BlobQuota";
  }
}
/** Unknown, not ours, incomplete, expired or recalled: one answer for all. */
export class UnknownBlob extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("unknown_blob", detail, options);
    this.name = "UnknownBlob";
  }
}
/** `off` is not what the hub holds: resume with `blob_begin {blob}`. */
export class BlobOffset extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("blob_offset", detail, options);
    this.name = "BlobOffset";
  }
}
/** `blob_end` before every byte arrived. */
export class BlobIncomplete extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("blob_incomplete", detail, options);
    this.name = "BlobIncomplete";
  }
}
/** More blobs in one `send` than the hub's `max_attachments`. */
export class TooManyAttachments extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("too_many_attachments", detail, options);
    this.name = "TooManyAttachments";
  }
}

/** A `send` to a service that does not accept replies (SPEC §17.2): nothing was stored. */
export class RepliesRefused extends RequestError {
  constructor(detail = "", options: Options = {}) {
    super("replies_refused", detail, options);
    this.name = "RepliesRefused";
  }
}

/** The class of each code of SPEC §7 (MissingDevices takes `missing` first). */
export type ErrorClass = new (detail?: string, options?: Options) => ProtocolError;

const BY_CODE: { readonly [code: string]: ErrorClass } = {
  malformed_frame: MalformedFrame,
  unknown_frame_type: UnknownFrameType,
  frame_not_allowed: FrameNotAllowed,
  auth_failed: AuthFailed,
  invalid_code: InvalidCode,
  auth_timeout: AuthTimeout,
  forged_sender: ForgedSender,
  unsupported_version: UnsupportedVersion,
  session_replaced: SessionReplaced,
  device_revoked: DeviceRevoked,
  account_suspended: AccountSuspended,
  unknown_user: UnknownUser,
  unknown_device: UnknownDevice,
  no_devices: NoDevices,
  missing_devices: MissingDevices as unknown as ErrorClass,
  storage_unavailable: StorageUnavailable,
  rate_limited: RateLimited,
  not_verified: NotVerified,
  recipient_not_verified: RecipientNotVerified,
  too_many_recipients: TooManyRecipients,
  too_many_devices: TooManyDevices,
  too_many_connections: TooManyConnections,
  forbidden: Forbidden,
  unknown_team: UnknownTeam,
  not_member: NotMember,
  team_changed: StaleTeamHead,
  team_forbidden: TeamForbidden,
  bad_team_record: BadTeamRecord,
  team_conflict: TeamConflict,
  team_full: TeamFull,
  unknown_role: UnknownRole,
  role_vacant: RoleVacant,
  role_reserved: RoleReserved,
  role_forbidden: RoleForbidden,
  role_full: RoleFull,
  policy_out_of_bounds: PolicyOutOfBounds,
  not_recipient: NotRecipient,
  urgent_limit: UrgentLimit,
  blob_too_large: BlobTooLarge,
  blob_quota: BlobQuota,
  unknown_blob: UnknownBlob,
  blob_offset: BlobOffset,
  blob_incomplete: BlobIncomplete,
  too_many_attachments: TooManyAttachments,
  replies_refused: RepliesRefused,
};

/** The class of a wire error code, or undefined for a code this side does not know. */
export function errorClass(code: string): ErrorClass | undefined {
  return Object.prototype.hasOwnProperty.call(BY_CODE, code) ? BY_CODE[code] : undefined;
}

/** The fatal error class of each close code 4400-4426. */
const FATAL_BY_CLOSE_CODE = new Map<number, ErrorClass>(
  Object.entries(ERRORS)
    .filter(([, info]) => info.fatal && info.closeCode !== undefined)
    .map(([code, info]) => [info.closeCode!, BY_CODE[code]!]),
);

/** The fields of an `error` frame that `errorFromFrame` reads. */
export interface ErrorReport {
  readonly code: string;
  readonly message: string;
  readonly fatal: boolean;
  readonly retry_after?: number;
  readonly missing?: readonly string[];
  readonly role?: string;
}

/**
 * The error an `error` frame names (`remote`). A code this side does not
 * know keeps its code, the hub's message as its text, and the frame's
 * `fatal` flag (SPEC §10: an unknown code is treated by its `fatal` flag).
 */
export function errorFromFrame(frame: ErrorReport): ProtocolError {
  const cls = errorClass(frame.code);
  let err: ProtocolError;
  if (cls === (MissingDevices as unknown as ErrorClass)) {
    err = new MissingDevices([...(frame.missing ?? [])], frame.message);
  } else if (cls === undefined) {
    err = new ProtocolError(frame.code, `${frame.code}: ${frame.message}`, {
      fatal: frame.fatal,
      retryAfter: frame.retry_after,
      safeMessage: frame.message,
    });
  } else {
    err = new cls(frame.message, { retryAfter: frame.retry_after });
  }
  if (frame.role !== undefined) err.role = frame.role;
  err.remote = true;
  return err;
}

/**
 * The fatal error (`remote`) a close by the hub stands for, or null. After a
 * fatal error the hub closes with the error code as the reason (SPEC §2), so
 * the reason names it; without a known reason, the close code does (4410
 * DeviceRevoked, ...). Other closes (1000, 1001, 1008, 1009, 1011, 1013...)
 * name no protocol error: null.
 */
export function errorFromClose(code: number | null | undefined, reason: string | null | undefined): FatalError | null {
  let err: ProtocolError | null = null;
  if (reason) {
    const cls = errorClass(reason);
    if (cls !== undefined && errorInfo(reason)?.fatal) {
      err = new cls(`connection closed by the hub (${code} ${reason})`);
    }
  }
  if (err === null && code != null) {
    const cls = FATAL_BY_CLOSE_CODE.get(code);
    if (cls !== undefined) err = new cls(`connection closed by the hub (${code})`);
  }
  if (err === null) return null;
  err.remote = true;
  return err as FatalError;
}
