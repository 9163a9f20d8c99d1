-- MiSS schema v2 (SQLite): clinicians' statuses and contacts, for presence (SPEC §6.7).
-- Applied by miss_server.store.sqlite.SQLiteStore.migrate in one transaction.

-- The values are protocol.frames.STATUSES; a new status needs a migration.
ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'available'
    CHECK (status IN ('available', 'busy', 'on_call', 'off_duty'));
-- A clinician's colleagues. visible_users() starts from its candidates' primary
-- keys, but a plan from the organisation is there when it is the smaller side.
CREATE INDEX users_by_organisation ON users (organisation);

-- Pairs of users between whom a message was accepted, either way; each pair
-- once, in code point (BINARY) order. Written by accept() (a new pair only on
-- a first message), read by visible_users(): a user's contacts are found
-- through the primary key on one side and contacts_by_b on the other.
-- No foreign keys: accept() must not fail over bookkeeping, and readers join
-- users, so a pair naming an unknown user shows nobody.
CREATE TABLE contacts (
    user_a TEXT NOT NULL,
    user_b TEXT NOT NULL,
    PRIMARY KEY (user_a, user_b),
    CHECK (user_a < user_b)
) WITHOUT ROWID;
CREATE INDEX contacts_by_b ON contacts (user_b, user_a);

-- Contacts from before this version: what the queue still shows (undelivered
-- messages and receipts). Delivered messages left no trace to recover.
INSERT INTO contacts (user_a, user_b)
SELECT DISTINCT min(peer_user, recipient_user), max(peer_user, recipient_user)
FROM queue
WHERE peer_user <> recipient_user
ON CONFLICT DO NOTHING;
