-- MiSS schema v5 (SQLite): attested devices, link codes, the directory index (SPEC §5.3, §6.5, §11.3).
-- Applied by miss_server.store.sqlite.SQLiteStore.migrate in one transaction.

-- Whether the user's current attestation names this device with its keys.
-- Receipts go to attested devices only (SPEC §6.5), so that devices nobody
-- vouched for cannot multiply the rows one acknowledgement queues.
-- set_attestation() keeps it in step with users.attestation.
ALTER TABLE devices ADD COLUMN attested INTEGER NOT NULL DEFAULT 0;

-- Devices attested before this version: an attestation body holds each
-- device as the msgpack array [id, sign_pk, box_pk], which for the hub's
-- 18-character ids is the bytes 93 B2 <id> C4 20 <sign_pk> C4 20 <box_pk>
-- (fixarray 3, fixstr 18, bin8 32, bin8 32). Finding exactly those bytes in
-- the attestation is finding the device with the same keys.
UPDATE devices SET attested = 1
WHERE revoked_at IS NULL
  AND length(device_id) = 18
  AND EXISTS (
    SELECT 1 FROM users u
    WHERE u.user_id = devices.user_id
      AND u.attestation IS NOT NULL
      AND instr(u.attestation,
                CAST(X'93B2' || devices.device_id || X'C420' || devices.sign_pk || X'C420' || devices.box_pk
                     AS BLOB)) > 0);

-- Link codes hold a place under the device cap until used or expired
-- (SPEC §5.3); invitations do not.
ALTER TABLE enrollment_codes ADD COLUMN link INTEGER NOT NULL DEFAULT 0;
CREATE INDEX enrollment_codes_by_user ON enrollment_codes (user_id);

-- The directory (SPEC §11.3): a trigram index over the four searched fields
-- of each user, joined by a unit separator (which no query holds, so no
-- match spans two fields). MATCH finds a substring of three characters or
-- more (the shortest query the hub searches) through the index, case folded
-- over all of Unicode. Kept by the triggers below.
CREATE VIRTUAL TABLE users_search USING fts5(text, tokenize = 'trigram');

INSERT INTO users_search (rowid, text)
SELECT rowid, name || char(31) || rpps || char(31) || profession || char(31) || organisation FROM users;

CREATE TRIGGER users_search_insert AFTER INSERT ON users BEGIN
    INSERT INTO users_search (rowid, text)
    VALUES (new.rowid, new.name || char(31) || new.rpps || char(31) || new.profession || char(31) || new.organisation);
END;

CREATE TRIGGER users_search_update AFTER UPDATE OF name, rpps, profession, organisation ON users BEGIN
    UPDATE users_search
    SET text = new.name || char(31) || new.rpps || char(31) || new.profession || char(31) || new.organisation
    WHERE rowid = new.rowid;
END;

-- The directory in name order, for queries that match many: walking it until
-- enough rows match costs less than listing every match and sorting them.
CREATE INDEX users_directory ON users (name, user_id) WHERE attestation IS NOT NULL AND NOT suspended;

CREATE TRIGGER users_search_delete AFTER DELETE ON users BEGIN
    DELETE FROM users_search WHERE rowid = old.rowid;
END;
