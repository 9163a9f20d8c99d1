"""Verified clinicians as one connection sees them: lookups, pins, key changes
(SPEC §11.2, §11.3, §8).

Theory of operation
-------------------
:class:`Peers` checks every ``lookup_ok`` before anything is encrypted.
:meth:`Peers.lookup` verifies the attestation with the profile's authority
key (missing, malformed, another key, not yet valid, expired, or about
another user: :class:`UnverifiedPeer`, and the peer is neither cached nor
pinned; the pure steps are :func:`miss_client.trust.check_lookup`), refuses
an attestation older than one already accepted (stale), takes the peer's
identity from it, and keeps as targets only the listed devices that it
vouches for with the same keys; listed devices with other keys are
*substituted*. The attested keys are then compared with the ones pinned in
the local state (:meth:`LocalState.observe_peer`): trust on first use, and
afterwards a new device, new keys or a substitution is a key change,
reported through :attr:`Peers.on_key_change` and *pending* until
:meth:`Peers.accept_keys` (or :meth:`Peers.mark_verified`). While a change
is pending for the recipient or for our own user, :meth:`Peers.check_sendable`
raises :class:`KeyChangePending`: nothing is encrypted.

Receiving (:meth:`Peers.sender_device`): a ``deliver`` is opened only with
the keys of a target device of its sender (attested, same keys). A pending
key change does not stop receiving: the device is the authority's word, and
the user was warned.

Verified answers are cached for the connection, by user id and by RPPS
number, until a ``refresh``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from protocol import attestation, crypto
from protocol import frames as f
from protocol.errors import UnknownUser

from .errors import BadRecipient, ConnectionFailed, KeyChangePending, UnverifiedPeer
from .inbox import Undecryptable
from .models import DirectoryEntry, Peer, PeerChange, check_frame_text, is_rpps, is_user_id, now_ms
from .profile import Profile
from .requests import Router
from .state import LocalState
from .trust import check_lookup

__all__ = ["RPPS_DIGITS", "SERVICE_PREFIX", "Peers", "log_key_change"]

log = logging.getLogger("miss_client")

#: An RPPS number (répertoire partagé des professionnels de santé) has 11 digits.
RPPS_DIGITS = 11
#: A service's identifier, in its attestation's ``rpps`` (SPEC §17.1): ``svc:provins-adt``.
SERVICE_PREFIX = "svc:"


def log_key_change(peer: Peer, change: PeerChange) -> None:
    """The default :attr:`Peers.on_key_change`: a warning."""
    log.warning(
        "devices of %s (%s) changed: %s; compare safety numbers%s",
        peer.user,
        peer.rpps,
        change.describe(),
        ", then accept the change" if change.needs_acceptance else "",
    )


def _same_change(a: PeerChange, b: PeerChange) -> bool:
    return (a.user, a.added, a.changed, a.substituted) == (b.user, b.added, b.changed, b.substituted)


class Peers:
    """The verified clinicians of one connection (see the module docstring):
    lookups through ``router``, checked with ``profile``'s authority key,
    pinned in ``state``."""

    def __init__(self, router: Router, profile: Profile, state: LocalState) -> None:
        #: Called when a lookup finds a key change relative to the pinned keys
        #: (new device, new keys, substituted keys: then it is pending until
        #: accepted), or pinned devices removed. Default: log a warning.
        self.on_key_change: Callable[[Peer, PeerChange], None] = log_key_change
        self._router = router
        self._profile = profile
        self._state = state
        self._peers: dict[str, Peer] = {}  # this connection's lookups, by user id
        self._rpps: dict[str, str] = {}  # RPPS number -> user id

    def user_of(self, user_or_rpps: str) -> str:
        """The user id of an RPPS number looked up on this connection;
        anything else unchanged."""
        return self._rpps.get(user_or_rpps, user_or_rpps)

    def forget(self, user: str) -> None:
        """Drop the cached lookup of ``user`` (their device list changed)."""
        self._peers.pop(user, None)

    async def lookup(
        self, user: str | None = None, rpps: str | None = None, *, refresh: bool = False
    ) -> Peer:
        """A verified clinician and their target devices, by user id or RPPS
        (SPEC §11.2).

        Answers come from this connection's cache unless ``refresh``. The
        attestation is verified first: if it is missing, malformed, signed
        by another key than the profile's authority, not valid yet, expired,
        or names another user (or RPPS number) than the one looked up,
        raises UnverifiedPeer and nothing about the peer is kept. Otherwise
        the identity comes from the attestation, and its device keys are
        compared with the pinned ones: a change is reported to
        :attr:`on_key_change` and, unless it only removes devices, stays
        pending (``Peer.pending``) until :meth:`accept_keys`. Raises
        UnknownUser.
        """
        if (user is None) == (rpps is None):
            raise ValueError("look up by exactly one of user or rpps")
        check_frame_text(user if user is not None else rpps or "", "a user id or RPPS number")
        if not refresh:
            cached = self._peers.get(user if user is not None else self._rpps.get(rpps or "", ""))
            if cached is not None:
                return cached
        reply = await self._router.request_retrying(
            lambda rid: f.Lookup(rid=rid, user=user, rpps=rpps), "lookup"
        )
        if not isinstance(reply, f.LookupOk) or (user or reply.user) != reply.user:
            raise ConnectionFailed("the hub answered a lookup with something else")
        try:
            peer = self._verified_peer(reply, rpps)
        except UnverifiedPeer as exc:
            self._peers.pop(reply.user, None)
            log.info("refusing %s: %s", reply.user, exc.reason)
            raise
        self._peers[peer.user] = peer
        self._rpps[peer.rpps] = peer.user
        return peer

    def _verified_peer(self, reply: f.LookupOk, rpps: str | None) -> Peer:
        """SPEC §11.2 for one ``lookup_ok`` (steps 1-2 in trust.py, then the
        pins); raises UnverifiedPeer."""
        profile = self._profile
        own = reply.user == profile.user_id
        checked = check_lookup(reply, profile.authority, now_ms(), own=own, rpps=rpps)
        if checked.not_before < self._state.attestation_floor(reply.user):
            raise UnverifiedPeer(
                reply.user,
                "stale",
                "the hub served an attestation older than one already seen (a revoked device?)",
                own=own,
            )
        peer, substitutes = checked.peer, list(checked.substitutes)
        trusted = None
        if own:
            trusted = f.DeviceInfo(profile.device_id, profile.keys.sign_pk, profile.keys.box_pk)
        seen = self._state.observe_peer(
            peer, checked.attested, substitutes, trusted=trusted, attested_from=checked.not_before
        )
        peer = replace(peer, verified=seen.verified, pending=seen.pending)
        if substitutes:
            log.warning(
                "the hub lists %d device(s) of %s with keys the authority did not sign: never encrypted to",
                len(substitutes),
                peer.user,
            )
        if seen.report is not None:
            self.on_key_change(peer, seen.report)
        return peer

    async def resolve(self, recipient: str, *, refresh: bool = False) -> Peer:
        """Look up a recipient given as an RPPS number (11 digits), a user
        id (``u_...``) or a service's identifier (``svc:...``, SPEC §17.1);
        raises BadRecipient for anything else."""
        recipient = recipient.strip()
        if is_user_id(recipient):
            return await self.lookup(user=recipient, refresh=refresh)
        if recipient.startswith(SERVICE_PREFIX) and len(recipient) > len(SERVICE_PREFIX):
            return await self.lookup(rpps=recipient, refresh=refresh)
        if is_rpps(recipient):
            if len(recipient) != RPPS_DIGITS:
                raise BadRecipient(f"an RPPS number has {RPPS_DIGITS} digits, not {len(recipient)}")
            return await self.lookup(rpps=recipient, refresh=refresh)
        raise BadRecipient(f"{recipient!r} is neither an RPPS number nor a user id (u_...)")

    async def search(self, query: str) -> list[DirectoryEntry]:
        """Verified clinicians whose name, RPPS number, profession or
        organisation contains ``query`` (3-64 characters), at most 50, in the
        hub's order (by name). Each entry is verified with the authority key
        and described by its attestation only; entries that do not verify
        are dropped (logged at debug level). Nothing is pinned."""
        query = check_frame_text(query.strip(), "a search")
        if not f.MIN_SEARCH_CHARS <= len(query) <= 64:
            raise ValueError(f"a search is {f.MIN_SEARCH_CHARS} to 64 characters")
        authority = self._profile.authority
        reply = await self._router.request_retrying(lambda rid: f.Search(rid=rid, query=query), "search")
        if not isinstance(reply, f.SearchOk):
            raise ConnectionFailed("the hub answered search with something else")
        now = now_ms()
        found: dict[str, DirectoryEntry] = {}
        for blob in reply.atts:
            try:
                att = attestation.verify(blob, authority, now)
            except attestation.AttestationError as exc:
                log.debug("search: dropping an entry that does not verify: %s", exc)
                continue
            found.setdefault(
                att.user,
                DirectoryEntry(att.user, att.name, att.rpps, att.profession, att.organisation, att.not_after),
            )
        return list(found.values())

    async def safety_number(self, recipient: str) -> str:
        """The 60-digit safety number between this user and ``recipient``,
        from freshly looked-up device keys (SPEC §8: every device the hub
        lists for either user). Raises UnverifiedPeer like :meth:`lookup`."""
        me = self._profile.user_id
        own = await self.lookup(user=me, refresh=True)
        peer = await self.resolve(recipient, refresh=True)
        return crypto.safety_number(me, own.identities, peer.user, peer.identities)

    async def accept_keys(self, user: str, expected: PeerChange | None = None) -> Peer:
        """Accept the pending key change of ``user`` (user id or RPPS number;
        our own user id for our own devices): the attested keys of the last
        lookup, the one that reported the change, become the pinned ones,
        and sending to them resumes. A no-op if nothing is pending.

        With ``expected`` (the change the user was shown), raises
        KeyChangePending if the pending change is another one by now.
        Raises UnverifiedPeer if the peer does not verify.
        """
        peer = await self.resolve(user)
        pending = self._state.pending_change(peer.user)
        if expected is not None and pending is not None and not _same_change(pending, expected):
            raise KeyChangePending(peer, pending, own=peer.user == self._profile.user_id)
        accepted = self._state.accept_pending(peer.user)
        if accepted is not None:
            log.info("key change of %s accepted: %s", peer.user, accepted.describe())
        peer = replace(peer, pending=None)
        self._peers[peer.user] = peer
        return peer

    async def mark_verified(self, user: str) -> Peer:
        """Mark ``user`` verified in person, once both sides read the same
        safety number (:meth:`safety_number`). The number covers the keys of
        a fresh lookup, so a pending key change is accepted along with it.
        Any later key change clears the mark (``Peer.verified``)."""
        peer = await self.resolve(user, refresh=True)
        if peer.pending is not None:
            peer = await self.accept_keys(peer.user)
        self._state.set_verified(peer.user)
        peer = replace(peer, verified=True)
        self._peers[peer.user] = peer
        return peer

    async def sender_device(self, user: str, device: str) -> f.DeviceInfo | None:
        """Keys of a sender device, refreshing the lookup once if it is new to
        us; only a target device (attested with the same keys) qualifies.
        Raises Undecryptable for a sender who is not a verified clinician."""
        try:
            found = (await self.lookup(user=user)).device(device)
            if found is None:
                found = (await self.lookup(user=user, refresh=True)).device(device)
        except UnknownUser:
            raise Undecryptable("sender is not in the directory", "sender_unverified") from None
        except UnverifiedPeer as exc:
            raise Undecryptable(
                f"sender is not a verified clinician ({exc.reason})", "sender_unverified"
            ) from None
        return found

    def check_sendable(self, peer: Peer, own: Peer) -> None:
        """Refuse to encrypt while a key change of either user is pending
        (as the local state says now: it may have been accepted on another
        connection), or if this device is not attested: KeyChangePending,
        UnverifiedPeer."""
        me = self._profile.user_id
        for who in (peer, own):
            pending = self._state.pending_change(who.user)
            if pending is not None:
                raise KeyChangePending(who, pending, own=who.user == me)
        if own.device(self._profile.device_id) is None:
            raise UnverifiedPeer(
                me,
                "device_not_attested",
                "this device is not attested yet (linked since the last verification)",
                own=True,
            )
