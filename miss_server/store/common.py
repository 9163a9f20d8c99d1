"""What both stores share besides their rows (``rows.py``): the queries
written once for both dialects, the directory's rules, and the group
commit's pacing.

Dialect differences stay in each store's module: a store describes its
notation in a :class:`SqlDialect`, which writes the shared queries in it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from protocol import attestation
from protocol.frames import MIN_SEARCH_CHARS, STATUSES

from .base import COMMIT_INTERVAL, AuditEvent, GroupCommitStats
from .rows import AUDIT_COLUMNS, DEVICE_COLUMNS, USER_COLUMNS, Row, to_audit_event

__all__ = [
    "MAX_BATCH",
    "SEARCH_MIN_CHARS",
    "SEARCH_SEPARATOR",
    "AuditFilter",
    "AuditQuery",
    "Pacing",
    "SqlDialect",
    "attested_keys",
    "check_status",
    "like_pattern",
    "new_device_id",
    "new_user_id",
    "searchable",
]


# --- queries written once for both dialects ---------------------------------------


class AuditFilter(TypedDict, total=False):
    """The filters of :meth:`Store.audit_log <.base.Store.audit_log>`, which
    states their defaults."""

    since_at: int
    user_id: str | None
    actions: list[str] | None
    limit: int
    after_seq: int
    oldest: bool


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One read of the audit log (:meth:`SqlDialect.audit_query`): its
    statement, its arguments, and the order in which its rows come back."""

    sql: str
    args: tuple[object, ...]
    oldest: bool

    def events(self, rows: Sequence[Row]) -> list[AuditEvent]:
        """The events of this query's rows, oldest first."""
        return [to_audit_event(r) for r in (rows if self.oldest else reversed(rows))]


@dataclass(frozen=True, slots=True)
class SqlDialect:
    """How a dialect writes what the shared queries need, and those queries
    written in it."""

    #: The ``n``-th parameter, from 1 (SQLite's ``?NNN``, PostgreSQL's ``$n``).
    param: Callable[[int], str]
    #: ``column`` holds one of the strings of the list parameter ``param``.
    one_of: Callable[[str, str], str]
    #: A list of strings as the value of one parameter.
    strings: Callable[[list[str]], object]

    def visible_users(self) -> str:
        """:meth:`Store.visible_users <.base.Store.visible_users>`: parameter
        1 is the viewer, 2 the list of candidates."""
        # Candidates are found by primary key, then kept if the viewer is them,
        # shares their organisation, or is their contact: the viewer's contacts
        # are read once (primary key, contacts_by_b), not looked up per candidate.
        viewer = self.param(1)
        return f"""
SELECT u.user_id FROM users u
WHERE {self.one_of("u.user_id", self.param(2))}
  AND (u.user_id = {viewer}
       OR (u.organisation <> ''
           AND u.organisation = (SELECT organisation FROM users WHERE user_id = {viewer}))
       OR u.user_id IN (SELECT user_b FROM contacts WHERE user_a = {viewer}
                        UNION ALL
                        SELECT user_a FROM contacts WHERE user_b = {viewer}))"""

    def device_users(self) -> str:
        """:meth:`Store.get_device_user <.base.Store.get_device_user>`, for
        the devices asked in one turn (batched_reads.py): ``DEVICE_COLUMNS``
        then ``USER_COLUMNS`` (NULLs if the user is gone) of each device
        whose id is in the list parameter 1."""
        device = ", ".join(f"d.{c}" for c in DEVICE_COLUMNS.split(", "))
        user = ", ".join(f"u.{c}" for c in USER_COLUMNS.split(", "))
        return f"""
SELECT {device}, {user} FROM devices d LEFT JOIN users u ON u.user_id = d.user_id
WHERE {self.one_of("d.device_id", self.param(1))}"""

    def places_taken(self) -> str:
        """The places a user (parameter 1) holds under the device cap at a
        time (parameter 2; SPEC §5.3): active devices and unused, unexpired
        link codes."""
        user, now = self.param(1), self.param(2)
        return f"""
SELECT (SELECT count(*) FROM devices WHERE user_id = {user} AND revoked_at IS NULL)
     + (SELECT count(*) FROM enrollment_codes
        WHERE user_id = {user} AND link AND used_at IS NULL AND expires_at > {now})"""

    def audit_query(self, filters: AuditFilter) -> AuditQuery | None:
        """The read of the audit log for ``filters``; None when nothing can
        match (a ``limit`` of 0 or less, ``actions=[]``). Each combination
        of filters has a statement text of its own, so that PostgreSQL
        plans each rather than one generic plan full of ORs."""
        actions = filters.get("actions")
        limit = filters.get("limit", 100)
        oldest = filters.get("oldest", False)
        if limit <= 0 or (actions is not None and not list(actions)):
            return None
        args: list[object] = [filters.get("since_at", 0), filters.get("after_seq", 0)]
        where = [f"at >= {self.param(1)}", f"seq > {self.param(2)}"]
        user_id = filters.get("user_id")
        if user_id is not None:
            args.append(user_id)
            where.append(f"user_id = {self.param(len(args))}")
        if actions is not None:
            args.append(self.strings(list(actions)))
            where.append(self.one_of("action", self.param(len(args))))
        args.append(limit)
        # The newest (or oldest) ``limit`` that match; events() hands them back oldest first.
        sql = (
            f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} "
            f"ORDER BY seq {'ASC' if oldest else 'DESC'} LIMIT {self.param(len(args))}"
        )
        return AuditQuery(sql, tuple(args), oldest)


def check_status(status: str) -> None:
    """Raise ValueError for a status not in ``protocol.frames.STATUSES``,
    which the schemas' CHECK constraints name too."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")


# --- identities -------------------------------------------------------------------
# Ids are a prefix and 16 hex digits, 18 characters: migrations 0005 (SQLite)
# and 0006 (PostgreSQL) find devices in attestations by that length.


def new_user_id() -> str:
    return "u_" + secrets.token_hex(8)


def new_device_id() -> str:
    return "d_" + secrets.token_hex(8)


# --- the directory ----------------------------------------------------------------

#: Joins a user's searched fields in the directory index (unit separator):
#: no query contains it, so no match spans two fields.
SEARCH_SEPARATOR = "\x1f"
#: The shortest query the directory answers (SPEC §11.3): the shortest a
#: trigram index serves, and shorter ones match thousands and tell nobody anything.
SEARCH_MIN_CHARS = MIN_SEARCH_CHARS


def searchable(query: str, limit: int) -> bool:
    """Whether the directory answers ``query`` at all (SPEC §11.3): not for
    a query shorter than ``SEARCH_MIN_CHARS``, nor one holding the
    separator, nor for a ``limit`` below 1."""
    return limit > 0 and len(query) >= SEARCH_MIN_CHARS and SEARCH_SEPARATOR not in query


def like_pattern(query: str) -> str:
    """``query`` for ``LIKE '%' || $1 || '%'`` with the backslash as escape
    character: its own %, _ and \\ are literal."""
    return query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def attested_keys(blob: bytes) -> set[tuple[str, bytes, bytes]]:
    """``(device id, sign_pk, box_pk)`` of every device an attestation names;
    none for bytes that are not an attestation (which vouch for nothing).
    The signature is not checked: the store records what the administrators
    signed, and the hub and clients check it."""
    try:
        parsed = attestation.peek(blob)
    except attestation.AttestationError:
        return set()
    return {(d.device, d.sign_pk, d.box_pk) for d in parsed.devices}


# --- group commit -----------------------------------------------------------------

#: The most calls one group commit carries.
MAX_BATCH = 512


class Pacing:
    """The group commit's policy, the same for both stores' committers
    (``COMMIT_INTERVAL``, base.py): a batch of at most ``max_batch`` calls
    starts no sooner than ``COMMIT_INTERVAL`` after the previous batch ended,
    and :attr:`stats` counts the batches and the calls they carried. It
    never waits itself: the committer passes its monotonic clock's time and
    sleeps as it can (a thread, a task)."""

    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self.stats = GroupCommitStats()
        self._ended = float("-inf")  # no batch yet: the first starts at once

    def pause(self, now: float) -> float:
        """Seconds to wait before the next batch may start (0 or less: none)."""
        return self._ended + COMMIT_INTERVAL - now

    def ended(self, now: float, calls: int) -> None:
        """A batch of ``calls`` calls ended at ``now``: the next waits for
        it, and :attr:`stats` counts it (``calls=0``: a batch that is not
        to be counted, such as a failed one where the store counts only
        committed batches)."""
        self._ended = now
        if calls:
            self.stats.transactions += 1
            self.stats.calls += calls
