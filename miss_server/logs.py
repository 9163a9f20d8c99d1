"""Structured logging for the hub: ``key=value`` text or one JSON object a line.

Callers pass context with ``extra={...}``; only those keys and the fixed
record fields are printed. Two more come from the task that logs
(:class:`ContextFilter`): ``conn``, the connection a line is about (set
once per connection, inherited by the tasks it starts, such as its
delivery task), and ``req``, the request being handled. A ``send``'s
request id is its message id (hex): the nodes that deliver the message and
its receipts log the same id, read from the frame the broker carried, so
one grep follows a message across nodes. Any other request's id is
``CONN.RID``. By policy (docs/ARCHITECTURE.md, guarantee 3) nothing logged
ever carries a message body, an envelope, a key or a code: log ids and
counts only.
"""

from __future__ import annotations

import contextvars
import json
import logging
import secrets
import sys
import time

__all__ = ["CONN", "REQ", "ContextFilter", "new_conn_id", "request_id", "setup_logging"]

#: The connection the running task serves (None outside one).
CONN: contextvars.ContextVar[str | None] = contextvars.ContextVar("miss_conn", default=None)
#: The request frame the running task handles (None between requests).
#: Its id (:func:`request_id`) is worked out only when a line is logged, so
#: that a request costs the hot path a context switch, not a string.
REQ: contextvars.ContextVar[object | None] = contextvars.ContextVar("miss_req", default=None)


def new_conn_id() -> str:
    """A connection id: 8 hex digits, unique enough to grep a node's day."""
    return secrets.token_hex(4)


def request_id(frame: object, conn: str | None) -> str | None:
    """The id of a request ``frame`` in the logs: a ``send``'s message id in
    hex, another request's ``CONN.RID``; None for a frame without a rid (an
    ``ack``: its receipts name their sends)."""
    if getattr(frame, "TYPE", None) == "send":
        mid = getattr(frame, "id", None)
        return mid.hex() if isinstance(mid, bytes) else None
    rid = getattr(frame, "rid", None)
    return None if rid is None else f"{conn}.{rid}"


class ContextFilter(logging.Filter):
    """Adds ``conn`` and ``req`` from the running task's context to every
    record that does not name them itself (``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        conn = CONN.get()
        if conn is not None and "conn" not in record.__dict__:
            record.conn = conn
        frame = REQ.get()
        if frame is not None and "req" not in record.__dict__:
            request = request_id(frame, conn)
            if request is not None:
                record.req = request
        return True


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = (
            f"{ts}.{int(record.msecs):03d}Z {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        )
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs every failed handshake at INFO with the peer's request;
    # ours are enough.
    logging.getLogger("websockets").setLevel(logging.WARNING)
