-- MiSS schema v7 (SQLite): on-call roles, escalation policies, urgent messages (SPEC §14).
-- Applied by miss_server.store.sqlite.SQLiteStore.migrate in one transaction.

-- A role. policy: its escalation policy in store form (protocol.oncall.pack_policy),
-- NULL for the organisation's default. search: name and org folded (case and
-- accents, oncall_rules.fold) for search_roles; roles are few, a scan is cheap.
CREATE TABLE roles (
    role       TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    org        TEXT NOT NULL,
    reserved   INTEGER NOT NULL DEFAULT 0,
    policy     BLOB,
    created_at INTEGER NOT NULL,
    search     TEXT NOT NULL
) WITHOUT ROWID;

-- Manual holders (taken in a client, or assigned by an administrator).
CREATE TABLE role_holders (
    role    TEXT NOT NULL,
    user_id TEXT NOT NULL,
    since   INTEGER NOT NULL,
    PRIMARY KEY (role, user_id)
) WITHOUT ROWID;
CREATE INDEX role_holders_by_user ON role_holders (user_id, role);

-- Scheduled holders: user_id holds role for start <= t < end.
CREATE TABLE role_shifts (
    role    TEXT NOT NULL,
    user_id TEXT NOT NULL,
    start   INTEGER NOT NULL,
    "end"   INTEGER NOT NULL,
    PRIMARY KEY (role, user_id, start)
) WITHOUT ROWID;
CREATE INDEX role_shifts_by_role ON role_shifts (role, "end");
CREATE INDEX role_shifts_by_user ON role_shifts (user_id, "end");

-- An organisation's default policy (no steps).
CREATE TABLE org_policies (
    org      TEXT PRIMARY KEY,
    interval INTEGER NOT NULL,
    final    INTEGER NOT NULL
) WITHOUT ROWID;

-- What a sealed body was sent as: the role of a role message, urgent or not.
ALTER TABLE bodies ADD COLUMN role TEXT;
ALTER TABLE bodies ADD COLUMN urgent INTEGER NOT NULL DEFAULT 0;
-- The escalation step that released a row (NULL: a primary row).
ALTER TABLE team_queue ADD COLUMN step INTEGER;

-- Backups' rows of an urgent message, held until their step fires: then
-- moved into team_queue with new seqs, or deleted unseen on acknowledgement.
-- They go with their body.
CREATE TABLE held_queue (
    body_id   INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    wrap      BLOB NOT NULL,
    PRIMARY KEY (body_id, step, device_id)
) WITHOUT ROWID;
CREATE INDEX held_queue_by_device ON held_queue (device_id);

-- One urgent message's timers; its body is found by (sender_user, message_id)
-- (a body's rowid may be reused once it is gone). deadlines, targets, step_targets: JSON arrays
-- (EscalationPlan). step: steps released so far. state: open, acknowledged,
-- unacknowledged. next_at: the earliest of the next step, the final deadline
-- and the next reminder while open, NULL once nothing is left to do, so the
-- scheduler's poll is one probe of a partial index.
CREATE TABLE escalations (
    id            INTEGER PRIMARY KEY,
    sender_user   TEXT NOT NULL,
    message_id    BLOB NOT NULL,
    ts            INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    interval      INTEGER NOT NULL,
    deadlines     TEXT NOT NULL,
    targets       TEXT NOT NULL,
    step_targets  TEXT NOT NULL,
    step          INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL DEFAULT 'open',
    next_remind   INTEGER,
    reminders     INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER,
    ack_user      TEXT,
    ack_device    TEXT,
    ack_at        INTEGER
);
CREATE UNIQUE INDEX escalations_by_message ON escalations (sender_user, message_id);
CREATE INDEX escalations_due ON escalations (next_at) WHERE next_at IS NOT NULL;
CREATE INDEX escalations_by_expiry ON escalations (expires_at);
-- open_escalations counts a sender's open ones (max_open_urgent_per_user).
CREATE INDEX escalations_open_by_sender ON escalations (sender_user, state);
