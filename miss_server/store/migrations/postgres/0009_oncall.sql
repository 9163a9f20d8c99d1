-- MiSS schema v9 (PostgreSQL): on-call roles, escalation policies, urgent messages (SPEC §14).
-- Applied by miss_server.store.postgres_pool.Database.migrate, like 0001.
-- The same tables as SQLite's 0007_oncall.sql (read its comments).

CREATE TABLE roles (
    role       TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    org        TEXT NOT NULL,
    reserved   BOOLEAN NOT NULL DEFAULT FALSE,
    policy     BYTEA,
    created_at BIGINT NOT NULL,
    search     TEXT NOT NULL
);

CREATE TABLE role_holders (
    role    TEXT NOT NULL,
    user_id TEXT NOT NULL,
    since   BIGINT NOT NULL,
    PRIMARY KEY (role, user_id)
);
CREATE INDEX role_holders_by_user ON role_holders (user_id, role);

CREATE TABLE role_shifts (
    role    TEXT NOT NULL,
    user_id TEXT NOT NULL,
    start   BIGINT NOT NULL,
    "end"   BIGINT NOT NULL,
    PRIMARY KEY (role, user_id, start)
);
CREATE INDEX role_shifts_by_role ON role_shifts (role, "end");
CREATE INDEX role_shifts_by_user ON role_shifts (user_id, "end");

CREATE TABLE org_policies (
    org      TEXT PRIMARY KEY,
    interval BIGINT NOT NULL,
    final    BIGINT NOT NULL
);

-- Nullable or defaulted columns: no table rewrite.
ALTER TABLE bodies ADD COLUMN role TEXT;
ALTER TABLE bodies ADD COLUMN urgent BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE team_queue ADD COLUMN step INTEGER;

CREATE TABLE held_queue (
    body_id   BIGINT NOT NULL,
    step      INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    wrap      BYTEA NOT NULL,
    PRIMARY KEY (body_id, step, device_id)
);
CREATE INDEX held_queue_by_device ON held_queue (device_id);

-- due_escalations claims rows with SELECT ... FOR UPDATE SKIP LOCKED on the
-- partial index escalations_due: several hub nodes never perform one action twice.
CREATE TABLE escalations (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender_user   TEXT NOT NULL,
    message_id    BYTEA NOT NULL,
    ts            BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    interval      BIGINT NOT NULL,
    deadlines     TEXT NOT NULL,
    targets       TEXT NOT NULL,
    step_targets  TEXT NOT NULL,
    step          INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL DEFAULT 'open',
    next_remind   BIGINT,
    reminders     INTEGER NOT NULL DEFAULT 0,
    next_at       BIGINT,
    ack_user      TEXT,
    ack_device    TEXT,
    ack_at        BIGINT
);
CREATE UNIQUE INDEX escalations_by_message ON escalations (sender_user, message_id);
CREATE INDEX escalations_due ON escalations (next_at) WHERE next_at IS NOT NULL;
CREATE INDEX escalations_by_expiry ON escalations (expires_at);
-- open_escalations counts a sender's open ones (max_open_urgent_per_user).
CREATE INDEX escalations_open_by_sender ON escalations (sender_user, state);
