"""Sealing a send frame (miss_client.outbox), without a hub."""

from __future__ import annotations

import pytest
from miss_client.errors import MessageTooLarge
from miss_client.models import Peer
from miss_client.outbox import RetryPolicy, build_send

from protocol import crypto
from protocol import frames as f
from protocol.errors import NoDevices, RateLimited, StorageUnavailable


def peer(user: str, devices: dict[str, crypto.DeviceKeys]) -> Peer:
    infos = tuple(f.DeviceInfo(d, k.sign_pk, k.box_pk) for d, k in devices.items())
    return Peer(user, user, "1", "", "", infos)


def test_one_envelope_per_target_device_and_none_for_the_sender() -> None:
    mine = {"d_a1": crypto.DeviceKeys.generate(), "d_a2": crypto.DeviceKeys.generate()}
    theirs = {"d_b1": crypto.DeviceKeys.generate(), "d_b2": crypto.DeviceKeys.generate()}
    mid = crypto.new_message_id()
    plain = crypto.pack_plaintext(crypto.Plaintext(mid, "u_a", "u_b", 1, "text", "bonjour"))
    frame = f.decode(build_send(plain, mid, mine["d_a1"], "d_a1", peer("u_b", theirs), peer("u_a", mine)))
    assert isinstance(frame, f.Send)
    assert (frame.id, frame.sender, frame.to) == (mid, "d_a1", "u_b")
    assert set(frame.envs) == {"d_a2", "d_b1", "d_b2"}
    for device, env in frame.envs.items():
        keys = {**mine, **theirs}[device]
        opened = crypto.unpack_plaintext(crypto.open_envelope(env, keys, mine["d_a1"].box_pk))
        assert opened.body == "bonjour" and opened.id == mid
    assert len({env[: crypto.NONCE_BYTES] for env in frame.envs.values()}) == 3, "fresh nonce per envelope"


def test_a_recipient_without_devices_is_refused_even_with_own_copies_to_make() -> None:
    me = {"d_a1": crypto.DeviceKeys.generate(), "d_a2": crypto.DeviceKeys.generate()}
    with pytest.raises(NoDevices):
        build_send(b"x", crypto.new_message_id(), me["d_a1"], "d_a1", peer("u_b", {}), peer("u_a", me))


def test_too_large_is_refused_before_the_hub_closes_us() -> None:
    me = {"d_a1": crypto.DeviceKeys.generate()}
    them = {f"d_b{i}": crypto.DeviceKeys.generate() for i in range(4)}
    big = b"x" * (f.MAX_FRAME_BYTES // 4)
    with pytest.raises(MessageTooLarge):
        build_send(big, crypto.new_message_id(), me["d_a1"], "d_a1", peer("u_b", them), peer("u_a", me))


def test_retry_delay_follows_the_hub_within_bounds() -> None:
    policy = RetryPolicy(default_delay=0.5, max_delay=2.0)
    assert policy.delay(StorageUnavailable(retry_after_ms=250)) == 0.25
    assert policy.delay(RateLimited()) == 0.5
    assert policy.delay(RateLimited(retry_after_ms=3_600_000)) == 2.0
