"""A device that follows a rotation late keeps the older key for what it signed in time.

The statements of ``protocol/vectors/rotation.json`` have an ``until`` in the
past: a device that first hears of the rotation now must still hold the old
key, because a team record signed with it before its ``until`` counts for
ever (SPEC §15); only attestations stop counting at ``until``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from miss_client.models import AuthorityRotated
from miss_client.profile import Profile, load_profile, set_authority
from miss_client.rotation import follow_rotation

from protocol.frames import Challenge
from tests.support.client_fixtures import PASSPHRASE

VECTORS = json.loads((Path(__file__).parents[2] / "protocol" / "vectors" / "rotation.json").read_text())
STATEMENT = next(s for s in VECTORS["statements"] if s["name"] == "k1_to_k2")


def test_a_device_following_after_until_keeps_the_old_key(make_profile: Callable[..., Profile]) -> None:
    old, new = bytes.fromhex(STATEMENT["old"]), bytes.fromhex(STATEMENT["new"])
    profile = make_profile(authority=False)
    profile = set_authority(profile.directory, PASSPHRASE, old)
    challenge = Challenge(1, os.urandom(32), new, None, (bytes.fromhex(STATEMENT["blob"]),))

    followed, event = follow_rotation(profile, challenge)

    assert isinstance(event, AuthorityRotated)
    assert followed.authority_pk == new
    kept = {p.key: p.until for p in followed.authority_previous}
    assert kept == {old: STATEMENT["until"]}, "the old key is gone: its team records would stop verifying"
    # ... and so after the profile is opened again.
    reopened = load_profile(profile.directory, PASSPHRASE)
    assert {p.key for p in reopened.authority_previous} == {old}
