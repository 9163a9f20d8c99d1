"""``miss-admin backup`` and ``restore`` of the embedded hub's attachments
(miss_server/blobs/backup.py, through miss_server/admin_backup.py;
docs/OPERATIONS.md, "Attachments: where the blobs are, and their backup").

The main test runs a real hub in process: alice sends offline bob a message
with two files, begins a third upload she does not finish, and takes a
download link; ``miss-admin backup`` runs while the hub serves; the hub is
stopped, its data directory (database and blobs) wiped, ``miss-admin
restore`` puts both back, and a hub started on them gives bob his message
and, through fresh links, both files byte-identical. The old link and the
unfinished upload are not restored. The others check what ``restore``
refuses, and what ``backup`` says when there are no attachments.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from miss_server.app import HubServer
from miss_server.blobs.base import Quotas
from miss_server.blobs.filesystem import FilesystemBlobStore
from protocol.attachments import PIECE_MAX, decrypt_bytes
from protocol.frames import Accepted, BlobBegin, Deliver, Error
from tests.support.admin_cli import Admin
from tests.support.blob_wire import (
    BlobDevice,
    File,
    begin,
    download,
    http_get,
    link,
    put_all,
    upload,
    with_files,
)
from tests.support.inprocess_hub import hub_settings
from tests.support.oncall_wire import keys, opened
from tests.support.team_wire import now_ms
from tests.support.wire import invite

ROOMY = Quotas(bytes_per_day=1 << 30, count_per_day=500, open_uploads=12, stored_bytes_per_user=1 << 33)


def names(directory: Path, pattern: str = "*") -> list[str]:
    """The sorted names in ``directory`` that match ``pattern``."""
    return sorted(p.name for p in directory.glob(pattern))


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def assert_private(directory: Path) -> None:
    """``directory`` is 0700 and every file in it 0600."""
    assert mode(directory) == 0o700, oct(mode(directory))
    files = list(directory.iterdir())
    assert files
    for f in files:
        assert f.is_file() and mode(f) == 0o600, (f, oct(mode(f)))


async def clinician(hub: HubServer, name: str, rpps: str) -> BlobDevice:
    _, code = await invite(hub, f"Dr {name}", rpps)
    dev = BlobDevice(hub.url)
    await dev.enroll(code)
    return dev


async def test_attachments_are_backed_up_while_the_hub_runs_and_restored_on_a_wiped_directory(
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
        alice = await clinician(hub, "Alice", "24000000001")
        bob = await clinician(hub, "Bob", "24000000002")
        await bob.close()  # offline until after the restore
        files = [
            File.of(b"\xff\xd8\xff\xe0" + os.urandom(700_000), "plaie.jpg"),
            File.of(b"%PDF-1.7 compte rendu " + os.urandom(3000), "cr.pdf", "application/pdf"),
        ]
        for f in files:
            f.blob_id = await upload(alice, f.blob)
        send = with_files(alice, bob.user_id, keys([bob]), "Deux pièces jointes", files)
        assert await alice.ask(send) == Accepted(send.id)
        unfinished = await begin(alice, 5 * PIECE_MAX)
        assert (
            await put_all(alice, unfinished.blob, os.urandom(5 * PIECE_MAX), 0, 2 * PIECE_MAX)
            == 2 * PIECE_MAX
        )
        old_link = await link(alice, files[0].blob_id)
        assert (await http_get(hub.url, old_link.url, {"Range": "bytes=0-0"}))[0] == 206

        started = time.monotonic()
        result = await asyncio.to_thread(admin, "backup", "--to", str(backup_file))
        took = time.monotonic() - started
        blobs = result["blobs"]
        sizes = sum(len(f.blob) for f in files)
        assert (blobs["count"], blobs["bytes"]) == (2, sizes)
        assert (blobs["dropped_incomplete"], blobs["dropped_links"], blobs["dropped_gone"]) == (1, 1, 0)
        copy = Path(blobs["dir"])
        assert copy == backup_file.with_name("miss-backup.db.blobs")
        assert_private(copy)
        assert names(copy) == sorted(["index.db", *(f.blob_id for f in files)])
        assert not names(backup_file.parent, ".*.tmp")
        # The hub served on while the copy was made, and still does.
        assert (await http_get(hub.url, old_link.url, {"Range": "bytes=0-0"}))[0] == 206

        # A running hub holds the store and the blob index: restore refuses.
        refused = await asyncio.to_thread(admin, "restore", "--from", str(backup_file), status=1)
        assert "in use" in refused["error"]
        await alice.close()
    finally:
        await hub.stop()

    shutil.rmtree(data)
    restored = await asyncio.to_thread(admin, "restore", "--from", str(backup_file))
    assert restored["blobs"]["count"] == 2 and restored["blobs"]["bytes"] == sizes
    assert restored["blobs"]["replaced"] is None
    assert_private(data / "blobs")
    assert not names(data, ".*.tmp")

    async with HubServer(hub_settings(tmp_path, store=store_url)) as hub2:
        bob.url = alice.url = hub2.url
        await bob.auth()
        got = await bob.next_of(Deliver)
        assert got.id == send.id
        plain = opened(bob, got, alice)
        assert [a.blob for a in plain.atts] == [f.blob_id for f in files]
        for f in files:
            grant = await link(bob, f.blob_id)
            assert grant.url != old_link.url
            blob = await download(hub2.url, grant.url, grant.size)
            assert decrypt_bytes(blob, f.key, len(f.plain), f.hash) == f.plain
        assert (await http_get(hub2.url, old_link.url))[0] == 404
        await alice.auth()
        reply = await alice.ask(BlobBegin(rid=1, size=5 * PIECE_MAX, blob=unfinished.blob))
        assert isinstance(reply, Error) and reply.code == "unknown_blob", reply
        await alice.close()
        await bob.close()
    with capsys.disabled():
        print(f"blob backup: {sizes} bytes in 2 attachment(s), miss-admin backup took {took:.2f} s")


async def test_restore_refuses_while_a_hub_holds_the_blob_index(run: Admin, tmp_path: Path) -> None:
    store, blob_dir = tmp_path / "miss.db", tmp_path / "blobs"
    blobs = FilesystemBlobStore(blob_dir)  # what a hub holds while it runs
    await blobs.open()
    try:
        up = await blobs.begin("u_alice", "d_alice", 1000, now_ms(), ROOMY)
        await blobs.put("d_alice", up.blob, 0, b"x" * 1000)
        await blobs.complete("d_alice", up.blob, now_ms())
        backup_file = tmp_path / "b.db"
        text = await asyncio.to_thread(run.text, "backup", "--to", str(backup_file))
        assert "attachments: 1 attachment(s), 0.0 MiB (1000 bytes)" in text
        assert_private(tmp_path / "b.db.blobs")
        before = store.read_bytes()
        refused = await asyncio.to_thread(run, "restore", "--from", str(backup_file), status=1)
        assert "blob index" in refused["error"] and "in use" in refused["error"]
        assert "stop the hub" in refused["error"]
        # Neither the store nor the blob directory was touched; no copy is left behind.
        assert store.read_bytes() == before
        assert names(blob_dir, "b_*") == [up.blob]
        assert not names(tmp_path, ".*.tmp") and not names(tmp_path, "*.before-restore-*")
    finally:
        await blobs.close()

    result = await asyncio.to_thread(run, "restore", "--from", str(backup_file))
    assert result["blobs"]["count"] == 1
    kept = Path(result["blobs"]["replaced"])
    assert kept.parent == tmp_path and kept.name.startswith("blobs.before-restore-")
    assert_private(blob_dir)
    assert (blob_dir / up.blob).read_bytes() == b"x" * 1000


def test_a_blob_copy_that_does_not_check_is_refused_before_anything_is_touched(
    run: Admin, tmp_path: Path
) -> None:
    async def one_blob() -> str:
        blobs = FilesystemBlobStore(tmp_path / "blobs")
        await blobs.open()
        try:
            up = await blobs.begin("u_alice", "d_alice", 1000, now_ms(), ROOMY)
            await blobs.put("d_alice", up.blob, 0, b"y" * 1000)
            await blobs.complete("d_alice", up.blob, now_ms())
            return up.blob
        finally:
            await blobs.close()

    blob = asyncio.run(one_blob())
    backup_file = tmp_path / "b.db"
    assert run("backup", "--to", str(backup_file))["blobs"]["count"] == 1
    (tmp_path / "b.db.blobs" / blob).write_bytes(b"y" * 999)  # a damaged copy
    before = (tmp_path / "miss.db").read_bytes()
    refused = run("restore", "--from", str(backup_file), status=1)
    assert "has 999 bytes, its index says 1000" in refused["error"]
    assert (tmp_path / "miss.db").read_bytes() == before
    assert (tmp_path / "blobs" / blob).read_bytes() == b"y" * 1000
    assert not names(tmp_path, ".*.tmp")


def test_no_blob_directory_means_no_attachments_in_the_backup(run: Admin, tmp_path: Path) -> None:
    stale = tmp_path / "b.db.blobs"  # from an earlier backup to the same file: it would not match
    stale.mkdir()
    out = run.text("backup", "--to", str(tmp_path / "b.db"))
    assert "no attachments" in out and not stale.exists()
    assert not (tmp_path / "blobs").exists()
    # Restoring it leaves the blob directory alone, and says so.
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "keep").write_text("x")
    result = run("restore", "--from", str(tmp_path / "b.db"))
    assert result["blobs"] is None
    out = run.text("restore", "--from", str(tmp_path / "b.db"))
    assert "attachments NOT restored" in out and "unknown_blob until they expire" in out
    assert (tmp_path / "blobs" / "keep").read_text() == "x"


def test_blobs_in_postgresql_are_said_not_to_be_in_the_backup(
    run: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISS_BLOB_STORE", "postgresql://miss@127.0.0.1:5432/miss")
    out = run.text("backup", "--to", str(tmp_path / "b.db"))
    assert "attachments: in PostgreSQL" in out and "not in this backup" in out
    assert not (tmp_path / "b.db.blobs").exists()
