"""Care teams as one device sees them (SPEC §13): verified chains of signed
membership records, changes, and what a team message may be encrypted to.

Theory of operation
-------------------
The hub stores and routes by each team's chain of records, but never
decides who is a member for this device: :class:`Teams` keeps, in the local
state, the chain it verified **whole** from the creation record
(:func:`protocol.teams.verify_chain` with the profile's authority key), and
only that chain says who gets a team message.

* **Fetching.** After ``welcome`` (:meth:`Teams.sync`: the ``teams``
  request), on each ``team_changed`` push (:meth:`Teams.on_changed`), and
  when a team message names a head this device does not know
  (:meth:`Teams.check_head`), new records are fetched with ``team_chain``
  (paged) from the first one not stored.
* **Verifying.** The stored records plus the new ones are verified from the
  creation on. The stored prefix never changes: when the hub's records do
  not follow our head, or the hub's head is at or behind ours with another
  hash, the hub rewrote history, or shows members different chains: the
  team's problem is ``diverged``. A chain that does not verify (a
  signature, a record nobody could sign) makes it ``tampered``; so does a
  ``missing_devices`` answer naming devices of nobody in the verified
  chain (:meth:`Teams.check_missing`). Bad records are never stored; the
  problem stays until the user deals with it, and nothing is encrypted to
  the team meanwhile (:class:`~miss_client.errors.TeamProblem`).
* **Changing.** :meth:`Teams.change` builds the next record
  (:func:`protocol.teams.next_record`), signs it with the device keys, the
  device's own current attestation in ``att``, and sends ``team_change``;
  on ``team_conflict`` (someone changed the team meanwhile) it fetches the
  chain and redoes the change once.
* **Targets.** :meth:`Teams.targets` is every attested device of every
  member of the verified chain (through :class:`~miss_client.peers.Peers`:
  attestations, pins, pending key changes) plus this user's other devices.

Every verified change is posted as a :class:`~miss_client.models.TeamEvent`
(and a problem as a :class:`~miss_client.models.TeamProblemFound`) through
the ``post`` callback, for the application's event stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from protocol import attestation
from protocol import frames as f
from protocol import teams as tm
from protocol.errors import BadTeamRecord, NotMember, RequestError, TeamConflict, TeamForbidden, UnknownTeam
from protocol.rotation import AuthorityKeys

from .errors import ConnectionFailed, TeamDiverged, TeamProblem, TeamTampered, UnverifiedPeer
from .models import Event, TeamEvent, TeamProblemFound, TeamView, check_frame_text, now_ms
from .peers import Peers
from .profile import Profile
from .requests import Router
from .state import LocalState

__all__ = ["Teams", "chain_events", "problem_error", "team_view"]

log = logging.getLogger("miss_client")


def team_view(state: tm.TeamState, problem: str | None = None) -> TeamView:
    """The application's view of a verified team state."""
    return TeamView(
        team=state.team,
        name=state.name,
        org=state.org,
        lifespan=state.lifespan,
        members=tuple(sorted(state.members)),
        admins=tuple(sorted(state.admins)),
        head=state.head,
        seq=state.seq,
        closed=state.closed,
        problem=problem,
    )


def _signer_name(record: tm.TeamRecord, authority_pk: bytes | AuthorityKeys) -> str | None:
    """The signer's name from the attestation the record carries (already
    checked by verify_chain), None for the authority or if unreadable."""
    if record.att is None:
        return None
    try:
        return attestation.check_signature(record.att, authority_pk, record.at).name
    except attestation.AttestationError:
        return None


def chain_events(
    team: str, name: str, records: Iterable[tuple[bytes, bytes]], authority_pk: bytes | AuthorityKeys
) -> list[TeamEvent]:
    """The membership changes of a stored (verified) chain, for display."""
    out = []
    for seq, (rec, sig) in enumerate(records):
        record = tm.SignedRecord(rec, sig).record()
        out.append(
            TeamEvent(
                team,
                name,
                seq,
                record.op,
                record.user,
                record.by,
                record.at,
                _signer_name(record, authority_pk),
            )
        )
    return out


def problem_error(view: TeamView) -> TeamProblem:
    """The typed error for a team with a problem."""
    text = view.problem_text or f"problème avec l'équipe {view.name}"
    if view.problem == "diverged":
        return TeamDiverged(view.team, view.name, text)
    return TeamTampered(view.team, view.name, text)


class Teams:
    """The teams of one connection (see the module docstring): requests
    through ``router``, members' devices through ``peers``, chains in
    ``state``, events through ``post``."""

    def __init__(
        self, router: Router, peers: Peers, profile: Profile, state: LocalState, post: Callable[[Event], None]
    ) -> None:
        self._router = router
        self._peers = peers
        self._profile = profile
        self._state = state
        self._post = post

    # --- reading the local chain ---------------------------------------------------

    def _records(self, team: str) -> list[tm.SignedRecord]:
        return [tm.SignedRecord(rec, sig) for rec, sig in self._state.team_records(team)]

    def _verified_state(self, team: str) -> tm.TeamState | None:
        records = self._records(team)
        if not records:
            return None
        return tm.verify_chain(records, self._profile.authority, team)

    def view(self, team: str) -> TeamView | None:
        """The stored view of ``team`` (None if this device never saw it)."""
        return self._state.get_team(team)

    def views(self) -> list[TeamView]:
        return self._state.list_teams()

    # --- fetching and verifying ------------------------------------------------------

    async def _fetch(self, team: str, from_seq: int) -> list[tm.SignedRecord]:
        """Records from ``from_seq`` on, every page of them."""
        out: list[tm.SignedRecord] = []
        while True:
            start = from_seq + len(out)
            reply = await self._router.request_retrying(
                lambda rid, start=start: f.TeamChain(rid=rid, team=team, from_seq=start),  # type: ignore[misc]
                "team_chain",
            )
            if not isinstance(reply, f.TeamChainOk) or reply.team != team:
                raise ConnectionFailed("the hub answered team_chain with something else")
            out.extend(tm.SignedRecord(e.rec, e.sig) for e in reply.recs)
            if not reply.more or not reply.recs:
                return out

    def _flag(
        self, team: str, problem: str, why: str, records: list[tm.SignedRecord] | None = None
    ) -> TeamView:
        """Record a problem with ``team`` (posting it once) and return the
        view; ``records``: what the hub served, for the name of a team this
        device never verified (members stay unknown: none)."""
        view = self._state.get_team(team)
        if view is None:
            name = team
            try:
                first = records[0].record() if records else None
                if first is not None and first.op == "create" and first.name:
                    name = first.name
            except tm.TeamChainError:
                pass
            view = TeamView(team, name, None, None, (), (), tm.ZERO_HEAD, 0, problem=problem)
            self._state.save_team(view, [])
            changed = True
        else:
            changed = self._state.set_team_problem(team, problem)
        view = self._state.get_team(team)
        assert view is not None
        if changed:
            log.warning("team %s: %s (%s)", team, problem, why)
            self._post(TeamProblemFound(team, problem, view.problem_text or problem))
        return view

    async def refresh(self, team: str, hub_seq: int | None = None, hub_head: bytes | None = None) -> TeamView:
        """Bring the verified chain of ``team`` up to the hub's (whose head,
        if known from ``teams_ok`` or ``team_changed``, is ``hub_seq`` /
        ``hub_head``); returns the team's view, with its problem if one was
        found (never raises for one). Raises what the requests raise
        (UnknownTeam: the hub lets us see no such team)."""
        stored = self._records(team)
        view = self._state.get_team(team)
        ours = stored[-1].hash() if stored else tm.ZERO_HEAD
        if view is not None and hub_head is not None and hub_head in self._state.team_heads(team):
            return view  # our head, or a push about a head we passed
        fetched = await self._fetch(team, len(stored))
        if not fetched:
            if view is None:
                raise UnknownTeam("no such team")
            if hub_head is not None and hub_seq is not None:
                # The hub names a head it does not serve after ours: it
                # rewrote history, or shows members different chains.
                return self._flag(team, "diverged", "the hub's head is not in the chain it serves")
            return view
        try:
            first = fetched[0].record()
        except tm.TeamChainError:
            return self._flag(team, "tampered", "a record does not unpack")
        if stored and (first.seq != len(stored) or first.prev != ours):
            return self._flag(team, "diverged", "the hub's records do not follow our verified head")
        try:
            new_state = tm.verify_chain([*stored, *fetched], self._profile.authority, team)
        except tm.TeamChainError as exc:
            return self._flag(team, "tampered", f"the chain does not verify: {exc.reason}", fetched)
        return self._store(team, new_state, len(stored), fetched, view.problem if view else None)

    def _store(
        self,
        team: str,
        new_state: tm.TeamState,
        first_seq: int,
        records: Iterable[tm.SignedRecord],
        problem: str | None,
    ) -> TeamView:
        rows = []
        events = []
        for i, signed in enumerate(records):
            record = signed.record()
            rows.append((first_seq + i, signed.rec, signed.sig, signed.hash()))
            events.append(
                TeamEvent(
                    team,
                    new_state.name,
                    first_seq + i,
                    record.op,
                    record.user,
                    record.by,
                    record.at,
                    _signer_name(record, self._profile.authority),
                )
            )
        view = team_view(new_state, problem)
        self._state.save_team(view, rows)
        for event in events:
            self._post(event)
        return view

    async def sync(self) -> list[TeamView]:
        """Fetch what changed in our teams since the last connection (the
        ``teams`` request), and the chain of teams we were in that the hub
        no longer lists (to learn a removal). Returns every team's view."""
        reply = await self._router.request_retrying(lambda rid: f.Teams(rid=rid), "teams")
        if not isinstance(reply, f.TeamsOk):
            raise ConnectionFailed("the hub answered teams with something else")
        listed = set()
        for head in reply.teams:
            listed.add(head.team)
            await self._refresh_quietly(head.team, head.seq, head.head)
        me = self._profile.user_id
        for view in self._state.list_teams():
            if view.team not in listed and me in view.members and view.problem is None:
                await self._refresh_quietly(view.team)
        return self._state.list_teams()

    async def _refresh_quietly(self, team: str, seq: int | None = None, head: bytes | None = None) -> None:
        try:
            await self.refresh(team, seq, head)
        except RequestError as exc:
            log.info("team %s not refreshed: %s", team, exc.code)

    async def on_changed(self, frame: f.TeamChanged) -> None:
        """A ``team_changed`` push: fetch and verify the new records."""
        await self._refresh_quietly(frame.team, frame.seq, frame.head)

    async def ensure(self, team: str) -> TeamView:
        """The view of ``team``, fetched first if this device does not know it."""
        view = self._state.get_team(team)
        if view is None:
            view = await self.refresh(team)
        return view

    # --- checks for sending and receiving ----------------------------------------------

    def sendable(self, view: TeamView) -> None:
        """Raise TeamProblem if the team has a problem, NotMember if this user
        is not a member by the verified chain."""
        if view.problem is not None:
            raise problem_error(view)
        if self._profile.user_id not in view.members:
            raise NotMember(f"you are not a member of {view.name}")

    async def targets(self, view: TeamView, *, refresh: bool = False) -> dict[str, bytes]:
        """``device -> box_pk`` of every target device of a team message:
        the attested devices of every member of the verified chain, this
        user's other devices included, this device excluded. Raises
        KeyChangePending (a member's keys changed and the change is not
        accepted), UnverifiedPeer (a member, or this device, unverified)."""
        me = self._profile.user_id
        own = await self._peers.lookup(user=me, refresh=refresh)
        targets: dict[str, bytes] = {}
        for user in view.members:
            peer = own if user == me else await self._peers.lookup(user=user, refresh=refresh)
            self._peers.check_sendable(peer, own)
            targets.update((d.device, d.box_pk) for d in peer.devices)
        targets.update((d.device, d.box_pk) for d in own.devices)
        targets.pop(self._profile.device_id, None)
        return targets

    async def check_missing(self, view: TeamView, missing: Iterable[str]) -> None:
        """After ``missing_devices``: every device the hub asks for must be
        one of a member of the verified chain (as a fresh lookup lists it);
        otherwise the hub counts someone nobody added: the team is
        ``tampered`` and TeamTampered is raised (nothing is encrypted to
        them)."""
        known: set[str] = set()
        for user in view.members:
            try:
                peer = await self._peers.lookup(user=user, refresh=True)
            except UnverifiedPeer:
                continue
            known.update(d.device for d in peer.listed)
            known.update(d.device for d in peer.devices)
        strangers = sorted(set(missing) - known)
        if strangers:
            flagged = self._flag(
                view.team, "tampered", f"the hub asks for {len(strangers)} device(s) of non-members"
            )
            raise problem_error(flagged)

    async def check_head(self, team: str, sender: str, head: bytes | None) -> TeamView:
        """A team message from ``sender`` says the chain's head was ``head``.
        It must be our head or an earlier one of our verified chain, once
        the chain is brought up to date; otherwise the team's problem
        becomes ``diverged``. Returns the team's view. Raises LookupError
        if ``sender`` was not a member at that head (the message is not
        the team's)."""
        heads = self._state.team_heads(team)
        if head is None or head not in heads:
            try:
                await self.refresh(team)
            except RequestError as exc:
                log.info("team %s not refreshed: %s", team, exc.code)
            heads = self._state.team_heads(team)
        if head is None or head not in heads:
            return self._flag(team, "diverged", "a message names a head we never verified")
        at = heads.index(head)
        state = tm.verify_chain(self._records(team)[: at + 1], self._profile.authority, team)
        if sender not in state.members:
            raise LookupError(f"{sender} was not a member of {team} at that head")
        view = self._state.get_team(team)
        assert view is not None
        return view

    # --- changing ------------------------------------------------------------------

    async def create(self, name: str, org: str | None = None, lifespan_ms: int | None = None) -> str:
        """Create a team with this user as its first admin; returns its id."""
        name = check_frame_text(name.strip(), "a team name")
        if org is not None:
            check_frame_text(org, "an organisation")
        if not 1 <= len(name) <= 64:
            raise ValueError("a team name has 1 to 64 characters")
        if org is not None and len(org) > 128:
            raise ValueError("an organisation has at most 128 characters")
        if lifespan_ms is not None and not f.MIN_LIFESPAN_MS <= lifespan_ms <= f.MAX_LIFESPAN_MS:
            raise ValueError("a lifespan is between 1 hour and 30 days")
        team = tm.new_team_id()
        await self._submit(
            team, None, "create", self._profile.user_id, name=name, org=org, lifespan=lifespan_ms
        )
        return team

    async def change(self, team: str, op: str, user: str) -> TeamView:
        """Add, remove, promote, demote ``user`` or leave (``user`` = us);
        returns the team's new view. On ``team_conflict`` the chain is
        fetched and the change redone once. Raises TeamProblem,
        TeamForbidden, TeamFull, TeamConflict (twice), UnknownTeam."""
        for attempt in range(2):
            view = await self.refresh(team) if attempt else await self.ensure(team)
            if view.problem is not None:
                raise problem_error(view)
            state = self._verified_state(team)
            try:
                return await self._submit(team, state, op, user)
            except TeamConflict:
                if attempt:
                    raise
                log.info("team %s changed meanwhile: redoing %s", team, op)
        raise AssertionError("unreachable")

    async def _submit(
        self,
        team: str,
        state: tm.TeamState | None,
        op: str,
        user: str,
        *,
        name: str | None = None,
        org: str | None = None,
        lifespan: int | None = None,
    ) -> TeamView:
        profile = self._profile
        own = await self._peers.lookup(user=profile.user_id)
        if own.device(profile.device_id) is None or own.att is None:
            own = await self._peers.lookup(user=profile.user_id, refresh=True)
        if own.device(profile.device_id) is None or own.att is None:
            raise UnverifiedPeer(
                profile.user_id, "device_not_attested", "this device is not attested yet", own=True
            )
        record = tm.next_record(
            state,
            op,
            user,
            by=profile.user_id,
            at=now_ms(),
            device=profile.device_id,
            att=own.att,
            team=team,
            name=name,
            org=org,
            lifespan=lifespan,
        )
        signed = tm.sign_record(record, profile.keys)
        # Check it as every member will, before the hub sees it: refused
        # the way the hub would refuse it.
        try:
            new_state = tm.apply_record(state, signed, profile.authority, team=team)
        except tm.TeamChainError as exc:
            if exc.reason == "forbidden":
                raise TeamForbidden(str(exc)) from None
            raise BadTeamRecord(str(exc)) from None
        reply = await self._router.request_retrying(
            lambda rid: f.TeamChange(rid=rid, team=team, rec=signed.rec, sig=signed.sig), "team_change"
        )
        if not isinstance(reply, f.TeamOk):
            raise ConnectionFailed("the hub answered team_change with something else")
        view = self._state.get_team(team)
        return self._store(team, new_state, record.seq, [signed], view.problem if view else None)
