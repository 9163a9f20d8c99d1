-- MiSS schema v1 (PostgreSQL). Applied by miss_server.store.postgres.PostgresStore.migrate,
-- inside one transaction, with the search_path set to the target schema; the
-- version is recorded in schema_version by the migrator, not here.
-- Same tables and meaning as sqlite/0001_init.sql; times are milliseconds since the epoch.
CREATE TABLE users (
    user_id      TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    rpps         TEXT NOT NULL UNIQUE,
    profession   TEXT NOT NULL,
    organisation TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    suspended    BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE devices (
    device_id  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    sign_pk    BYTEA NOT NULL UNIQUE,
    box_pk     BYTEA NOT NULL,
    label      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX devices_by_user ON devices (user_id);

-- Codes are kept as SHA-256 digests: a copy of the database enrolls nobody.
CREATE TABLE enrollment_codes (
    code_hash  BYTEA PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX enrollment_codes_by_expiry ON enrollment_codes (expires_at);

-- One row per accepted message id, so that a resend stores nothing new.
CREATE TABLE accepted_ids (
    sender_user TEXT NOT NULL,
    message_id  BYTEA NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (sender_user, message_id)
);
CREATE INDEX accepted_ids_by_expiry ON accepted_ids (expires_at);

-- What waits for a device: envelopes (kind 1) and delivered receipts (kind 2).
-- seq comes from an identity sequence: it grows with insertion (nextval) order,
-- which across concurrent transactions is not always commit order.
CREATE TABLE queue (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id      TEXT NOT NULL,
    kind           SMALLINT NOT NULL,
    message_id     BYTEA NOT NULL,
    peer_user      TEXT NOT NULL,
    peer_device    TEXT NOT NULL,
    recipient_user TEXT NOT NULL,
    ts             BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    payload        BYTEA NOT NULL
);
CREATE INDEX queue_by_device ON queue (device_id, seq);
CREATE INDEX queue_by_expiry ON queue (expires_at);
