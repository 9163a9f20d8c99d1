/**
 * Care teams (protocol/teams.py, SPEC §13.1–§13.2): membership records,
 * signed records, their hash, and chain verification.
 */
export const OPS = ["create", "add", "remove", "leave", "promote", "demote"] as const;
export type TeamOp = (typeof OPS)[number];
