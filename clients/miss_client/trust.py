"""SPEC.md §11.2, steps 1 and 2, without I/O: what a ``lookup_ok`` is worth
once checked against the verification authority.

:func:`check_lookup` verifies the attestation (signed by the profile's
authority key, valid now, about the user looked up) and sorts the devices
the hub lists into *targets* (attested with exactly these keys),
*substitutes* (attested ids with other keys: never encrypted to) and
*unattested* ones (linked since the last verification). The identity it
returns comes from the attestation, never from the hub's own fields. Key
pinning (step 3) is the local state's business (``state.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import attestation
from protocol import frames as f
from protocol.rotation import AuthorityKeys

from .errors import UnverifiedPeer
from .models import Peer

__all__ = ["Checked", "check_lookup"]

#: Step 1 failures, as UnverifiedPeer reasons.
_REASONS: tuple[tuple[type[attestation.AttestationError], str], ...] = (
    (attestation.AttestationMalformed, "malformed"),
    (attestation.AttestationSignatureInvalid, "signature"),
    (attestation.AttestationNotYetValid, "not_yet_valid"),
    (attestation.AttestationExpired, "expired"),
)


@dataclass(frozen=True, slots=True)
class Checked:
    peer: Peer  # targets in ``devices``; not yet compared with the pins
    attested: tuple[f.DeviceInfo, ...]  # every device the attestation vouches for
    substitutes: tuple[f.DeviceInfo, ...]  # listed by the hub with keys the authority did not sign
    not_before: int  # the attestation's start: newer attestations start later


def check_lookup(
    reply: f.LookupOk, authority: bytes | AuthorityKeys, now: int, *, own: bool, rpps: str | None = None
) -> Checked:
    """Check one ``lookup_ok``; raises UnverifiedPeer (``own`` says whether
    it is our own user, for the message). ``authority``: the key, or the
    keys of a rotation (an older one counts until its ``until``, SPEC §15)."""
    if reply.att is None:
        raise UnverifiedPeer(reply.user, "missing", "the hub has no attestation of them", own=own)
    try:
        att = attestation.verify(reply.att, authority, now)
    except attestation.AttestationError as exc:
        reason = next((r for cls, r in _REASONS if isinstance(exc, cls)), "malformed")
        raise UnverifiedPeer(reply.user, reason, str(exc), own=own) from None
    if att.user != reply.user or (rpps is not None and att.rpps != rpps):
        raise UnverifiedPeer(reply.user, "wrong_user", "the attestation is about someone else", own=own)
    attested = {d.device: f.DeviceInfo(d.device, d.sign_pk, d.box_pk) for d in att.devices}
    targets: list[f.DeviceInfo] = []
    substitutes: list[f.DeviceInfo] = []
    unattested: list[str] = []
    for listed in dict((d.device, d) for d in reply.devices).values():
        vouched = attested.get(listed.device)
        if vouched is None:
            unattested.append(listed.device)
        elif vouched != listed:
            substitutes.append(listed)
        else:
            targets.append(listed)
    peer = Peer(
        att.user,
        att.name,
        att.rpps,
        att.profession,
        att.organisation,
        tuple(targets),
        listed=reply.devices,
        substituted=tuple(d.device for d in substitutes),
        unattested=tuple(unattested),
        attested_until=att.not_after,
        att=reply.att,
        replies=reply.replies is not False,  # SPEC §17.2: only an explicit false
    )
    return Checked(peer, tuple(attested.values()), tuple(substitutes), att.not_before)
