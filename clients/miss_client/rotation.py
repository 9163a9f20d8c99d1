"""Following the verification authority's key rotations (SPEC §15).

On each connection, :func:`follow_rotation` compares the key the hub
announces in its challenge with the profile's. The same key (or none):
nothing to do. Another key, with ``rotations`` statements leading to it from
the profile's key, every signature valid: the profile moves to the new key
(saved in ``authority.sealed``, see :mod:`miss_client.profile`), keeps the
older keys until their ``until``, and the connection's first event is an
:class:`~miss_client.models.AuthorityRotated`. Another key with statements
that do not lead there from the profile's key: the profile keeps its key
and the first event is a :class:`~miss_client.models.RotationRefused`
(``rotation_refused``). Another key with no statement at all is no
rotation but a hub of another authority, as before rotations existed: no
event (``Client.hub_authority`` tells it, miss-chat warns). Either way the
clinicians attested by the hub's key look unverified. A hub cannot forge a statement; withholding one only
delays the move, until the old key's ``until`` makes verification fail.
"""

from __future__ import annotations

from protocol import attestation
from protocol.client_session import WrongAuthority, check_authority
from protocol.frames import Challenge

from .models import AuthorityRotated, RotationRefused
from .profile import Profile, save_authority

__all__ = ["ACCEPTED_TEXT", "REFUSED_TEXT", "follow_rotation"]

#: The French notices of the contract (with the new key's fingerprint).
ACCEPTED_TEXT = (
    "Clé de l'autorité de vérification renouvelée (empreinte {fingerprint}), annoncée par l'ancienne clé"
)
REFUSED_TEXT = "Nouvelle clé d'autorité refusée : la déclaration n'est pas signée par la clé connue"


def follow_rotation(
    profile: Profile, challenge: Challenge
) -> tuple[Profile, AuthorityRotated | RotationRefused | None]:
    """The profile to use on this connection, and the event to report.
    Saves the profile's new keys when the challenge proves a rotation."""
    announced = challenge.authority
    if announced is None or profile.authority_pk is None:
        return profile, None
    held = profile.authority
    try:
        # At instant 0, so that no older key is dropped however late this
        # device follows the rotation: a team record signed before its key's
        # ``until`` still counts after it (SPEC §15), and attestations check
        # ``until`` against the time of each use, not this one.
        keys = check_authority(challenge, held, 0)
    except WrongAuthority as exc:
        if exc.refusal is None:
            # No statement at all: not a rotation but a hub of another
            # authority (or misconfigured), as before rotations existed;
            # ``Client.hub_authority`` tells it, and miss-chat warns.
            return profile, None
        statements = len(challenge.rotations or ())
        return profile, RotationRefused(announced, str(exc.refusal), REFUSED_TEXT, statements)
    if keys == held:
        return profile, None
    rotated = keys.current != held.current
    profile = save_authority(profile, keys)
    if not rotated:  # older keys lapsed or learnt: nothing to tell the user
        return profile, None
    fingerprint = attestation.authority_fingerprint(keys.current)
    previous = tuple((p.key, p.until) for p in keys.previous)
    text = ACCEPTED_TEXT.format(fingerprint=fingerprint)
    return profile, AuthorityRotated(keys.current, fingerprint, previous, text)
