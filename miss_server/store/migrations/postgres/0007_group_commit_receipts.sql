-- MiSS schema v7 (PostgreSQL): miss_group_commit hands its receipts back whole.
-- Applied by miss_server.store.postgres_pool.Database.migrate, like 0001.
-- No SQLite counterpart: the embedded store runs its statements in process.
--
-- This function is PostgreSQL's one statement of the rules of accept() and
-- ack() (store/base.py); postgres_batch.py only packs a batch of calls into
-- its arrays and hands each caller its rows. The rules must agree with the
-- embedded store's statement of them, _accept and _ack in store/sqlite.py:
-- tests/server/test_store_conformance.py holds both to the same outcomes.
--
-- What changes from 0006 (0004 before it):
--   * a receipt row carries its kind and payload, and the seq of the acked
--     row it answers (ref), so that the caller reads it as a queue row and
--     derives nothing: two messages of the same id from two senders, one
--     acked and one refused, each get their own kind of receipt;
--   * a refusal is an ack with a reason that is not NULL (an empty reason
--     is a refusal still, as in sqlite.py);
--   * a message to oneself records no contact (the caller used to leave
--     such pairs out).
-- The arguments are those of 0006; the result rows are not: stop the hubs
-- of version 6 before migrating (a hub refuses to start on a schema it does
-- not know, but one already running would misread the rows).
--
-- Arguments, as parallel arrays:
--   id_*   the (sender, message id) keys of the batch, sorted, each once;
--   pair_* (sender, recipient, message id) of messages between users not yet
--          known to be contacts; a pair is recorded if its message is stored;
--   row_*  the envelopes of the first message of each key, in the order
--          they get their seqs; queued only if that message is stored;
--   ack_*  (device, seq, now, expires_at, reason) of every acked row, the
--          reason NULL for a plain ack.
-- One result row per outcome: first the columns of a queue row in the
-- order of store/common.py's QUEUED_COLUMNS (seq, device_id, kind,
-- message_id, peer_user, peer_device, ts, payload), then tag and ref:
--   'I' a message id stored (not a duplicate): message_id, peer_user = its sender;
--   'Q' an envelope queued: the queue row without its payload (the caller has it);
--   'R' a receipt queued: the whole queue row, ref = the seq of the acked row.
DROP FUNCTION miss_group_commit(
    text[], bytea[], bigint[], text[], text[], bytea[], text[], bytea[], bytea[], text[], text[], text[],
    bigint[], bigint[], text[], bigint[], bigint[], bigint[], text[]);

CREATE FUNCTION miss_group_commit(
    id_sender text[], id_message bytea[], id_expires bigint[],
    pair_sender text[], pair_recipient text[], pair_message bytea[],
    row_device text[], row_payload bytea[], row_message bytea[], row_sender text[],
    row_sender_device text[], row_recipient text[], row_ts bigint[], row_expires bigint[],
    ack_device text[], ack_seq bigint[], ack_now bigint[], ack_expires bigint[], ack_reason text[]
) RETURNS TABLE (
    seq bigint, device_id text, kind smallint, message_id bytea, peer_user text, peer_device text,
    ts bigint, payload bytea, tag text, ref bigint
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    stored_sender text[];
    stored_message bytea[];
BEGIN
    -- accept() is idempotent per (sender, message id): an id already
    -- recorded is a duplicate, and stores nothing.
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
    SELECT NULL::bigint, NULL::text, NULL::smallint, s.message, s.sender, NULL::text, NULL::bigint,
           NULL::bytea, 'I'::text, NULL::bigint
    FROM unnest(stored_sender, stored_message) AS s (sender, message);

    -- A stored message between two users makes them contacts, either way.
    -- least/greatest and ORDER BY use the column collation, as the table's CHECK does.
    INSERT INTO contacts (user_a, user_b)
    SELECT DISTINCT least(p.s, p.r), greatest(p.s, p.r)
    FROM unnest(pair_sender, pair_recipient, pair_message) AS p (s, r, m)
    WHERE p.s <> p.r AND (p.s, p.m) IN (SELECT * FROM unnest(stored_sender, stored_message))
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING;

    -- A stored message queues one row (kind 1) per envelope.
    RETURN QUERY
    WITH q AS (
        INSERT INTO queue (device_id, kind, payload, message_id, peer_user, peer_device, recipient_user,
                           ts, expires_at)
        SELECT r.d, 1, r.p, r.m, r.s, r.sd, r.rc, r.t, r.e
        FROM unnest(row_device, row_payload, row_message, row_sender, row_sender_device, row_recipient,
                    row_ts, row_expires) WITH ORDINALITY AS r (d, p, m, s, sd, rc, t, e, ord)
        WHERE (r.s, r.m) IN (SELECT * FROM unnest(stored_sender, stored_message))
        ORDER BY r.ord
        RETURNING queue.seq, queue.device_id, queue.kind, queue.message_id, queue.peer_user,
                  queue.peer_device, queue.ts
    )
    SELECT q.seq, q.device_id, q.kind, q.message_id, q.peer_user, q.peer_device, q.ts, NULL::bytea,
           'Q'::text, NULL::bigint
    FROM q;

    -- ack() deletes the acking device's own rows among those named (others
    -- are ignored). A message (kind 1) acked or refused by a device of its
    -- recipient, not a copy on one of the sender's own devices, earns a
    -- receipt for every attested active device of its sender (peer_user of
    -- the acked row), in the order of the acked rows, then of the sender's
    -- devices: kind 2 (delivered) for a plain ack, kind 3 (refused) with the
    -- reason as payload for a refusal.
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
        SELECT s.device_id, CASE WHEN c.why IS NULL THEN 2 ELSE 3 END,
               coalesce(convert_to(c.why, 'UTF8'), '\x'::bytea),
               c.message_id, c.owner, c.device_id, c.peer_user, c.n, c.e
        FROM claims c JOIN devices s ON s.user_id = c.peer_user AND s.revoked_at IS NULL AND s.attested
        ORDER BY c.seq, s.created_at, s.device_id
        RETURNING queue.seq, queue.device_id, queue.kind, queue.message_id, queue.peer_user,
                  queue.peer_device, queue.ts, queue.payload, queue.recipient_user
    )
    -- A receipt answers the one claim of its acking device (peer_device),
    -- message id and sender (recipient_user): accept() queues a (sender,
    -- message id) once per device while its id is recorded.
    SELECT r.seq, r.device_id, r.kind, r.message_id, r.peer_user, r.peer_device, r.ts, r.payload,
           'R'::text, c.seq
    FROM receipts r
    JOIN claims c ON c.device_id = r.peer_device AND c.message_id = r.message_id
                 AND c.peer_user = r.recipient_user;
END
$$;
