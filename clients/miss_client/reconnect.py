"""Keeping a long-lived connection of a profile's device open: profile locks,
backoff, reconnection.

Theory of operation
-------------------
The hub sees every process that opens a profile as *the same device*: when
a second one authenticates, it closes the first with ``session_replaced``
(4409, SPEC §7). Two locks in the profile directory keep ``miss-chat``
processes from doing that to each other. Both are ``fcntl.flock`` locks
(:class:`ProfileLock`): the kernel drops them when their holder dies, so a
crash never leaves a profile locked.

``chat.lock``
    Held for the whole life of a ``chat``: one chat per profile at a time.
    A second one fails at once (:meth:`ProfileLock.try_acquire`).
``session.lock``
    Held exclusively by a one-shot command (``send``, ``inbox``...) for as
    long as it is connected, and by a chat *only while it opens a
    connection* (:class:`Reconnector`), never while merely connected. So a
    one-shot may connect at any time and replace the chat's session (it
    waits at most for a chat's handshake), and the chat never connects
    while a one-shot is connected: it never replaces one.

A chat whose session was replaced (:class:`~protocol.errors.SessionReplaced`)
waits, in a thread, until ``session.lock`` is free (the one-shot is done),
and reconnects at once, still holding the lock through its handshake. If
the lock was free already, whatever replaced the session does not take it
(another copy of the profile, an older client): then the chat backs off
like after any other drop, so that two such processes do not take turns
replacing each other as fast as they can.

Reconnection (:class:`Reconnector`): after a drop (hub restart, close 1001,
a lost node, a network failure), the first attempt comes after a short
random delay (SPEC §7 asks it of close 1001: not every client of a node at
the same instant), then attempts follow with exponential backoff and
jitter (:data:`RECONNECT_WAIT`, with tenacity: 0.25-0.5 s, then 0.5-1 s, ...
up to 15-30 s). The backoff starts over after every successful
connection. Errors that reconnecting cannot cure end it (:data:`FATAL`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import os
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

from protocol.errors import (
    AccountSuspended,
    AuthFailed,
    DeviceRevoked,
    FatalError,
    InvalidCode,
    ProtocolError,
    SessionReplaced,
    UnsupportedVersion,
)

from .client import Client
from .errors import ConnectionFailed, ConnectionLost, MessageTooLarge, RequestTimeout
from .profile import Profile
from .state import LocalState

__all__ = [
    "CHAT_LOCK",
    "FATAL",
    "RECONNECT_WAIT",
    "SESSION_LOCK",
    "Phase",
    "ProfileLock",
    "Reconnector",
    "Status",
    "is_transient",
    "session_lock",
]

CHAT_LOCK = "chat.lock"
SESSION_LOCK = "session.lock"

#: Hub errors after which reconnecting is pointless: the user must act.
FATAL: tuple[type[ProtocolError], ...] = (
    DeviceRevoked,
    AccountSuspended,
    AuthFailed,
    InvalidCode,
    UnsupportedVersion,
)

#: Waits between reconnection attempts: exponential with "equal jitter"
#: (half fixed, half random): 0.25-0.5 s, 0.5-1 s, 1-2 s, ... 15-30 s.
RECONNECT_WAIT: wait_base = wait_exponential(multiplier=0.25, max=15) + wait_random_exponential(
    multiplier=0.25, max=15
)
#: Longest random delay before the first attempt after a drop.
FIRST_DELAY = 0.5


class ProfileLock:
    """An exclusive ``flock`` on ``path`` (created, mode 0600, if missing).

    Contract: :meth:`try_acquire` never waits; :meth:`acquire` waits in a
    daemon thread, so neither the event loop nor the program's exit is held
    up by it, and a wait that is cancelled leaves the lock free. Both are
    no-ops while this object holds the lock; :meth:`release` is idempotent.
    Locks are per object: two ProfileLocks on one path exclude each other,
    even in one process. Not thread-safe: use one from one event loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False if another holder has it."""
        if self._fd is not None:
            return True
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    async def acquire(self) -> None:
        """Take the lock, waiting (in a thread) for its holder to release it."""
        if self.try_acquire():
            return
        loop = asyncio.get_running_loop()
        got: asyncio.Future[int] = loop.create_future()

        def hand_over(fd: int, error: OSError | None) -> None:  # on the loop
            if got.done():  # the wait was cancelled: give the lock back
                if error is None:
                    os.close(fd)
            elif error is not None:
                got.set_exception(error)
            else:
                got.set_result(fd)

        def wait() -> None:  # in the thread
            try:
                fd = self._open()
            except OSError as exc:
                post(-1, exc)
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                os.close(fd)
                post(-1, exc)
                return
            if not post(fd, None):
                os.close(fd)

        def post(fd: int, error: OSError | None) -> bool:
            try:
                loop.call_soon_threadsafe(hand_over, fd, error)
            except RuntimeError:  # the loop is closed: the program is leaving
                return False
            return True

        threading.Thread(target=wait, name=f"miss-lock-{self.path.name}", daemon=True).start()
        self._fd = await got

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor releases the flock


@contextlib.asynccontextmanager
async def session_lock(
    directory: Path, on_wait: Callable[[], None] | None = None, notice_after: float = 1.0
) -> AsyncIterator[None]:
    """Hold ``session.lock`` of the profile in ``directory`` for a one-shot
    command's connection (see the module docstring). Waits while a chat
    opens its connection, or another one-shot is connected; ``on_wait`` is
    called once if that takes more than ``notice_after`` seconds."""
    lock = ProfileLock(Path(directory) / SESSION_LOCK)
    if not lock.try_acquire():
        waiting = asyncio.ensure_future(lock.acquire())
        try:
            done, _ = await asyncio.wait({waiting}, timeout=notice_after)
            if not done and on_wait is not None:
                on_wait()
            await waiting
        except BaseException:
            waiting.cancel()
            raise
    try:
        yield
    finally:
        lock.release()


def is_transient(exc: BaseException) -> bool:
    """True for what a reconnection may cure: a lost or refused connection,
    a request without an answer, a retryable hub error, a fatal hub error
    other than :data:`FATAL` (e.g. ``auth_timeout`` on a slow network), a
    replaced session."""
    if isinstance(exc, FATAL):
        return False
    if isinstance(exc, ConnectionLost | ConnectionFailed | RequestTimeout | MessageTooLarge | FatalError):
        return True
    return isinstance(exc, ProtocolError) and exc.retryable


class Phase(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"  # for the next attempt: Status.retry_at
    PAUSED = "paused"  # another miss-chat command uses the profile
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class Status:
    """Where the connection is: ``retry_at`` (event loop time) when WAITING;
    ``error`` why the last connection or attempt ended, if it did;
    ``again`` once a first connection was made."""

    phase: Phase
    error: BaseException | None = None
    retry_at: float | None = None
    again: bool = False


#: Opens a connection: ``Client.connect`` or a stand-in with its signature.
Connector = Callable[..., AbstractAsyncContextManager[Client]]
#: What runs on each connection: ``session(client, again)``.
Session = Callable[[Client, bool], Awaitable[None]]


class Reconnector:
    """Runs a session over a connection of ``profile``'s device, and
    reconnects whenever the connection ends for a transient reason.

    :meth:`run` contract: the first connection is made (holding
    ``session.lock`` through the handshake) and must succeed, else its error
    is raised. Then ``await session(client, again)`` runs (``again`` false
    the first time). If it returns, :meth:`run` returns. If it raises an
    error that :func:`is_transient` accepts, the client is closed and a new
    one connected as the module docstring says; ``session`` runs again with
    ``again`` true. Any other error (:data:`FATAL`, a profile error, a bug)
    is raised. ``on_status`` hears every change of :class:`Status`.
    ``state`` is the profile's open state, shared by every connection.
    """

    def __init__(
        self,
        profile: Profile,
        state: LocalState,
        *,
        on_status: Callable[[Status], None] = lambda status: None,
        wait: wait_base = RECONNECT_WAIT,
        first_delay: float = FIRST_DELAY,
        connect: Connector = Client.connect,
    ) -> None:
        self.profile = profile
        self.state = state
        self.on_status = on_status
        self.wait = wait
        self.first_delay = first_delay
        self._connect = connect
        self._lock = ProfileLock(profile.directory / SESSION_LOCK)
        self._status = Status(Phase.DISCONNECTED)

    @property
    def status(self) -> Status:
        return self._status

    def _set(self, status: Status) -> None:
        self._status = status
        self.on_status(status)

    async def run(self, session: Session) -> None:
        again = False
        delay = 0.0
        try:
            while True:
                async with AsyncExitStack() as stack:
                    if again:
                        client = await self._open_retrying(stack, delay)
                    else:
                        client = await self._open(stack, again=False)
                    self._set(Status(Phase.CONNECTED, again=again))
                    try:
                        await session(client, again)
                        return
                    except Exception as exc:
                        if not is_transient(exc):
                            raise
                        error: Exception = exc
                again = True
                delay = await self._after(error)
        except BaseException as exc:
            self._lock.release()
            self._set(Status(Phase.DISCONNECTED, error=exc, again=again))
            raise

    async def _after(self, error: Exception) -> float:
        """The delay before the first attempt after the session ended with
        ``error``: none after waiting for a one-shot command to be done (the
        lock then held, so that no other one-shot slips in), else a short
        random one."""
        if isinstance(error, SessionReplaced) and not self._lock.try_acquire():
            self._set(Status(Phase.PAUSED, error=error, again=True))
            await self._lock.acquire()
            return 0.0
        self._lock.release()
        delay = random.uniform(0, self.first_delay)
        retry_at = asyncio.get_running_loop().time() + delay
        self._set(Status(Phase.WAITING, error=error, retry_at=retry_at, again=True))
        return delay

    async def _open(self, stack: AsyncExitStack, again: bool) -> Client:
        """One attempt: take ``session.lock`` (waiting for a one-shot to be
        done), connect, release the lock once the hub welcomed us."""
        try:
            if not self._lock.try_acquire():
                self._set(Status(Phase.PAUSED, again=again))
                await self._lock.acquire()
            self._set(Status(Phase.CONNECTING, again=again))
            client = await stack.enter_async_context(self._connect(self.profile, state=self.state))
        finally:
            self._lock.release()
        return client

    async def _open_retrying(self, stack: AsyncExitStack, delay: float) -> Client:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay)

        def before_sleep(state: RetryCallState) -> None:
            assert state.outcome is not None and state.next_action is not None
            retry_at = loop.time() + state.next_action.sleep
            self._set(Status(Phase.WAITING, error=state.outcome.exception(), retry_at=retry_at, again=True))

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=self.wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._open(stack, again=True)
        raise AssertionError("unreachable: tenacity retries until success or a fatal error")
