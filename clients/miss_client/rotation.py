"""Following the verification authority's key rotations (SPEC §15).

On each connection, :func:`follow_rotation` compares the key the hub
announces in its challenge with the profile's. The same key (or none):
nothing to do. Another key, with ``rotations`` statements leading to it from
the profile's key, every signature valid: the profile moves to the new key
(saved in ``authority.sealed``, see :mod:`miss_client.profile`), keeps the
older keys until their ``until``, and the connection's first event is an
:class:`~miss_client.models.AuthorityRotated`. Another key without such a
chain: the profile keeps its key and the first event is a
:class:`~miss_client.models.RotationRefused` (``rotation_refused``); the
clinicians attested by the hub's key then look unverified, as before
rotations existed. A hub cannot forge a statement; withholding one only
delays the move, until the old key's ``until`` makes verification fail.
"""

from __future__ import annotations

from protocol import attestation
from protocol.client_session import WrongAuthority, check_authority
from protocol.frames import Challenge

from .models import AuthorityRotated, RotationRefused
from .profile import Profile, save_authority

__all__ = ["ACCEPTED_TEXT", "REFUSED_TEXT", "UNANNOUNCED_TEXT", "follow_rotation"]

#: The French notices of the contract (with the new key's fingerprint).
ACCEPTED_TEXT = (
    "Clé de l'autorité de vérification renouvelée (empreinte {fingerprint}), annoncée par l'ancienne clé"
)
REFUSED_TEXT = "Nouvelle clé d'autorité refusée : la déclaration n'est pas signée par la clé connue"
#: When the hub announces another key with no statement at all (a misconfigured hub, or another
#: authority): miss-chat's longer warning (cli_common.warn_authority_mismatch) says what to do.
UNANNOUNCED_TEXT = "Clé d'autorité du hub refusée : aucune déclaration signée par la clé connue ne l'annonce"


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
            return profile, RotationRefused(
                announced, "the hub sent no rotation statement", UNANNOUNCED_TEXT, 0
            )
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
