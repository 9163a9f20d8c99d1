-- MiSS schema v8 (PostgreSQL): care teams, sealed bodies stored once, recall (SPEC §13).
-- Applied by miss_server.store.postgres_pool.Database.migrate, like 0001.
-- The same tables as SQLite's 0006_teams.sql (read its comments), and
-- miss_group_commit again, whose acks now also take team rows.

CREATE TABLE teams (
    team     TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    org      TEXT NOT NULL,
    lifespan BIGINT,
    creator  TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    head     BYTEA NOT NULL,
    closed   BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX teams_by_creator ON teams (creator);

CREATE TABLE team_records (
    team TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    rec  BYTEA NOT NULL,
    sig  BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (team, seq)
);

CREATE TABLE team_members (
    team    TEXT NOT NULL,
    user_id TEXT NOT NULL,
    admin   BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (team, user_id)
);
CREATE INDEX team_members_by_user ON team_members (user_id, team);

CREATE TABLE bodies (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender_user   TEXT NOT NULL,
    message_id    BYTEA NOT NULL,
    sender_device TEXT NOT NULL,
    team          TEXT NOT NULL,
    ts            BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    body          BYTEA NOT NULL
);
CREATE UNIQUE INDEX bodies_by_message ON bodies (sender_user, message_id);
CREATE INDEX bodies_by_expiry ON bodies (expires_at);

-- seq from the queue's identity sequence: one seq space per device.
CREATE TABLE team_queue (
    seq       BIGINT PRIMARY KEY,
    device_id TEXT NOT NULL,
    body_id   BIGINT NOT NULL,
    wrap      BYTEA NOT NULL
);
DO $$
BEGIN
    EXECUTE format('ALTER TABLE team_queue ALTER COLUMN seq SET DEFAULT nextval(%L::regclass)',
                   pg_get_serial_sequence('queue', 'seq'));
END
$$;
CREATE INDEX team_queue_by_device ON team_queue (device_id, seq);
CREATE INDEX team_queue_by_body ON team_queue (body_id);

CREATE INDEX queue_by_message ON queue (message_id) WHERE kind = 1;

-- miss_group_commit as in 0007 (read its comments), but ack() deletes the
-- named rows of team_queue too: a team row acked or refused by a device of
-- another user than the sender earns the same receipts as a 1:1 message.
-- Same arguments and result rows as 0007.
CREATE OR REPLACE FUNCTION miss_group_commit(
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
    WITH gone_rows AS (
        DELETE FROM queue q
        USING unnest(ack_device, ack_seq, ack_now, ack_expires, ack_reason) AS a (d, s, n, e, why)
        WHERE q.seq = a.s AND q.device_id = a.d
        RETURNING q.seq, q.device_id, q.kind, q.message_id, q.peer_user, q.recipient_user, a.n, a.e, a.why
    ), gone_team AS (
        DELETE FROM team_queue t
        USING unnest(ack_device, ack_seq, ack_now, ack_expires, ack_reason) AS a (d, s, n, e, why)
        WHERE t.seq = a.s AND t.device_id = a.d
        RETURNING t.seq, t.device_id, t.body_id, a.n, a.e, a.why
    ), gone AS (
        SELECT * FROM gone_rows
        UNION ALL
        -- A team row reads as a message (kind 1) to the acking device's
        -- owner from the body's sender: the sender's own devices earn no receipt.
        SELECT g.seq, g.device_id, 1::smallint, b.message_id, b.sender_user, o.user_id, g.n, g.e, g.why
        FROM gone_team g
        JOIN bodies b ON b.id = g.body_id
        JOIN devices o ON o.device_id = g.device_id
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
