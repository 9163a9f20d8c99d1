-- MiSS schema v4 (PostgreSQL): one group commit in one call.
-- Applied by miss_server.store.postgres.PostgresStore.migrate, like 0001.
-- No SQLite counterpart: the embedded store runs its statements in process.
--
-- miss_group_commit runs the statements of a batch of accept() and ack()
-- calls (postgres_batch.py) on the server, in the order every hub takes the
-- locks in: message ids (given sorted), contacts (sorted), queued envelopes,
-- acked rows and their receipts. Its caller holds the transaction, so the
-- batch stays one commit; what it saves is a round trip per statement.
--
-- Arguments, as parallel arrays:
--   id_*   the (sender, message id) keys of the batch, sorted, each once;
--   pair_* (sender, recipient, message id) of messages between users not yet
--          known to be contacts; a pair is recorded if its message is stored;
--   row_*  the envelopes of the first message of each key, in the order
--          they get their seqs; queued only if that message is stored;
--   ack_*  (device, seq, now, expires_at) of every acked row.
-- One result row per outcome, by tag:
--   'I' a message id stored (not a duplicate): device_id = sender, message_id;
--   'Q' an envelope queued: seq, device_id, message_id, peer_user, peer_device, ts;
--   'A' an acked message that earns a receipt: ref = its seq, device_id = the
--       acking device, message_id;
--   'R' a receipt queued: seq, device_id (a device of the sender), message_id,
--       peer_user (the recipient), peer_device (the acking device), ts.
CREATE FUNCTION miss_group_commit(
    id_sender text[], id_message bytea[], id_expires bigint[],
    pair_sender text[], pair_recipient text[], pair_message bytea[],
    row_device text[], row_payload bytea[], row_message bytea[], row_sender text[],
    row_sender_device text[], row_recipient text[], row_ts bigint[], row_expires bigint[],
    ack_device text[], ack_seq bigint[], ack_now bigint[], ack_expires bigint[]
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

    -- A receipt for a message acked by a device of its recipient (not for a
    -- copy on one of the sender's own devices), for every active device of
    -- the sender (peer_user of the acked row).
    RETURN QUERY
    WITH gone AS (
        DELETE FROM queue q USING unnest(ack_device, ack_seq, ack_now, ack_expires) AS a (d, s, n, e)
        WHERE q.seq = a.s AND q.device_id = a.d
        RETURNING q.seq, q.device_id, q.kind, q.message_id, q.peer_user, q.recipient_user, a.n, a.e
    ), claims AS (
        SELECT g.seq, g.device_id, g.message_id, g.peer_user, g.n, g.e, o.user_id AS owner
        FROM gone g JOIN devices o ON o.device_id = g.device_id
        WHERE g.kind = 1 AND o.user_id = g.recipient_user AND g.peer_user <> g.recipient_user
    ), receipts AS (
        INSERT INTO queue (device_id, kind, payload, message_id, peer_user, peer_device, recipient_user,
                           ts, expires_at)
        SELECT s.device_id, 2, '\x'::bytea, c.message_id, c.owner, c.device_id, c.peer_user, c.n, c.e
        FROM claims c JOIN devices s ON s.user_id = c.peer_user AND s.revoked_at IS NULL
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
