"""docs/OPERATIONS.md's PostgreSQL backup and restore, run as written.

The two ``sh`` blocks of its "Backup and restore" section that call
``pg_dump`` and ``pg_restore`` are taken verbatim and run with ``bash -euo
pipefail`` (/usr/bin's pg_dump, pg_restore and psql), their variables
pointing at a database and a role of this test's own, once with MiSS in
that database's ``public`` schema and once in a schema of its own
(``?schema=NAME``). Around them runs tests/support/backup_scenario.py on an
in-process hub: the dump is taken while a clinician sends steadily; the hub
is stopped; the restore block drops the database (or the schema) and
restores the dump; a hub started on it delivers exactly the queued
messages, the accounts authenticate, the team is there and messages flow.
Whatever happens, the database and the role are dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from miss_server.app import HubServer
from miss_server.store.postgres import PostgresStore
from tests.support.backup_scenario import after_backup, before_backup, check_restored, during_backup
from tests.support.hubproc import BIN
from tests.support.inprocess_hub import hub_settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SECTION = re.compile(r"^## Backup and restore\b.*$", re.M)
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)
SUPERUSER = "psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atc".split()
# /usr/bin first: the documented commands run with the system's PostgreSQL client.
TOOLS_PATH = os.pathsep.join(["/usr/bin", str(BIN), "/bin"])


def documented(command: str) -> str:
    """The one ``sh`` block of the section that runs ``command``, verbatim."""
    text = (REPO / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    heading = SECTION.search(text)
    assert heading, "docs/OPERATIONS.md has no '## Backup and restore' section"
    rest = text[heading.end() :]
    section = rest[: m.start()] if (m := re.search(r"^## ", rest, re.M)) else rest
    found = [b for b in SH_BLOCK.findall(section) if re.search(rf"^{re.escape(command)} ", b, re.M)]
    assert len(found) == 1, f"one ```sh block of 'Backup and restore' should run {command}, not {len(found)}"
    return str(found[0])


def superuser(sql: str) -> str:
    out = subprocess.run([*SUPERUSER, sql], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def database() -> Iterator[str]:
    """A new role and a database it owns (same name), dropped afterwards."""
    name = "miss_backup_" + secrets.token_hex(4)
    superuser(f"CREATE ROLE {name} LOGIN")
    superuser(f"CREATE DATABASE {name} OWNER {name}")
    try:
        yield name
    finally:
        superuser(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        superuser(f"DROP ROLE IF EXISTS {name}")


async def run_block(block: str, env: dict[str, str], status: int = 0) -> str:
    """Run a documented block with bash, which must exit with ``status``;
    its output (stdout and stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        block,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == status, f"the documented block exited with {proc.returncode}:\n{text}"
    return text


@pytest.mark.parametrize("schema", [False, True], ids=["database", "schema"])
async def test_documented_pg_dump_and_restore_bring_back_queued_messages(
    database: str, schema: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema_name = f"{database}_s" if schema else ""
    store_url = f"postgresql://{database}@127.0.0.1:5432/{database}"
    if schema_name:
        store_url += f"?schema={schema_name}"
    migrator = PostgresStore(store_url)
    try:
        await migrator.migrate()
    finally:
        await migrator.close()
    env = {
        "PATH": TOOLS_PATH,
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": "5432",
        "DB_NAME": database,
        "DB_ROLE": database,
        "DB_SCHEMA": schema_name,
        "DB_ADMIN": "postgres",
        "BACKUP_DIR": str(tmp_path / "backups"),
    }

    hub = HubServer(hub_settings(tmp_path, store=store_url))
    await hub.start()
    try:
        s = await before_backup(hub, tmp_path)
        started = time.monotonic()
        out = await during_backup(s, lambda: run_block(documented("pg_dump -h"), env))
        took = time.monotonic() - started
        written = re.search(r"^backup written: (\S+)$", out, re.M)
        assert written, out
        dump = Path(written.group(1))
        facts = await asyncio.to_thread(dump.stat)
        assert dump.parent == tmp_path / "backups" and facts.st_mode & 0o777 == 0o600
        with capsys.disabled():
            print(
                f"\npg_dump ({'schema' if schema else 'database'}): {facts.st_size} bytes "
                f"in {took:.2f} s, {len(s.sent_during)} message(s) accepted meanwhile"
            )
        await after_backup(s, hub.url)
        # While the hub is connected, the restore block refuses to start.
        early = await run_block(documented("pg_restore -h"), {**env, "BACKUP_FILE": str(dump)}, status=1)
        assert "still open: stop every hub node first" in early
    finally:
        await hub.stop()

    # The restore block drops what is there (the database, or the schema) first.
    out = await run_block(documented("pg_restore -h"), {**env, "BACKUP_FILE": str(dump)})
    assert re.search(r"^schema at version \d+$", out, re.M), out
    if schema_name:  # nothing of MiSS strayed into public
        assert superuser_in(database, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"

    async with HubServer(hub_settings(tmp_path, store=store_url)) as hub2:
        line = await check_restored(s, hub2.url)
    with capsys.disabled():
        print(line)


def superuser_in(database: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-Atc", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
