-- MiSS schema v4 (SQLite): accepted_ids keyed by message id first.
-- Applied by miss_server.store.sqlite.SQLiteStore.migrate in one transaction.

-- Message ids are time-ordered (UUIDv7, protocol.crypto.new_message_id): keyed
-- (message_id, sender_user), accepts land in the last leaf of the key, which a
-- group commit writes once. Keyed (sender_user, message_id), every message
-- dirtied the leaf of its own sender: under the bench's online load a quarter
-- of the pages the writer wrote to the WAL. Same pair, same uniqueness: a
-- resend of an id still stores nothing. An id that is not time-ordered (the
-- client picks it) only loses the locality.
CREATE TABLE accepted_ids_v4 (
    message_id  BLOB NOT NULL,
    sender_user TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (message_id, sender_user)
) WITHOUT ROWID;
INSERT INTO accepted_ids_v4 (message_id, sender_user, expires_at)
SELECT message_id, sender_user, expires_at FROM accepted_ids;
DROP TABLE accepted_ids;
ALTER TABLE accepted_ids_v4 RENAME TO accepted_ids;
CREATE INDEX accepted_ids_by_expiry ON accepted_ids (expires_at);
