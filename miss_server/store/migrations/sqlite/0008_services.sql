-- MiSS schema v8 (SQLite): service accounts (SPEC §17.1).
-- Applied by miss_server.store.sqlite.SQLiteStore.migrate in one transaction.

-- service: the account stands for a system of its organisation (created by
-- `miss-admin service create`; its profession is 'service', its rpps its
-- svc: identifier). replies: whether others may write to it (SPEC §17.2);
-- read with the user's row (USER_COLUMNS), so a send costs no extra query.
-- Existing accounts are clinicians, who accept replies.
ALTER TABLE users ADD COLUMN service INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN replies INTEGER NOT NULL DEFAULT 1;

-- list_services() and the max_services_per_org count. The directory's
-- search leaves services out with one more term (NOT service): its partial
-- index users_directory (0005) still serves it, whose predicate the query's implies.
CREATE INDEX users_services ON users (organisation, name, user_id) WHERE service;
