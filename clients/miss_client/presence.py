"""Presence on one connection: our status, watched clinicians (SPEC §6.7).

Theory of operation
-------------------
:meth:`Presence.watch` replaces the list of users this connection watches;
:meth:`Presence.set_status` sets ours. What the hub says is applied by the
router's reader itself, in arrival order (:meth:`Presence.on_answer`,
:meth:`Presence.on_push`): a ``watching`` answer replaces the presence cache
(:meth:`Presence.presence`) with its snapshot, and a ``presence`` push
updates it and, if it changed what we knew, queues a
:class:`~miss_client.models.PresenceChanged` event with the deliveries.
Doing both in the reader, not in the awaiting caller, keeps a push that
follows a snapshot on the wire from being overwritten by it.

A push about a user who is not watched is dropped, except while a ``watch``
is unanswered: it may be about a user that request adds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from protocol import frames as f

from .errors import BadRecipient, ConnectionFailed
from .models import PresenceChanged, PresenceInfo, is_rpps, is_user_id
from .peers import Peers
from .requests import Router

__all__ = ["Presence"]

log = logging.getLogger("miss_client")


class Presence:
    """The presence side of one connection: requests through ``router``,
    RPPS numbers resolved through ``peers``. Install :meth:`on_answer` and
    :meth:`on_push` as the router's hooks before it starts."""

    def __init__(self, router: Router, peers: Peers) -> None:
        self._router = router
        self._peers = peers
        self._presence: dict[str, PresenceInfo] = {}  # last known, for watched users only
        self._watched: frozenset[str] = frozenset()  # as of the last ``watching``
        self._watch_rids: set[int] = set()  # ``watch`` requests not answered yet

    async def set_status(self, status: str) -> None:
        """Set this clinician's status, for all their devices: one of
        :data:`~miss_client.models.STATUSES` (``available``, ``busy``,
        ``on_call``, ``off_duty``). Returns once the hub has stored it.

        Raises ValueError for another value (checked here: the hub would close
        the connection), StorageUnavailable or RateLimited once the retries of
        the router's policy are spent.
        """
        if status not in f.STATUSES:
            raise ValueError(f"unknown status {status!r} (expected one of {', '.join(f.STATUSES)})")
        reply = await self._router.request_retrying(
            lambda rid: f.SetStatus(rid=rid, status=status), "set_status"
        )
        if not isinstance(reply, f.Ok):
            raise ConnectionFailed("the hub answered set_status with something else")

    async def watch(self, users: Iterable[str]) -> list[PresenceInfo]:
        """Follow the presence of ``users`` (user ids or RPPS numbers) on this
        connection, **replacing** what it watched before (an empty list stops
        watching). Returns the current presence of those the hub lets us see
        (ourself, colleagues of the same organisation, contacts), in the
        order given; the others are left out, and unknown user ids too.

        From then on, changes arrive as :class:`PresenceChanged` events
        (:meth:`Router.next_push`), and :meth:`presence` tells the last known
        state. A watch lasts as long as the connection: watch again after
        reconnecting. Raises UnknownUser for an RPPS number that names
        nobody, BadRecipient for a string that is neither, ValueError for
        more than 512 users, StorageUnavailable or RateLimited once the
        retries of the router's policy are spent.
        """
        wanted: list[str] = []
        for recipient in users:
            recipient = recipient.strip()
            if is_user_id(recipient):
                wanted.append(recipient)
            elif is_rpps(recipient):
                wanted.append((await self._peers.lookup(rpps=recipient)).user)
            else:
                raise BadRecipient(f"{recipient!r} is neither an RPPS number nor a user id (u_...)")
        ids = tuple(dict.fromkeys(wanted))
        if len(ids) > f.MAX_WATCH:
            raise ValueError(f"at most {f.MAX_WATCH} users can be watched at once")

        rids: set[int] = set()

        def build(rid: int) -> f.Watch:
            rids.add(rid)
            self._watch_rids.add(rid)  # until answered, pushes of users not yet watched count
            return f.Watch(rid=rid, users=ids)

        try:
            reply = await self._router.request_retrying(build, "watch")
        finally:
            self._watch_rids -= rids
        if not isinstance(reply, f.Watching):
            raise ConnectionFailed("the hub answered watch with something else")
        return [PresenceInfo(p.user, p.status, p.online) for p in reply.presence]

    def presence(self, user: str) -> PresenceInfo | None:
        """The last known presence of a watched user (user id, or RPPS number
        of someone looked up on this connection); None if not watched."""
        return self._presence.get(self._peers.user_of(user))

    @property
    def watched(self) -> frozenset[str]:
        """User ids this connection watches, as the hub last confirmed."""
        return self._watched

    # --- the router's hooks ----------------------------------------------------

    def on_answer(self, rid: int, frame: f.Frame) -> None:
        """The answer to request ``rid``: it ends the wait of the ``watch``
        it answers, if one; a ``watching`` is the list in force (the hub
        answers requests in order, so the last answer wins)."""
        self._watch_rids.discard(rid)
        if isinstance(frame, f.Watching):
            self._watched = frozenset(p.user for p in frame.presence)
            self._presence = {p.user: PresenceInfo(p.user, p.status, p.online) for p in frame.presence}

    def on_push(self, frame: f.Presence) -> None:
        """A ``presence`` push: update the cache and post a PresenceChanged
        if it changed what we knew."""
        if frame.user not in self._watched and not self._watch_rids:
            # Sent before the hub saw our latest watch, which dropped this user.
            log.debug("ignoring presence of %s, who is not watched", frame.user)
            return
        info = PresenceInfo(frame.user, frame.status, frame.online)
        if self._presence.get(frame.user) == info:
            return  # a repeat (SPEC §6.7): nothing changed
        self._presence[frame.user] = info
        self._router.post(PresenceChanged(frame.user, frame.status, frame.online))
