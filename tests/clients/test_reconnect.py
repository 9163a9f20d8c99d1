"""Profile locks and the reconnection loop of miss_client.reconnect."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from miss_client import Client, Profile
from miss_client.errors import ConnectionFailed, ConnectionLost
from miss_client.reconnect import SESSION_LOCK, Phase, ProfileLock, Reconnector, Status, session_lock

from protocol.errors import AccountSuspended, DeviceRevoked, SessionReplaced, UnknownUser
from tests.support.fakehub import wait_for

SLACK = 0.5  # s: a loaded machine wakes sleepers late, never early


async def test_profile_lock_excludes_waits_without_blocking_and_gives_up_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    a, b, c = ProfileLock(path), ProfileLock(path), ProfileLock(path)
    assert a.try_acquire() and a.try_acquire(), "taken, and a no-op for its holder"
    assert not b.try_acquire()
    waiting = asyncio.create_task(b.acquire())
    ticks = 0
    for _ in range(10):  # the event loop keeps running while b waits
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 10 and not waiting.done()
    a.release()
    await asyncio.wait_for(waiting, 2)
    assert b.held and not a.try_acquire()

    gave_up = asyncio.create_task(c.acquire())
    await asyncio.sleep(0.05)
    gave_up.cancel()
    b.release()
    await asyncio.sleep(0.2)  # c's thread got the lock after the cancel: it must hand it back
    assert a.try_acquire(), "a cancelled wait leaves the lock free"
    a.release()


async def test_session_lock_waits_for_its_holder_and_says_so(tmp_path: Path) -> None:
    holder = ProfileLock(tmp_path / SESSION_LOCK)
    assert holder.try_acquire()
    told: list[str] = []
    entered = asyncio.Event()

    async def one_shot() -> None:
        async with session_lock(tmp_path, on_wait=lambda: told.append("waiting"), notice_after=0.1):
            entered.set()

    task = asyncio.create_task(one_shot())
    await asyncio.sleep(0.3)
    assert told == ["waiting"] and not entered.is_set()
    holder.release()
    await asyncio.wait_for(task, 2)
    assert entered.is_set() and holder.try_acquire(), "released after use"


def fake_connector(outcomes: list[BaseException | None], attempts: list[float]) -> Callable[..., Any]:
    """A stand-in for Client.connect: each attempt takes the next outcome
    (None: connected; an exception: raised) and records its time."""

    @asynccontextmanager
    async def connect(profile: Profile, *, state: object) -> AsyncIterator[object]:
        attempts.append(asyncio.get_running_loop().time())
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        yield object()

    return connect


async def test_reconnection_backs_off_with_jitter_and_starts_over_after_a_success(
    make_profile: Callable[..., Profile],
) -> None:
    profile = make_profile("alice")
    refused = ConnectionFailed("connection refused")
    attempts: list[float] = []
    connect = fake_connector([None, refused, refused, refused, None, refused, None], attempts)
    statuses: list[Status] = []
    runs = 0

    async def session(client: object, again: bool) -> None:
        nonlocal runs
        runs += 1
        assert again == (runs > 1)
        if runs < 3:
            raise ConnectionLost("dropped", 1006)

    with profile.open_state() as state:
        await Reconnector(profile, state, connect=connect, on_status=statuses.append).run(session)
    assert runs == 3 and len(attempts) == 7
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # After a drop: a short random delay, then exponential waits with jitter.
    assert gaps[0] <= 0.5 + SLACK
    assert 0.25 <= gaps[1] <= 0.5 + SLACK
    assert 0.5 <= gaps[2] <= 1.0 + SLACK
    assert 1.0 <= gaps[3] <= 2.0 + SLACK
    # A successful connection starts the backoff over.
    assert gaps[4] <= 0.5 + SLACK
    assert 0.25 <= gaps[5] <= 0.5 + SLACK
    waits = [s for s in statuses if s.phase is Phase.WAITING]
    assert all(s.retry_at is not None for s in waits)
    lost, refused = ConnectionLost, ConnectionFailed
    assert [type(s.error) for s in waits] == [lost, refused, refused, refused, lost, refused]
    assert [s.phase for s in statuses].count(Phase.CONNECTED) == 3


@pytest.mark.parametrize(
    ("outcomes", "session_errors", "expected", "tries"),
    [
        ([None, DeviceRevoked()], [ConnectionLost("dropped", 1006)], DeviceRevoked, 2),
        ([None], [AccountSuspended()], AccountSuspended, 1),
        ([None], [UnknownUser()], UnknownUser, 1),
        ([ConnectionFailed("connection refused")], [], ConnectionFailed, 1),
    ],
    ids=["revoked-on-reconnect", "suspended", "not-a-connection-error", "first-connection"],
)
async def test_what_reconnecting_cannot_cure_ends_the_run(
    make_profile: Callable[..., Profile],
    outcomes: list[BaseException | None],
    session_errors: list[BaseException],
    expected: type[BaseException],
    tries: int,
) -> None:
    profile = make_profile("alice")
    attempts: list[float] = []
    statuses: list[Status] = []

    async def session(client: object, again: bool) -> None:
        raise session_errors.pop(0)

    with profile.open_state() as state:
        reconnector = Reconnector(
            profile, state, connect=fake_connector(outcomes, attempts), on_status=statuses.append
        )
        with pytest.raises(expected):
            await reconnector.run(session)
    assert len(attempts) == tries
    assert statuses[-1].phase is Phase.DISCONNECTED and isinstance(statuses[-1].error, expected)
    assert ProfileLock(profile.directory / SESSION_LOCK).try_acquire(), "the session lock is left free"


async def test_a_replaced_session_waits_for_the_one_shot_then_comes_back_at_once(
    clinician: Callable[..., Awaitable[Profile]],
) -> None:
    profile = await clinician("alice", "10000000001")
    user = profile.user_id
    loop = asyncio.get_running_loop()
    connections: list[float] = []

    async def session(client: Client, again: bool) -> None:
        connections.append(loop.time())
        while True:
            await client.receive()  # raises once the connection ends

    with profile.open_state() as state:
        statuses: list[Status] = []
        reconnector = Reconnector(profile, state, on_status=statuses.append)
        running = asyncio.create_task(reconnector.run(session))
        try:
            await wait_for(lambda: len(connections) == 1)
            # A one-shot command: holds session.lock while connected.
            async with session_lock(profile.directory), Client.connect(profile) as one_shot:
                await wait_for(lambda: reconnector.status.phase is Phase.PAUSED)
                assert isinstance(reconnector.status.error, SessionReplaced)
                await asyncio.sleep(1.0)  # longer than any first delay: the chat keeps waiting
                assert len(connections) == 1
                assert await one_shot.watch([user]) and not one_shot.closed, "the one-shot is not cut off"
            released = loop.time()
            await wait_for(lambda: len(connections) == 2)
            assert connections[1] - released < 0.3, "no backoff once the one-shot is done"

            # Replaced by something that does not take the lock: a backoff,
            # so that two such processes do not take turns at full speed.
            async with Client.connect(profile):
                await wait_for(lambda: len(connections) == 3)
            waits = [s for s in statuses if s.phase is Phase.WAITING]
            assert len(waits) == 1 and isinstance(waits[0].error, SessionReplaced) and waits[0].retry_at
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
