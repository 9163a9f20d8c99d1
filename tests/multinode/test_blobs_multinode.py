"""Attachments across hub nodes (issue 17): a blob uploaded through node 1
is linked and downloaded through node 2, both on PostgreSQL (the blob
store shares the hubs' database), and is byte-identical once decrypted;
neither node logs the download link."""

from __future__ import annotations

import asyncio

import pytest

from protocol.attachments import decrypt_bytes
from protocol.frames import Accepted, Deliver
from tests.support.blob_wire import BlobDevice, File, download, http_get, link, upload, with_files
from tests.support.cluster import Cluster
from tests.support.oncall_wire import keys, opened

pytestmark = pytest.mark.slow


async def test_a_blob_uploaded_through_one_node_downloads_through_the_other(cluster: Cluster) -> None:
    devices = []
    for node, (name, rpps) in enumerate(
        (("Dr Alice Martin", "26000000001"), ("Dr Bob Durand", "26000000002"))
    ):
        _, code = await asyncio.to_thread(cluster.nodes[0].invite, name, rpps)
        dev = BlobDevice(cluster.urls[node])
        await dev.enroll(code)
        await cluster.verify(dev.user_id)
        devices.append(dev)
    alice, bob = devices  # alice on node 1, bob on node 2

    f = File.of(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 6000, "radio.jpg")  # 1.5 MB: two parts
    f.blob_id = await upload(alice, f.blob)
    send = with_files(alice, bob.user_id, keys([bob]), "Radio du genou", [f])
    assert await alice.ask(send) == Accepted(send.id)

    got = await bob.next_of(Deliver, timeout=10)
    [att] = opened(bob, got, alice).atts
    grant = await link(bob, att.blob)  # asked of node 2
    blob = await download(cluster.urls[1], grant.url, grant.size)
    assert decrypt_bytes(blob, att.key, att.size, att.hash) == f.plain
    # The link is the blob's wherever it is asked: node 1 serves it as well.
    status, _, part = await http_get(cluster.urls[0], grant.url, {"Range": "bytes=0-99"})
    assert (status, part) == (206, f.blob[:100])
    await alice.close()
    await bob.close()
    # The link is a capability: no node ever logs it.
    token = grant.url.rsplit("/", 1)[1]
    for node in cluster.nodes:
        assert token not in node.log_path.read_text()
