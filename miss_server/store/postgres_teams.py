"""PostgreSQL's care teams and team messages (SPEC §13), for
:class:`~miss_server.store.postgres.PostgresStore`; the same tables and rules
as the embedded store's ``sqlite_teams.py`` (read its module doc).

Team messages do not ride the group commit of 1:1 messages
(``postgres_batch.py``): each is one short transaction of its own. Their
rows take seqs from the queue's identity sequence (the column default of
``team_queue.seq``, migration 0008), so a device's rows of both tables
share one seq space; acks of team rows go through ``miss_group_commit``,
which deletes them and queues their receipts like any message's.
"""

from __future__ import annotations

import asyncpg

from .base import AcceptResult, Kind, NewTeamMessage, Queued, TeamAppend, TeamInfo, TeamRecordRow
from .sqlite_teams import RECORD_OVERHEAD

__all__ = [
    "EXPIRE_TEAM",
    "PENDING_MANY",
    "accept_team",
    "append_team_record",
    "list_teams",
    "recall",
    "stored_bytes",
    "team_info",
    "team_records",
    "to_queued_row",
    "user_teams",
]

#: The pages of the drains asked in one turn (batched_reads.py), in one
#: statement: for each (device, after seq, now, limit) of the arrays $1 to
#: $4, that device's unexpired rows after its seq, queue and team rows in
#: seq order, at most its limit. Columns: the page's index in the arrays
#: (from 1), then QUEUED_COLUMNS, body, team, role, urgent, step (SPEC §14).
PENDING_MANY = """
SELECT k.i, p.* FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[])
    WITH ORDINALITY AS k(device_id, after_seq, now, lim, i)
CROSS JOIN LATERAL (
SELECT seq, device_id, kind, message_id, peer_user, peer_device, ts, payload, NULL::bytea, NULL::text,
       NULL::text, FALSE, NULL::int
FROM queue WHERE device_id = k.device_id AND seq > k.after_seq AND expires_at > k.now
UNION ALL
SELECT t.seq, t.device_id, 4::smallint, b.message_id, b.sender_user, b.sender_device, b.ts, t.wrap,
       b.body, b.team, b.role, b.urgent, t.step
FROM team_queue t JOIN bodies b ON b.id = t.body_id
WHERE t.device_id = k.device_id AND t.seq > k.after_seq AND b.expires_at > k.now
ORDER BY 1 LIMIT k.lim) p
ORDER BY k.i, p.seq"""

#: Expiry of team messages, in statements of at most $2 rows each ($1 now):
#: expired bodies' rows, expired bodies, then bodies no row refers to
#: (neither queued nor held: ``postgres_oncall.EXPIRE_ONCALL`` runs before).
EXPIRE_TEAM = {
    "team_queue": "DELETE FROM team_queue WHERE seq = ANY(ARRAY("
    "SELECT t.seq FROM team_queue t JOIN bodies b ON b.id = t.body_id WHERE b.expires_at <= $1 LIMIT $2 "
    "FOR UPDATE OF t SKIP LOCKED))",
    "bodies": "DELETE FROM bodies WHERE id = ANY(ARRAY("
    "SELECT b.id FROM bodies b WHERE b.expires_at <= $1 "
    "OR (NOT EXISTS (SELECT 1 FROM team_queue t WHERE t.body_id = b.id) "
    "AND NOT EXISTS (SELECT 1 FROM held_queue h WHERE h.body_id = b.id)) LIMIT $2 FOR UPDATE SKIP LOCKED))",
}


def to_queued_row(r: asyncpg.Record) -> Queued:
    """A row of :data:`PENDING_MANY`, after its page index."""
    return Queued(r[1], r[2], Kind(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13])


async def accept_team(conn: asyncpg.Connection, m: NewTeamMessage) -> AcceptResult:
    inserted = await conn.fetchval(
        "INSERT INTO accepted_ids (sender_user, message_id, expires_at) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        m.sender_user,
        m.message_id,
        m.expires_at,
    )
    if inserted is None:
        return AcceptResult(duplicate=True, queued=[])
    body_id = await conn.fetchval(
        "INSERT INTO bodies (sender_user, message_id, sender_device, team, ts, expires_at, body, role, "
        "urgent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        m.sender_user,
        m.message_id,
        m.sender_device,
        m.team,
        m.ts,
        m.expires_at,
        m.body,
        m.role,
        m.urgent,
    )
    devices = list(m.wraps)
    rows = await conn.fetch(
        "INSERT INTO team_queue (device_id, body_id, wrap) "
        "SELECT d, $2, w FROM unnest($1::text[], $3::bytea[]) WITH ORDINALITY AS r (d, w, ord) ORDER BY ord "
        "RETURNING seq, device_id",
        devices,
        body_id,
        [m.wraps[d] for d in devices],
    )
    return AcceptResult(
        duplicate=False, queued=sorted((m.queued(r[0], r[1]) for r in rows), key=lambda q: q.seq)
    )


async def recall(conn: asyncpg.Connection, sender_user: str, message_id: bytes) -> int:
    n = int(
        (
            await conn.execute(
                "DELETE FROM queue WHERE kind = 1 AND message_id = $1 AND peer_user = $2",
                message_id,
                sender_user,
            )
        ).split()[-1]
    )
    body_id = await conn.fetchval(
        "DELETE FROM bodies WHERE sender_user = $1 AND message_id = $2 RETURNING id", sender_user, message_id
    )
    if body_id is not None:
        n += int((await conn.execute("DELETE FROM team_queue WHERE body_id = $1", body_id)).split()[-1])
    return n


async def stored_bytes(conn: asyncpg.Connection, sender_user: str, message_id: bytes) -> int:
    """See :meth:`Store.stored_bytes <.base.Store.stored_bytes>` (octet_length
    as SQLite's length of a blob)."""
    total = await conn.fetchval(
        "SELECT coalesce(sum(8 + octet_length(sender_user) + octet_length(message_id)), 0) FROM accepted_ids "
        "WHERE sender_user = $1 AND message_id = $2",
        sender_user,
        message_id,
    )
    body = await conn.fetchrow(
        "SELECT id, 8 + octet_length(sender_user) + octet_length(message_id) + octet_length(sender_device) "
        "+ octet_length(team) + 8 + 8 + octet_length(body) FROM bodies "
        "WHERE sender_user = $1 AND message_id = $2",
        sender_user,
        message_id,
    )
    if body is not None:
        total += body[1]
        total += await conn.fetchval(
            "SELECT coalesce(sum(8 + octet_length(device_id) + 8 + octet_length(wrap)), 0) "
            "FROM team_queue WHERE body_id = $1",
            body[0],
        )
        total += await conn.fetchval(  # an urgent message's backups' rows, held (SPEC §14)
            "SELECT coalesce(sum(8 + 8 + octet_length(device_id) + octet_length(wrap)), 0) FROM held_queue "
            "WHERE body_id = $1",
            body[0],
        )
    total += await conn.fetchval(
        "SELECT coalesce(sum(8 + octet_length(device_id) + 2 + octet_length(message_id) "
        "+ octet_length(peer_user) "
        "+ octet_length(peer_device) + octet_length(recipient_user) + 8 + 8 + octet_length(payload)), 0) "
        "FROM queue WHERE kind = 1 AND message_id = $1 AND peer_user = $2",
        message_id,
        sender_user,
    )
    return int(total)


async def append_team_record(
    conn: asyncpg.Connection, state: TeamInfo, record: TeamRecordRow, joining: tuple[str, ...], max_teams: int
) -> TeamAppend:
    # The team's row lock (or, for a creation, the primary key) serialises
    # changes of one team across hub nodes; the counts below may race with
    # another team's change by a few, which the caps tolerate.
    current = await conn.fetchval("SELECT seq FROM teams WHERE team = $1 FOR UPDATE", state.team)
    if (current is None and record.seq != 0) or (current is not None and current != record.seq):
        return TeamAppend.CONFLICT
    for user in joining:
        if await conn.fetchval("SELECT count(*) FROM team_members WHERE user_id = $1", user) >= max_teams:
            return TeamAppend.FULL
    if record.seq == 0 and state.creator != "authority":
        if await conn.fetchval("SELECT count(*) FROM teams WHERE creator = $1", state.creator) >= max_teams:
            return TeamAppend.FULL
    if record.seq == 0:
        inserted = await conn.fetchval(
            "INSERT INTO teams (team, name, org, lifespan, creator, seq, head, closed) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING 1",
            state.team,
            state.name,
            state.org,
            state.lifespan,
            state.creator,
            state.seq,
            state.head,
            state.closed,
        )
        if inserted is None:  # created meanwhile by another node
            return TeamAppend.CONFLICT
    else:
        await conn.execute(
            "UPDATE teams SET seq = $2, head = $3, closed = $4 WHERE team = $1",
            state.team,
            state.seq,
            state.head,
            state.closed,
        )
    await conn.execute(
        "INSERT INTO team_records (team, seq, rec, sig, hash) VALUES ($1, $2, $3, $4, $5)",
        state.team,
        record.seq,
        record.rec,
        record.sig,
        record.hash,
    )
    before = {
        r[0]: r[1]
        for r in await conn.fetch("SELECT user_id, admin FROM team_members WHERE team = $1", state.team)
    }
    gone = sorted(before.keys() - state.members)
    if gone:
        await conn.execute(
            "DELETE FROM team_members WHERE team = $1 AND user_id = ANY($2::text[])", state.team, gone
        )
    changed = sorted(u for u in state.members if before.get(u) != (u in state.admins))
    if changed:
        await conn.execute(
            "INSERT INTO team_members (team, user_id, admin) "
            "SELECT $1, u, a FROM unnest($2::text[], $3::bool[]) "
            "AS x (u, a) ON CONFLICT (team, user_id) DO UPDATE SET admin = excluded.admin",
            state.team,
            changed,
            [u in state.admins for u in changed],
        )
    return TeamAppend.OK


_TEAM_COLUMNS = "team, name, org, lifespan, creator, seq, head, closed"


async def _info(conn: asyncpg.Connection, row: asyncpg.Record) -> TeamInfo:
    members = await conn.fetch("SELECT user_id, admin FROM team_members WHERE team = $1", row[0])
    return TeamInfo(
        row[0],
        row[1],
        row[2],
        row[3],
        row[5],
        bytes(row[6]),
        bool(row[7]),
        frozenset(m[0] for m in members),
        frozenset(m[0] for m in members if m[1]),
        row[4],
    )


async def team_info(conn: asyncpg.Connection, team: str) -> TeamInfo | None:
    row = await conn.fetchrow(f"SELECT {_TEAM_COLUMNS} FROM teams WHERE team = $1", team)
    return None if row is None else await _info(conn, row)


async def list_teams(conn: asyncpg.Connection) -> list[TeamInfo]:
    rows = await conn.fetch(f'SELECT {_TEAM_COLUMNS} FROM teams ORDER BY name COLLATE "C", team COLLATE "C"')
    return [await _info(conn, r) for r in rows]


async def team_records(
    conn: asyncpg.Connection, team: str, from_seq: int, max_bytes: int
) -> tuple[list[TeamRecordRow], bool]:
    out: list[TeamRecordRow] = []
    size = 0
    for seq, rec, sig, digest in await conn.fetch(
        "SELECT seq, rec, sig, hash FROM team_records WHERE team = $1 AND seq >= $2 ORDER BY seq",
        team,
        from_seq,
    ):
        cost = len(rec) + len(sig) + RECORD_OVERHEAD
        if out and size + cost > max_bytes:
            return out, True
        out.append(TeamRecordRow(seq, bytes(rec), bytes(sig), bytes(digest)))
        size += cost
    return out, False


async def user_teams(conn: asyncpg.Connection, user_id: str, limit: int) -> list[tuple[str, int, bytes]]:
    rows = await conn.fetch(
        "SELECT t.team, t.seq, t.head FROM team_members m JOIN teams t ON t.team = m.team "
        'WHERE m.user_id = $1 ORDER BY t.team COLLATE "C" LIMIT $2',
        user_id,
        limit,
    )
    return [(r[0], r[1], bytes(r[2])) for r in rows]
