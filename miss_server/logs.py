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

__all__ = ["CONN", "REQ", "ContextFilter", "new_conn_id", "setup_logging"]

#: The connection the running task serves (None outside one).
CONN: contextvars.ContextVar[str | None] = contextvars.ContextVar("miss_conn", default=None)
#: The request the running task handles (None between requests).
REQ: contextvars.ContextVar[str | None] = contextvars.ContextVar("miss_req", default=None)


def new_conn_id() -> str:
    """A connection id: 8 hex digits, unique enough to grep a node's day."""
    return secrets.token_hex(4)


class ContextFilter(logging.Filter):
    """Adds ``conn`` and ``req`` from the running task's context to every
    record that does not name them itself (``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("conn", CONN), ("req", REQ)):
            value = var.get()
            if value is not None and name not in record.__dict__:
                setattr(record, name, value)
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
