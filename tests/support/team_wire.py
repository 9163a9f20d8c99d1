"""Care teams on the wire (SPEC §13), for the hub's team tests: a raw device
that names the ``teams`` capability, and what a client does to change a team
and to send to it (signed records, sealed bodies and key wraps), with no
SDK in between.

* :class:`TeamDevice`: :class:`~tests.support.wire.RawDevice` whose ``auth``
  and ``enroll`` name ``refusals`` and ``teams`` (or the ``caps`` given), and
  whose :meth:`~TeamDevice.ask` holds ``team_changed`` pushes for ``recv``.
* :func:`change`: sign a record as one of the device's user and send it as
  ``team_change``; :class:`Team` follows the chain the hub accepted.
* :func:`team_send`: a ``send`` to a team sealed once, with one wrap per device.
* :func:`open_team_deliver`: what a recipient does with a team ``deliver``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TypeVar

from miss_server.store.base import Store
from protocol import crypto
from protocol import teams as pt
from protocol.client_session import answer_auth, answer_enroll
from protocol.frames import (
    CAP_REFUSALS,
    CAP_TEAMS,
    Auth,
    Deliver,
    Delivered,
    Enroll,
    Frame,
    Presence,
    Refused,
    Send,
    TeamChange,
    TeamChanged,
    TeamOk,
)
from tests.support.wire import RawDevice

FT = TypeVar("FT", bound=Frame)


@dataclass
class TeamDevice(RawDevice):
    """A raw device whose handshake names ``caps`` (by default ``refusals``
    and ``teams``); ``None`` names none."""

    caps: tuple[str, ...] | None = (CAP_REFUSALS, CAP_TEAMS)

    def auth_frame(self) -> Auth:
        assert self.session.challenge is not None
        return answer_auth(self.session.challenge, self.device_id, self.keys, self.caps)

    def enroll_frame(self, code: str, label: str = "test") -> Enroll:
        assert self.session.challenge is not None
        return answer_enroll(self.session.challenge, code, self.keys, label, self.caps)

    async def ask(self, frame: Frame) -> Frame:
        """Send a request; its answer. Rows and pushes that come first are
        held for :meth:`recv`."""
        await self.send_frame(frame)
        skipped = []
        while True:
            reply = await self.recv()
            if isinstance(reply, (Deliver, Delivered, Refused, Presence, TeamChanged)):
                skipped.append(reply)
                continue
            self.held[:0] = skipped
            return reply

    async def next_of(self, kind: type[FT], timeout: float = 5.0) -> FT:
        """The next frame of type ``kind``; others read meanwhile are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(frame, kind):
                return frame


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def attestation_of(store: Store, user_id: str) -> bytes:
    user = await store.get_user(user_id)
    assert user is not None and user.attestation is not None
    return user.attestation


@dataclass
class Team:
    """A team as its tests follow it: the state after the records the hub accepted."""

    state: pt.TeamState | None = None
    records: list[pt.SignedRecord] = field(default_factory=list)
    team_id: str = field(default_factory=pt.new_team_id)

    def accepted(self, signed: pt.SignedRecord, authority_pk: bytes) -> None:
        self.state = pt.apply_record(self.state, signed, authority_pk, team=self.team_id)
        self.records.append(signed)

    @property
    def head(self) -> bytes:
        assert self.state is not None
        return self.state.head


def sign(
    dev: RawDevice, team: Team, op: str, user: str, att: bytes, *, at: int | None = None, **extra: object
) -> pt.SignedRecord:
    """The record ``op user`` following ``team``'s state, by ``dev``'s user and device."""
    record = pt.next_record(
        team.state,
        op,
        user,
        by=dev.user_id,
        at=now_ms() if at is None else at,
        device=dev.device_id,
        att=att,
        team=team.team_id,
        **extra,  # type: ignore[arg-type]
    )
    return pt.sign_record(record, dev.keys)


async def change(
    dev: TeamDevice, team: Team, op: str, user: str, store: Store, authority_pk: bytes, **extra: object
) -> Frame:
    """Sign ``op user`` as ``dev`` and send it; on ``team_ok`` the team follows it.
    Returns the hub's answer."""
    if op == "create" and "name" not in extra:
        extra["name"] = "Réa nuit"
    signed = sign(dev, team, op, user, await attestation_of(store, dev.user_id), **extra)  # type: ignore[arg-type]
    reply = await dev.ask(TeamChange(rid=3, team=team.team_id, rec=signed.rec, sig=signed.sig))
    if isinstance(reply, TeamOk):
        team.accepted(signed, authority_pk)
    return reply


def team_send(
    dev: RawDevice,
    team: Team,
    targets: dict[str, bytes],
    text: str,
    *,
    ttl: int | None = None,
    head: bytes | None = None,
    mid: bytes | None = None,
) -> Send:
    """A ``send`` of ``text`` to ``team``, sealed once, its key wrapped for
    each of ``targets`` (device id -> box_pk)."""
    mid = mid or crypto.new_message_id()
    head = team.head if head is None else head
    plain = crypto.pack_plaintext(
        crypto.Plaintext(mid, dev.user_id, team.team_id, now_ms(), "text", text, head=head), pad_to=256
    )
    key, body = crypto.seal_body(plain, mid, dev.keys)
    wraps = {d: crypto.wrap_key(key, dev.keys, box_pk) for d, box_pk in targets.items()}
    return Send(mid, dev.device_id, team.team_id, wraps, body=body, head=head, ttl=ttl)


def open_team_deliver(dev: RawDevice, frame: Deliver, sender: RawDevice) -> crypto.Plaintext:
    """Open a team ``deliver`` as ``dev`` (the sending device's keys known)."""
    assert frame.body is not None
    key = crypto.unwrap_key(frame.env, dev.keys, sender.keys.box_pk)
    plain = crypto.open_body(frame.body, key, frame.id, sender.keys.sign_pk)
    return crypto.unpack_plaintext(plain)
