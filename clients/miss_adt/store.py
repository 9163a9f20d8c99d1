"""miss-adt's own durable state: one SQLite file (WAL, ``synchronous=FULL``:
every commit is fsync'd before the ACK that depends on it is written).

Tables
------
``answers``
    One row per MSH-10 answered for good: the :class:`~miss_adt.acks.Outcome`
    (ACK code, texts; never patient data), so that a message the feed
    resends is answered as the first time and never acted on twice.
``notices``
    One row per notice key miss-adt made: its movement (ZBE-1 and the
    trigger, unique: the same movement under a new MSH-10 is a duplicate),
    the trigger and notice event, pseudonyms of the patient and of the
    visit (HMAC-SHA256 under a random secret kept in ``meta``: a cancel
    without ZBE finds the notice of the same visit, and a second death of
    the same patient is recognised, without storing the IPP), and its
    state: ``sent``, ``spooled``, ``recalled``, ``cancelled`` (recalled
    before it was ever sent), ``refused`` (the hub refused it for good).
``spool``
    Operations waiting for the hub, in order: ``notice`` (the notice, the
    GP's RPPS) or ``recall`` (by key). ``attempted`` is 1 when a send may
    have reached the hub (then a cancel must recall it rather than drop
    it). Rows are deleted once done: the spool holds the only copy of a
    pending notice's patient data, and only until it is delivered.

Each method is one transaction. The file is created mode 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from protocol.notices import Notice

from .acks import Outcome

__all__ = ["AdtStore", "NoticeRow", "SpoolEntry"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    control_id TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notices (
    key TEXT PRIMARY KEY,
    movement TEXT UNIQUE,
    trigger TEXT NOT NULL,
    event TEXT NOT NULL,
    patient TEXT NOT NULL,
    visit TEXT NOT NULL,
    state TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS notices_visit ON notices (visit, trigger);
CREATE INDEX IF NOT EXISTS notices_patient ON notices (patient, event);
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    key TEXT NOT NULL,
    rpps TEXT,
    notice TEXT,
    control_id TEXT NOT NULL,
    attempted INTEGER NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS spool_key ON spool (key);
"""


def _now() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class NoticeRow:
    key: str
    movement: str | None
    trigger: str
    event: str
    state: str


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """A spooled operation: ``op`` ``notice`` (with ``notice`` and ``rpps``)
    or ``recall``; ``tries`` failed attempts so far."""

    seq: int
    op: str
    key: str
    rpps: str | None
    notice: Notice | None
    control_id: str
    attempted: bool
    tries: int


def _notice_json(notice: Notice) -> str:
    return json.dumps(notice.to_wire(), ensure_ascii=False)


def _notice_from(data: str) -> Notice:
    m = json.loads(data)
    m["fields"] = [list(pair) for pair in m["fields"]]
    return Notice.from_wire(m)


class AdtStore:
    """The SQLite state of one miss-adt (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE name = 'secret'").fetchone()
        if row is None:
            secret = secrets.token_hex(32)
            self.db.execute("INSERT INTO meta VALUES ('secret', ?)", (secret,))
        else:
            secret = row[0]
        self._secret = bytes.fromhex(secret)
        self._spooled: int = self.db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def pseudonym(self, *parts: str) -> str:
        """HMAC-SHA256 of ``parts`` under this database's secret (hex, 32 chars)."""
        data = "\x1f".join(parts).encode()
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()[:32]

    # --- answers -------------------------------------------------------------

    def answer(self, control_id: str) -> Outcome | None:
        """The outcome recorded for MSH-10 ``control_id``, if it was answered."""
        row = self.db.execute("SELECT outcome FROM answers WHERE control_id = ?", (control_id,)).fetchone()
        return None if row is None else Outcome.from_json(row[0])

    def record_answer(self, control_id: str, outcome: Outcome) -> None:
        with self._tx() as db:
            self._answer(db, control_id, outcome)

    @staticmethod
    def _answer(db: sqlite3.Connection, control_id: str, outcome: Outcome) -> None:
        db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", (control_id, outcome.to_json(), _now()))

    # --- notices -------------------------------------------------------------

    def _row(self, where: str, args: tuple[str, ...]) -> NoticeRow | None:
        row = self.db.execute(
            f"SELECT key, movement, trigger, event, state FROM notices WHERE {where}", args
        ).fetchone()
        return None if row is None else NoticeRow(*row)

    def by_key(self, key: str) -> NoticeRow | None:
        return self._row("key = ?", (key,))

    def by_movement(self, movement: str) -> NoticeRow | None:
        return self._row("movement = ?", (movement,))

    def latest_of_visit(self, visit: str, triggers: tuple[str, ...]) -> NoticeRow | None:
        """The newest notice of the visit (pseudonym) made by one of ``triggers``."""
        marks = ",".join("?" * len(triggers))
        return self._row(
            f"visit = ? AND trigger IN ({marks}) ORDER BY at DESC, rowid DESC", (visit, *triggers)
        )

    def live_death(self, patient: str) -> NoticeRow | None:
        """A death notice of the patient (pseudonym) sent or spooled, not recalled."""
        return self._row("patient = ? AND event = 'death' AND state IN ('sent', 'spooled')", (patient,))

    def record_sent(
        self,
        key: str,
        movement: str | None,
        trigger: str,
        event: str,
        patient: str,
        visit: str,
        control_id: str,
        outcome: Outcome,
        *,
        spool: tuple[str, Notice, bool] | None = None,
    ) -> None:
        """Record a notice (``sent``, or ``spooled`` with ``spool`` = (rpps,
        notice, attempted)) and the answer to its message, in one transaction."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO notices VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, movement, trigger, event, patient, visit, "spooled" if spool else "sent", _now()),
            )
            if spool is not None:
                rpps, notice, attempted = spool
                self._spool(db, "notice", key, rpps, notice, control_id, attempted)
            self._answer(db, control_id, outcome)

    def record_recall(
        self, key: str, state: str, control_id: str, outcome: Outcome, *, spool: bool = False
    ) -> None:
        """Mark notice ``key`` ``state``: ``recalled``; ``cancelled`` (its
        never-tried spool entry dropped); ``recalling`` with ``spool`` (its
        recall spooled, behind the notice if that is spooled too). And
        record the answer."""
        with self._tx() as db:
            if spool:
                self._spool(db, "recall", key, None, None, control_id, False)
            db.execute("UPDATE notices SET state = ? WHERE key = ?", (state, key))
            if state == "cancelled":
                removed = db.execute("DELETE FROM spool WHERE key = ? AND op = 'notice'", (key,)).rowcount
                self._spooled -= removed
            self._answer(db, control_id, outcome)

    def set_state(self, key: str, state: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE notices SET state = ? WHERE key = ?", (state, key))

    def prune(self, older_than_days: int = 400) -> int:
        """Forget answers and finished notices older than ``older_than_days``
        (beyond the SDK's 365 days of keys, a resend could not be recognised
        anyway); spooled and recalling ones stay. Returns the rows removed."""
        cutoff = _now() - older_than_days * 86_400_000
        with self._tx() as db:
            removed = db.execute("DELETE FROM answers WHERE at < ?", (cutoff,)).rowcount
            removed += db.execute(
                "DELETE FROM notices WHERE at < ? AND state NOT IN ('spooled', 'recalling')", (cutoff,)
            ).rowcount
        return removed

    # --- spool -----------------------------------------------------------------

    @property
    def spooled(self) -> int:
        """Operations waiting in the spool."""
        return self._spooled

    def _spool(
        self,
        db: sqlite3.Connection,
        op: str,
        key: str,
        rpps: str | None,
        notice: Notice | None,
        control_id: str,
        attempted: bool,
    ) -> None:
        db.execute(
            "INSERT INTO spool (op, key, rpps, notice, control_id, attempted, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                op,
                key,
                rpps,
                None if notice is None else _notice_json(notice),
                control_id,
                int(attempted),
                _now(),
            ),
        )
        self._spooled += 1

    def spooled_notice(self, key: str) -> SpoolEntry | None:
        """The spooled ``notice`` operation of ``key``, if any."""
        rows = self._entries("key = ? AND op = 'notice'", (key,), 1)
        return rows[0] if rows else None

    def next_entries(self, limit: int = 100) -> list[SpoolEntry]:
        """The oldest spooled operations, in order."""
        return self._entries("1", (), limit)

    def _entries(self, where: str, args: tuple[str, ...], limit: int) -> list[SpoolEntry]:
        rows = self.db.execute(
            "SELECT seq, op, key, rpps, notice, control_id, attempted, tries FROM spool"
            f" WHERE {where} ORDER BY seq LIMIT {int(limit)}",
            args,
        ).fetchall()
        return [
            SpoolEntry(
                seq, op, key, rpps, None if notice is None else _notice_from(notice), cid, bool(att), tries
            )
            for seq, op, key, rpps, notice, cid, att, tries in rows
        ]

    def done(self, entry: SpoolEntry, state: str) -> None:
        """Drop ``entry`` from the spool and set its notice's state."""
        with self._tx() as db:
            self._spooled -= db.execute("DELETE FROM spool WHERE seq = ?", (entry.seq,)).rowcount
            # A notice delivered while its recall waits behind it stays ``recalling``.
            db.execute(
                "UPDATE notices SET state = ? WHERE key = ? AND state != 'recalling'", (state, entry.key)
            )
            if entry.op == "recall":
                db.execute("UPDATE notices SET state = ? WHERE key = ?", (state, entry.key))

    def failed(self, entry: SpoolEntry) -> None:
        """Count a failed attempt of ``entry`` (it may have reached the hub)."""
        with self._tx() as db:
            db.execute("UPDATE spool SET tries = tries + 1, attempted = 1 WHERE seq = ?", (entry.seq,))
