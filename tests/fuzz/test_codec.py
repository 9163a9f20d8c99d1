"""Fuzzing the frame codec (SPEC §3): whatever bytes arrive, ``decode``
returns a frame or raises MalformedFrame or UnknownFrameType, nothing else;
valid frames of every type survive ``decode(encode(f)) == f`` and encode to
canonical bytes; broken ones are refused as the mutation demands.

Each example feeds several frames to the decoder, all counted
(strategies.FRAMES) towards the package's 10,000.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import example, given
from hypothesis import strategies as st

from protocol.errors import MalformedFrame, UnknownFrameType
from protocol.frames import CLIENT_FRAMES, SERVER_FRAMES, Frame, decode, encode
from tests.fuzz.strategies import (
    ALL_KEYS,
    ALL_TYPES,
    ALWAYS_MALFORMED,
    SAME_FRAME,
    Budget,
    counted,
    fuzz_settings,
    msgpack_values,
    mutated,
    wire_maps,
)

ALL_FRAMES = CLIENT_FRAMES + SERVER_FRAMES
PER_EXAMPLE = 5


def pack(m: Any) -> bytes:
    out: bytes = msgpack.packb(m, use_bin_type=True)
    return out


def decode_or_typed_error(data: bytes, allowed: tuple[type[Frame], ...] | None = None) -> Frame | None:
    """The frame ``data`` decodes to, or None if it raised MalformedFrame or
    UnknownFrameType; any other exception fails the test. A decoded frame
    must survive a round trip to canonical bytes and back."""
    try:
        frame = decode(data, allowed)
    except (MalformedFrame, UnknownFrameType):
        return None
    canonical = encode(frame)
    assert decode(canonical) == frame
    assert encode(decode(canonical)) == canonical
    return frame


#: Maps that look like frames: a real or random "t" and real keys of any type.
frame_like_maps = st.builds(
    lambda t, rest: {"t": t, **rest},
    st.sampled_from(ALL_TYPES) | st.text(max_size=12),
    st.dictionaries(st.sampled_from(ALL_KEYS), msgpack_values, max_size=6),
)

random_budget = Budget(20)


@fuzz_settings(max_examples=300)
@given(st.lists(msgpack_values | frame_like_maps, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_random_msgpack_values_decode_or_raise_a_typed_error(values: list[Any]) -> None:
    if random_budget.over():
        return
    for v in values:
        decode_or_typed_error(counted("codec random values", pack(v)))


bytes_budget = Budget(10)


@fuzz_settings(max_examples=200)
@given(st.lists(st.binary(max_size=200), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_random_bytes_decode_or_raise_a_typed_error(blobs: list[bytes]) -> None:
    if bytes_budget.over():
        return
    for data in blobs:
        decode_or_typed_error(counted("codec random bytes", data))


round_trip_budget = Budget(20)


@fuzz_settings(max_examples=300)
@given(st.lists(wire_maps(ALL_FRAMES), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_valid_frames_round_trip_to_canonical_bytes(maps: list[dict[str, Any]]) -> None:
    """Every valid wire map, built in canonical key order, decodes; the frame
    encodes to exactly the bytes msgpack-python packs that map to (SPEC
    §3.2), and decodes back to itself. Only its own direction decodes it."""
    if round_trip_budget.over():
        return
    for m in maps:
        data = counted("codec round trip", pack(m))
        frame = decode(data)
        assert encode(frame) == data
        assert decode(encode(frame)) == frame
        own, other = (
            (CLIENT_FRAMES, SERVER_FRAMES) if type(frame) in CLIENT_FRAMES else (SERVER_FRAMES, CLIENT_FRAMES)
        )
        assert decode(data, own) == frame
        try:
            decode(data, other)
        except UnknownFrameType:
            pass
        else:
            raise AssertionError(f"{frame.TYPE} decoded in the other direction")


@st.composite
def mutations(draw: st.DrawFn) -> tuple[dict[str, Any], str, bytes]:
    m = draw(wire_maps(ALL_FRAMES))
    how, data = draw(mutated(m))
    return m, how, data


mutation_budget = Budget(30)


@fuzz_settings(max_examples=400)
@given(st.lists(mutations(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
# A key twice in one map, at the top or nested (SPEC §3.1): refused, never
# "the last one wins" (which the decoder did until issue 16).
@example([({"t": "devices", "rid": 2}, "duplicate_key", b"\x83\xa1t\xa7devices\xa3rid\x01\xa3rid\x02")])
@example([({"t": "devices", "rid": 3}, "duplicate_key", b"\x83\xa1t\xa4auth\xa1t\xa7devices\xa3rid\x03")])
@example(
    [
        (
            {"t": "send", "id": b"\x01" * 16, "from": "d", "to": "u", "envs": {"d1": b"x"}},
            "duplicate_nested_key",
            b"\x85\xa1t\xa4send\xa2id\xc4\x10" + b"\x01" * 16 + b"\xa4from\xa1d\xa2to\xa1u"
            b"\xa4envs\x82\xa2d1\xc4\x01x\xa2d1\xc4\x01y",
        )
    ]
)
def test_mutated_frames_decode_or_raise_a_typed_error(cases: list[tuple[dict[str, Any], str, bytes]]) -> None:
    """A broken frame raises MalformedFrame or UnknownFrameType, or decodes
    to a frame that round-trips; the mutations that must be refused are, and
    those that keep the frame (an unknown key, wider formats, another key
    order) decode to the original frame, which encodes to the canonical bytes."""
    if mutation_budget.over():
        return
    for m, how, data in cases:
        counted("codec mutations", data)
        if how in ALWAYS_MALFORMED:
            try:
                decode(data)
            except MalformedFrame:
                continue
            raise AssertionError(f"{how}: decoded {data.hex()}")
        frame = decode_or_typed_error(data)
        if how in SAME_FRAME:
            original = decode(pack(m))
            assert frame == original, how
            assert encode(original) == pack(m)
