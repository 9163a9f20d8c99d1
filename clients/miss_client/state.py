"""The device's local state: history, seen message ids, pinned peer keys.

Theory of operation
-------------------
One SQLite file, ``state.db`` in the profile directory (mode 0600, WAL,
``synchronous=FULL``). Every method is one transaction, committed before it
returns, which is what lets the client ack a delivery only after
:meth:`LocalState.record_incoming` returned: a crash after that point loses
nothing, a crash before it gets the delivery again from the hub, and the
``seen`` table drops it if it was already recorded (SPEC §6.4).

Nothing here is readable without the profile's storage key:

* message bodies and kinds are sealed with ``nacl.secret.SecretBox`` under
  the profile's storage key (the sealed map also repeats the message id, and
  opening checks it, so a ciphertext moved onto another row does not open);
* what stays in clear is routing metadata the hub sees anyway (user and
  device ids, times, message ids) and the public directory (names, RPPS
  numbers, public keys).

The tables and their history: :mod:`miss_client.state_schema`. ``peers``
holds the **pins** of SPEC §11.2 step 3 for each verified peer (our own
user included).

Pinning (:meth:`LocalState.observe_peer`, on every verified lookup): an
attested device that is not pinned, or whose attested keys differ from the
pinned ones, or a substitute not acknowledged, is a key change: it is
recorded as pending (and clears ``verified_at``) until
:meth:`LocalState.accept_pending` pins that view. Pinned devices that the
attestation no longer names are dropped at once. If the attestation goes
back to the pinned keys, the pending change is dropped.

Not thread-safe: use one LocalState from one thread (the event loop's).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import nacl.exceptions
import nacl.secret

from protocol.frames import DeviceInfo

from .errors import ProfileCorrupt
from .models import HistoryEntry, Message, Peer, PeerChange, now_ms
from .state_schema import (
    PEER_COLUMNS,
    SCHEMA_VERSION,
    open_db,
    pack_devices,
    pack_pending,
    pending_view,
    unpack_devices,
    unpack_pending,
)

__all__ = ["SCHEMA_VERSION", "LocalState", "Observation"]


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


class LocalState:
    """The state DB of one profile. Open with :meth:`open`, close with :meth:`close`
    (or use it as a context manager)."""

    def __init__(self, db: sqlite3.Connection, storage_key: bytes, own_user: str, own_device: str) -> None:
        self._db = db
        self._box = nacl.secret.SecretBox(storage_key)
        self.own_user = own_user
        self.own_device = own_device

    @classmethod
    def open(cls, path: Path, storage_key: bytes, own_user: str, own_device: str) -> LocalState:
        """Open (creating with mode 0600 if needed) and migrate the state DB."""
        return cls(open_db(path), storage_key, own_user, own_device)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LocalState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- sealing -------------------------------------------------------------

    def _seal(self, message_id: bytes, kind: str, body: str) -> bytes:
        inner = msgpack.packb({"id": message_id, "kind": kind, "body": body}, use_bin_type=True)
        return bytes(self._box.encrypt(inner))

    def _open(self, message_id: bytes, sealed: bytes) -> tuple[str, str]:
        try:
            m = msgpack.unpackb(self._box.decrypt(sealed), raw=False)
            if m["id"] != message_id:
                raise ValueError("sealed body belongs to another message")
            return m["kind"], m["body"]
        except (nacl.exceptions.CryptoError, ValueError, KeyError, TypeError) as exc:
            raise ProfileCorrupt(f"a history row does not open: {type(exc).__name__}") from None

    # --- messages ------------------------------------------------------------

    def is_seen(self, from_user: str, message_id: bytes) -> bool:
        """True if a message with this id from this sender was already recorded."""
        row = self._db.execute("SELECT 1 FROM seen WHERE from_user = ? AND id = ?", (from_user, message_id))
        return row.fetchone() is not None

    def record_incoming(self, message: Message) -> bool:
        """Durably record a received message (or own copy) and mark its id seen.

        Returns False, writing nothing, if ``(from_user, id)`` was seen before.
        The caller acks the delivery only after this returned.
        """
        now = now_ms()
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO seen (from_user, id, seen_at) VALUES (?, ?, ?)",
                (message.from_user, message.id, now),
            )
            if cur.rowcount == 0:
                return False
            db.execute(
                "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.from_user,
                    message.id,
                    message.peer,
                    "out" if message.outgoing_copy else "in",
                    message.from_device,
                    message.sent_at,
                    message.received_at or now,
                    "received",
                    self._seal(message.id, message.kind, message.body),
                ),
            )
        return True

    def record_outgoing(self, message_id: bytes, to_user: str, sent_at: int, kind: str, body: str) -> None:
        """Record a message this device is about to send (status ``pending``).

        Recording an id that is already there keeps the first row: a resend
        reuses the id and must not duplicate history.
        """
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, 'out', ?, ?, ?, 'pending', ?)",
                (
                    self.own_user,
                    message_id,
                    to_user,
                    self.own_device,
                    sent_at,
                    sent_at,
                    self._seal(message_id, kind, body),
                ),
            )
            db.execute(
                "INSERT OR IGNORE INTO seen (from_user, id, seen_at) VALUES (?, ?, ?)",
                (self.own_user, message_id, now_ms()),
            )

    def set_status(self, message_id: bytes, status: str) -> None:
        """Mark an outgoing message ``accepted`` (the hub stored it) or ``failed``."""
        if status not in ("pending", "accepted", "failed"):
            raise ValueError(f"bad status {status!r}")
        with self._tx() as db:
            db.execute(
                "UPDATE messages SET status = ? WHERE from_user = ? AND id = ? AND direction = 'out'",
                (status, self.own_user, message_id),
            )

    def record_receipt(
        self, message_id: bytes, user: str, device: str, ts: int, reason: str | None = None
    ) -> bool:
        """Record that ``device`` of ``user`` kept our message (``reason``
        None) or refused it (``reason`` says why); False if that device's
        answer was known already."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO receipts (id, device, user, ts, reason) VALUES (?, ?, ?, ?, ?)",
                (message_id, device, user, ts, reason),
            )
            return cur.rowcount > 0

    def history(self, peer: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """The last ``limit`` messages (with ``peer`` if given), oldest first."""
        where, args = ("WHERE peer = ?", [peer]) if peer is not None else ("", [])
        rows = self._db.execute(
            "SELECT from_user, id, peer, direction, sent_at, received_at, status, sealed FROM messages "
            f"{where} ORDER BY sent_at DESC, id DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [self._entry(row) for row in reversed(rows)]

    def pending_outgoing(self) -> list[HistoryEntry]:
        """Messages this device recorded but never saw accepted (oldest first)."""
        rows = self._db.execute(
            "SELECT from_user, id, peer, direction, sent_at, received_at, status, sealed FROM messages "
            "WHERE from_user = ? AND from_device = ? AND status = 'pending' ORDER BY sent_at, id",
            (self.own_user, self.own_device),
        ).fetchall()
        return [self._entry(row) for row in rows]

    def _entry(self, row: tuple[Any, ...]) -> HistoryEntry:
        from_user, message_id, peer, direction, sent_at, received_at, status, sealed = row
        kind, body = self._open(message_id, sealed)
        delivered: list[str] = []
        refused: list[tuple[str, str]] = []
        if from_user == self.own_user:
            for device, reason in self._db.execute(
                "SELECT device, reason FROM receipts WHERE id = ? ORDER BY ts", (message_id,)
            ):
                if reason is None:
                    delivered.append(device)
                else:
                    refused.append((device, reason))
        return HistoryEntry(
            id=message_id,
            from_user=from_user,
            peer=peer,
            direction=direction,
            sent_at=sent_at,
            received_at=received_at,
            kind=kind,
            body=body,
            status=status,
            delivered_to=tuple(delivered),
            refused_by=tuple(refused),
        )

    # --- directory (pinned keys, SPEC §11.2) -------------------------------------

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
