"""PostgresBlobStore: blobs in the main store's PostgreSQL schema (SPEC §16).

Theory of operation
-------------------
Tables ``blobs``, ``blob_parts``, ``blob_access``, ``blob_tokens`` and
``blob_days`` come from the main store's migration
``store/migrations/postgres/0010_blobs.sql`` (read its comments): this store
never creates tables, and :meth:`open` refuses a schema that is not the
code's version, as the main store does. It has a small pool of its own
(:class:`~miss_server.store.postgres_pool.Database`, same DSN and
``?schema=``), so uploads never take the connections sends and
authentications wait for.

The bytes are rows of ``blob_parts``, one per accepted piece (at most
PIECE_MAX bytes, keyed by offset). :meth:`put` moves ``have`` forward with a
compare-and-set on the offset and inserts the piece in the same
transaction, so two pieces racing for one offset cannot both land. A
:meth:`read` of ``[start, start + length)`` fetches only the rows that
overlap it (an index range on ``(blob, off)`` from ``start - PIECE_MAX``),
never the whole blob. Deleting a blob cascades to its parts, access rows and
tokens.

Quotas: the daily counters are one row per device and day, upserted first
in :meth:`begin`'s transaction, which locks the device's row; an advisory
transaction lock on the user serialises the user's begins, so the stored
bytes sum (an index-only scan of ``blobs_by_owner``) cannot be overshot by
two devices at once.

Failures: every backend failure becomes :class:`BlobStoreUnavailable`; a
connection lost before COMMIT is retried on a fresh one (the pool's rule).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import asyncpg

from miss_server.store.base import StoreUnavailable
from miss_server.store.postgres_pool import Database
from protocol.attachments import PIECE_MAX

from .base import (
    BlobNotComplete,
    BlobOffsetMismatch,
    BlobStoreUnavailable,
    Grant,
    Quotas,
    UnknownBlob,
    Upload,
)
from .rules import (
    EXPIRE_BATCH,
    MAX_TOKENS_PER_DEVICE,
    check_piece,
    check_quotas,
    check_range,
    new_blob_id,
    utc_day,
    valid_blob_id,
)

__all__ = ["PostgresBlobStore"]

#: The first key of the advisory locks on users' begins (the second is the user's hash).
_LOCK_CLASS = 0x6D62  # "mb"


class PostgresBlobStore:
    """Blobs in PostgreSQL at ``dsn`` (``postgresql://…``, optionally ``?schema=NAME``), module doc."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_min: int = 1,
        pool_max: int = 8,
        command_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        application_name: str = "miss-blobs",
    ) -> None:
        self._db = Database(
            dsn,
            None,
            pool_min,
            pool_max,
            command_timeout=command_timeout,
            connect_timeout=connect_timeout,
            application_name=application_name,
        )

    async def open(self) -> None:
        """Open the pool on a schema of exactly the code's version (SchemaMismatch otherwise)."""
        try:
            await self._db.open()
        except StoreUnavailable as exc:
            raise BlobStoreUnavailable(str(exc)) from exc

    async def close(self) -> None:
        await self._db.close()

    async def _write(self, fn: Any) -> Any:
        try:
            return await self._db.write(fn)
        except StoreUnavailable as exc:
            raise BlobStoreUnavailable(str(exc)) from exc

    async def _read(self, fn: Any) -> Any:
        try:
            return await self._db.retryable(fn)
        except StoreUnavailable as exc:
            raise BlobStoreUnavailable(str(exc)) from exc

    # --- uploads ------------------------------------------------------------------

    async def begin(self, user: str, device: str, size: int, now: int, quotas: Quotas) -> Upload:
        blob = new_blob_id()
        day = utc_day(now)

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_CLASS, user)
            counted = await conn.fetchrow(
                "SELECT bytes, count FROM blob_days WHERE device = $1 AND day = $2", device, day
            )
            open_uploads = await conn.fetchval(
                "SELECT count(*) FROM blobs WHERE device = $1 AND NOT complete", device
            )
            stored = await conn.fetchval("SELECT coalesce(sum(size), 0) FROM blobs WHERE owner = $1", user)
            check_quotas(
                quotas,
                size,
                now,
                day_bytes=int(counted["bytes"]) if counted else 0,
                day_count=int(counted["count"]) if counted else 0,
                open_uploads=int(open_uploads),
                stored_bytes=int(stored),
            )
            await conn.execute(
                "INSERT INTO blob_days (device, day, bytes, count) VALUES ($1, $2, $3, 1) "
                "ON CONFLICT (device, day) DO UPDATE "
                "SET bytes = blob_days.bytes + excluded.bytes, count = blob_days.count + 1",
                device,
                day,
                size,
            )
            await conn.execute(
                "INSERT INTO blobs (blob, owner, device, size, begun_at) VALUES ($1, $2, $3, $4, $5)",
                blob,
                user,
                device,
                size,
                now,
            )

        await self._write(work)
        return Upload(blob, size, 0, False)

    async def resume(self, device: str, blob: str) -> Upload:
        valid_blob_id(blob)

        async def work(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT size, have, complete FROM blobs WHERE blob = $1 AND device = $2", blob, device
            )

        row = await self._read(work)
        if row is None:
            raise UnknownBlob("unknown blob")
        return Upload(blob, int(row["size"]), int(row["have"]), bool(row["complete"]))

    async def put(self, device: str, blob: str, off: int, data: bytes) -> Upload:
        valid_blob_id(blob)
        check_piece(off, data)
        end = off + len(data)

        async def work(conn: asyncpg.Connection) -> Upload:
            row = await conn.fetchrow(
                "UPDATE blobs SET have = $4 WHERE blob = $1 AND device = $2 AND have = $3 AND $4 <= size "
                "RETURNING size",
                blob,
                device,
                off,
                end,
            )
            if row is None:
                state = await conn.fetchrow(
                    "SELECT have FROM blobs WHERE blob = $1 AND device = $2", blob, device
                )
                if state is None:
                    raise UnknownBlob("unknown blob")
                raise BlobOffsetMismatch(int(state["have"]))
            await conn.execute(
                "INSERT INTO blob_parts (blob, off, data) VALUES ($1, $2, $3)", blob, off, data
            )
            return Upload(blob, int(row["size"]), end, False)

        result: Upload = await self._write(work)
        return result

    async def complete(self, device: str, blob: str, now: int) -> Upload:
        valid_blob_id(blob)

        async def work(conn: asyncpg.Connection) -> Upload:
            row = await conn.fetchrow(
                "UPDATE blobs SET complete = TRUE WHERE blob = $1 AND device = $2 AND have = size "
                "RETURNING size",
                blob,
                device,
            )
            if row is not None:
                return Upload(blob, int(row["size"]), int(row["size"]), True)
            if await conn.fetchval("SELECT 1 FROM blobs WHERE blob = $1 AND device = $2", blob, device):
                raise BlobNotComplete("blob incomplete")
            raise UnknownBlob("unknown blob")

        result: Upload = await self._write(work)
        return result

    # --- messages and downloads -------------------------------------------------------

    async def link(
        self,
        user: str,
        message_id: bytes,
        blobs: Sequence[str],
        devices: Collection[str],
        expires_at: int,
    ) -> None:
        ids = [valid_blob_id(b) for b in blobs]
        mid = bytes(message_id)
        others = sorted(set(devices))

        async def work(conn: asyncpg.Connection) -> None:
            # Lock the rows, so a recall or expiry cannot slip between the check and the update.
            rows = await conn.fetch(
                "SELECT blob FROM blobs WHERE blob = ANY($1::text[]) AND owner = $2 AND complete "
                "AND (message_id IS NULL OR message_id = $3) FOR UPDATE",
                ids,
                user,
                mid,
            )
            if len(rows) != len(set(ids)):
                raise UnknownBlob("unknown blob")
            await conn.execute(
                "UPDATE blobs SET message_id = $2, expires_at = greatest(coalesce(expires_at, $3), $3) "
                "WHERE blob = ANY($1::text[])",
                ids,
                mid,
                expires_at,
            )
            await conn.execute(
                "INSERT INTO blob_access (blob, device) "
                "SELECT b, d FROM unnest($1::text[]) AS b, unnest($2::text[]) AS d ON CONFLICT DO NOTHING",
                ids,
                others,
            )

        await self._write(work)

    async def grant(
        self, user: str, device: str, blob: str, token_hash: bytes, expires_at: int, now: int
    ) -> Grant:
        valid_blob_id(blob)

        async def work(conn: asyncpg.Connection) -> Grant:
            size = await conn.fetchval(
                "SELECT size FROM blobs b WHERE blob = $1 AND complete AND (owner = $2 OR EXISTS "
                "(SELECT 1 FROM blob_access a WHERE a.blob = b.blob AND a.device = $3))",
                blob,
                user,
                device,
            )
            if size is None:
                raise UnknownBlob("unknown blob")
            await conn.execute(
                "INSERT INTO blob_tokens (token_hash, blob, device, expires_at) VALUES ($1, $2, $3, $4)",
                bytes(token_hash),
                blob,
                device,
                expires_at,
            )
            await conn.execute(
                "DELETE FROM blob_tokens WHERE token_hash IN (SELECT token_hash FROM blob_tokens "
                "WHERE device = $1 ORDER BY expires_at DESC OFFSET $2)",
                device,
                MAX_TOKENS_PER_DEVICE,
            )
            return Grant(blob, int(size), expires_at)

        result: Grant = await self._write(work)
        return result

    async def resolve(self, token_hash: bytes, now: int) -> Grant | None:
        async def work(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT t.blob, b.size, t.expires_at FROM blob_tokens t JOIN blobs b ON b.blob = t.blob "
                "WHERE t.token_hash = $1 AND t.expires_at > $2 AND b.complete",
                bytes(token_hash),
                now,
            )

        row = await self._read(work)
        return None if row is None else Grant(row["blob"], int(row["size"]), int(row["expires_at"]))

    async def read(self, blob: str, start: int, length: int) -> bytes:
        valid_blob_id(blob)
        check_range(start, length)

        async def work(conn: asyncpg.Connection) -> tuple[int | None, list[asyncpg.Record]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                size = await conn.fetchval("SELECT size FROM blobs WHERE blob = $1 AND complete", blob)
                if size is None:
                    return None, []
                end = min(start + length, int(size))
                if end <= start:
                    return int(size), []
                parts = await conn.fetch(
                    "SELECT off, data FROM blob_parts WHERE blob = $1 AND off > $2 AND off < $3 ORDER BY off",
                    blob,
                    start - PIECE_MAX,
                    end,
                )
                return int(size), parts

        size, parts = await self._read(work)
        if size is None:
            raise UnknownBlob("unknown blob")
        end = min(start + length, size)
        out = bytearray()
        pos = start
        for part in parts:
            off, data = int(part["off"]), part["data"]
            if pos >= end or off + len(data) <= pos:
                continue
            if off > pos:
                break  # a hole: reported below
            piece = data[pos - off : min(end, off + len(data)) - off]
            out += piece
            pos += len(piece)
        if pos < end:
            raise BlobStoreUnavailable(f"blob {blob} misses bytes at {pos}")
        return bytes(out)

    # --- deletion -----------------------------------------------------------------

    async def recall(self, user: str, message_id: bytes) -> int:
        select = "SELECT blob FROM blobs WHERE owner = $1 AND message_id = $2 LIMIT $3"
        return await self._delete_where(select, user, bytes(message_id))

    async def expire(self, now: int, upload_ttl_ms: int) -> int:
        deleted = await self._delete_where(
            "SELECT blob FROM blobs WHERE message_id IS NOT NULL AND expires_at <= $1 LIMIT $2", now
        )
        deleted += await self._delete_where(
            "SELECT blob FROM blobs WHERE message_id IS NULL AND begun_at < $1 LIMIT $2", now - upload_ttl_ms
        )

        async def sweep(conn: asyncpg.Connection) -> None:
            await conn.execute("DELETE FROM blob_tokens WHERE expires_at <= $1", now)
            await conn.execute("DELETE FROM blob_days WHERE day < $1", utc_day(now))

        await self._write(sweep)
        return deleted

    async def _delete_where(self, select: str, *args: Any) -> int:
        """Delete the blobs ``select`` names (its last parameter: the batch size), a batch per transaction."""

        async def work(conn: asyncpg.Connection) -> int:
            status = await conn.execute(f"DELETE FROM blobs WHERE blob IN ({select})", *args, EXPIRE_BATCH)
            return int(status.split()[-1])

        total = 0
        while True:
            n: int = await self._write(work)
            total += n
            if n < EXPIRE_BATCH:
                return total

    async def holds(self, blob: str) -> bool:
        try:
            valid_blob_id(blob)
        except UnknownBlob:
            return False

        async def work(conn: asyncpg.Connection) -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM blobs WHERE blob = $1) "
                    "OR EXISTS (SELECT 1 FROM blob_parts WHERE blob = $1)",
                    blob,
                )
            )

        result: bool = await self._read(work)
        return result
