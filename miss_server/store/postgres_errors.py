"""How PostgreSQL and asyncpg failures map to the Store's errors.

Used by ``postgres.py`` (the store) and ``postgres_batch.py`` (group commit);
nothing here talks to the server. The mapping:

* a backend failure (server down, connection lost, timeout, too many
  connections) becomes :class:`StoreUnavailable`;
* an integrity or data error (duplicate RPPS or signing key, a value
  PostgreSQL cannot hold) becomes ``ValueError``;
* the store's own errors pass through.

A *statement error* (:func:`is_statement_error`) failed one statement on a
connection that is still good: the input is at fault, a replay of the other
work can succeed. A *lost connection* (:func:`is_connection_lost`) means work
that had not sent ``COMMIT`` rolled back and may run again elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import asyncpg
import asyncpg.exceptions as pgerr

from .base import CodeInvalid, SchemaMismatch, StoreUnavailable

__all__ = [
    "discard_if_broken",
    "failure",
    "is_connection_lost",
    "is_statement_error",
    "reraise",
    "translate",
]

_BACKEND_DOWN = (
    OSError,
    TimeoutError,
    pgerr.PostgresConnectionError,  # class 08, ConnectionDoesNotExistError
    pgerr.OperatorInterventionError,  # class 57: admin shutdown, cannot connect now
    pgerr.InsufficientResourcesError,  # class 53: too many connections, disk full
)
_CONNECTION_LOST = (
    ConnectionError,
    pgerr.PostgresConnectionError,
    pgerr.AdminShutdownError,
    pgerr.CrashShutdownError,
    # asyncpg's protocol state after the server dropped an idle connection and
    # before the loop noticed the socket closed ("another operation is in progress").
    pgerr.InternalClientError,
)


def is_statement_error(exc: BaseException) -> bool:
    """The statement failed but the connection is fine: the input is at fault."""
    if isinstance(exc, asyncpg.InterfaceError):
        return isinstance(exc, ValueError)  # asyncpg could not encode an argument
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _BACKEND_DOWN)


def is_connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_LOST):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def translate(exc: BaseException) -> BaseException:
    """The Store error for ``exc`` (``exc`` itself if it is not a backend's)."""
    if isinstance(exc, StoreUnavailable | CodeInvalid | SchemaMismatch):
        return exc
    if isinstance(exc, pgerr.IntegrityConstraintViolationError):
        return ValueError(str(exc))
    if isinstance(exc, pgerr.DataError) or (
        isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)
    ):
        return ValueError(f"invalid value: {exc}")
    if isinstance(
        exc,
        asyncpg.PostgresError | asyncpg.InterfaceError | pgerr.InternalClientError | OSError | TimeoutError,
    ):
        return StoreUnavailable(f"{type(exc).__name__}: {exc}")
    return exc


@contextlib.contextmanager
def discard_if_broken(conn: asyncpg.Connection) -> Iterator[None]:
    """Close a connection that failed for a backend reason, so that the pool
    opens a new one rather than lend it again."""
    try:
        yield
    except Exception as exc:
        if isinstance(translate(exc), StoreUnavailable) and not conn.is_closed():
            conn.terminate()
        raise


def reraise(exc: BaseException) -> NoReturn:
    """Raise the Store error for ``exc``, chained to it."""
    err = translate(exc)
    if err is exc:
        raise exc
    raise err from exc


def failure(exc: BaseException) -> BaseException:
    """What one caller of a failed batch gets: the translated error, a fresh
    instance each (one instance raised in many tasks piles up tracebacks)."""
    err = translate(exc)
    try:
        copy = type(err)(*err.args)
    except Exception:
        return err
    copy.__cause__ = exc if err is not exc else exc.__cause__
    return copy
