"""The broker's RESP parser (``broker/resp.py``): values split anywhere
across chunks come out whole, in order, whatever the protocol version."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from miss_server.broker.resp import RespParser, RespPipeline

REDIS = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")

# A RESP3 push, a RESP2 pub/sub message, a subscription confirmation, a PONG,
# an integer reply, an error reply, a null and a map.
STREAM = (
    b">3\r\n$8\r\nsmessage\r\n$9\r\nmiss:dev:\r\n$5\r\nhe\r\nl\r\n"
    b"*3\r\n$8\r\nsmessage\r\n$3\r\nabc\r\n$0\r\n\r\n"
    b">3\r\n$10\r\nssubscribe\r\n$3\r\nabc\r\n:1\r\n"
    b"+PONG\r\n"
    b":42\r\n"
    b"-ERR wrong\r\n"
    b"_\r\n"
    b"%1\r\n+k\r\n:1\r\n"
)
EXPECTED = [
    [b"smessage", b"miss:dev:", b"he\r\nl"],
    [b"smessage", b"abc", b""],
    [b"ssubscribe", b"abc", 1],
    b"PONG",
    42,
    "ERR wrong",
    None,
    {b"k": 1},
]


def _plain(values: list[object]) -> list[object]:
    return [str(v) if isinstance(v, ResponseError) else v for v in values]


def test_whole_stream_at_once() -> None:
    assert _plain(RespParser().feed(STREAM)) == EXPECTED


def test_every_split_point_gives_the_same_values() -> None:
    for cut in range(1, len(STREAM)):
        parser = RespParser()
        values = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
        assert _plain(values) == EXPECTED, cut


def test_byte_by_byte() -> None:
    parser = RespParser()
    values: list[object] = []
    for i in range(len(STREAM)):
        values += parser.feed(STREAM[i : i + 1])
    assert _plain(values) == EXPECTED


async def test_a_pipeline_whose_connection_redis_closed_reconnects_before_sending() -> None:
    """A Redis restart closes every connection: the pipeline's next commands
    go on a new connection and are answered, not lost on the closed one."""
    client = aioredis.Redis.from_url(REDIS)
    pipeline = RespPipeline(client, "test-pipeline")
    try:
        [conn_id] = await pipeline.call([("CLIENT", "ID")])
        assert await client.client_kill_filter(_id=conn_id) == 1
        await asyncio.sleep(0.2)  # the server's close reaches the idle connection
        assert await pipeline.call([("PING",)]) == [b"PONG"]
    finally:
        await pipeline.close()
        await client.aclose()


async def test_a_command_redis_cannot_be_sent_fails_its_caller_and_the_pipeline_goes_on() -> None:
    """An argument of no RESP type (a bug of ours) fails that pipeline's
    callers at once, as a connection error they handle; the next commands
    are answered on a fresh connection."""
    client = aioredis.Redis.from_url(REDIS)
    pipeline = RespPipeline(client, "test-pipeline")
    try:
        with pytest.raises(RedisConnectionError, match="DataError"):
            await asyncio.wait_for(pipeline.call([("ECHO", None)]), 2)
        assert await pipeline.call([("ECHO", "still here")]) == [b"still here"]
    finally:
        await pipeline.close()
        await client.aclose()


async def test_a_cancelled_caller_leaves_its_pipeline_and_the_other_callers_answered() -> None:
    """Callers of one pipeline each get their own replies; one cancelled
    while the pipeline is in flight (a connection that closed, say) takes
    nothing from the others, and its command still runs, as Redis got it."""
    client = aioredis.Redis.from_url(REDIS)
    pipeline = RespPipeline(client, "test-pipeline")
    key = f"miss-test-pipeline-{os.getpid()}"
    try:
        # A blocking pop in flight, then commands queued behind it.
        blocked = asyncio.ensure_future(pipeline.call([("BLPOP", f"{key}-none", "0.3")]))
        await asyncio.sleep(0.05)
        first = asyncio.ensure_future(pipeline.call([("INCR", key), ("INCR", key)]))
        doomed = asyncio.ensure_future(pipeline.call([("INCR", key)]))
        last = asyncio.ensure_future(pipeline.call([("INCR", key)]))
        await asyncio.sleep(0.05)
        doomed.cancel()
        assert await first == [1, 2]
        assert await last == [4]  # the cancelled caller's INCR ran: 3
        assert await blocked == [None]
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert await pipeline.call([("GET", key)]) == [b"4"]
    finally:
        await client.delete(key)
        await pipeline.close()
        await client.aclose()


async def test_call_soon_is_told_once_of_success_or_of_an_error_reply() -> None:
    """``call_soon`` returns at once; its callback is called once its
    pipeline is answered: with None, or with an error reply among its
    commands."""
    client = aioredis.Redis.from_url(REDIS)
    pipeline = RespPipeline(client, "test-pipeline")
    key = f"miss-test-call-soon-{os.getpid()}"
    try:
        told: list[Exception | None] = []
        pipeline.call_soon([("SET", key, "text"), ("GET", key)], told.append)
        pipeline.call_soon([("INCR", key)], told.append)  # not an integer
        assert told == []
        assert await pipeline.call([("GET", key)]) == [b"text"]  # answered after both
        assert told[0] is None and isinstance(told[1], ResponseError) and len(told) == 2
        assert "not an integer" in str(told[1])
    finally:
        await client.delete(key)
        await pipeline.close()
        await client.aclose()


async def test_call_soon_commands_reach_redis_even_if_the_loop_never_runs_again() -> None:
    """``call_soon`` puts its commands on the socket before it returns: a
    hub killed right after (its loop never turning again) has handed them
    to Redis all the same. The hub relies on it to answer ``accepted``
    before Redis answers the message's wake-up."""
    client = aioredis.Redis.from_url(REDIS)
    check = redis.Redis.from_url(REDIS)
    pipeline = RespPipeline(client, "test-pipeline")
    key = f"miss-test-call-soon-order-{os.getpid()}"
    try:
        assert await pipeline.call([("PING",)]) == [b"PONG"]  # the connection is open
        assert await asyncio.wait_for(pipeline.call([]), 1) == []  # nothing to wait for
        told: list[Exception | None] = []
        pipeline.call_soon([("RPUSH", key, "first")], told.append)
        pipeline.call_soon([("RPUSH", key, "second")], told.append)
        # From here on the loop does not run: only the socket can carry them.
        deadline = time.monotonic() + 2
        while check.llen(key) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # noqa: ASYNC251 -- the point: the loop must not run
        assert check.lrange(key, 0, -1) == [b"first", b"second"]
        assert told == []  # the replies are read once the loop runs again
        await asyncio.wait_for(pipeline.call([("PING",)]), 2)
        assert told == [None, None]
    finally:
        check.delete(key)
        check.close()
        await pipeline.close()
        await client.aclose()


async def test_callers_in_many_turns_of_the_loop_each_get_their_own_replies_in_order() -> None:
    """Callers that wait and callers that do not, queued while replies
    come back, in many turns of the loop: each gets its own replies, and
    Redis runs every command once, in call order."""
    client = aioredis.Redis.from_url(REDIS)
    pipeline = RespPipeline(client, "test-pipeline")
    key = f"miss-test-pipeline-many-{os.getpid()}"
    told: list[Exception | None] = []

    async def caller(n: int) -> list[int]:
        got = []
        for i in range(20):
            pipeline.call_soon([("RPUSH", f"{key}-{n}", str(i))], told.append)
            [length] = await pipeline.call([("LLEN", f"{key}-{n}")])
            got.append(length)
            await asyncio.sleep(0.0005 * (n % 3))  # woken by the clock, not by a reply
        return got

    async def pinger() -> int:
        pongs = 0
        for _ in range(200):
            pongs += await pipeline.call([("PING",)]) == [b"PONG"]
            await asyncio.sleep(0.0003)
        return pongs

    try:
        *results, pongs = await asyncio.wait_for(
            asyncio.gather(*(caller(n) for n in range(30)), pinger()), 10
        )
        assert results == [list(range(1, 21))] * 30
        assert pongs == 200
        assert told == [None] * 600
    finally:
        await client.delete(*(f"{key}-{n}" for n in range(30)))
        await pipeline.close()
        await client.aclose()
