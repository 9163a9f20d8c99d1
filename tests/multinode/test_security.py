"""Security across two hub nodes on PostgreSQL and Redis: a revoked device
connected to the *other* node is gone within 2 s and never comes back, and no
message plaintext reaches PostgreSQL, Redis, the audit log or the logs."""

from __future__ import annotations

import asyncio
import secrets
import time

import asyncpg
import pytest
import redis.asyncio as aioredis

from protocol import errors
from protocol.frames import Accepted, Deliver, Ok, Revoke
from tests.support.cluster import POSTGRES, REDIS, Cluster
from tests.support.wire import RawDevice

pytestmark = pytest.mark.slow


async def closed_with(dev: RawDevice, timeout: float) -> tuple[str | None, int | None]:
    """(error code, close code) once the hub has closed the connection."""
    error, close = await dev.until_closed(timeout)
    return (error.code if error else None), close


async def reauth(dev: RawDevice, url: str) -> tuple[str | None, int | None]:
    error, close = await dev.auth_refused(url)
    return (error.code if error else None), close


async def test_a_device_revoked_on_one_node_is_cut_off_on_the_other(cluster: Cluster) -> None:
    laptop = await cluster.enroll(0, "Dr Alice", "10000000001")
    phone = await laptop.link(cluster.urls[1])
    await cluster.verify(laptop.user_id)  # the phone too

    started = time.monotonic()
    await laptop.send_frame(Revoke(rid=8, device=phone.device_id))
    assert await laptop.recv() == Ok(8)
    code, close = await closed_with(phone, 3)
    assert time.monotonic() - started < 2.0, "not disconnected within 2 s"
    assert (code, close) == ("device_revoked", errors.DeviceRevoked.close_code)
    for node in (0, 1):
        assert await reauth(phone, cluster.urls[node]) == ("device_revoked", errors.DeviceRevoked.close_code)


async def test_an_administrator_revokes_a_device_connected_to_any_node(cluster: Cluster) -> None:
    """``miss-admin revoke`` reaches no broker: the nodes learn it from the
    audit log they poll."""
    alice = await cluster.enroll(1, "Dr Alice", "10000000001")
    started = time.monotonic()
    await asyncio.to_thread(cluster.nodes[0].admin, "revoke", alice.device_id, "--reason", "stolen")
    code, close = await closed_with(alice, 3)
    assert time.monotonic() - started < 2.0, "not disconnected within 2 s"
    assert (code, close) == ("device_revoked", errors.DeviceRevoked.close_code)
    assert await reauth(alice, cluster.urls[0]) == ("device_revoked", errors.DeviceRevoked.close_code)
    events = await asyncio.to_thread(cluster.nodes[0].admin, "audit", "--action", "device.revoked")
    assert [e["device"] for e in events["events"]] == [alice.device_id]  # type: ignore[index]


async def test_marker_is_nowhere_in_postgres_redis_or_logs(cluster: Cluster) -> None:
    """A message crosses both nodes, waiting in PostgreSQL while its
    recipient is offline; everything sent to Redis is recorded (MONITOR).
    Its plaintext marker is then in no table (audit log included), in no
    Redis key or command, and in no hub log."""
    marker = "MARKER-" + secrets.token_hex(12)
    alice = await cluster.enroll(0, "Dr Alice", "10000000001")
    bob = await cluster.enroll(1, "Dr Bob", "10000000002")

    monitor_client = aioredis.Redis.from_url(REDIS)
    seen_by_redis: list[str] = []

    async def record() -> None:
        async with monitor_client.monitor() as m:
            async for command in m.listen():
                seen_by_redis.append(str(command.get("command", "")))

    recorder = asyncio.create_task(record())
    await asyncio.sleep(0.2)
    try:
        lb, la = await alice.lookup(bob.user_id), await alice.lookup(alice.user_id)
        await bob.close()
        send = alice.message(lb, f"patient note {marker}", la)
        await alice.send_frame(send)
        assert await alice.recv() == Accepted(send.id)
        await bob.auth()
        got = await bob.recv()
        assert isinstance(got, Deliver) and marker in bob.open_deliver(got, alice.keys.box_pk).body
        # Presence, receipts and wake-ups did go through Redis meanwhile.
        await bob.ack(got.seq)
        await asyncio.sleep(0.5)
    finally:
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)
        await monitor_client.aclose()
    assert seen_by_redis, "MONITOR saw nothing: the check would prove nothing"
    assert any("PUBLISH" in c.upper() for c in seen_by_redis)
    assert not [c for c in seen_by_redis if marker in c]

    redis = aioredis.Redis.from_url(REDIS)
    prefix = cluster.env["MISS_BROKER"].split("prefix=")[1]
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
    for key in keys:
        kind = (await redis.type(key)).decode()
        value = {
            "string": redis.get,
            "hash": redis.hgetall,
            "set": redis.smembers,
            "zset": lambda k: redis.zrange(k, 0, -1),
            "list": lambda k: redis.lrange(k, 0, -1),
        }[kind]
        assert marker.encode() not in repr(await value(key)).encode(), f"marker in Redis key {key!r}"
    await redis.aclose()

    schema = cluster.env["MISS_STORE"].split("schema=")[1]
    conn = await asyncpg.connect(POSTGRES)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        ]
        assert {"queue", "audit_log", "users", "devices"} <= set(tables)
        for table in tables:
            rows = await conn.fetch(f'SELECT t::text AS row FROM "{schema}"."{table}" t')
            dump = "\n".join(r["row"] for r in rows)
            assert marker not in dump, f"marker in table {table}"
            # bytea columns are shown in hex: look for the marker's bytes too
            assert marker.encode().hex() not in dump, f"marker bytes in table {table}"
        audit = await conn.fetchval(f'SELECT count(*) FROM "{schema}".audit_log')
        assert audit > 0  # the audit log was written, and holds no plaintext
    finally:
        await conn.close()
    for node in cluster.nodes:
        await node.stop_async()
        assert marker not in node.log_path.read_text()
