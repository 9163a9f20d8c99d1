"""miss-adt's audit log: one JSON object per line, appended and flushed.

Every refusal is written (``refused``: the ACK code, the reason code and
its French detail, MSH-10, the trigger, MSH-3, the GP's RPPS when known,
the notice key), and what the spool does (``spooled``, ``spool_delivered``,
``spool_refused``), recalls (``recalled``, ``cancelled``), duplicates
(``duplicate``) and resent messages (``resent``).

Never written (GDPR: the log is kept longer than the data it is about): the
patient's name, birth date, IPP, INS, visit number or any other patient
field, and no notice text. A notice key names the movement (ZBE-1, the
hospital's movement number) or the message (MSH-10), not the patient; the
RPPS is the GP's professional identifier.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

__all__ = ["AuditLog"]


class AuditLog:
    """Appends events to ``path`` (created 0600), or keeps them in
    :attr:`events` only when ``path`` is None (tests)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        """Append ``event`` with ``fields`` (None values left out) and the time."""
        record: dict[str, Any] = {
            "ts": datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds"),
            "event": event,
        }
        record.update((k, v) for k, v in fields.items() if v is not None and v != "")
        if self._file is None:
            self.events.append(record)
        else:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
