"""``miss-chat send --attach`` and ``save ID DIR`` through the command's entry
point (main() in a worker thread: it runs its own event loop), against the
real in-process hub: the recipient's inbox and history show each
attachment in French, ``save`` writes byte-identical files, and files
that cannot go are refused before anything is uploaded."""

from __future__ import annotations

import asyncio
import io
import os
import re
from pathlib import Path

import pytest
from miss_client.chat import main
from PIL import Image

from miss_server.app import HubServer
from tests.support.client_fixtures import PASSPHRASE
from tests.support.verified_hubs import ClinicianFactory

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def blob_files(hub: HubServer) -> list[Path]:
    """The blob files of the hub's filesystem store (its SQLite index aside)."""
    root = Path(hub.settings.blob_store_url.removeprefix("file://"))
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith("index.db")]


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path = tmp_path
        self.capsys = capsys

    async def __call__(self, profile: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        with pytest.MonkeyPatch.context() as mp:
            if stdin is not None:
                mp.setattr("sys.stdin", io.StringIO(stdin))
            rc = await asyncio.to_thread(main, ["--profile", str(self.tmp_path / profile), *args])
        out, err = self.capsys.readouterr()
        return rc, out, err


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("MISS_PASSPHRASE", PASSPHRASE)
    return Cli(tmp_path, capsys)


async def test_send_attach_then_inbox_history_and_save_byte_identical(
    hub: HubServer, clinician: ClinicianFactory, cli: Cli, tmp_path: Path
) -> None:
    await clinician("alice", "10000000001")
    await clinician("bob", "10000000002")
    photo = tmp_path / "plaie.jpg"
    Image.frombytes("RGB", (1200, 900), os.urandom(1200 * 900 * 3)).save(photo, "JPEG", quality=95)
    letter = tmp_path / "courrier.pdf"
    letter.write_bytes(b"%PDF-1.4\n" + os.urandom(5000))

    rc, out, err = await cli("alice", "send", "10000000002", "Plaie J+3", "--attach", str(photo), str(letter))
    assert rc == 0, err
    message_id = re.fullmatch(rf"({UUID}) accepted\n", out)
    assert message_id is not None, out

    rc, out, err = await cli("bob", "inbox", "--idle", "0.3")
    assert rc == 0, err
    size = re.escape(f"{photo.stat().st_size / 2**20:.1f}".replace(".", ","))
    assert f"Dr Alice (10000000001): Plaie J+3 [{message_id[1]}]" in out
    assert re.search(rf"\n    📎 1\. plaie\.jpg — {size} Mo, image JPEG\n", out), out
    assert "📎 2. courrier.pdf — 4,9 Ko, document PDF" in out

    rc, out, _ = await cli("bob", "history", "10000000001")
    assert rc == 0 and "plaie.jpg" in out and "document PDF" in out and message_id[1] in out

    saved = tmp_path / "dossier"
    saved.mkdir()
    (saved / "plaie.jpg").write_bytes(b"an older file, kept")
    rc, out, err = await cli("bob", "save", message_id[1], str(saved))
    assert rc == 0, err
    assert out.splitlines() == [str(saved / "plaie (2).jpg"), str(saved / "courrier.pdf")]
    assert (saved / "plaie (2).jpg").read_bytes() == photo.read_bytes()
    assert (saved / "courrier.pdf").read_bytes() == letter.read_bytes()
    assert (saved / "plaie.jpg").read_bytes() == b"an older file, kept"

    # In a chat, /joindre sends files (names with spaces quoted).
    spaced = tmp_path / "compte rendu.pdf"
    spaced.write_bytes(b"%PDF-1.7\n" + os.urandom(300))
    chat_input = f'/joindre "{spaced}"\n/joindre\n/quit\n'
    rc, out, err = await cli("bob", "chat", "10000000001", "--linger", "0.1", stdin=chat_input)
    assert rc == 0, err
    assert "me → Dr Alice (10000000001): \n    📎 compte rendu.pdf — 309 octets, document PDF" in out, out
    assert "/joindre FICHIER… : les fichiers à envoyer" in err
    rc, out, _ = await cli("alice", "inbox", "--idle", "0.3")
    assert "Dr Bob (10000000002): [" in out and "📎 compte rendu.pdf — 309 octets, document PDF" in out, out


async def test_files_that_cannot_go_are_refused_in_french_before_any_upload(
    hub: HubServer, clinician: ClinicianFactory, cli: Cli, tmp_path: Path
) -> None:
    await clinician("alice", "10000000001")
    await clinician("bob", "10000000002")
    gif = tmp_path / "anim.gif"
    gif.write_bytes(b"GIF89a" + bytes(64))
    rc, _, err = await cli("alice", "send", "10000000002", "--attach", str(gif))
    assert rc == 1 and "anim.gif : type de fichier non accepté" in err
    photos = []
    for i in range(7):
        photos.append(tmp_path / f"p{i}.jpg")
        Image.new("RGB", (8, 8)).save(photos[-1], "JPEG")
    rc, _, err = await cli("alice", "send", "10000000002", "sept", "--attach", *map(str, photos))
    assert rc == 1 and "trop de pièces jointes : 7 (au plus 6 par message)" in err
    rc, _, err = await cli("alice", "send", "10000000002", "--attach", str(tmp_path / "absent.jpg"))
    assert rc == 1 and "fichier introuvable" in err
    assert blob_files(hub) == [], "nothing reached the hub's blob store"
    rc, out, _ = await cli("alice", "history")
    assert rc == 0 and out == ""
