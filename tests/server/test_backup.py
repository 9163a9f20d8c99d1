"""``miss-admin backup`` and ``miss-admin restore`` of the embedded store
(miss_server/admin_backup.py; docs/OPERATIONS.md, "Backup and restore").

The main test runs tests/support/backup_scenario.py on a running in-process
hub: ``miss-admin backup`` (in one-page steps, so that the hub's commits
restart it) while a clinician sends steadily, the data directory wiped,
``miss-admin restore``, a hub started on the restored file. The others check
what ``backup`` and ``restore`` refuse.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from miss_server import admin_backup
from miss_server.app import HubServer
from miss_server.store import migrations
from miss_server.store.sqlite_threads import DIALECT
from tests.support.admin_cli import Admin
from tests.support.backup_scenario import after_backup, before_backup, check_restored, during_backup
from tests.support.inprocess_hub import hub_settings

LATEST = migrations.latest_version(DIALECT)


@pytest.mark.slow
async def test_backup_while_running_then_restore_on_a_wiped_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    store_url = f"sqlite:///{data / 'miss.db'}"
    admin = Admin(store_url, tmp_path / "authority.key", capsys, monkeypatch)
    backup_file = tmp_path / "backups" / "miss-backup.db"
    backup_file.parent.mkdir()

    hub = HubServer(hub_settings(tmp_path, store=store_url))
    await hub.start()
    try:
        s = await before_backup(hub, tmp_path)
        # In one-page steps, so that the copy spans many of the hub's commits.
        monkeypatch.setattr(admin_backup, "STEP_PAGES", 1)
        started = time.monotonic()
        result = await during_backup(s, lambda: asyncio.to_thread(admin, "backup", "--to", str(backup_file)))
        with capsys.disabled():
            print(
                f"backup: {result['bytes']} bytes in {time.monotonic() - started:.2f} s, "
                f"{result['steps']} steps, {result['restarts']} restart(s), "
                f"{len(s.sent_during)} message(s) accepted meanwhile"
            )
        assert result["integrity"] == "ok" and result["schema_version"] == LATEST
        assert result["steps"] > 1 and len(s.sent_during) > 0
        counts = result["counts"]
        assert counts["users"] == 3 and counts["attestations"] == 3 and counts["teams"] == 1
        assert counts["devices"] == 3
        # bob's four (three 1:1, one team copy), carol's first one, and
        # however many of those sent during the backup it caught.
        assert 5 <= counts["queued_messages"] <= 5 + len(s.sent_during)
        assert backup_file.stat().st_mode & 0o777 == 0o600
        assert not list(backup_file.parent.glob(".*.tmp"))
        await after_backup(s, hub.url)

        # The hub holds the store: restore refuses to touch it.
        refused = await asyncio.to_thread(admin, "restore", "--from", str(backup_file), status=1)
        assert "in use" in refused["error"] and "stop the hub" in refused["error"]
    finally:
        await hub.stop()

    shutil.rmtree(data)
    restored = await asyncio.to_thread(admin, "restore", "--from", str(backup_file))
    assert restored["counts"] == counts and restored["replaced"] is None
    assert (data / "miss.db").stat().st_mode & 0o777 == 0o600 and data.stat().st_mode & 0o777 == 0o700

    async with HubServer(hub_settings(tmp_path, store=store_url)) as hub2:
        line = await check_restored(s, hub2.url)
    with capsys.disabled():
        print(line)


def _migrated_to(path: Path, version: int) -> None:
    """A MiSS SQLite file at schema ``version`` (an older MiSS's store)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for number, _name, sql in migrations.migrations(DIALECT):
            if number <= version:
                conn.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")
    finally:
        conn.close()


async def test_restore_of_an_older_schema_is_migrated_when_the_hub_starts(run: Admin, tmp_path: Path) -> None:
    old = tmp_path / "old-backup.db"
    _migrated_to(old, LATEST - 2)
    target = tmp_path / "restored" / "miss.db"
    out = await asyncio.to_thread(run.raw, "--store", f"sqlite:///{target}", "restore", "--from", str(old))
    assert out[0] == 0, out[2]
    assert f"schema version {LATEST - 2} < {LATEST}: the hub migrates it when it starts" in out[1]
    async with HubServer(hub_settings(tmp_path, store=f"sqlite:///{target}")):
        pass
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST


def test_restore_refuses_what_is_not_a_miss_backup(run: Admin, tmp_path: Path) -> None:
    store = tmp_path / "miss.db"
    good = tmp_path / "good.db"
    assert run("backup", "--to", str(good))["schema_version"] == LATEST
    before = store.read_bytes()

    def refused(source: Path) -> str:
        return str(run("restore", "--from", str(source), status=1)["error"])

    text = tmp_path / "notes.txt"
    text.write_text("pas une base\n")
    assert "not a MiSS database (not a SQLite file)" in refused(text)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert "not a MiSS database" in refused(other)
    newer = tmp_path / "newer.db"
    shutil.copy(good, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    assert f"schema version {LATEST + 1}, newer than this MiSS knows ({LATEST})" in refused(newer)
    broken = tmp_path / "broken.db"
    blob = bytearray(good.read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 4096] = b"\xff" * 4096
    broken.write_bytes(bytes(blob))
    why = refused(broken)
    assert "fails SQLite's integrity check" in why or "not a readable SQLite database" in why
    assert "miss-admin: no backup file" in refused(tmp_path / "absent.db")
    # Nothing was touched, and no temporary file is left behind.
    assert store.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))

    # A good one replaces the store, which is kept beside it.
    result = run("restore", "--from", str(good))
    kept = Path(result["replaced"])
    assert kept.parent == tmp_path and kept.name.startswith("miss.db.before-restore-")
    assert kept.read_bytes() == before
    # So does one over a store that is no database any more.
    store.write_bytes(b"\0" * 100)
    assert run("restore", "--from", str(good))["counts"]["users"] == 0
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_backup_and_restore_refuse_a_postgres_store(run: Admin, tmp_path: Path) -> None:
    for args in (("backup", "--to", str(tmp_path / "x.db")), ("restore", "--from", str(tmp_path / "x.db"))):
        code, out, err = run.raw("--store", "postgresql://miss@127.0.0.1:5432/miss", *args)
        assert code == 2 and out == ""
        assert "pg_dump" in err and "docs/OPERATIONS.md" in err
    assert not (tmp_path / "x.db").exists()


def test_backup_of_no_store_says_so(run: Admin, tmp_path: Path) -> None:
    code, _, err = run.raw("--store", f"sqlite:///{tmp_path}/nowhere/miss.db", "backup", "--to", "x.db")
    assert code == 1 and "no store at" in err
    assert not (tmp_path / "nowhere").exists()


def test_backup_text_says_what_it_holds(run: Admin, tmp_path: Path) -> None:
    run.invite("Dr A", "10000000001")
    out = run.text("backup", "--to", str(tmp_path / "b.db"))
    assert "mode 600" in out and "integrity ok" in out and "1 clinician(s)" in out
    result = json.loads(run.raw("--json", "backup", "--to", str(tmp_path / "b.db"))[1])
    assert result["counts"]["users"] == 1
