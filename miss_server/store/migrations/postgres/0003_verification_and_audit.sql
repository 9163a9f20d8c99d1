-- MiSS schema v3 (PostgreSQL): attestations, organisations and the audit log (SPEC §11).
-- Applied by miss_server.store.postgres.PostgresStore.migrate, like 0001.
-- Same tables and meaning as sqlite/0003_verification_and_audit.sql.

-- The latest attestation of the verification authority (protocol.attestation),
-- NULL until the clinician is verified. search_users() shows only attested,
-- unsuspended users; it scans users with ILIKE, with no index: fine for the
-- few thousand clinicians of a hub (pg_trgm would be the next step).
-- A nullable column without default adds no table rewrite.
ALTER TABLE users ADD COLUMN attestation BYTEA;

-- Organisations known to the hub, listed by name. users.organisation stays
-- free text (no foreign key): an account names its organisation as before.
CREATE TABLE organisations (
    name       TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

-- Organisations from before this version: those that users name, dated by
-- their first user. An empty organisation is no organisation.
INSERT INTO organisations (name, created_at)
SELECT organisation, min(created_at)
FROM users
WHERE organisation <> ''
GROUP BY organisation;

-- Who did what, when: append-only, never message content, keys or codes.
-- expire() leaves it alone. seq comes from an identity sequence: it grows with
-- insertion (nextval) order, which across concurrent transactions is not always
-- commit order; hubs poll by time (since_at), and skip a seq only once it has
-- been seen for a few seconds (Hub.watch_security_forever).
-- No foreign keys: an event may name an unknown user (a failed login) and
-- outlives what it names. Read by time and by user.
CREATE TABLE audit_log (
    seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    user_id   TEXT,
    device_id TEXT,
    address   TEXT,
    detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_by_time ON audit_log (at);
CREATE INDEX audit_log_by_user ON audit_log (user_id, at);
