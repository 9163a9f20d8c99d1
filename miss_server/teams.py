"""Care teams on one hub node (SPEC §13): membership changes, the chain,
the list of a user's teams, the checks of a ``send`` to a team, recall, and
the ``team_changed`` push.

Who is a member is decided by the team's chain of signed records, never by
the hub: the hub checks each new record (:func:`protocol.teams.apply_record`
against the stored state, plus its own checks of §13.2: the signing device
is an active, attested device of ``by`` with the attested keys, and ``at``
is within five minutes of its clock), enforces its caps, stores it, and
routes by the members the chain leaves.

No cache: every team request reads the team's state from the store (one
primary-key read and its members), so a change made by another node or by
``miss-admin`` is seen by the next request on every node, and a ``send``
is checked against the head the store holds. The store's compare-and-set
on the chain's length (:meth:`Store.append_team_record`) decides between
two changes of one team made at once on two nodes.

``team_changed`` crosses nodes on the broker's control channel: a node that
stored a record publishes ``b"T" + msgpack([team, seq, head, users])`` (the
members after the change and any user it removed), and every node, itself
included, pushes the frame to its local connections of those users that
named ``teams``. Changes ``miss-admin`` writes reach the hubs through the
audit log (``team.changed`` events, ``security_feed.py``), which each node
polls and turns into the same local pushes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import msgpack

from protocol import attestation, errors
from protocol import teams as pt
from protocol.frames import (
    MAX_TEAM_CHAIN_BYTES,
    MAX_TEAMS_LIST,
    MAX_WRAPS,
    ChainEntry,
    Recall,
    RecallOk,
    TeamChain,
    TeamChainOk,
    TeamChange,
    TeamChanged,
    TeamHead,
    TeamOk,
    Teams,
    TeamsOk,
    encode,
)

from .accounts import Accounts
from .broker.base import CONTROL_CHANNEL, Broker, BrokerUnavailable
from .config import Settings
from .delivery import LocalLinks
from .store.base import Store, TeamAppend, TeamInfo, TeamRecordRow

__all__ = ["AT_LEEWAY_MS", "TAG_TEAM_CHANGED", "TeamService", "target_mismatch", "team_state"]

log = logging.getLogger("miss.teams")

#: How far a record's ``at`` may be from the hub's clock (SPEC §13.2).
AT_LEEWAY_MS = 5 * 60_000
#: The control channel's announcement of a team change (module doc).
TAG_TEAM_CHANGED = b"T"
#: A page of ``team_chain_ok`` leaves this much of MAX_TEAM_CHAIN_BYTES to
#: the frame's own keys (the store counts each record's headers).
_CHAIN_FRAME_OVERHEAD = 128

_REASONS: dict[str, type[errors.RequestError]] = {
    "malformed": errors.BadTeamRecord,
    "bad_signature": errors.BadTeamRecord,
    "broken_chain": errors.TeamConflict,
    "forbidden": errors.TeamForbidden,
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def team_state(info: TeamInfo) -> pt.TeamState:
    """The protocol's view of a stored team."""
    return pt.TeamState(
        info.team,
        info.name,
        info.org or None,
        info.lifespan,
        info.members,
        info.admins,
        info.seq,
        info.head,
        info.closed,
    )


def team_info(state: pt.TeamState, creator: str) -> TeamInfo:
    """The store's view of a team's state."""
    return TeamInfo(
        state.team,
        state.name,
        state.org or "",
        state.lifespan,
        state.seq,
        state.head,
        state.closed,
        state.members,
        state.admins,
        creator,
    )


def target_mismatch(wanted: Iterable[str], required: frozenset[str] | set[str]) -> errors.RequestError:
    """The error for a sealed-body ``send`` whose wraps do not name exactly
    its target devices ``required`` (SPEC §13.4, §14.4), in this order:
    too_many_recipients when no frame can carry that many wraps (say so
    rather than ask for more), unknown_device, missing_devices."""
    if len(required) > MAX_WRAPS:
        return errors.TooManyRecipients(f"{len(required)} target devices")
    extra = set(wanted) - required
    if extra:
        return errors.UnknownDevice(f"{len(extra)} unknown target devices")
    return errors.MissingDevices(sorted(required - set(wanted)))


class TeamService:
    """The team requests of one hub node (module doc). ``clock`` gives the
    hub's time in ms (tests may pass their own)."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        accounts: Accounts,
        links: LocalLinks,
        settings: Settings,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._store = store
        self._broker = broker
        self._accounts = accounts
        self._links = links
        self._settings = settings
        self._clock = clock

    # --- team_change --------------------------------------------------------------

    async def change(self, frame: TeamChange) -> bytes:
        """Check, store and announce one record; ``team_ok``. Raises the
        errors of SPEC §13.7 (nothing stored then) or StoreUnavailable."""
        authority_pk = self._settings.authority_keys
        if authority_pk is None:
            raise errors.BadTeamRecord("the hub has no authority key")
        signed = pt.SignedRecord(frame.rec, frame.sig)
        try:
            rec = signed.record()
        except pt.TeamChainError as exc:
            raise errors.BadTeamRecord(str(exc)) from None
        if rec.team != frame.team:
            raise errors.BadTeamRecord("the record names another team")
        info = await self._store.team_info(frame.team)
        if info is None and rec.seq != 0:
            raise errors.UnknownTeam(frame.team)
        if info is not None and (rec.seq != info.seq or rec.prev != info.head):
            raise errors.TeamConflict(f"seq {rec.seq}, head at {info.seq}")
        now = self._clock()
        if abs(rec.at - now) > AT_LEEWAY_MS:
            raise errors.BadTeamRecord("'at' is more than 5 minutes from the hub's clock")
        if rec.by != pt.AUTHORITY:
            await self._check_signer(rec, now)
        try:
            state = pt.apply_record(
                None if info is None else team_state(info), signed, authority_pk, team=frame.team
            )
        except pt.TeamChainError as exc:
            raise _REASONS[exc.reason](str(exc)) from None
        if len(state.members) > self._settings.max_team_members:
            raise errors.TeamFull(f"{len(state.members)} members")
        joining = (rec.user,) if rec.op in ("create", "add") else ()
        creator = rec.by if info is None else info.creator
        outcome = await self._store.append_team_record(
            team_info(state, creator),
            TeamRecordRow(rec.seq, frame.rec, frame.sig, state.head),
            joining=joining,
            max_teams=self._settings.max_teams_per_user,
        )
        if outcome is TeamAppend.CONFLICT:
            raise errors.TeamConflict("the team changed meanwhile")
        if outcome is TeamAppend.FULL:
            raise errors.TeamFull("max_teams_per_user")
        before = info.members if info is not None else frozenset()
        await self.announce(state.team, state.seq, state.head, state.members | before)
        log.info("team changed", extra={"team": state.team, "seq": state.seq, "op": rec.op})
        return encode(TeamOk(frame.rid, state.team, state.seq, state.head))

    async def _check_signer(self, rec: pt.TeamRecord, now: int) -> None:
        """The hub's own part of rule 2 (SPEC §13.2): the signing device is an
        active device of ``by`` that ``by``'s current attestation vouches
        for, with the keys the record's attestation lists."""
        for refresh in (False, True):
            account = await self._accounts.get(rec.by, refresh=refresh)
            if account is None or not account.verified(now) or rec.device not in account.targets:
                continue
            stored = next(d for d in account.devices if d.device_id == rec.device)
            try:
                listed = attestation.peek(rec.att or b"").device(rec.device)
            except attestation.AttestationError:
                raise errors.BadTeamRecord("unreadable attestation") from None
            if listed is not None and (listed.sign_pk, listed.box_pk) == (stored.sign_pk, stored.box_pk):
                return
        raise errors.BadTeamRecord("the signing device is not an attested device of its user")

    # --- teams, team_chain ---------------------------------------------------------

    async def teams(self, user_id: str, frame: Teams) -> bytes:
        heads = await self._store.user_teams(user_id, MAX_TEAMS_LIST)
        return encode(TeamsOk(frame.rid, tuple(TeamHead(t, seq, head) for t, seq, head in heads)))

    async def chain(self, user_id: str, frame: TeamChain) -> bytes:
        """A page of the chain, for a current member or a user a record
        names (so a removed member learns it was removed); anyone else is
        told the team does not exist."""
        info = await self._store.team_info(frame.team)
        if info is None or not (user_id in info.members or await self._named(frame.team, user_id)):
            raise errors.UnknownTeam(frame.team)
        records, more = await self._store.team_records(
            frame.team, max(0, frame.from_seq), MAX_TEAM_CHAIN_BYTES - _CHAIN_FRAME_OVERHEAD
        )
        entries = tuple(ChainEntry(r.rec, r.sig) for r in records)
        return encode(TeamChainOk(frame.rid, frame.team, entries, more))

    async def _named(self, team: str, user_id: str) -> bool:
        """Whether a record of the team names ``user_id`` (as ``user`` or ``by``)."""
        records, _ = await self._store.team_records(team, 0, 1 << 40)
        for r in records:
            try:
                rec = pt.unpack_record(r.rec)
            except pt.TeamChainError:
                continue
            if user_id in (rec.user, rec.by):
                return True
        return False

    # --- send to a team ------------------------------------------------------------

    async def targets(
        self,
        team: str,
        sender_user: str,
        sender_device: str,
        head: bytes | None,
        has_body: bool,
        *,
        refresh: bool,
    ) -> frozenset[str]:
        """The target set *T* of a ``send`` to ``team`` (SPEC §13.4), after
        its checks in order: unknown_team, not_member, malformed_frame
        (fatal: ``body`` or ``head`` missing), team_changed. *T* is every
        attested active device of every current, verified member, but the
        sending device; ``refresh`` reloads the members' accounts."""
        info = await self._store.team_info(team)
        if info is None:
            raise errors.UnknownTeam(team)
        if sender_user not in info.members:
            raise errors.NotMember(team)
        if head is None or not has_body:
            raise errors.MalformedFrame("a send to a team carries body and head")
        if head != info.head:
            raise errors.StaleTeamHead(team)
        now = self._clock()
        targets: set[str] = set()
        for member in sorted(info.members):
            account = await self._accounts.get(member, refresh=refresh)
            if account is not None and account.verified(now):
                targets |= account.targets
        targets.discard(sender_device)
        return frozenset(targets)

    # --- recall --------------------------------------------------------------------

    async def recall(self, user_id: str, frame: Recall) -> tuple[bytes, int]:
        """Delete the user's undelivered rows of message ``frame.id``;
        ``recall_ok`` and the count. TeamForbidden for an id this user did
        not send (or whose record has expired)."""
        if not await self._store.has_sent(user_id, frame.id):
            raise errors.TeamForbidden("not a message of this user")
        removed = await self._store.recall(user_id, frame.id)
        return encode(RecallOk(frame.rid, frame.id, removed)), removed

    # --- team_changed ---------------------------------------------------------------

    async def announce(self, team: str, seq: int, head: bytes, users: Iterable[str]) -> None:
        """Push ``team_changed`` to every connection, on every node, of
        ``users`` that named ``teams``. Without a broker, this node's own."""
        payload = TAG_TEAM_CHANGED + msgpack.packb([team, seq, head, sorted(users)])
        try:
            await self._broker.publish(CONTROL_CHANNEL, payload)
        except BrokerUnavailable as exc:
            log.warning("team change not announced", extra={"team": team, "error": str(exc)})
            self.on_control(payload)

    def on_control(self, payload: bytes) -> None:
        """The control channel's team announcements (module doc)."""
        try:
            team, seq, head, users = msgpack.unpackb(payload[1:])
            frame = encode(TeamChanged(team, seq, head))
        except Exception as exc:  # from a newer node, or garbled: nothing to push
            log.warning("unreadable team announcement", extra={"error": str(exc)})
            return
        self.push_local(frame, users)

    def push_local(self, frame: bytes, users: Iterable[str]) -> None:
        """Hand ``frame`` to this node's connections of ``users`` that named ``teams``."""
        self._links.push(frame, users, lambda link: link.teams)

    async def announce_stored(self, team: str, users: Iterable[str]) -> None:
        """Push the team's current head, read from the store, to this node's
        connections of its members and of ``users`` (a change another
        process stored: the audit log's ``team.changed``)."""
        info = await self._store.team_info(team)
        if info is None:
            return
        self.push_local(encode(TeamChanged(team, info.seq, info.head)), info.members | set(users))
