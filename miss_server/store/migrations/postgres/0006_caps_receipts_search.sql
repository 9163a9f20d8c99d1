-- MiSS schema v6 (PostgreSQL): attested devices, link codes, refusals, the directory index
-- (SPEC §5.3, §6.5, §11.3). Applied by miss_server.store.postgres.PostgresStore.migrate, like 0001.
-- Same meaning as sqlite/0005_caps_receipts_search.sql.

-- Whether the user's current attestation names this device with its keys.
-- Receipts go to attested devices only (SPEC §6.5). set_attestation() keeps
-- it in step with users.attestation.
ALTER TABLE devices ADD COLUMN attested BOOLEAN NOT NULL DEFAULT FALSE;

-- Devices attested before this version: an attestation body holds each
-- device as the msgpack array [id, sign_pk, box_pk], which for the hub's
-- 18-character ids is the bytes 93 B2 <id> C4 20 <sign_pk> C4 20 <box_pk>
-- (fixarray 3, fixstr 18, bin8 32, bin8 32): finding exactly those bytes in
-- the attestation is finding the device with the same keys.
UPDATE devices d SET attested = TRUE
FROM users u
WHERE u.user_id = d.user_id
  AND d.revoked_at IS NULL
  AND length(d.device_id) = 18
  AND u.attestation IS NOT NULL
  AND position(('\x93b2'::bytea || convert_to(d.device_id, 'UTF8') || '\xc420'::bytea || d.sign_pk
                || '\xc420'::bytea || d.box_pk) IN u.attestation) > 0;

-- Link codes hold a place under the device cap until used or expired
-- (SPEC §5.3); invitations do not.
ALTER TABLE enrollment_codes ADD COLUMN link BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX enrollment_codes_by_user ON enrollment_codes (user_id);

-- The directory (SPEC §11.3): a trigram index (pg_trgm) over the four
-- searched fields of each verified, unsuspended user, lower-cased and
-- joined by a unit separator (which no query holds, so no match spans two
-- fields). A LIKE of three characters or more goes through the index.
-- pg_trgm is a trusted extension: the database owner may create it. It
-- lives in one schema per database; several MiSS schemas share it, so the
-- index names its operator class where the extension is.
CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
DO $$
BEGIN
    EXECUTE format(
        'CREATE INDEX users_search ON users USING gin ('
        '(lower(name || chr(31) || rpps || chr(31) || profession || chr(31) || organisation)) %I.gin_trgm_ops'
        ') WHERE attestation IS NOT NULL AND NOT suspended',
        (SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_trgm'));
END
$$;

-- Group commit (0004) with refusals and attested receipt targets. The acks
-- carry a reason: '' for a plain ack, the refusal's reason otherwise; a
-- receipt is then queued as kind 2 (delivered) or 3 (refused, the reason as
-- its payload), for every attested active device of the sender.
DROP FUNCTION miss_group_commit(
    text[], bytea[], bigint[], text[], text[], bytea[], text[], bytea[], bytea[], text[], text[], text[],
    bigint[], bigint[], text[], bigint[], bigint[], bigint[]);

CREATE FUNCTION miss_group_commit(
    id_sender text[], id_message bytea[], id_expires bigint[],
    pair_sender text[], pair_recipient text[], pair_message bytea[],
    row_device text[], row_payload bytea[], row_message bytea[], row_sender text[],
    row_sender_device text[], row_recipient text[], row_ts bigint[], row_expires bigint[],
    ack_device text[], ack_seq bigint[], ack_now bigint[], ack_expires bigint[], ack_reason text[]
) RETURNS TABLE (
    tag text, seq bigint, device_id text, message_id bytea, peer_user text, peer_device text,
    ts bigint, ref bigint
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    stored_sender text[];
    stored_message bytea[];
BEGIN
    WITH ins AS (
        INSERT INTO accepted_ids (sender_user, message_id, expires_at)
        SELECT * FROM unnest(id_sender, id_message, id_expires)
        ON CONFLICT DO NOTHING
        RETURNING accepted_ids.sender_user, accepted_ids.message_id
    )
    SELECT coalesce(array_agg(ins.sender_user), '{}'), coalesce(array_agg(ins.message_id), '{}')
    INTO stored_sender, stored_message
    FROM ins;

    RETURN QUERY
    SELECT 'I'::text, NULL::bigint, s.sender, s.message, NULL::text, NULL::text, NULL::bigint, NULL::bigint
    FROM unnest(stored_sender, stored_message) AS s (sender, message);

    -- least/greatest and ORDER BY use the column collation, as the table's CHECK does.
    INSERT INTO contacts (user_a, user_b)
    SELECT DISTINCT least(p.s, p.r), greatest(p.s, p.r)
    FROM unnest(pair_sender, pair_recipient, pair_message) AS p (s, r, m)
    WHERE (p.s, p.m) IN (SELECT * FROM unnest(stored_sender, stored_message))
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING;

    RETURN QUERY
    WITH q AS (
        INSERT INTO queue (device_id, kind, payload, message_id, peer_user, peer_device, recipient_user,
                           ts, expires_at)
        SELECT r.d, 1, r.p, r.m, r.s, r.sd, r.rc, r.t, r.e
        FROM unnest(row_device, row_payload, row_message, row_sender, row_sender_device, row_recipient,
                    row_ts, row_expires) WITH ORDINALITY AS r (d, p, m, s, sd, rc, t, e, ord)
        WHERE (r.s, r.m) IN (SELECT * FROM unnest(stored_sender, stored_message))
        ORDER BY r.ord
        RETURNING queue.seq, queue.device_id, queue.message_id, queue.peer_user, queue.peer_device, queue.ts
    )
    SELECT 'Q'::text, q.seq, q.device_id, q.message_id, q.peer_user, q.peer_device, q.ts, NULL::bigint
    FROM q;

    -- A receipt for a message acked or refused by a device of its recipient
    -- (not for a copy on one of the sender's own devices), for every attested
    -- active device of the sender (peer_user of the acked row).
    RETURN QUERY
    WITH gone AS (
        DELETE FROM queue q
        USING unnest(ack_device, ack_seq, ack_now, ack_expires, ack_reason) AS a (d, s, n, e, why)
        WHERE q.seq = a.s AND q.device_id = a.d
        RETURNING q.seq, q.device_id, q.kind, q.message_id, q.peer_user, q.recipient_user, a.n, a.e, a.why
    ), claims AS (
        SELECT g.seq, g.device_id, g.message_id, g.peer_user, g.n, g.e, g.why, o.user_id AS owner
        FROM gone g JOIN devices o ON o.device_id = g.device_id
        WHERE g.kind = 1 AND o.user_id = g.recipient_user AND g.peer_user <> g.recipient_user
    ), receipts AS (
        INSERT INTO queue (device_id, kind, payload, message_id, peer_user, peer_device, recipient_user,
                           ts, expires_at)
        SELECT s.device_id, CASE WHEN c.why = '' THEN 2 ELSE 3 END, convert_to(c.why, 'UTF8'),
               c.message_id, c.owner, c.device_id, c.peer_user, c.n, c.e
        FROM claims c JOIN devices s ON s.user_id = c.peer_user AND s.revoked_at IS NULL AND s.attested
        ORDER BY c.seq, s.created_at, s.device_id
        RETURNING queue.seq, queue.device_id, queue.message_id, queue.peer_user, queue.peer_device, queue.ts
    )
    SELECT 'A'::text, NULL::bigint, c.device_id, c.message_id, NULL::text, NULL::text, NULL::bigint, c.seq
    FROM claims c
    UNION ALL
    SELECT 'R'::text, r.seq, r.device_id, r.message_id, r.peer_user, r.peer_device, r.ts, NULL::bigint
    FROM receipts r;
END
$$;
