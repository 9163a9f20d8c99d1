"""The embedded store's care teams and team messages (SPEC §13): the jobs
that :class:`~miss_server.store.sqlite.SQLiteStore` hands to its threads.

A team message is one ``bodies`` row (the sealed body and what the whole
message shares: sender, team, ts, expiry) and one lean ``team_queue`` row
per target device (seq, device, body id, 72-byte wrap). Team rows take
their seqs from the ``queue`` table's AUTOINCREMENT counter
(``sqlite_sequence``), so that a device's team rows and its other rows
share one seq space: only the writer thread inserts into either, in its
``BEGIN IMMEDIATE`` transactions, so a range taken here is never handed
out twice. Rows expire with their body; the expiry sweep deletes expired
bodies, their rows, and bodies no row refers to any more (all acked).
"""

from __future__ import annotations

import json
import sqlite3

from .base import AcceptResult, Kind, NewTeamMessage, Queued, TeamAppend, TeamInfo, TeamRecordRow

__all__ = [
    "accept_team",
    "ack_team_rows",
    "append_team_record",
    "expire_team_rows",
    "list_teams",
    "pending_union",
    "recall",
    "stored_bytes",
    "take_seqs",
    "team_info",
    "team_records",
    "user_teams",
]

#: What a record costs in a ``team_chain_ok`` frame besides its ``rec`` and
#: ``sig`` bytes (its map and bin headers), counted against a page's bytes.
RECORD_OVERHEAD = 16

#: A device's rows of both tables in seq order (pending()): ?1 device,
#: ?2 after seq, ?3 now, ?4 limit. Columns: QUEUED_COLUMNS, body, team,
#: role, urgent, step (SPEC §14).
pending_union = """
SELECT seq, device_id, kind, message_id, peer_user, peer_device, ts, payload, NULL, NULL, NULL, 0, NULL
FROM queue WHERE device_id = ?1 AND seq > ?2 AND expires_at > ?3
UNION ALL
SELECT t.seq, t.device_id, 4, b.message_id, b.sender_user, b.sender_device, b.ts, t.wrap, b.body, b.team,
       b.role, b.urgent, t.step
FROM team_queue t JOIN bodies b ON b.id = t.body_id
WHERE t.device_id = ?1 AND t.seq > ?2 AND b.expires_at > ?3
ORDER BY 1 LIMIT ?4"""


def take_seqs(conn: sqlite3.Connection, n: int) -> int:
    """Reserve ``n`` seqs of the queue's counter; returns the first."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
    top = conn.execute("SELECT max(seq) FROM queue").fetchone()[0] or 0
    last = max(top, row[0] if row is not None else 0)
    if row is None:
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('queue', ?)", (last + n,))
    else:
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'queue'", (last + n,))
    return last + 1


def accept_team(conn: sqlite3.Connection, m: NewTeamMessage) -> AcceptResult:
    inserted = conn.execute(
        "INSERT OR IGNORE INTO accepted_ids (sender_user, message_id, expires_at) VALUES (?, ?, ?)",
        (m.sender_user, m.message_id, m.expires_at),
    ).rowcount
    if not inserted:
        return AcceptResult(duplicate=True, queued=[])
    body_id = conn.execute(
        "INSERT INTO bodies (sender_user, message_id, sender_device, team, ts, expires_at, body, role, "
        "urgent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            m.sender_user,
            m.message_id,
            m.sender_device,
            m.team,
            m.ts,
            m.expires_at,
            m.body,
            m.role,
            int(m.urgent),
        ),
    ).lastrowid
    first = take_seqs(conn, len(m.wraps))
    rows = [(first + i, device_id, body_id, wrap) for i, (device_id, wrap) in enumerate(m.wraps.items())]
    conn.executemany("INSERT INTO team_queue (seq, device_id, body_id, wrap) VALUES (?, ?, ?, ?)", rows)
    return AcceptResult(duplicate=False, queued=[m.queued(seq, device_id) for seq, device_id, _, _ in rows])


def ack_team_rows(
    conn: sqlite3.Connection, device_id: str, seqs: list[int]
) -> list[tuple[int, int, bytes, str, str]]:
    """Delete the device's team rows among ``seqs``; each as an acked row of
    ``_ack`` (sqlite.py) reads it: ``(seq, kind, message_id, sender, recipient)``
    with the recipient left empty (the caller puts the acking user)."""
    gone = conn.execute(
        "DELETE FROM team_queue WHERE device_id = ? AND seq IN (SELECT value FROM json_each(?)) "
        "RETURNING seq, body_id",
        (device_id, json.dumps(seqs)),
    ).fetchall()
    out = []
    for seq, body_id in gone:
        body = conn.execute("SELECT message_id, sender_user FROM bodies WHERE id = ?", (body_id,)).fetchone()
        if body is not None:
            out.append((seq, int(Kind.MESSAGE), body[0], body[1], ""))
    return out


def expire_team_rows(conn: sqlite3.Connection, now: int) -> int:
    """Delete expired bodies with their rows, and bodies no row refers to
    (neither a queued nor a held one, SPEC §14); the number of rows."""
    n = conn.execute(
        "DELETE FROM team_queue WHERE body_id IN (SELECT id FROM bodies WHERE expires_at <= ?)", (now,)
    ).rowcount
    conn.execute("DELETE FROM bodies WHERE expires_at <= ?", (now,))
    conn.execute(
        "DELETE FROM bodies WHERE NOT EXISTS (SELECT 1 FROM team_queue t WHERE t.body_id = bodies.id) "
        "AND NOT EXISTS (SELECT 1 FROM held_queue h WHERE h.body_id = bodies.id)"
    )
    return int(n)


def recall(conn: sqlite3.Connection, sender_user: str, message_id: bytes) -> int:
    n = conn.execute(
        "DELETE FROM queue WHERE kind = 1 AND message_id = ? AND peer_user = ?", (message_id, sender_user)
    ).rowcount
    body = conn.execute(
        "SELECT id FROM bodies WHERE sender_user = ? AND message_id = ?", (sender_user, message_id)
    ).fetchone()
    if body is not None:
        n += conn.execute("DELETE FROM team_queue WHERE body_id = ?", (body[0],)).rowcount
        conn.execute("DELETE FROM bodies WHERE id = ?", (body[0],))
    return int(n)


def stored_bytes(conn: sqlite3.Connection, sender_user: str, message_id: bytes) -> int:
    """See :meth:`Store.stored_bytes <.base.Store.stored_bytes>`."""
    total = 0
    row = conn.execute(
        "SELECT 8 + length(sender_user) + length(message_id) FROM accepted_ids "
        "WHERE sender_user = ? AND message_id = ?",
        (sender_user, message_id),
    ).fetchone()
    total += row[0] if row else 0
    body = conn.execute(
        "SELECT id, 8 + length(sender_user) + length(message_id) + length(sender_device) + length(team) "
        "+ 8 + 8 + length(body) FROM bodies WHERE sender_user = ? AND message_id = ?",
        (sender_user, message_id),
    ).fetchone()
    if body is not None:
        total += body[1]
        total += conn.execute(
            "SELECT coalesce(sum(8 + length(device_id) + 8 + length(wrap)), 0) "
            "FROM team_queue WHERE body_id = ?",
            (body[0],),
        ).fetchone()[0]
        total += conn.execute(  # an urgent message's backups' rows, held (SPEC §14)
            "SELECT coalesce(sum(8 + 8 + length(device_id) + length(wrap)), 0) FROM held_queue "
            "WHERE body_id = ?",
            (body[0],),
        ).fetchone()[0]
    total += conn.execute(
        "SELECT coalesce(sum(8 + length(device_id) + 2 + length(message_id) + length(peer_user) "
        "+ length(peer_device) + length(recipient_user) + 8 + 8 + length(payload)), 0) "
        "FROM queue WHERE kind = 1 AND message_id = ? AND peer_user = ?",
        (message_id, sender_user),
    ).fetchone()[0]
    return int(total)


# --- teams ---------------------------------------------------------------------------


def append_team_record(
    conn: sqlite3.Connection, state: TeamInfo, record: TeamRecordRow, joining: tuple[str, ...], max_teams: int
) -> TeamAppend:
    current = conn.execute("SELECT seq FROM teams WHERE team = ?", (state.team,)).fetchone()
    if (current is None and record.seq != 0) or (current is not None and current[0] != record.seq):
        return TeamAppend.CONFLICT
    for user in joining:
        n = conn.execute("SELECT count(*) FROM team_members WHERE user_id = ?", (user,)).fetchone()[0]
        if n >= max_teams:
            return TeamAppend.FULL
    if record.seq == 0 and state.creator != "authority":
        n = conn.execute("SELECT count(*) FROM teams WHERE creator = ?", (state.creator,)).fetchone()[0]
        if n >= max_teams:
            return TeamAppend.FULL
    conn.execute(
        "INSERT INTO team_records (team, seq, rec, sig, hash) VALUES (?, ?, ?, ?, ?)",
        (state.team, record.seq, record.rec, record.sig, record.hash),
    )
    conn.execute(
        "INSERT INTO teams (team, name, org, lifespan, creator, seq, head, closed) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (team) DO UPDATE SET seq = excluded.seq, head = excluded.head, closed = excluded.closed",
        (
            state.team,
            state.name,
            state.org,
            state.lifespan,
            state.creator,
            state.seq,
            state.head,
            int(state.closed),
        ),
    )
    before = dict(
        conn.execute("SELECT user_id, admin FROM team_members WHERE team = ?", (state.team,)).fetchall()
    )
    for user in before.keys() - state.members:
        conn.execute("DELETE FROM team_members WHERE team = ? AND user_id = ?", (state.team, user))
    for user in state.members:
        admin = int(user in state.admins)
        if before.get(user) != admin:
            conn.execute(
                "INSERT INTO team_members (team, user_id, admin) VALUES (?, ?, ?) "
                "ON CONFLICT (team, user_id) DO UPDATE SET admin = excluded.admin",
                (state.team, user, admin),
            )
    return TeamAppend.OK


def _info(conn: sqlite3.Connection, row: tuple) -> TeamInfo:  # type: ignore[type-arg]
    members = conn.execute("SELECT user_id, admin FROM team_members WHERE team = ?", (row[0],)).fetchall()
    return TeamInfo(
        row[0],
        row[1],
        row[2],
        row[3],
        row[5],
        row[6],
        bool(row[7]),
        frozenset(u for u, _ in members),
        frozenset(u for u, a in members if a),
        row[4],
    )


_TEAM_COLUMNS = "team, name, org, lifespan, creator, seq, head, closed"


def team_info(conn: sqlite3.Connection, team: str) -> TeamInfo | None:
    row = conn.execute(f"SELECT {_TEAM_COLUMNS} FROM teams WHERE team = ?", (team,)).fetchone()
    return None if row is None else _info(conn, row)


def list_teams(conn: sqlite3.Connection) -> list[TeamInfo]:
    rows = conn.execute(f"SELECT {_TEAM_COLUMNS} FROM teams ORDER BY name, team").fetchall()
    return [_info(conn, r) for r in rows]


def team_records(
    conn: sqlite3.Connection, team: str, from_seq: int, max_bytes: int
) -> tuple[list[TeamRecordRow], bool]:
    out: list[TeamRecordRow] = []
    size = 0
    for seq, rec, sig, digest in conn.execute(
        "SELECT seq, rec, sig, hash FROM team_records WHERE team = ? AND seq >= ? ORDER BY seq",
        (team, from_seq),
    ):
        cost = len(rec) + len(sig) + RECORD_OVERHEAD
        if out and size + cost > max_bytes:
            return out, True
        out.append(TeamRecordRow(seq, rec, sig, digest))
        size += cost
    return out, False


def user_teams(conn: sqlite3.Connection, user_id: str, limit: int) -> list[tuple[str, int, bytes]]:
    return [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT t.team, t.seq, t.head FROM team_members m JOIN teams t ON t.team = m.team "
            "WHERE m.user_id = ? ORDER BY t.team LIMIT ?",
            (user_id, limit),
        )
    ]


def to_queued_row(r: tuple) -> Queued:  # type: ignore[type-arg]
    """A row of :data:`pending_union`."""
    return Queued(r[0], r[1], Kind(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], bool(r[11]), r[12])
