-- MiSS schema v2 (PostgreSQL): clinicians' statuses and contacts, for presence (SPEC §6.7).
-- Applied by miss_server.store.postgres.PostgresStore.migrate, like 0001.
-- Same tables and meaning as sqlite/0002_status_and_contacts.sql.

-- The values are protocol.frames.STATUSES; a new status needs a migration.
-- A constant default adds the column without rewriting the table.
ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'available'
    CONSTRAINT users_status_known CHECK (status IN ('available', 'busy', 'on_call', 'off_duty'));
-- A clinician's colleagues. visible_users() starts from its candidates' primary
-- keys, but a plan from the organisation is there when it is the smaller side.
CREATE INDEX users_by_organisation ON users (organisation);

-- Pairs of users between whom a message was accepted, either way; each pair
-- once, ordered by the database collation (the store orders pairs with
-- least()/greatest() in SQL, so the CHECK always agrees). Written by accept()
-- (a new pair only on a first message), read by visible_users(): a user's
-- contacts are found through the primary key on one side and contacts_by_b
-- on the other. No foreign keys: accept() must not fail over bookkeeping, and
-- readers join users, so a pair naming an unknown user shows nobody.
CREATE TABLE contacts (
    user_a TEXT NOT NULL,
    user_b TEXT NOT NULL,
    PRIMARY KEY (user_a, user_b),
    CONSTRAINT contacts_ordered CHECK (user_a < user_b)
);
CREATE INDEX contacts_by_b ON contacts (user_b, user_a);

-- Contacts from before this version: what the queue still shows (undelivered
-- messages and receipts). Delivered messages left no trace to recover.
INSERT INTO contacts (user_a, user_b)
SELECT DISTINCT least(peer_user, recipient_user), greatest(peer_user, recipient_user)
FROM queue
WHERE peer_user <> recipient_user
ON CONFLICT DO NOTHING;
