-- MiSS schema v1 (SQLite). Applied by miss_server.store.sqlite.SQLiteStore.migrate.
CREATE TABLE users (
    user_id      TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    rpps         TEXT NOT NULL UNIQUE,
    profession   TEXT NOT NULL,
    organisation TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    suspended    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE devices (
    device_id  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    sign_pk    BLOB NOT NULL UNIQUE,
    box_pk     BLOB NOT NULL,
    label      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX devices_by_user ON devices (user_id);

-- Codes are kept as SHA-256 digests: a copy of the database enrolls nobody.
CREATE TABLE enrollment_codes (
    code_hash  BLOB PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (user_id),
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) WITHOUT ROWID;

-- One row per accepted message id, so that a resend stores nothing new.
CREATE TABLE accepted_ids (
    sender_user TEXT NOT NULL,
    message_id  BLOB NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (sender_user, message_id)
) WITHOUT ROWID;
CREATE INDEX accepted_ids_by_expiry ON accepted_ids (expires_at);

-- What waits for a device: envelopes (kind 1) and delivered receipts (kind 2).
CREATE TABLE queue (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id      TEXT NOT NULL,
    kind           INTEGER NOT NULL,
    message_id     BLOB NOT NULL,
    peer_user      TEXT NOT NULL,
    peer_device    TEXT NOT NULL,
    recipient_user TEXT NOT NULL,
    ts             INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    payload        BLOB NOT NULL
);
CREATE INDEX queue_by_device ON queue (device_id, seq);
CREATE INDEX queue_by_expiry ON queue (expires_at);
