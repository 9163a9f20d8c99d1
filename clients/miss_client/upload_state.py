"""Attachments still uploading, in the local state (table ``uploads``,
:mod:`miss_client.state_schema` version 6; SPEC §16).

Theory of operation
-------------------
An outgoing message with attachments is recorded ``pending`` together with
one ``uploads`` row per file (:meth:`UploadState.insert`, run inside
:meth:`LocalState.record_outgoing
<miss_client.state.LocalState.record_outgoing>`'s transaction): the spool
file holding its ciphertext, and, sealed under the profile's storage key,
the key, hash, size, type, name and thumbnail. The row then follows the
upload: the hub's blob id once ``blob_begin`` gave one
(:meth:`UploadState.set_blob`), ``done`` once ``blob_end`` was answered
(:meth:`UploadState.set_done`). A connection lost mid-upload, or a
restart, leaves the rows: the next :meth:`Client.resend_pending
<miss_client.client.Client.resend_pending>` resumes each upload from the
bytes the hub holds (``blob_begin {blob}``), never from zero.

Once every file is done, :meth:`UploadState.finish` moves the descriptors
into the message's sealed row and deletes the ``uploads`` rows in one
transaction, then the spool files; :meth:`UploadState.discard` does the
same for a message refused for good.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol.attachments import Attachment

from .attachments import SpooledFile
from .state import LocalState

__all__ = ["UploadRow", "UploadState"]

log = logging.getLogger("miss_client")


@dataclass(frozen=True, slots=True)
class UploadRow:
    """One attachment of an outgoing message: the ``idx``-th, its spooled
    file, the hub's ``blob`` id (None before ``blob_begin``), and ``done``
    once ``blob_end`` was answered."""

    idx: int
    file: SpooledFile
    blob: str | None
    done: bool


class UploadState:
    """The ``uploads`` table of ``state``; ``spool_dir`` holds the files."""

    def __init__(self, state: LocalState, spool_dir: Path) -> None:
        self._state = state
        self.spool_dir = spool_dir

    def insert(self, db: sqlite3.Connection, message_id: bytes, files: Sequence[SpooledFile]) -> None:
        """Add a row per file of ``message_id``, in the transaction ``db``."""
        for idx, item in enumerate(files):
            data = {
                "key": item.key,
                "hash": item.hash,
                "size": item.size,
                "type": item.type,
                "name": item.name,
                "thumb": item.thumb,
                "w": item.w,
                "h": item.h,
            }
            db.execute(
                "INSERT OR REPLACE INTO uploads (id, idx, spool, blob, done, sealed) "
                "VALUES (?, ?, ?, NULL, 0, ?)",
                (message_id, idx, item.spool.name, self._state.seal_data(message_id, data)),
            )

    def rows(self, message_id: bytes) -> list[UploadRow]:
        """The attachments of ``message_id`` still uploading, in order (none
        once :meth:`finish` ran)."""
        out = []
        for idx, spool, blob, done, sealed in self._state.db.execute(
            "SELECT idx, spool, blob, done, sealed FROM uploads WHERE id = ? ORDER BY idx", (message_id,)
        ):
            d = self._state.open_data(message_id, sealed)
            item = SpooledFile(
                self.spool_dir / spool,
                d["key"],
                d["hash"],
                d["size"],
                d["type"],
                d["name"],
                d.get("thumb"),
                d.get("w"),
                d.get("h"),
            )
            out.append(UploadRow(idx, item, blob, bool(done)))
        return out

    def set_blob(self, message_id: bytes, idx: int, blob: str | None) -> None:
        """Record the hub's blob id of an upload (None: begin again)."""
        with self._state.transaction() as db:
            db.execute(
                "UPDATE uploads SET blob = ?, done = 0 WHERE id = ? AND idx = ?", (blob, message_id, idx)
            )

    def set_done(self, message_id: bytes, idx: int) -> None:
        """The hub answered ``blob_end``: the blob is complete and durable."""
        with self._state.transaction() as db:
            db.execute("UPDATE uploads SET done = 1 WHERE id = ? AND idx = ?", (message_id, idx))

    def finish(self, message_id: bytes, attachments: Sequence[Attachment]) -> None:
        """Every file is uploaded: the descriptors go into the message's
        sealed row and the rows away, in one transaction; then the spool
        files are deleted."""
        spools = [row.file.spool for row in self.rows(message_id)]

        def drop(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM uploads WHERE id = ?", (message_id,))

        self._state.set_attachments(message_id, attachments, also=drop)
        self._unlink(spools)

    def discard(self, message_id: bytes) -> None:
        """Forget the uploads of a message that will not be sent (refused
        for good, recalled): rows and spool files."""
        spools = [row.file.spool for row in self.rows(message_id)]
        with self._state.transaction() as db:
            db.execute("DELETE FROM uploads WHERE id = ?", (message_id,))
        self._unlink(spools)

    def _unlink(self, spools: Sequence[Path]) -> None:
        for path in spools:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("spool file not deleted: %s", type(exc).__name__)
