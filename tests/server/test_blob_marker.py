"""The hub cannot see attachments (DESIGN guarantee 3, SPEC §16): a marker
embedded in an image's bytes, and in its file name, travels to the
recipient, who finds it after decryption, and is nowhere in the hub's
files (database, blob directory), in no PostgreSQL table, and in no log
line, on the embedded (SQLite + files) and the production (PostgreSQL)
stores."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from miss_server.app import HubServer
from miss_server.logs import JsonFormatter
from protocol.attachments import decrypt_bytes
from protocol.frames import Accepted, Deliver
from tests.support.blob_wire import BlobDevice, File, download, link, upload, with_files
from tests.support.inprocess_hub import hub_settings
from tests.support.oncall_wire import keys, opened
from tests.support.pg_hub import postgres_store_url
from tests.support.store_fixtures import POSTGRES_DSN
from tests.support.wire import invite


class _Captured(logging.Handler):
    """Every log line at debug and up, formatted as the hub writes them (JSON, extras included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def captured_logs() -> Iterator[_Captured]:
    handler = _Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        async with postgres_store_url() as url:
            yield url


async def test_the_marker_of_an_attachment_is_nowhere_on_the_hub(
    store_url: str | None, tmp_path: Path
) -> None:
    marker = b"MARKER-" + secrets.token_hex(12).encode()
    schema = None if store_url is None else store_url.split("schema=")[1]
    # Marker in the first chunk, in the middle of a later one, and in the name.
    plain = b"\xff\xd8\xff\xe0" + marker + secrets.token_bytes(150_000) + marker + secrets.token_bytes(50_000)
    name = f"plaie {marker.decode()}.jpg"

    async def assert_nowhere() -> None:
        files = [p for p in tmp_path.rglob("*") if p.is_file()]  # noqa: ASYNC240 (small test files)
        if schema is None:
            assert any(p.name.startswith("miss.db") for p in files)
            assert any(p.parent.name == "blobs" or "blobs" in p.parts for p in files), files
        for path in files:
            data = path.read_bytes()
            assert marker not in data and marker.hex().encode() not in data, f"marker found in {path}"
        if schema is None:
            return
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            tables = [
                r["tablename"]
                for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
            ]
            assert {"blobs", "blob_parts"} <= set(tables), tables
            for table in tables:
                rows = await conn.fetch(f'SELECT t::text AS row FROM "{schema}"."{table}" t')
                dump = "\n".join(r["row"] for r in rows)
                assert marker.decode() not in dump and marker.hex() not in dump, f"marker in table {table}"
            parts = await conn.fetchval(f'SELECT count(*) FROM "{schema}".blob_parts')
            assert parts > 0  # the blob is there, as ciphertext
        finally:
            await conn.close()

    overrides = {} if store_url is None else {"store": store_url}
    with captured_logs() as logs:
        hub = HubServer(hub_settings(tmp_path, **overrides))
        await hub.start()
        try:
            devices = []
            for who, rpps in (("Alice", "24000000001"), ("Bob", "24000000002")):
                _, code = await invite(hub, f"Dr {who}", rpps)
                dev = BlobDevice(hub.url)
                await dev.enroll(code)
                devices.append(dev)
            alice, bob = devices
            f = File.of(plain, name)
            f.blob_id = await upload(alice, f.blob)
            send = with_files(alice, bob.user_id, keys([bob]), f"voir {marker.decode()}", [f])
            assert await alice.ask(send) == Accepted(send.id)
            got = await bob.next_of(Deliver)
            [att] = opened(bob, got, alice).atts
            assert att.name == name  # it did travel
            grant = await link(bob, att.blob)
            blob = await download(hub.url, grant.url, grant.size)
            assert marker in decrypt_bytes(blob, att.key, att.size, att.hash)
            await assert_nowhere()
        finally:
            await hub.stop()
    assert logs.lines and not [line for line in logs.lines if marker.decode() in line]
    await assert_nowhere()
