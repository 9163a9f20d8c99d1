-- MiSS schema v6 (SQLite): care teams, sealed bodies stored once, recall (SPEC §13).
-- Applied by miss_server.store.sqlite.SQLiteStore.migrate in one transaction.

-- A team's current state, derived from its verified chain (the hub checks
-- each record before it is stored): seq = number of records, head = hash of
-- the last. name, org and lifespan come from the creation record; creator
-- is its `by` (a user id, or 'authority'), for max_teams_per_user.
CREATE TABLE teams (
    team     TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    org      TEXT NOT NULL,
    lifespan INTEGER,
    creator  TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    head     BLOB NOT NULL,
    closed   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX teams_by_creator ON teams (creator);

-- The chain itself, as signed: clients fetch it and verify it whole.
CREATE TABLE team_records (
    team TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    rec  BLOB NOT NULL,
    sig  BLOB NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (team, seq)
) WITHOUT ROWID;

-- Current members (and admins): what the hub routes by.
CREATE TABLE team_members (
    team    TEXT NOT NULL,
    user_id TEXT NOT NULL,
    admin   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (team, user_id)
) WITHOUT ROWID;
CREATE INDEX team_members_by_user ON team_members (user_id, team);

-- A team message's sealed body, once for all its devices; message-level
-- facts live here, so that each device's row stays lean. Deleted when it
-- expires, or by the expiry sweep once no row refers to it.
CREATE TABLE bodies (
    id            INTEGER PRIMARY KEY,
    sender_user   TEXT NOT NULL,
    message_id    BLOB NOT NULL,
    sender_device TEXT NOT NULL,
    team          TEXT NOT NULL,
    ts            INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    body          BLOB NOT NULL
);
CREATE UNIQUE INDEX bodies_by_message ON bodies (sender_user, message_id);
CREATE INDEX bodies_by_expiry ON bodies (expires_at);

-- One row per target device of a team message: its key wrap and its body.
-- seq comes from the queue's own AUTOINCREMENT counter (sqlite.py takes a
-- range of it), so a device's team rows and other rows share one seq space.
-- No expires_at: a row expires with its body.
CREATE TABLE team_queue (
    seq       INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    body_id   INTEGER NOT NULL,
    wrap      BLOB NOT NULL
);
CREATE INDEX team_queue_by_device ON team_queue (device_id, seq);
CREATE INDEX team_queue_by_body ON team_queue (body_id);

-- recall() finds a 1:1 message's undelivered envelopes by id.
CREATE INDEX queue_by_message ON queue (message_id) WHERE kind = 1;
