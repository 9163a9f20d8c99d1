"""Service accounts in both stores (SPEC §17.1): :class:`SQLiteServices`
and :class:`PostgresServices`, the methods
:class:`~miss_server.store.sqlite.SQLiteStore` and
:class:`~miss_server.store.postgres.PostgresStore` gain.

A service is a row of ``users`` with ``service`` true (migrations
sqlite/0008, postgres/0011), ``profession`` ``"service"`` and its ``svc:``
identifier as ``rpps`` (unique like an RPPS number). ``replies`` travels
with every read of the user (``rows.USER_COLUMNS``), so the hub checks it
on a ``send`` from the account it has already loaded. The cap of services
per organisation is counted in the transaction that would pass it.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from typing import TYPE_CHECKING

from .base import ServiceLimit, User
from .common import new_user_id
from .rows import USER_COLUMNS, to_user

if TYPE_CHECKING:
    import asyncpg

    from .postgres_pool import Database
    from .sqlite_threads import Threads

__all__ = [
    "SERVICE_IDENT",
    "SERVICE_PROFESSION",
    "PostgresServices",
    "SQLiteServices",
    "is_service_profession",
]

#: The profession stored, and attested, for every service (SPEC §17.1).
SERVICE_PROFESSION = "service"
#: A service's identifier (SPEC §17.1), for ``fullmatch``: ``svc:`` and 1 to 28 of [a-z0-9-].
SERVICE_IDENT = re.compile(r"svc:[a-z0-9-]{1,28}")


def is_service_profession(profession: str) -> bool:
    """Whether ``profession`` would read as ``service`` to someone: any case,
    spacing or Unicode compatibility form of it (``Service``, `` SERVICE``,
    full-width letters), which ``miss-admin invite`` refuses for a clinician."""
    folded = unicodedata.normalize("NFKC", profession).casefold()
    return "".join(folded.split()) == SERVICE_PROFESSION


def _new_service(name: str, ident: str, organisation: str, replies: bool, now: int) -> User:
    return User(
        new_user_id(), name, ident, SERVICE_PROFESSION, organisation, now, service=True, replies=replies
    )


class SQLiteServices:
    """The service methods of the embedded store (see :class:`~miss_server.store.base.Store`)."""

    _db: Threads

    async def create_service(
        self, name: str, ident: str, organisation: str, replies: bool, now: int, max_per_org: int
    ) -> User:
        user = _new_service(name, ident, organisation, replies, now)

        def run(conn: sqlite3.Connection) -> bool:
            taken = conn.execute(
                "SELECT count(*) FROM users WHERE service AND organisation = ?", (organisation,)
            ).fetchone()[0]
            if taken >= max_per_org:
                return False
            conn.execute(
                f"INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, ?, NULL, 1, ?)",
                (user.user_id, name, ident, user.profession, organisation, now, user.status, int(replies)),
            )
            return True

        # Refused here, not in the writer, so that it cannot fail the batch it rode in.
        if not await self._db.write(run):
            raise ServiceLimit(f"{organisation!r} has {max_per_org} services")
        return user

    async def list_services(self, organisation: str | None = None) -> list[User]:
        def run(conn: sqlite3.Connection) -> list[User]:
            rows = conn.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE service AND (?1 IS NULL OR organisation = ?1) "
                "ORDER BY organisation, name, user_id",
                (organisation,),
            ).fetchall()
            return [to_user(r) for r in rows]

        return await self._db.read(run)

    async def set_replies(self, user_id: str, replies: bool) -> None:
        n = await self._db.write(
            lambda c: (
                c.execute(
                    "UPDATE users SET replies = ? WHERE user_id = ? AND service", (int(replies), user_id)
                ).rowcount
            )
        )
        if not n:
            raise LookupError(f"no service {user_id!r}")


class PostgresServices:
    """The service methods of the PostgreSQL store (see :class:`~miss_server.store.base.Store`)."""

    _db: Database

    async def create_service(
        self, name: str, ident: str, organisation: str, replies: bool, now: int, max_per_org: int
    ) -> User:
        user = _new_service(name, ident, organisation, replies, now)

        async def run(conn: asyncpg.Connection) -> bool:
            # Two administrators at once: the organisation's row serialises
            # them, so that the count below stays true until the commit.
            await conn.execute("SELECT 1 FROM organisations WHERE name = $1 FOR UPDATE", organisation)
            taken = await conn.fetchval(
                "SELECT count(*) FROM users WHERE service AND organisation = $1", organisation
            )
            if taken >= max_per_org:
                return False
            await conn.execute(
                f"INSERT INTO users ({USER_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7, NULL, TRUE, $8)",
                user.user_id,
                name,
                ident,
                user.profession,
                organisation,
                now,
                user.status,
                replies,
            )
            return True

        if not await self._db.write(run):
            raise ServiceLimit(f"{organisation!r} has {max_per_org} services")
        return user

    async def list_services(self, organisation: str | None = None) -> list[User]:
        # COLLATE "C": code point order, as SQLite sorts (list_users).
        rows = await self._db.retryable(
            lambda c: c.fetch(
                f"SELECT {USER_COLUMNS} FROM users WHERE service AND ($1::text IS NULL OR organisation = $1) "
                'ORDER BY organisation COLLATE "C", name COLLATE "C", user_id',
                organisation,
            )
        )
        return [to_user(r) for r in rows]

    async def set_replies(self, user_id: str, replies: bool) -> None:
        status = await self._db.write(
            lambda c: c.execute(
                "UPDATE users SET replies = $1 WHERE user_id = $2 AND service", replies, user_id
            )
        )
        if not int(status.split()[-1]):
            raise LookupError(f"no service {user_id!r}")
