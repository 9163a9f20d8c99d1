"""On-call roles and escalation policies (SPEC.md §14, revision 4).

Theory of operation
-------------------
A **role** (``"r_"`` and 16 lowercase hex digits, chosen by the hub) is a
function rather than a person: "Cardiologie — senior de garde". Who holds it
changes over the day; a message sent to the role reaches whoever holds it at
send time. An **urgent** message follows an escalation :class:`Policy`:

* every ``interval`` ms its released recipients are reminded, until one of
  them acknowledges it;
* ``steps[k].delay`` ms after the previous step (after the send, for the
  first), step k+1's backups (a role's holders at send time, or one user)
  receive their copy, which the sender sealed for them at send time;
* ``final`` ms after the last step (after the send when there is none), the
  sender learns that nobody acknowledged, and the reminders stop.

:meth:`Policy.deadlines` turns a policy and a send time into those absolute
times. A policy is hub-visible metadata (the hub runs the timers); its
canonical msgpack map is ``{interval, steps: [{delay, role | user}], final}``
(:func:`pack_policy`, how a store keeps it). In a ``role_ok`` (RoleInfo) each
step also lists the ``holders`` of its target now.

Everything here is pure; :func:`new_role_id` is the only source of randomness.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from .errors import MalformedFrame, PolicyOutOfBounds
from .frame_base import MAX_ROLE_HOLDERS, Record, check_int, check_list, check_role_id, check_str, malformed

__all__ = [
    "MAX_ESCALATION_MS",
    "MAX_ESCALATION_STEPS",
    "MAX_ROLE_HOLDERS",
    "MIN_ESCALATION_MS",
    "ROLE_ID_RE",
    "Policy",
    "Step",
    "is_role_id",
    "new_role_id",
    "pack_policy",
    "unpack_policy",
]

#: A role id: ``"r_"`` and 16 lowercase hex digits.
ROLE_ID_RE = re.compile(r"r_[0-9a-f]{16}")
#: Most backup steps a policy may have (hubs set a lower cap, 3 by default).
MAX_ESCALATION_STEPS = 5
#: The protocol's floor and ceiling of ``interval``, each ``delay`` and
#: ``final`` (ms). Hubs set a higher floor (60 s by default); 100 ms lets
#: tests run a whole escalation in a second.
MIN_ESCALATION_MS = 100
MAX_ESCALATION_MS = 86_400_000


def is_role_id(s: str) -> bool:
    """True if ``s`` is a role id (``"r_"`` and 16 lowercase hex digits)."""
    return type(s) is str and ROLE_ID_RE.fullmatch(s) is not None


def new_role_id() -> str:
    """A fresh random role id."""
    return "r_" + os.urandom(8).hex()


@dataclass(frozen=True)
class Step(Record):
    """One escalation step: ``delay`` ms after the previous step (after the
    send for the first), release the copies of ``role``'s holders at send
    time, or of ``user``. Exactly one of ``role`` and ``user`` is set.
    ``holders``: the target's holders now (a user step: that user), only in
    a RoleInfo; empty otherwise."""

    delay: int
    role: str | None = None
    user: str | None = None
    holders: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        """The role id or user id this step releases to."""
        target = self.role if self.role is not None else self.user
        assert target is not None  # from_map and __post_init__ see to it
        return target

    def __post_init__(self) -> None:
        if (self.role is None) == (self.user is None):
            raise malformed("a step names exactly one of role and user")

    def to_map(self, with_holders: bool = True) -> dict[str, Any]:
        m: dict[str, Any] = {"delay": self.delay}
        if self.role is not None:
            m["role"] = self.role
        else:
            m["user"] = self.user
        if with_holders:
            m["holders"] = list(self.holders)
        return m

    @classmethod
    def from_map(cls, m: Any) -> Step:
        """Raises MalformedFrame unless ``m`` is a step map; ``holders`` is optional."""
        if type(m) is not dict:
            raise malformed("expected a step map")
        try:
            delay = check_int(m["delay"])
        except KeyError:
            raise malformed("step lacks 'delay'") from None
        role = check_role_id(m["role"]) if "role" in m else None
        user = check_str()(m["user"]) if "user" in m else None
        holders = _check_holders(m["holders"]) if "holders" in m else ()
        return cls(delay, role, user, holders)


_check_holders = check_list(check_str(), MAX_ROLE_HOLDERS)


@dataclass(frozen=True)
class Policy(Record):
    """An escalation policy (all times in ms). Built or decoded, it is
    well-typed; whether it is within a hub's bounds is :meth:`check`'s job."""

    interval: int
    steps: tuple[Step, ...]
    final: int

    def to_map(self, with_holders: bool = True) -> dict[str, Any]:
        """The canonical map ``{interval, steps, final}``; ``with_holders``
        False leaves each step's ``holders`` out (the store form)."""
        return {
            "interval": self.interval,
            "steps": [s.to_map(with_holders) for s in self.steps],
            "final": self.final,
        }

    @classmethod
    def from_map(cls, m: Any) -> Policy:
        """Raises MalformedFrame unless ``m`` is a policy map of at most
        MAX_ESCALATION_STEPS steps; unknown keys are ignored."""
        if type(m) is not dict:
            raise malformed("expected a policy map")
        try:
            return cls(
                check_int(m["interval"]),
                check_list(Step.from_map, MAX_ESCALATION_STEPS)(m["steps"]),
                check_int(m["final"]),
            )
        except KeyError as exc:
            raise malformed(f"policy lacks {exc}") from None

    def check(self, min_ms: int, max_steps: int) -> None:
        """Raise PolicyOutOfBounds unless ``interval``, every ``delay`` and
        ``final`` lie in [max(min_ms, MIN_ESCALATION_MS), MAX_ESCALATION_MS]
        and there are at most min(max_steps, MAX_ESCALATION_STEPS) steps."""
        floor = max(min_ms, MIN_ESCALATION_MS)
        if len(self.steps) > min(max_steps, MAX_ESCALATION_STEPS):
            raise PolicyOutOfBounds(f"{len(self.steps)} steps")
        bounded = [("interval", self.interval), ("final", self.final)]
        bounded += [(f"steps[{i}].delay", s.delay) for i, s in enumerate(self.steps)]
        for name, value in bounded:
            if not floor <= value <= MAX_ESCALATION_MS:
                raise PolicyOutOfBounds(f"{name} = {value} ms")

    def deadlines(self, sent_at: int) -> list[int]:
        """Absolute times (ms) of the release of steps 1..n, then of the
        final deadline: ``n + 1`` values, each the previous plus a delay."""
        out: list[int] = []
        t = sent_at
        for s in self.steps:
            t += s.delay
            out.append(t)
        out.append(t + self.final)
        return out

    def with_override(self, interval: int | None, final: int | None) -> Policy:
        """This policy with ``interval`` and/or ``final`` replaced (a
        ``send.urgent``); steps are never overridden. Not checked."""
        return replace(
            self,
            interval=self.interval if interval is None else interval,
            final=self.final if final is None else final,
        )

    def without_holders(self) -> Policy:
        """The same policy with every step's ``holders`` emptied."""
        return replace(self, steps=tuple(replace(s, holders=()) for s in self.steps))


def pack_policy(p: Policy) -> bytes:
    """The canonical msgpack bytes of ``p`` without holders (the store form)."""
    packed: bytes = msgpack.packb(p.to_map(with_holders=False), use_bin_type=True)
    return packed


def unpack_policy(b: bytes) -> Policy:
    """The policy :func:`pack_policy` packed; MalformedFrame if it is not one."""
    try:
        m = msgpack.unpackb(b, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedFrame(f"policy is not msgpack: {type(exc).__name__}") from None
    return Policy.from_map(m).without_holders()
