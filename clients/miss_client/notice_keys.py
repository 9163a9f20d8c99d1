"""Sending notices idempotently (SPEC §17.3): the ``notice_keys`` table of
the local state (:mod:`miss_client.state_schema` version 7) and
:class:`NoticeSender`, behind :meth:`Client.send_notice
<miss_client.client.Client.send_notice>`.

Theory of operation
-------------------
An integration server (``miss-notify``, ``miss-adt``) sends each notice
with a **key** of its own (for an HL7 feed, the message control id), so
that a feed replayed after a crash does not notify a clinician twice. The
first call with a key chooses a message id and records ``key -> id``
(:meth:`NoticeKeys.insert`) in the very transaction that records the
message ``pending`` in the history (:meth:`LocalState.record_outgoing
<miss_client.state.LocalState.record_outgoing>`), before anything is
sent. A later call with the same key then finds the id:

* the message is ``accepted``: the id is returned, nothing is sent;
* it is ``pending`` (the connection dropped, the process died after the
  record, or before the hub's answer arrived) or ``failed``: it is resent
  **with the same id and the recorded notice**, so the hub answers
  ``accepted {dup: true}`` if it had stored it, and the recipient gets one
  message whatever happened;
* its text is gone (recalled, expired) or its row was deleted: the id is
  returned, nothing is sent.

The content of the first call wins: a repeat is not compared with it. Keys
are kept :data:`KEEP_MS` (365 days), per profile: two integration servers
do not share them.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from protocol import crypto
from protocol.notices import Notice, render_text
from protocol.oncall import is_role_id

from .models import check_frame_text, is_user_id, now_ms
from .state import LocalState

if TYPE_CHECKING:  # the outbox uses last_notice_reply
    from .outbox import Outbox
    from .peers import Peers

__all__ = ["KEEP_MS", "MAX_KEY", "NoticeKeys", "NoticeSender", "last_notice_reply"]

#: How long a key is remembered (ms): 365 days (SPEC §17.3).
KEEP_MS = 365 * 86_400_000
#: Longest key (characters).
MAX_KEY = 200


def check_key(key: str) -> str:
    """``key`` if it is 1 to 200 characters without U+0000; ValueError otherwise."""
    if type(key) is not str or not 1 <= len(key) <= MAX_KEY:
        raise ValueError(f"a notice key is 1 to {MAX_KEY} characters")
    return check_frame_text(key, "a notice key")


def last_notice_reply(state: LocalState, peer: str, scan: int = 200) -> str | None:
    """The ``reply`` line of the last notice received from ``peer`` among
    the last ``scan`` messages of that conversation, if any: whom to call
    when the service does not accept replies (SPEC §17.2)."""
    for entry in reversed(state.history(peer, limit=scan)):
        if entry.direction == "in" and entry.notice is not None and entry.notice.reply:
            return entry.notice.reply
    return None


class NoticeKeys:
    """The ``notice_keys`` table of ``state``."""

    def __init__(self, state: LocalState) -> None:
        self._state = state

    def get(self, key: str) -> bytes | None:
        """The message id recorded for ``key`` (within the last 365 days), or None."""
        row = self._state.db.execute(
            "SELECT id FROM notice_keys WHERE key = ? AND at > ?", (key, now_ms() - KEEP_MS)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def insert(self, db: sqlite3.Connection, key: str, message_id: bytes) -> None:
        """Record ``key -> message_id`` in the transaction ``db`` (the one
        recording the message), forgetting keys older than 365 days."""
        now = now_ms()
        db.execute("DELETE FROM notice_keys WHERE at <= ?", (now - KEEP_MS,))
        db.execute(
            "INSERT OR REPLACE INTO notice_keys (key, id, at) VALUES (?, ?, ?)", (key, message_id, now)
        )


class NoticeSender:
    """Sends notices for one connection, idempotently by key (module doc)."""

    def __init__(self, outbox: Outbox, peers: Peers, state: LocalState) -> None:
        self._outbox = outbox
        self._peers = peers
        self._state = state
        self.keys = NoticeKeys(state)

    async def send(
        self,
        notice: Notice,
        *,
        key: str,
        user: str | None = None,
        rpps: str | None = None,
        role: str | None = None,
        text: str | None = None,
        lifespan_ms: int | None = None,
    ) -> bytes:
        """See :meth:`Client.send_notice <miss_client.client.Client.send_notice>`."""
        if not isinstance(notice, Notice):
            raise TypeError("notice must be a protocol.notices.Notice")
        check_key(key)
        if sum(x is not None for x in (user, rpps, role)) != 1:
            raise ValueError("a notice goes to exactly one of user, rpps or role")
        body = render_text(notice) if text is None else text
        if not body.strip():
            raise ValueError("a notice's text is empty")
        known = self.keys.get(key)
        if known is not None:
            entry = self._state.get_message(self._state.own_user, known)
            if entry is not None and entry.gone is None and entry.status != "accepted":
                await self._outbox.resend(entry)
            return known
        if role is not None:
            if not is_role_id(role):
                raise ValueError(f"{role!r} is not a role id (r_...)")
            target = role
        elif user is not None:
            if not is_user_id(user):
                raise ValueError(f"{user!r} is not a user id (u_...)")
            target = user
        else:
            assert rpps is not None
            target = (await self._peers.lookup(rpps=check_frame_text(rpps.strip(), "an RPPS number"))).user
        message_id = crypto.new_message_id()
        return await self._outbox.send(
            target,
            body,
            message_id,
            lifespan_ms=lifespan_ms,
            notice=notice,
            also=lambda db: self.keys.insert(db, key, message_id),
        )
