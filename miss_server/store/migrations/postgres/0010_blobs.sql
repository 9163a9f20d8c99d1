-- MiSS schema v10 (PostgreSQL): attachment blobs (SPEC §16), used by
-- miss_server.blobs.postgres.PostgresBlobStore (the embedded hub keeps its
-- blobs in files, miss_server.blobs.filesystem, so SQLite has no such migration).
-- Applied by miss_server.store.postgres_pool.Database.migrate, like 0001.

-- One row per upload. `owner`/`device` began it; `have` bytes of `size` are
-- in blob_parts; `complete` once the uploader ended it. `message_id` and
-- `expires_at` are set by the link to the owner's message (NULL before).
CREATE TABLE blobs (
    blob       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    device     TEXT NOT NULL,
    size       BIGINT NOT NULL CHECK (size > 0),
    have       BIGINT NOT NULL DEFAULT 0 CHECK (have >= 0 AND have <= size),
    complete   BOOLEAN NOT NULL DEFAULT FALSE,
    begun_at   BIGINT NOT NULL,
    message_id BYTEA,
    expires_at BIGINT,
    CHECK ((message_id IS NULL) = (expires_at IS NULL))
);
-- Stored bytes per user (an index-only sum), recall by message.
CREATE INDEX blobs_by_owner ON blobs (owner, message_id) INCLUDE (size);
-- Open uploads per device.
CREATE INDEX blobs_open_by_device ON blobs (device) WHERE NOT complete;
-- Expiry: linked blobs by their message's expiry, unlinked ones by age.
CREATE INDEX blobs_linked_expiry ON blobs (expires_at) WHERE message_id IS NOT NULL;
CREATE INDEX blobs_unlinked_age ON blobs (begun_at) WHERE message_id IS NULL;

-- The bytes: consecutive pieces, each at most PIECE_MAX (61440) bytes, keyed
-- by their offset; a range read scans (blob, off) from start - PIECE_MAX.
CREATE TABLE blob_parts (
    blob TEXT NOT NULL REFERENCES blobs (blob) ON DELETE CASCADE,
    off  BIGINT NOT NULL,
    data BYTEA NOT NULL CHECK (octet_length(data) BETWEEN 1 AND 61440),
    PRIMARY KEY (blob, off)
);
-- Ciphertext does not compress: store it out of line without trying to.
ALTER TABLE blob_parts ALTER COLUMN data SET STORAGE EXTERNAL;

-- Devices (other than the owner's, who always may) allowed to fetch a blob.
CREATE TABLE blob_access (
    blob   TEXT NOT NULL REFERENCES blobs (blob) ON DELETE CASCADE,
    device TEXT NOT NULL,
    PRIMARY KEY (blob, device)
);

-- Download tokens, by SHA-256 of the token (the token itself is never stored).
CREATE TABLE blob_tokens (
    token_hash BYTEA PRIMARY KEY,
    blob       TEXT NOT NULL REFERENCES blobs (blob) ON DELETE CASCADE,
    device     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX blob_tokens_by_blob ON blob_tokens (blob);
CREATE INDEX blob_tokens_by_device ON blob_tokens (device, expires_at);
CREATE INDEX blob_tokens_expiry ON blob_tokens (expires_at);

-- What each device began per UTC day (day = ms // 86400000): the daily
-- quotas count uploads begun, even those since deleted.
CREATE TABLE blob_days (
    device TEXT NOT NULL,
    day    BIGINT NOT NULL,
    bytes  BIGINT NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (device, day)
);
CREATE INDEX blob_days_by_day ON blob_days (day);
