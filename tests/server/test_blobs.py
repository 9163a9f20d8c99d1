"""Attachments on a real hub over real WebSockets and HTTP (SPEC §16):
files encrypted with real keys, uploaded in pieces, sent in 1:1, team and
urgent role messages, fetched by the targets through expiring links in
ranges and decrypted byte-identical; refusals are typed; an interrupted
upload resumes where it stopped; a device that is not a target gets
nothing; recalled and expired blobs are gone from the BlobStore, and
their links answer 404."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from miss_server.app import HubServer
from protocol.attachments import HTTP_PART_MAX, PIECE_MAX, cipher_size, decrypt_bytes
from protocol.frames import (
    Accepted,
    BlobBegin,
    BlobEnd,
    BlobLink,
    BlobPut,
    Deliver,
    Error,
    Frame,
    Recall,
    RecallOk,
    Urgent,
)
from protocol.oncall import Policy, Step, pack_policy
from tests.support.authority import AUTHORITY_PK
from tests.support.blob_wire import (
    BlobDevice,
    File,
    begin,
    download,
    end,
    http_get,
    link,
    put_all,
    upload,
    with_files,
)
from tests.support.inprocess_hub import HubFactory
from tests.support.oncall_wire import keys, opened
from tests.support.team_wire import Team, change, now_ms
from tests.support.wire import invite

_rpps = iter(range(23_000_000_001, 23_000_099_999))


async def clinician(hub: HubServer, name: str, *, verified: bool = True) -> BlobDevice:
    _, code = await invite(hub, f"Dr {name}", str(next(_rpps)), verified=verified)
    dev = BlobDevice(hub.url)
    await dev.enroll(code)
    return dev


async def refused(dev: BlobDevice, frame: Frame, code: str) -> Error:
    reply = await dev.ask(frame)
    assert isinstance(reply, Error) and reply.code == code and not reply.fatal, reply
    return reply


async def sent(dev: BlobDevice, frame: Frame) -> None:
    reply = await dev.ask(frame)
    assert isinstance(reply, Accepted), reply


async def uploaded(dev: BlobDevice, *files: File) -> list[File]:
    for f in files:
        f.blob_id = await upload(dev, f.blob)
    return list(files)


def image(size: int, marker: bytes = b"") -> bytes:
    """A JPEG-looking file of ``size`` bytes (random after the magic)."""
    body = b"\xff\xd8\xff\xe0" + marker + os.urandom(size)
    return body[:size]


def metric(hub: HubServer, name: str) -> float:
    """The value of an unlabelled metric of ``hub``, as GET /metrics shows it."""
    for line in hub.metrics.render().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name}")


async def fetched(hub: HubServer, dev: BlobDevice, f: File) -> bytes:
    """What ``dev`` gets for ``f``: a link, ranged GETs, then decryption."""
    grant = await link(dev, f.blob_id)
    assert grant.size == len(f.blob) and grant.url.startswith("/blobs/")
    blob = await download(hub.url, grant.url, grant.size)
    return decrypt_bytes(blob, f.key, len(f.plain), f.hash)


async def test_a_1to1_message_carries_files_its_recipient_fetches_byte_identical(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub()
    _, code = await invite(hub, "Dr Alice Martin", str(next(_rpps)))
    alice = BlobDevice(hub.url)
    welcome = await alice.enroll(code)
    assert (welcome.att_max, welcome.blob_max) == (6, 20 * 1024 * 1024)
    bob = await clinician(hub, "Bob")
    big, small = await uploaded(
        alice,
        File.of(image(1_500_000), "ecg.jpg"),
        File.of(b"%PDF-1.7 lettre", "lettre.pdf", "application/pdf"),
    )
    send = with_files(alice, bob.user_id, keys([bob]), "Deux pièces jointes", [big, small])
    await sent(alice, send)

    got = await bob.next_of(Deliver)
    assert got.id == send.id and got.body is not None  # sealed once, as an urgent 1:1 message
    plain = opened(bob, got, alice)
    assert plain.body == "Deux pièces jointes" and [a.blob for a in plain.atts] == [
        big.blob_id,
        small.blob_id,
    ]
    assert await fetched(hub, bob, big) == big.plain
    # A small blob comes whole without a Range; a big one needs ranges.
    grant = await link(bob, small.blob_id)
    status, fields, body = await http_get(hub.url, grant.url)
    assert status == 200 and decrypt_bytes(body, small.key, len(small.plain), small.hash) == small.plain
    assert fields["content-type"] == "application/octet-stream" and fields["cache-control"] == "no-store"
    assert fields["x-content-type-options"] == "nosniff" and fields["accept-ranges"] == "bytes"
    status, _, body = await http_get(hub.url, (await link(bob, big.blob_id)).url)
    assert (status, body) == (400, b"range required\n")
    assert await fetched(hub, alice, big) == big.plain  # the sender's device too
    assert metric(hub, "miss_blob_bytes_uploaded_total") == len(big.blob) + len(small.blob)
    assert metric(hub, "miss_blobs_stored_total") == 2
    assert metric(hub, "miss_blob_bytes_downloaded_total") >= 2 * len(big.blob) + len(small.blob)


async def test_ranges_are_clipped_checked_and_links_expire(make_hub: HubFactory) -> None:
    hub = await make_hub(blob_link_seconds=1.0, max_blob_downloads=1)
    alice, bob = await clinician(hub, "Alice"), await clinician(hub, "Bob")
    (f,) = await uploaded(alice, File.of(image(1_200_000)))
    await sent(alice, with_files(alice, bob.user_id, keys([bob]), "", [f]))
    grant = await link(bob, f.blob_id)
    size = len(f.blob)

    async def get(range_: str) -> tuple[int, dict[str, str], bytes]:
        return await http_get(hub.url, grant.url, {"Range": range_})

    status, fields, body = await get("bytes=0-9")
    assert (status, body, fields["content-range"]) == (206, f.blob[:10], f"bytes 0-9/{size}")
    status, fields, body = await get("bytes=10-")
    assert status == 206 and body == f.blob[10 : 10 + HTTP_PART_MAX]  # one part at most
    assert fields["content-range"] == f"bytes 10-{10 + HTTP_PART_MAX - 1}/{size}"
    status, fields, body = await get("bytes=-5")
    assert (status, body, fields["content-range"]) == (
        206,
        f.blob[-5:],
        f"bytes {size - 5}-{size - 1}/{size}",
    )
    status, _, body = await get(f"bytes={size - 3}-{size + 100}")
    assert (status, body) == (206, f.blob[-3:])
    for bad in (f"bytes={size}-", "bytes=9-2", "bytes=0-1,4-5", "items=0-1", "bytes=-0", "bytes=x-"):
        status, fields, _ = await get(bad)
        assert status == 416 and fields["content-range"] == f"bytes */{size}", bad
    # Unknown and malformed tokens: 404, one answer.
    for path in ("/blobs/" + secrets.token_urlsafe(32), "/blobs/short", "/blobs/", grant.url + "x"):
        assert (await http_get(hub.url, path))[0] == 404, path
    # One download at a time here: a reader that does not take its part
    # holds its slot, and the next is told to come back (503, Retry-After).
    parts = urlsplit(hub.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {grant.url} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\r\n\r\n".encode())
    await reader.readexactly(12)  # "HTTP/1.1 206": answered, not yet read
    status, fields, _ = await get("bytes=0-0")
    assert (status, fields["retry-after"]) == (503, "1")
    writer.close()
    await writer.wait_closed()
    for _ in range(50):
        if (status := (await get("bytes=0-0"))[0]) != 503:
            break
        await asyncio.sleep(0.02)
    assert status == 206
    # The link is valid any number of times until it expires, then 404.
    assert (await get("bytes=0-0"))[0] == 206
    await asyncio.sleep(max(0.0, grant.expires / 1000 - time.time()) + 0.1)
    assert (await get("bytes=0-0"))[0] == 404
    assert (await link(bob, f.blob_id)).expires > grant.expires  # a new link works again


async def test_refusals_are_typed_errors_that_keep_the_connection(make_hub: HubFactory) -> None:
    hub = await make_hub(max_open_uploads=2, max_attachments=2, max_attachment_bytes=300_000)
    alice, bob = await clinician(hub, "Alice"), await clinician(hub, "Bob")
    limit = cipher_size(300_000)
    await refused(alice, BlobBegin(rid=1, size=limit + 1), "blob_too_large")
    first = await begin(alice, limit)
    second = await begin(alice, 1000)
    await refused(alice, BlobBegin(rid=1, size=1000), "blob_quota")  # two open uploads already
    await refused(alice, BlobPut(rid=1, blob=first.blob, off=PIECE_MAX, data=b"x" * 10), "blob_offset")
    await put_all(alice, first.blob, b"y" * limit, 0, 2 * PIECE_MAX)
    await refused(alice, BlobPut(rid=1, blob=first.blob, off=0, data=b"y"), "blob_offset")
    await refused(alice, BlobEnd(rid=1, blob=first.blob), "blob_incomplete")
    past = BlobPut(rid=1, blob=second.blob, off=0, data=b"z" * 1001)
    await refused(alice, past, "blob_offset")  # past the size begun
    # Another device knows nothing of Alice's uploads; an unknown id is the same answer.
    await refused(bob, BlobBegin(rid=1, size=limit, blob=first.blob), "unknown_blob")
    await refused(bob, BlobPut(rid=1, blob=first.blob, off=2 * PIECE_MAX, data=b"y"), "unknown_blob")
    await refused(bob, BlobLink(rid=1, blob=first.blob), "unknown_blob")
    await refused(alice, BlobLink(rid=1, blob="b_" + secrets.token_hex(16)), "unknown_blob")
    # A send: more blobs than max_attachments, then a blob that is not complete.
    files = await uploaded(bob, *(File.of(image(100)) for _ in range(2)))
    extra = File.of(image(100))
    extra.blob_id = first.blob
    await refused(
        bob, with_files(bob, alice.user_id, keys([alice]), "", [*files, extra]), "too_many_attachments"
    )
    await refused(alice, with_files(alice, bob.user_id, keys([bob]), "", [extra]), "unknown_blob")
    await refused(alice, with_files(alice, bob.user_id, keys([bob]), "", files), "unknown_blob")  # Bob's
    assert not bob.held  # nothing was delivered
    # An unverified clinician's device may not upload at all.
    mallory = await clinician(hub, "Mallory", verified=False)
    await refused(mallory, BlobBegin(rid=1, size=1000), "not_verified")
    await sent(bob, with_files(bob, alice.user_id, keys([alice]), "ok", files))  # the connection goes on


async def test_an_interrupted_upload_resumes_where_it_stopped(make_hub: HubFactory) -> None:
    hub = await make_hub()
    alice, bob = await clinician(hub, "Alice"), await clinician(hub, "Bob")
    f = File.of(image(400_000))
    ok = await begin(alice, len(f.blob))
    half = 3 * PIECE_MAX
    assert await put_all(alice, ok.blob, f.blob, 0, half) == half
    await alice.close()  # the connection drops mid-upload

    await alice.auth()
    resumed = await begin(alice, len(f.blob), blob=ok.blob)
    assert (resumed.blob, resumed.have) == (ok.blob, half)
    await refused(alice, BlobPut(rid=1, blob=ok.blob, off=0, data=f.blob[:PIECE_MAX]), "blob_offset")
    assert await put_all(alice, ok.blob, f.blob, resumed.have) == len(f.blob)
    assert (await end(alice, ok.blob)).have == len(f.blob)
    assert (await begin(alice, len(f.blob), blob=ok.blob)).have == len(f.blob)  # complete
    f.blob_id = ok.blob
    await sent(alice, with_files(alice, bob.user_id, keys([bob]), "", [f]))
    assert await fetched(hub, bob, f) == f.plain


async def test_only_the_messages_targets_may_fetch_its_files(make_hub: HubFactory) -> None:
    hub = await make_hub()
    alice, bob, carol = [await clinician(hub, n) for n in ("Alice", "Bob", "Carol")]
    (f,) = await uploaded(alice, File.of(image(5000)))
    await refused(bob, BlobLink(rid=1, blob=f.blob_id), "unknown_blob")  # not sent yet
    first = with_files(alice, bob.user_id, keys([bob]), "", [f])
    await sent(alice, first)
    assert await fetched(hub, bob, f) == f.plain
    await refused(carol, BlobLink(rid=1, blob=f.blob_id), "unknown_blob")
    # Nor can it be attached again, to a message Carol would get.
    await refused(alice, with_files(alice, carol.user_id, keys([carol]), "", [f]), "unknown_blob")
    await refused(carol, BlobLink(rid=1, blob=f.blob_id), "unknown_blob")
    # A resend of the same message links again and is accepted as a duplicate.
    reply = await alice.ask(first)
    assert reply == Accepted(first.id, dup=True), reply


async def test_team_and_urgent_role_messages_give_every_target_the_files(make_hub: HubFactory) -> None:
    hub = await make_hub(escalation_min_interval_ms=100, escalation_tick_ms=50)
    alice, bob, holder, backup, carol = [
        await clinician(hub, n) for n in ("Alice", "Bob", "Hugo", "Bea", "Carol")
    ]
    team = Team()
    assert (await change(alice, team, "create", alice.user_id, hub.store, AUTHORITY_PK)).TYPE == "team_ok"
    assert (await change(alice, team, "add", bob.user_id, hub.store, AUTHORITY_PK)).TYPE == "team_ok"
    (f,) = await uploaded(alice, File.of(image(70_000)))
    await sent(alice, with_files(alice, team.team_id, keys([bob]), "Équipe", [f], head=team.head))
    got = await bob.next_of(Deliver)
    assert [a.blob for a in opened(bob, got, alice).atts] == [f.blob_id]
    assert await fetched(hub, bob, f) == f.plain
    await refused(carol, BlobLink(rid=1, blob=f.blob_id), "unknown_blob")

    # Urgent, to a role whose backup is held for a step that has not come yet.
    policy = pack_policy(Policy(60_000, (Step(60_000, user=backup.user_id),), 60_000))
    role = (await hub.store.create_role("Dermatologie — garde", "CHRU Test", False, policy, now_ms())).role
    assert await hub.store.assign_role(role, holder.user_id, now_ms())
    (g,) = await uploaded(alice, File.of(image(3000)))
    await sent(alice, with_files(alice, role, keys([holder], [backup]), "Urgent", [g], urgent=Urgent()))
    assert await fetched(hub, holder, g) == g.plain
    assert await fetched(hub, backup, g) == g.plain  # held, not yet told: may fetch once released
    await refused(carol, BlobLink(rid=1, blob=g.blob_id), "unknown_blob")


async def test_recalled_expired_and_abandoned_blobs_are_gone(make_hub: HubFactory) -> None:
    hub = await make_hub(
        expiry_interval_seconds=0.1, blob_upload_ttl_seconds=1.0, message_ttl_days=0.7 / 86_400
    )
    alice, bob = await clinician(hub, "Alice"), await clinician(hub, "Bob")
    abandoned = await begin(alice, 5000)  # never completed
    recalled, expiring = await uploaded(alice, File.of(image(5000)), File.of(image(5000)))
    send = with_files(alice, bob.user_id, keys([bob]), "", [recalled])
    await sent(alice, send)
    grant = await link(bob, recalled.blob_id)
    assert (await http_get(hub.url, grant.url))[0] == 200
    reply = await alice.ask(Recall(rid=3, id=send.id))
    assert isinstance(reply, RecallOk), reply
    assert not await hub.blob_store.holds(recalled.blob_id)
    assert (await http_get(hub.url, grant.url))[0] == 404
    await refused(bob, BlobLink(rid=1, blob=recalled.blob_id), "unknown_blob")

    await sent(alice, with_files(alice, bob.user_id, keys([bob]), "", [expiring]))
    assert await hub.blob_store.holds(expiring.blob_id)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        await hub.blob_store.holds(expiring.blob_id) or await hub.blob_store.holds(abandoned.blob)
    ):
        await asyncio.sleep(0.1)
    assert not await hub.blob_store.holds(expiring.blob_id), "the message's blob outlived it"
    assert not await hub.blob_store.holds(abandoned.blob), "an abandoned upload outlived its ttl"
    await refused(alice, BlobBegin(rid=1, size=5000, blob=abandoned.blob), "unknown_blob")
    assert 'miss_blobs_deleted_total{cause="recalled"} 1.0' in hub.metrics.render().decode()


async def test_blob_requests_spend_the_devices_budgets(make_hub: HubFactory) -> None:
    """blob_begin/end/link spend the request budget (rate_limited); blob_put
    its own, which makes an upload wait rather than fail."""
    settings: dict[str, Any] = {"rate_device": "1/s burst 2", "rate_blob": "20/s burst 2"}
    hub = await make_hub(**settings)
    alice = await clinician(hub, "Alice")
    data = os.urandom(6 * PIECE_MAX)
    started = time.monotonic()
    ok = await begin(alice, len(data))
    assert await put_all(alice, ok.blob, data) == len(data)  # 6 pieces: 2 at once, then 20/s
    assert time.monotonic() - started >= 0.15
    await end(alice, ok.blob)
    await refused(alice, BlobLink(rid=1, blob=ok.blob), "rate_limited")  # begin and end spent the burst


async def test_one_address_flooding_downloads_is_told_to_wait_before_the_store_is_read(
    make_hub: HubFactory,
) -> None:
    """GET /blobs/ spends its address's rate_download: past it 429 with
    Retry-After, for valid links and guesses alike, and nothing is read."""
    hub = await make_hub(rate_download="2/s burst 3")
    alice, bob = await clinician(hub, "Alice"), await clinician(hub, "Bob")
    (f,) = await uploaded(alice, File.of(image(5000)))
    await sent(alice, with_files(alice, bob.user_id, keys([bob]), "", [f]))
    grant = await link(bob, f.blob_id)
    served = metric(hub, "miss_blob_bytes_downloaded_total")
    guesses = ["/blobs/" + secrets.token_urlsafe(32) for _ in range(3)]
    assert [(await http_get(hub.url, path))[0] for path in guesses] == [404, 404, 404]
    status, fields, _ = await http_get(hub.url, grant.url)
    assert (status, fields["retry-after"]) == (429, "1")
    assert metric(hub, "miss_blob_bytes_downloaded_total") == served  # nothing left the store
    await asyncio.sleep(0.6)  # one token back
    status, _, body = await http_get(hub.url, grant.url)
    assert (status, body) == (200, f.blob)
