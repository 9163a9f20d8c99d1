"""A rolling restart loses nothing and bothers nobody (issue 16; docs/OPERATIONS.md,
"Graceful shutdown, readiness and rolling restarts").

Two hub processes on PostgreSQL and Redis; six clinicians, three on each
node, each running the real SDK as miss-chat does (a Reconnector running a
session per connection, sends recorded in the local state first and resent
with their ids after a reconnection) and writing steadily to a colleague on
the other node. Node 1 gets SIGTERM, must exit with status 0 within its
grace period, and starts again on its port; then node 2 the same. Then the
writing stops and everything drains: every message the hub accepted is
shown to its recipient exactly once, and no clinician met an error they
must act on (a refused message, a fatal error): the 1001 closes are
routine reconnections.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from miss_client import KDF_INTERACTIVE, Client, Profile, enroll
from miss_client.errors import ClientError, ConnectionLost, RequestTimeout
from miss_client.models import Message
from miss_client.reconnect import Phase, Reconnector, Status, is_transient
from miss_client.state import LocalState

from protocol.crypto import new_message_id
from protocol.errors import ProtocolError
from tests.support.authority import AUTHORITY_PK
from tests.support.client_fixtures import PASSPHRASE
from tests.support.cluster import Cluster, running_cluster
from tests.support.hubproc import HubProcess
from tests.support.traffic import wait_until

pytestmark = pytest.mark.slow

GRACE = 10.0  # shutdown_grace_seconds of both nodes
SPREAD = 2.0  # shutdown_spread_seconds
PER_NODE = 3  # clinicians on each node
PERIOD = 0.25  # s between two messages of one clinician
SETTLE = 4  # messages each clinician has accepted, under steady traffic, between steps


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    """Two nodes that drain over SPREAD seconds, within GRACE."""
    monkeypatch.setenv("MISS_SHUTDOWN_GRACE_SECONDS", str(GRACE))
    monkeypatch.setenv("MISS_SHUTDOWN_SPREAD_SECONDS", str(SPREAD))
    async with running_cluster(tmp_path) as c:
        yield c


@dataclass
class Clinician:
    """One clinician's device, run as miss-chat runs it (chat_session.Chat)."""

    profile: Profile
    state: LocalState
    to: str = ""
    client: Client | None = None
    #: Ids of the messages shown to this clinician, with how many times.
    shown: Counter[bytes] = field(default_factory=Counter)
    #: Errors this clinician would have to act on.
    errors: list[BaseException] = field(default_factory=list)
    #: Why each connection or attempt ended, before a wait to reconnect.
    drops: list[BaseException] = field(default_factory=list)
    connected: int = 0

    def on_status(self, status: Status) -> None:
        if status.phase is Phase.CONNECTED:
            self.connected += 1
        elif status.phase is Phase.WAITING and status.error is not None:
            self.drops.append(status.error)

    async def run(self) -> None:
        await Reconnector(self.profile, self.state, on_status=self.on_status).run(self.session)

    async def session(self, client: Client, again: bool) -> None:
        """Per connection: resend what is pending, then show what arrives."""
        await self.catch_up(client)
        self.client = client  # no await since catch_up saw nothing pending: no line slips between
        try:
            async for event in client.events():
                if isinstance(event, Message) and not event.outgoing_copy:
                    self.shown[event.id] += 1
        finally:
            self.client = None
        raise ConnectionLost("no answer from the hub in time")

    async def catch_up(self, client: Client) -> None:
        tried: set[bytes] = set()
        while pending := [e for e in self.state.pending_outgoing() if e.id not in tried]:
            tried.update(e.id for e in pending)
            await client.resend_pending()

    async def write(self, text: str) -> None:
        """A line typed: sent now, or recorded and sent once connected again."""
        message_id, sent_at = new_message_id(), time.time_ns() // 1_000_000
        client = self.client
        if client is None:
            self.state.record_outgoing(message_id, self.to, sent_at, "text", text)
            return
        try:
            await client.send(self.to, text, message_id)
        except (ProtocolError, ClientError) as exc:
            retry = isinstance(exc, ConnectionLost | RequestTimeout) or getattr(exc, "retryable", False)
            if not (client.closed or retry):
                self.errors.append(exc)
                return
            if message_id not in {e.id for e in self.state.pending_outgoing()}:
                self.state.record_outgoing(message_id, self.to, sent_at, "text", text)
            if not client.closed:
                await client.aclose()

    async def write_steadily(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await self.write(f"message {n}")
            await asyncio.sleep(PERIOD)

    def outgoing(self, status: str) -> set[bytes]:
        return {
            e.id
            for e in self.state.history(self.to, limit=1_000_000)
            if e.direction == "out" and e.status == status
        }


async def clinicians(cluster: Cluster, workdir: Path) -> list[Clinician]:
    """PER_NODE clinicians enrolled with the SDK on each node; the i-th of
    node 1 writes to the i-th of node 2 and back."""
    people: list[Clinician] = []
    codes = await cluster.invite_many(
        [(f"Dr Node{node} Clin{i}", f"4{node}00000{i:04d}") for node in range(2) for i in range(PER_NODE)]
    )
    for n, code in enumerate(codes):
        node, i = divmod(n, PER_NODE)
        profile = await enroll(
            cluster.urls[node],
            code,
            workdir / f"n{node}c{i}",
            PASSPHRASE,
            "desk",
            authority=AUTHORITY_PK,
            kdf=KDF_INTERACTIVE,
        )
        people.append(Clinician(profile, profile.open_state()))
    await cluster.verify(*(p.profile.user_id for p in people))
    for i in range(PER_NODE):
        a, b = people[i], people[PER_NODE + i]
        a.to, b.to = b.profile.user_id, a.profile.user_id
    return people


async def restart(node: HubProcess) -> float:
    """SIGTERM, wait for the exit (status 0 within the grace period), start
    again on the same port; returns how long the node took to exit."""
    assert node.proc is not None
    began = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    status = await asyncio.to_thread(node.proc.wait, GRACE + 10)
    took = time.monotonic() - began
    log = node.log_path.read_text()
    assert status == 0, f"exit status {status}; log:\n{log[-3000:]}"
    assert took < GRACE, f"took {took:.1f} s to exit, grace {GRACE} s"
    assert "draining: readiness 503" in log and "shut down" in log
    await asyncio.to_thread(node.start)
    return took


async def settle(people: list[Clinician]) -> None:
    """Steady traffic until every clinician has had SETTLE more messages accepted."""
    before = [len(p.outgoing("accepted")) for p in people]
    settled = await wait_until(
        lambda: all(len(p.outgoing("accepted")) >= n + SETTLE for p, n in zip(people, before, strict=True)),
        30,
    )
    assert settled, "traffic did not flow"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_rolling_restart_loses_nothing_and_bothers_nobody(cluster: Cluster, tmp_path: Path) -> None:
    sdk_log = Records()  # the SDK's warnings, and asyncio's reports of the SDK's loose ends
    for name in ("miss_client", "asyncio"):
        logging.getLogger(name).addHandler(sdk_log)
    people = await clinicians(cluster, tmp_path)
    runs = [asyncio.create_task(p.run()) for p in people]
    try:
        assert await wait_until(lambda: all(p.client is not None for p in people), 20), "not all connected"
        stop = asyncio.Event()
        writers = [asyncio.create_task(p.write_steadily(stop)) for p in people]
        await settle(people)
        exits = []
        for node in cluster.nodes:
            exits.append(await restart(node))
            assert await wait_until(lambda: all(p.client is not None for p in people), 30), "not reconnected"
            assert not any(r.done() for r in runs), [r.exception() for r in runs if r.done()]
            await settle(people)
        stop.set()
        await asyncio.gather(*writers)
        by_user = {p.profile.user_id: p for p in people}

        def drained() -> bool:
            return all(not p.state.pending_outgoing() for p in people) and all(
                p.outgoing("accepted") <= set(by_user[p.to].shown) for p in people
            )

        assert await wait_until(drained, 60), "not everything was delivered"
    finally:
        for r in runs:
            r.cancel()
        results = await asyncio.gather(*runs, return_exceptions=True)
        gc.collect()  # a future whose error nobody retrieved is reported when collected
        for name in ("miss_client", "asyncio"):
            logging.getLogger(name).removeHandler(sdk_log)
    fatal = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]

    accepted = {m for p in people for m in p.outgoing("accepted")}
    failed = sum(len(p.outgoing("failed")) for p in people)
    shown = Counter[bytes]()
    for p in people:
        shown.update(p.shown)
    delivered = sum(1 for m in accepted if shown[m] >= 1)
    duplicates = sum(n - 1 for n in shown.values() if n > 1)
    unexpected = len(set(shown) - accepted)
    errors = [e for p in people for e in p.errors] + fatal
    going_away = sum(1 for p in people for e in p.drops if getattr(e, "close_code", None) == 1001)
    odd_drops = [e for p in people for e in p.drops if not is_transient(e)]
    sdk_errors = [r for r in sdk_log.records if r.levelno >= logging.ERROR]
    sdk_warnings = Counter(r.getMessage() for r in sdk_log.records if r.levelno == logging.WARNING)
    print(
        f"\naccepted {len(accepted)}, delivered {delivered}, duplicates {duplicates}, "
        f"client errors {len(errors) + failed + len(sdk_errors)}; unexpected {unexpected}; "
        f"nodes exited in {', '.join(f'{t:.1f}' for t in exits)} s (grace {GRACE} s); "
        f"closes 1001 seen {going_away}, connections {sum(p.connected for p in people)}; "
        f"SDK warnings {dict(sdk_warnings)}"
    )
    assert len(accepted) > 0
    assert delivered == len(accepted) and duplicates == 0 and unexpected == 0
    assert errors == [] and failed == 0 and odd_drops == []
    assert [r.getMessage() for r in sdk_errors] == []
    # Every clinician's node went away under them with 1001, and they came back.
    assert all(any(getattr(e, "close_code", None) == 1001 for e in p.drops) for p in people), [
        [type(e).__name__ + str(getattr(e, "close_code", "")) for e in p.drops] for p in people
    ]
    for p in people:
        p.state.close()
