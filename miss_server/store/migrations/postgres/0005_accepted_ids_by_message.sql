-- MiSS schema v5 (PostgreSQL): accepted_ids keyed by message id first.
-- Applied by miss_server.store.postgres.PostgresStore.migrate in one transaction.

-- Message ids are time-ordered (UUIDv7, protocol.crypto.new_message_id): keyed
-- (message_id, sender_user), the primary key's index takes accepts in its last
-- leaf instead of one leaf per sender (fewer pages dirtied, and fewer full-page
-- images in the WAL after a checkpoint). Same pair, same uniqueness: a resend
-- of an id still stores nothing, and miss_group_commit's ON CONFLICT DO NOTHING
-- holds. It still inserts ids sorted by (sender_user, message_id): one global
-- lock order, whatever the index's.
ALTER TABLE accepted_ids
    DROP CONSTRAINT accepted_ids_pkey,
    ADD PRIMARY KEY (message_id, sender_user);
