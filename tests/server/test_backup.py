"""``miss-admin backup`` and ``miss-admin restore`` of the embedded store
(miss_server/admin_backup.py; docs/OPERATIONS.md, "Backup and restore").

The main test backs a running hub up while a clinician sends steadily, wipes
its data directory, restores, and starts a hub on the restored file: the
queued messages reach the device that was offline (the SDK decrypts them,
which it does only for senders whose attestation verifies), the accounts
authenticate, the team is there, and a restore that brings back a message
already acknowledged after the backup shows it once (SPEC §6.4: the client
drops an id it kept). The others check what ``restore`` refuses.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from miss_client import Client, Message, Profile

from miss_server import admin_backup
from miss_server.app import HubServer
from miss_server.store import migrations
from miss_server.store.sqlite_threads import DIALECT
from tests.support.admin_cli import Admin
from tests.support.inprocess_hub import hub_settings
from tests.support.verified_hubs import enroll_clinician

LATEST = migrations.latest_version(DIALECT)


def messages(events: list[object]) -> list[Message]:
    return [e for e in events if isinstance(e, Message)]


async def inbox(profile: Profile, url: str) -> list[Message]:
    """Connect ``profile`` to the hub at ``url``: the new messages it shows."""
    async with Client.connect(profile, url=url) as client:
        return messages(await client.drain(idle=1.5))


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
        alice = await enroll_clinician(hub, tmp_path / "alice", "alice", "10000000001")
        bob = await enroll_clinician(hub, tmp_path / "bob", "bob", "10000000002")
        carol = await enroll_clinician(hub, tmp_path / "carol", "carol", "10000000003")
        async with Client.connect(alice) as a:
            team = await a.create_team("Cardio garde")
            await a.add_member(team, bob.user_id)
            queued = {await a.send(bob.user_id, f"avis n°{i} avant la sauvegarde") for i in range(3)}
            queued.add(await a.send(team, "à l'équipe, avant la sauvegarde"))
            acked_later = await a.send(carol.user_id, "reçu après la sauvegarde")

            # The backup, in one-page steps so that it spans many of the hub's
            # commits, while alice keeps sending to carol.
            monkeypatch.setattr(admin_backup, "STEP_PAGES", 1)
            sent_during: list[bytes] = []
            done = asyncio.Event()

            async def steady() -> None:
                while not done.is_set():
                    sent_during.append(await a.send(carol.user_id, f"pendant {len(sent_during)}"))

            sender = asyncio.create_task(steady())
            started = time.monotonic()
            try:
                result = await asyncio.to_thread(admin, "backup", "--to", str(backup_file))
            finally:
                done.set()
                await sender
            took = time.monotonic() - started
            report = (
                f"backup: {result['bytes']} bytes in {took:.2f} s, {result['steps']} steps, "
                f"{result['restarts']} restart(s), {len(sent_during)} message(s) accepted meanwhile"
            )
            with capsys.disabled():
                print(report)
            assert result["integrity"] == "ok" and result["schema_version"] == LATEST
            assert result["steps"] > 1 and len(sent_during) > 0
            counts = result["counts"]
            assert counts["users"] == 3 and counts["attestations"] == 3 and counts["teams"] == 1
            assert counts["devices"] == 3
            # bob's four (three 1:1, one team copy), carol's first one, and
            # however many of those sent during the backup it caught.
            assert 5 <= counts["queued_messages"] <= 5 + len(sent_during)
            assert backup_file.stat().st_mode & 0o777 == 0o600
            assert not list(backup_file.parent.glob(".*.tmp"))

            # After the backup: carol keeps (and acks) what was sent to her, and
            # a message to bob is accepted that the backup does not hold.
            got = await inbox(carol, hub.url)
            assert {m.id for m in got} == {acked_later, *sent_during}
            lost = await a.send(bob.user_id, "après la sauvegarde")

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
        # bob's device, offline all along, gets exactly what was queued at the
        # backup, decrypted from senders it verified; not what came after.
        got = await inbox(bob, hub2.url)
        bodies = sorted(m.body for m in got)
        with capsys.disabled():
            print(f"after restore: bob received {len(got)} of {len(queued)} queued message(s)")
        assert {m.id for m in got} == queued and len(got) == len(queued)
        assert lost not in {m.id for m in got}
        assert "à l'équipe, avant la sauvegarde" in bodies
        assert all(m.from_user == alice.user_id for m in got)
        # carol acked her messages after the backup: the restored queue sends
        # them again, and her client shows none of them twice.
        assert await inbox(carol, hub2.url) == []
        # The accounts authenticate, the team is there with its members, and
        # messages flow both ways, to the user and to the team.
        async with Client.connect(alice, url=hub2.url) as a, Client.connect(bob, url=hub2.url) as b:
            view = await a.team(team)
            assert {alice.user_id, bob.user_id} <= set(view.members)
            fresh = await a.send(bob.user_id, "après la restauration")
            to_team = await a.send(team, "équipe, après la restauration")
            new = messages(await b.drain(idle=1.0))
            assert {m.id for m in new} == {fresh, to_team}
            answer = await b.send(alice.user_id, "bien reçu")
            assert answer in {m.id for m in messages(await a.drain(idle=1.0))}


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
