"""The directory half of a profile's state DB (SPEC §11.2): each peer's
pinned keys, the key changes waiting for the user's acceptance, and the
in-person verification mark. :class:`~miss_client.state.LocalState` gets it
by inheritance; it owns the connection and its transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from protocol.frames import DeviceInfo

from .models import Peer, PeerChange, now_ms
from .state_schema import (
    PEER_COLUMNS,
    StateDatabase,
    pack_devices,
    pack_pending,
    pending_view,
    unpack_devices,
    unpack_pending,
)

__all__ = ["Observation", "PeerDirectory"]


@dataclass(frozen=True, slots=True)
class Observation:
    """What :meth:`LocalState.observe_peer` concluded about a verified lookup.

    ``report`` is the change to tell the user about now (None if there is
    nothing new: no change, or the same pending change as before);
    ``pending`` the change awaiting acceptance (None if none); ``verified``
    whether the peer is still marked verified in person."""

    report: PeerChange | None
    pending: PeerChange | None
    verified: bool


class PeerDirectory(StateDatabase):
    """Pinned keys of peers, on :class:`~miss_client.state.LocalState`'s
    database."""

    def observe_peer(
        self,
        peer: Peer,
        attested: Iterable[DeviceInfo],
        substitutes: Iterable[DeviceInfo] = (),
        *,
        trusted: DeviceInfo | None = None,
        attested_from: int = 0,
    ) -> Observation:
        """Compare a verified lookup with the pins and record the outcome.

        ``peer`` carries the identity from the attestation (stored for
        display) and ``attested_until``; ``attested`` is every device the
        attestation vouches for, with its keys; ``substitutes`` the devices
        the hub listed with other keys than the attested ones. ``trusted``
        (this very device, for our own user) counts as pinned: a device
        never has to accept its own keys. ``attested_from`` is the
        attestation's ``not_before``: the newest one seen is remembered
        (:meth:`attestation_floor`).

        The first verified lookup of a peer pins its attested devices
        without a change to accept (unless there are substitutes).
        """
        view_a = {d.device: d for d in attested}
        view_s = {(d.device, d.sign_pk, d.box_pk): d for d in substitutes}
        now = now_ms()
        with self._tx() as db:
            row = db.execute(
                "SELECT devices, substitutes, pending, verified_at FROM peers WHERE user = ?", (peer.user,)
            ).fetchone()
            first_seen = row is None
            if first_seen:
                pins: dict[str, DeviceInfo] = dict(view_a)
                acked: set[tuple[str, bytes, bytes]] = set()
                old_pending, verified_at = None, None
            else:
                pins = {d.device: d for d in unpack_devices(row[0])}
                acked = {(d.device, d.sign_pk, d.box_pk) for d in unpack_devices(row[1])}
                old_pending, verified_at = row[2], row[3]
            if trusted is not None and view_a.get(trusted.device) == trusted:
                pins[trusted.device] = trusted
            removed = tuple(sorted(k for k in pins if k not in view_a))
            for k in removed:
                del pins[k]
            acked &= view_s.keys()  # forget acknowledged substitutes the hub no longer lists
            added = tuple(sorted(k for k in view_a if k not in pins))
            changed = tuple(sorted(k for k in view_a if k in pins and pins[k] != view_a[k]))
            substituted = tuple(sorted({key[0] for key in view_s.keys() - acked}))
            pending: PeerChange | None = None
            pending_blob: bytes | None = None
            if added or changed or substituted:
                pending = PeerChange(peer.user, first_seen, added, (), changed, substituted)
                pending_blob = pack_pending(view_a.values(), view_s.values(), pending)
                verified_at = None  # a key change clears "verified in person"
            report: PeerChange | None = None
            if (pending_blob is not None and pending_blob != old_pending) or (removed and not first_seen):
                report = PeerChange(peer.user, first_seen, added, removed, changed, substituted)
            db.execute(
                "INSERT OR REPLACE INTO peers (user, name, rpps, profession, organisation, devices, "
                "updated_at, substitutes, pending, verified_at, attested_until, attested_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "max(?, coalesce((SELECT attested_from FROM peers WHERE user = ?), 0)))",
                (
                    peer.user,
                    peer.name,
                    peer.rpps,
                    peer.profession,
                    peer.organisation,
                    pack_devices(pins.values()),
                    now,
                    pack_devices(view_s[k] for k in acked),
                    pending_blob,
                    verified_at,
                    peer.attested_until,
                    attested_from,
                    peer.user,
                ),
            )
        return Observation(report, pending, verified_at is not None)

    def attestation_floor(self, user: str) -> int:
        """The ``not_before`` of the newest attestation of ``user`` accepted
        so far (0 if none): an older one is stale (SPEC §11.2, step 1)."""
        row = self._db.execute("SELECT attested_from FROM peers WHERE user = ?", (user,)).fetchone()
        return 0 if row is None else int(row[0])

    def accept_pending(self, user: str) -> PeerChange | None:
        """Pin the view of ``user``'s pending key change (the attested keys
        and substitutes of the lookup that raised it); returns the change
        accepted, None if nothing was pending."""
        with self._tx() as db:
            row = db.execute("SELECT pending FROM peers WHERE user = ?", (user,)).fetchone()
            if row is None or row[0] is None:
                return None
            devices, substitutes = pending_view(row[0])
            db.execute(
                "UPDATE peers SET devices = ?, substitutes = ?, pending = NULL, updated_at = ? "
                "WHERE user = ?",
                (devices, substitutes, now_ms(), user),
            )
        return unpack_pending(user, row[0])

    def pending_change(self, user: str) -> PeerChange | None:
        """The key change of ``user`` awaiting acceptance, if any."""
        row = self._db.execute("SELECT pending FROM peers WHERE user = ?", (user,)).fetchone()
        return None if row is None or row[0] is None else unpack_pending(user, row[0])

    def set_verified(self, user: str, verified: bool = True) -> None:
        """Mark ``user`` verified in person (or not). Raises LookupError if the
        peer was never pinned, ValueError if a key change is pending."""
        with self._tx() as db:
            row = db.execute("SELECT pending FROM peers WHERE user = ?", (user,)).fetchone()
            if row is None:
                raise LookupError(f"{user} is not a known peer")
            if verified and row[0] is not None:
                raise ValueError("a key change is pending: accept it first")
            db.execute(
                "UPDATE peers SET verified_at = ? WHERE user = ?", (now_ms() if verified else None, user)
            )

    def get_peer(self, user: str) -> Peer | None:
        """The pinned entry of ``user``, if any (``devices`` are the pins)."""
        return self._get_peer(self._db, "user = ?", user)

    def find_peer(self, user_or_rpps: str) -> Peer | None:
        """A pinned entry by user id or RPPS number (most recently updated wins)."""
        return self._get_peer(self._db, "user = ? OR rpps = ?", user_or_rpps, user_or_rpps)

    @classmethod
    def _get_peer(cls, db: sqlite3.Connection, where: str, *args: str) -> Peer | None:
        row = db.execute(
            f"SELECT {PEER_COLUMNS} FROM peers WHERE {where} ORDER BY updated_at DESC LIMIT 1",
            args,
        ).fetchone()
        if row is None:
            return None
        user, name, rpps, profession, organisation, devices, _subs, pending, verified_at, until = row
        return Peer(
            user,
            name,
            rpps,
            profession,
            organisation,
            unpack_devices(devices),
            attested_until=until,
            verified=verified_at is not None,
            pending=None if pending is None else unpack_pending(user, pending),
        )
