-- MiSS schema v3 (SQLite): attestations, organisations and the audit log (SPEC §11).
-- Applied by miss_server.store.sqlite.SQLiteStore.migrate in one transaction.

-- The latest attestation of the verification authority (protocol.attestation),
-- NULL until the clinician is verified. search_users() shows only attested,
-- unsuspended users; it scans users with lower() ... LIKE, with no index: fine
-- for the few thousand clinicians of a hub.
ALTER TABLE users ADD COLUMN attestation BLOB;

-- Organisations known to the hub, listed by name. users.organisation stays
-- free text (no foreign key): an account names its organisation as before.
CREATE TABLE organisations (
    name       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Organisations from before this version: those that users name, dated by
-- their first user. An empty organisation is no organisation.
INSERT INTO organisations (name, created_at)
SELECT organisation, min(created_at)
FROM users
WHERE organisation <> ''
GROUP BY organisation;

-- Who did what, when: append-only, never message content, keys or codes.
-- expire() leaves it alone. AUTOINCREMENT: a seq is never handed out twice.
-- No foreign keys: an event may name an unknown user (a failed login) and
-- outlives what it names. Read by time (hubs poll with since_at) and by user.
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    user_id   TEXT,
    device_id TEXT,
    address   TEXT,
    detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_by_time ON audit_log (at);
CREATE INDEX audit_log_by_user ON audit_log (user_id, at);
