"""Attachments in the SDK (SPEC §16): files checked before anything leaves,
encrypted into the spool with a thumbnail, uploaded with resumption,
fetched by ranges over HTTP, verified and saved byte-identical; against
the real in-process hub (its filesystem BlobStore), real keys, real files."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from miss_client import Client, Message, Profile
from miss_client.attachments import (
    check_files,
    describe_size,
    encrypt_to_spool,
    file_name,
    target_path,
)
from miss_client.errors import (
    AttachmentCorrupt,
    AttachmentTooLarge,
    AttachmentTypeNotAllowed,
    AttachmentUnavailable,
    ConnectionLost,
    TooManyAttachments,
)
from miss_client.models import Event, Recalled
from PIL import Image

from miss_server.app import HubServer
from protocol.attachments import HTTP_PART_MAX, THUMB_MAX, cipher_size, decrypt_bytes
from tests.support.verified_hubs import ClinicianFactory

RPPS = {"alice": "10000000001", "bob": "10000000002", "carol": "10000000003"}


# --- sample files -------------------------------------------------------------------


def noise_image(path: Path, size: tuple[int, int], fmt: str, mode: str = "RGB") -> Path:
    """An image of random pixels (it does not compress: its file is big)."""
    channels = len(mode)
    Image.frombytes(mode, size, os.urandom(size[0] * size[1] * channels)).save(path, fmt)
    return path


def heic_like(path: Path, size: int) -> Path:
    """Bytes that sniff as HEIC (``ftypheic`` at offset 4): Pillow cannot
    read them, so the file travels without a thumbnail."""
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + os.urandom(size))
    return path


def six_images(directory: Path) -> list[Path]:
    """Six images, one of them over HTTP_PART_MAX (downloaded in parts) and
    one of exactly 2 chunks (65,536 bytes each)."""
    directory.mkdir(exist_ok=True)
    files = [
        noise_image(directory / "plaie.jpg", (900, 700), "JPEG"),
        noise_image(directory / "ecg.png", (700, 560), "PNG"),  # ~1.2 MB: two HTTP parts
        noise_image(directory / "lesion.png", (64, 48), "PNG", "RGBA"),
        noise_image(directory / "photo.jpeg", (120, 200), "JPEG"),
        heic_like(directory / "dermato.heic", 30_000),
    ]
    exact = directory / "deux_blocs.jpg"
    exact.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2 * 65536 - 4))
    files.append(exact)
    return files


# --- without a hub: the spool, thumbnails, checks, names ---------------------------------


def test_a_file_encrypts_into_the_spool_and_its_thumbnail_is_a_small_jpeg(tmp_path: Path) -> None:
    photo = noise_image(tmp_path / "plaie.jpg", (1200, 900), "JPEG")
    [item] = check_files([photo], 6, 20 * 2**20)
    assert (item.name, item.type, item.size) == ("plaie.jpg", "image/jpeg", photo.stat().st_size)

    spooled = encrypt_to_spool(item, tmp_path / "spool")
    blob = spooled.spool.read_bytes()
    assert len(blob) == cipher_size(item.size) == spooled.cipher_size
    assert hashlib.sha256(blob).digest() == spooled.hash
    assert photo.read_bytes() not in blob and photo.read_bytes()[:4096] not in blob
    assert decrypt_bytes(blob, spooled.key, spooled.size, spooled.hash) == photo.read_bytes()
    assert spooled.spool.stat().st_mode & 0o777 == 0o600
    assert (spooled.w, spooled.h) == (1200, 900)
    assert spooled.thumb is not None and len(spooled.thumb) <= THUMB_MAX
    with Image.open(io.BytesIO(spooled.thumb)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 160 and thumb.size[0] > thumb.size[1]

    # A transparent PNG gets one too; a PDF and an unreadable HEIC none.
    png = noise_image(tmp_path / "scan.png", (300, 500), "PNG", "RGBA")
    pdf = tmp_path / "courrier.pdf"
    pdf.write_bytes(b"%PDF-1.4\n" + os.urandom(1000))
    heic = heic_like(tmp_path / "x.heic", 100)
    png_s, pdf_s, heic_s = (
        encrypt_to_spool(i, tmp_path / "spool") for i in check_files([png, pdf, heic], 6, 10**8)
    )
    assert png_s.thumb is not None and (png_s.w, png_s.h) == (300, 500)
    assert pdf_s.type == "application/pdf" and pdf_s.thumb is None and pdf_s.w is None
    assert heic_s.type == "image/heic" and heic_s.thumb is None
    empty = tmp_path / "vide.pdf"
    empty.write_bytes(b"%PDF-")
    [e] = check_files([empty], 6, 10)
    assert len(encrypt_to_spool(e, tmp_path / "spool").spool.read_bytes()) == cipher_size(5)


def test_files_are_refused_by_count_size_and_type_with_french_messages(tmp_path: Path) -> None:
    images = [noise_image(tmp_path / f"{i}.jpg", (8, 8), "JPEG") for i in range(7)]
    with pytest.raises(TooManyAttachments, match=r"trop de pièces jointes : 7 \(au plus 6 par message\)"):
        check_files(images, 6, 10**6)
    big = tmp_path / "grand.jpg"
    with big.open("wb") as fh:  # sparse: nothing is read past the first bytes
        fh.write(b"\xff\xd8\xff\xe0")
        fh.truncate(20 * 2**20 + 1)
    with pytest.raises(AttachmentTooLarge, match=r"grand.jpg est trop volumineux : 20 Mo \(au plus 20 Mo"):
        check_files([big], 6, 20 * 2**20)
    gif = tmp_path / "plaie.jpg.gif"
    gif.write_bytes(b"GIF89a" + bytes(100))
    renamed = tmp_path / "faux.jpg"  # a name never makes a type acceptable
    renamed.write_bytes(b"<html>not an image</html>")
    for bad in (gif, renamed):
        with pytest.raises(AttachmentTypeNotAllowed, match="type de fichier non accepté"):
            check_files([bad], 6, 10**6)
    assert describe_size(1_258_291) == "1,2 Mo" and describe_size(350 * 1024) == "350 Ko"


def test_saved_names_stay_in_their_directory_and_do_not_replace_files(tmp_path: Path) -> None:
    assert file_name("../../etc/passwd") == "passwd" and file_name("a\\b.pdf") == "b.pdf"
    assert file_name("..") == "fichier" and len(file_name("é" * 300 + ".jpg").encode()) <= 255
    assert file_name("é" * 300 + ".jpg").endswith(".jpg")
    (tmp_path / "plaie.jpg").write_bytes(b"x")
    assert target_path(tmp_path, "plaie.jpg") == tmp_path / "plaie (2).jpg"
    assert target_path(tmp_path, "../plaie.jpg") == tmp_path / "plaie (2).jpg"
    assert (
        target_path(tmp_path, ".bashrc").parent == tmp_path
        and target_path(tmp_path, ".bashrc").name == "_bashrc"
    )


# --- against the real hub ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connected(*profiles: Profile) -> AsyncIterator[list[Client]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Client.connect(p)) for p in profiles]


async def next_message(client: Client, timeout: float = 10.0) -> Message:
    async with asyncio.timeout(timeout):
        while True:
            event: Event = await client.receive()
            if isinstance(event, Message):
                return event


def blob_files(hub: HubServer) -> list[Path]:
    """The blob files of the hub's filesystem store (its SQLite index aside)."""
    root = Path(hub.settings.blob_store_url.removeprefix("file://"))
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith("index.db")]


async def check_round_trip(receiver: Client, message: Message, files: Sequence[Path], out: Path) -> None:
    assert [a.name for a in message.attachments] == [f.name for f in files]
    for att, original in zip(message.attachments, files, strict=True):
        assert att.size == original.stat().st_size
        assert await receiver.fetch_attachment(att) == original.read_bytes()
    out.mkdir()  # noqa: ASYNC240 - a test's own directory
    saved = await receiver.save(message.id, out)
    assert [p.name for p in saved] == [f.name for f in files]
    assert all(p.read_bytes() == f.read_bytes() for p, f in zip(saved, files, strict=True))


async def test_six_images_round_trip_one_to_one_and_in_a_team(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    alice = await clinician("alice", RPPS["alice"])
    bob = await clinician("bob", RPPS["bob"])
    files = six_images(tmp_path / "files")
    assert files[1].stat().st_size > HTTP_PART_MAX, "ecg.png is downloaded in two parts"
    progress: dict[str, int] = {}
    async with connected(alice, bob) as (a, b):
        assert (a.att_max, a.blob_max) == (6, 20 * 2**20)
        sent = await a.send(
            RPPS["bob"],
            "Plaie du pied, J+3",
            attachments=files,
            on_progress=lambda name, have, total: progress.__setitem__(name, have),
        )
        assert progress == {f.name: cipher_size(f.stat().st_size) for f in files}
        message = await next_message(b)
        assert message.id == sent and message.body == "Plaie du pied, J+3" and message.team is None
        await check_round_trip(b, message, files, tmp_path / "bob1")
        # The sender's other view: its own history keeps the descriptors, and so does bob's.
        [mine] = [e for e in a.state.history() if e.id == sent]
        assert mine.status == "accepted" and [x.name for x in mine.attachments] == [f.name for f in files]
        assert not list((alice.directory / "spool").iterdir()), "spool files are deleted once uploaded"

        team = await a.create_team("Plaies chroniques")
        await a.add_member(team, RPPS["bob"])
        in_team = await a.send(team, "", attachments=files)
        team_message = await next_message(b)
        while team_message.id != in_team:
            team_message = await next_message(b)
        assert team_message.team == team and team_message.body == ""
        await check_round_trip(b, team_message, files, tmp_path / "bob2")

        # Recalled: the hub drops the blobs; the descriptor bob holds fetches nothing.
        await a.recall(sent)
        with pytest.raises(AttachmentUnavailable, match=r"pièce jointe indisponible : plaie\.jpg"):
            await b.fetch_attachment(message.attachments[0])
        async with asyncio.timeout(10):
            while not isinstance(await b.receive(), Recalled):
                pass
    # Kept in the local state, across a restart (the recalled one's keys are gone with its text).
    with bob.open_state() as state:
        entry = state.find_message(in_team)
        assert entry is not None and [x.name for x in entry.attachments] == [f.name for f in files]
        recalled = state.find_message(sent)
        assert recalled is not None and recalled.gone == "recalled" and recalled.attachments == ()


async def test_a_seventh_file_and_an_oversized_one_are_refused_before_any_upload(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    alice = await clinician("alice", RPPS["alice"])
    await clinician("bob", RPPS["bob"])
    seven = [noise_image(tmp_path / f"p{i}.jpg", (16, 16), "JPEG") for i in range(7)]
    big = tmp_path / "scanner.pdf"
    with big.open("wb") as fh:
        fh.write(b"%PDF-1.7\n")
        fh.truncate(20 * 2**20 + 1)
    async with connected(alice) as (a,):
        with pytest.raises(TooManyAttachments):
            await a.send(RPPS["bob"], "7 photos", attachments=seven)
        with pytest.raises(AttachmentTooLarge, match=r"scanner\.pdf est trop volumineux"):
            await a.send(RPPS["bob"], "un gros scan", attachments=[seven[0], big])
        assert a.state.history() == [], "nothing recorded"
    assert blob_files(hub) == [], "nothing reached the hub's blob store"
    spool = alice.directory / "spool"
    assert not spool.exists() or not list(spool.iterdir())


async def test_an_interrupted_upload_resumes_from_what_the_hub_holds(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    alice = await clinician("alice", RPPS["alice"])
    bob = await clinician("bob", RPPS["bob"])
    scan = noise_image(tmp_path / "radio.png", (1000, 800), "PNG")  # ~2.4 MB
    total = cipher_size(scan.stat().st_size)
    async with connected(alice) as (a,):

        def cut_midway(name: str, have: int, total: int) -> None:
            if have >= total // 2 and not a.closed:
                a._router._ws.transport.abort()  # the network drops, no close handshake

        with pytest.raises(ConnectionLost):
            await a.send(RPPS["bob"], "radio du poignet", attachments=[scan], on_progress=cut_midway)
        [pending] = a.state.pending_outgoing()
    resumed: list[int] = []
    async with connected(alice, bob) as (a, b):
        assert await a.resend_pending(on_progress=lambda n, have, t: resumed.append(have)) == [pending.id]
        message = await next_message(b)
        assert await b.fetch_attachment(message.attachments[0]) == scan.read_bytes()
    # The upload went on from the bytes the hub held, far from zero.
    assert total // 2 <= resumed[0] < total and resumed[-1] == total
    print(f"resumed at {resumed[0]} of {total} bytes: {total - resumed[0]} sent again")


async def test_an_altered_blob_is_refused_and_never_saved(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    alice = await clinician("alice", RPPS["alice"])
    bob = await clinician("bob", RPPS["bob"])
    photo = noise_image(tmp_path / "plaie.jpg", (200, 150), "JPEG")
    async with connected(alice, bob) as (a, b):
        await a.send(RPPS["bob"], "avant/après", attachments=[photo])
        message = await next_message(b)
        [stored] = blob_files(hub)
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0x01  # the hub (or its disk) changes one bit
        stored.write_bytes(bytes(data))
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(AttachmentCorrupt, match=r"pièce jointe altérée : plaie\.jpg"):
            await b.save(message, out)
        with pytest.raises(AttachmentCorrupt):
            await b.fetch_attachment(message.attachments[0])
    assert list(out.iterdir()) == [], "nothing saved, not even a temporary file"
