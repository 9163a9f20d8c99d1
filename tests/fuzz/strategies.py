"""Hypothesis strategies for the fuzz tests: valid frames of every type,
random msgpack values, and mutations of valid frames.

Valid frames are generated from the frame types' own wire tables
(``Frame.WIRE``): each field's checker is matched to a strategy that draws
values the checker accepts (:func:`for_checker`). A checker this module
does not know is a ``LookupError`` at import, so a new frame field cannot
escape the fuzzing silently.

Mutations work on the wire: on the map a frame encodes to (a value of the
wrong type, a key dropped or added, an integer out of range, a value buried
deep in lists, a key twice) or on its bytes (bit flips, truncations,
trailing bytes). Maps whose keys repeat, and integers in wider formats than
needed, cannot be built with msgpack-python's packer, so :func:`pack_pairs`
is a small msgpack encoder of its own.

Every frame a test hands to a decoder, session or hub goes through
:func:`counted`, whose module-level :data:`FRAMES` total the package's
conftest checks and prints (tests/fuzz/conftest.py).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from protocol import client_frames, frame_base, hub_frames, oncall
from protocol.frames import CLIENT_FRAMES, MAX_ACK_BYTES, SERVER_FRAMES, STATUSES, URGENT_STATES, Frame
from protocol.oncall import MAX_ESCALATION_STEPS

__all__ = [
    "ALL_KEYS",
    "ALL_TYPES",
    "ALWAYS_MALFORMED",
    "FRAMES",
    "MUTATIONS",
    "SAME_FRAME",
    "Budget",
    "FrameCount",
    "Pairs",
    "counted",
    "for_checker",
    "frames_of",
    "fuzz_settings",
    "msgpack_values",
    "mutated",
    "pack_pairs",
    "wire_map",
    "wire_maps",
]

MAX_INT = 2**63 - 1


class FrameCount:
    """Frames generated and fed to a decoder, a session or a hub, since the
    package started (``total``), and when it started."""

    def __init__(self) -> None:
        self.total = 0
        self.started = time.monotonic()
        self.by_test: dict[str, int] = {}

    def add(self, test: str, n: int = 1) -> None:
        self.total += n
        self.by_test[test] = self.by_test.get(test, 0) + n


#: The package's frame counter (see tests/fuzz/conftest.py).
FRAMES = FrameCount()


def counted(test: str, data: bytes) -> bytes:
    """``data``, counted as one generated frame of ``test``."""
    FRAMES.add(test)
    return data


#: CI runs (``CI`` set, as CI services do): derandomized, no example database.
CI = bool(os.environ.get("CI"))


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings of a fuzz test: ``max_examples`` examples, no
    per-example deadline (the box is shared; the wall-clock cap is
    :class:`Budget`'s), and in CI derandomized with no database."""
    ci: dict[str, Any] = {"derandomize": True, "database": None} if CI else {}
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
        **ci,
    )


class Budget:
    """A test's wall-clock cap: once ``seconds`` have passed since the first
    example, the remaining examples do nothing (:meth:`over`), so that a
    slow box ends the run in time; the frame count then tells whether it
    still fuzzed enough."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start: float | None = None

    def over(self) -> bool:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        return now - self.start > self.seconds


# --- values the checkers accept -------------------------------------------------------

ints = st.one_of(
    st.integers(0, 300),
    st.integers(0, MAX_INT),
    st.sampled_from([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, MAX_INT]),
)
#: What a frame's ``str`` may hold: anything but U+0000 (SPEC §3.1).
chars = st.characters(codec="utf-8", exclude_characters="\x00")
ids = st.text(chars, min_size=1, max_size=24) | st.from_regex(r"\A[ud]_[0-9a-f]{16}\Z")
tokens = st.from_regex(r"\A[a-z0-9_]{1,32}\Z")
team_ids = st.from_regex(r"\At_[0-9a-f]{16}\Z")
role_ids = st.from_regex(r"\Ar_[0-9a-f]{16}\Z")
blob_ids = st.from_regex(r"\Ab_[0-9a-f]{32}\Z")


def _text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    short = st.text(chars, min_size=min_size, max_size=min(max_size, 24))
    if max_size <= 24:
        return short
    # Now and then a string at its limit, where an off-by-one would show.
    return short | st.text(
        st.characters(codec="ascii", exclude_characters="\x00"), min_size=max_size, max_size=max_size
    )


def _bytes(n: int | None, max_len: int) -> st.SearchStrategy[bytes]:
    if n is not None:
        return st.binary(min_size=n, max_size=n)
    return st.binary(max_size=min(max_len, 200))


def _map(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A nested map with these keys in this (canonical) order."""
    order = list(fields)
    return st.fixed_dictionaries(fields).map(lambda m: {k: m[k] for k in order})


steps = st.one_of(
    _map(delay=ints, role=role_ids, holders=st.lists(ids, max_size=3)),
    _map(delay=ints, user=ids, holders=st.lists(ids, max_size=3)),
)
policies = _map(interval=ints, steps=st.lists(steps, max_size=MAX_ESCALATION_STEPS), final=ints)
envs = st.dictionaries(ids, st.binary(max_size=120), min_size=1, max_size=6)

#: Checkers that are module-level functions, and what they accept.
_PLAIN: dict[Callable[[Any], Any], st.SearchStrategy[Any]] = {
    frame_base.check_int: ints,
    frame_base.check_bool: st.booleans(),
    frame_base.check_status: st.sampled_from(STATUSES),
    frame_base.check_team_id: team_ids,
    frame_base.check_role_id: role_ids,
    frame_base.check_lifespan: st.integers(frame_base.MIN_LIFESPAN_MS, frame_base.MAX_LIFESPAN_MS),
    frame_base.check_envs: envs,
    frame_base.check_blob_id: blob_ids,
    frame_base.check_blob_ids: st.lists(blob_ids, min_size=1, max_size=4, unique=True),
    frame_base.check_blob_size: st.integers(41, MAX_INT),
    client_frames._check_piece: st.binary(min_size=1, max_size=200),
    hub_frames._check_blob_url: st.from_regex(r"\A/blobs/[A-Za-z0-9_-]{43}\Z"),
    frame_base.check_wraps: envs,
    client_frames._urgent: st.fixed_dictionaries({}, optional={"interval": ints, "final": ints}).map(
        lambda m: {k: m[k] for k in ("interval", "final") if k in m}
    ),
    client_frames._refusal: _map(seq=ints, reason=tokens),
    hub_frames._check_step: st.integers(1, MAX_INT),
    hub_frames._urgent_state: st.sampled_from(URGENT_STATES),
    hub_frames._device_info: _map(device=ids, sign_pk=_bytes(32, 32), box_pk=_bytes(32, 32)),
    hub_frames._device_entry: _map(device=ids, label=_text(0, 64), created=ints, attested=st.booleans()),
    hub_frames._presence: _map(user=ids, status=st.sampled_from(STATUSES), online=st.booleans()),
    hub_frames._team_head: _map(team=team_ids, seq=ints, head=_bytes(32, 32)),
    hub_frames._chain_entry: _map(rec=_bytes(None, 300), sig=_bytes(64, 64)),
    hub_frames._policy: policies,
    hub_frames._role_info: _map(
        role=role_ids,
        name=_text(1, 64),
        org=_text(0, 128),
        reserved=st.booleans(),
        holders=st.lists(ids, max_size=4),
        policy=policies,
    ),
    oncall.Step.from_map: steps,
}


def for_checker(check: Callable[[Any], Any]) -> st.SearchStrategy[Any]:
    """Wire values ``check`` accepts. The checkers built by a factory
    (``check_str(64)``, ``check_list(item, n)``...) are recognised by the
    factory's name and read through their closure."""
    if check in _PLAIN:
        return _PLAIN[check]
    name = check.__qualname__
    cells = dict(
        zip(check.__code__.co_freevars, (c.cell_contents for c in check.__closure__ or ()), strict=True)
    )
    if name == "check_str.<locals>.check":
        return _text(0 if cells["allow_empty"] else 1, cells["max_len"])
    if name == "check_bytes.<locals>.check":
        return _bytes(cells["n"], cells["max_len"])
    if name == "check_token.<locals>.check":
        return tokens
    if name == "check_list.<locals>.check":
        # Short lists: the limits themselves are the codec tests' business.
        return st.lists(for_checker(cells["item"]), max_size=min(cells["max_items"], 4))
    raise LookupError(f"no strategy for the checker {name}")


def _optional(cls: type[Frame]) -> frozenset[str]:
    return frame_base._OPTIONAL[cls]


def _field(cls: type[Frame], key: str, check: Callable[[Any], Any]) -> st.SearchStrategy[Any]:
    # ``deliver.urgent`` is never false on the wire (SPEC §14.5): the decoder
    # takes false for absent, so only true is canonical.
    if cls is hub_frames.Deliver and key == "urgent":
        return st.just(True)
    # Version 1 mostly, so that an auth or enroll gets past the version check.
    if key == "v":
        return st.just(1) | ints
    return for_checker(check)


def wire_map(cls: type[Frame]) -> st.SearchStrategy[dict[str, Any]]:
    """Wire maps (``{"t": ..., fields}``, keys in canonical order) that
    ``cls`` decodes from; optional fields are present or omitted at random."""
    required = {key: _field(cls, key, check) for attr, key, check in cls.WIRE if attr not in _optional(cls)}
    optional = {key: _field(cls, key, check) for attr, key, check in cls.WIRE if attr in _optional(cls)}
    order = ["t", *(key for _, key, _ in cls.WIRE)]

    def canonical(m: dict[str, Any]) -> dict[str, Any]:
        return {k: m[k] for k in order if k in m}

    base = st.fixed_dictionaries({"t": st.just(cls.TYPE), **required}, optional=optional).map(canonical)
    if cls is client_frames.Send:
        # A send without a sealed body holds at most 64 envelopes: true of
        # every drawn map (envs holds at most 6); a send with one may hold 512.
        # ``blobs`` only with a body (SPEC §16.4).
        return base.filter(lambda m: "blobs" not in m or "body" in m)
    if cls is client_frames.Ack:
        return base.filter(lambda m: len(msgpack.packb(m, use_bin_type=True)) <= MAX_ACK_BYTES)
    return base


_WIRE_MAPS = {cls: wire_map(cls) for cls in CLIENT_FRAMES + SERVER_FRAMES}


def wire_maps(classes: tuple[type[Frame], ...]) -> st.SearchStrategy[dict[str, Any]]:
    """A wire map of one of ``classes``."""
    return st.sampled_from(classes).flatmap(lambda cls: _WIRE_MAPS[cls])


def frames_of(classes: tuple[type[Frame], ...]) -> st.SearchStrategy[Frame]:
    """Valid frames of ``classes``, built by decoding a valid wire map
    (so that nested records are the decoder's own types)."""
    return wire_maps(classes).map(_decoded)


def _decoded(m: dict[str, Any]) -> Frame:
    from protocol.frames import decode  # here: the module is the subject

    return decode(msgpack.packb(m, use_bin_type=True))


ALL_KEYS = sorted({key for cls in CLIENT_FRAMES + SERVER_FRAMES for _, key, _ in cls.WIRE})
ALL_TYPES = sorted(cls.TYPE for cls in CLIENT_FRAMES + SERVER_FRAMES)

#: Mutations after which the bytes never decode: MalformedFrame, always.
ALWAYS_MALFORMED = frozenset(
    {"huge_int", "nul_in_str", "deep", "duplicate_key", "duplicate_nested_key", "truncate", "trailing"}
)
#: Mutations after which the bytes decode to the very frame the map was.
SAME_FRAME = frozenset({"extra_key", "wide_encoding", "shuffled_keys"})

# --- random msgpack values --------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from([MAX_INT, MAX_INT + 1, 2**64 - 1, -1, -(2**63)]),
)
msgpack_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)

# --- a msgpack encoder that can repeat keys and widen integers ---------------------------


def pack_pairs(value: Any, wide: bool = False) -> bytes:
    """msgpack bytes of ``value``, where a ``list`` of 2-tuples wrapped in
    :class:`Pairs` is a map written pair by pair (keys may repeat), and
    ``wide`` writes every non-negative integer as uint 64 and every
    ``str`` as str 32 (valid msgpack, never canonical)."""
    out = bytearray()
    _pack(value, wide, out)
    return bytes(out)


class Pairs(list[tuple[Any, Any]]):
    """A map as its list of pairs, for :func:`pack_pairs`."""


def _pack(v: Any, wide: bool, out: bytearray) -> None:
    if isinstance(v, Pairs) or isinstance(v, dict):
        items = list(v) if isinstance(v, Pairs) else list(v.items())
        out += struct.pack(">BI", 0xDF, len(items)) if wide else _header(len(items), 0x80, 0xDE, 0xDF)
        for k, x in items:
            _pack(k, wide, out)
            _pack(x, wide, out)
    elif isinstance(v, list):
        out += struct.pack(">BI", 0xDD, len(v)) if wide else _header(len(v), 0x90, 0xDC, 0xDD)
        for x in v:
            _pack(x, wide, out)
    elif isinstance(v, str) and wide:
        raw = v.encode()
        out += struct.pack(">BI", 0xDB, len(raw)) + raw
    elif type(v) is int and wide and 0 <= v < 2**64:
        out += struct.pack(">BQ", 0xCF, v)
    else:
        out += msgpack.packb(v, use_bin_type=True)


def _header(n: int, fix: int, b16: int, b32: int) -> bytes:
    if n < 16:
        return bytes([fix | n])
    return struct.pack(">BH", b16, n) if n < 2**16 else struct.pack(">BI", b32, n)


# --- mutations ------------------------------------------------------------------------------

#: How a valid wire map is broken, by name (the name is part of what a failing example shows).
MUTATIONS = (
    "wrong_type",
    "drop_key",
    "extra_key",
    "huge_int",
    "nul_in_str",
    "deep",
    "retype",
    "duplicate_key",
    "duplicate_nested_key",
    "bit_flip",
    "truncate",
    "trailing",
    "wide_encoding",
    "shuffled_keys",
)


@st.composite
def mutated(draw: st.DrawFn, m: dict[str, Any]) -> tuple[str, bytes]:
    """(the mutation's name, the bytes of ``m`` broken by it). Some mutations
    leave the frame valid (an extra unknown key, a wider encoding, another
    key order, a bit flip in a bin field): the tests tell which by decoding."""
    how = draw(st.sampled_from(MUTATIONS))
    m = dict(m)
    keys = list(m)
    strings = [k for k in keys if k != "t" and type(m[k]) is str]
    if how == "nul_in_str" and not strings:
        how = "truncate"
    if how == "wrong_type":
        m[draw(st.sampled_from(keys))] = draw(msgpack_values)
    elif how == "drop_key":
        del m[draw(st.sampled_from(keys))]
    elif how == "extra_key":
        m[draw(st.text(max_size=10).filter(lambda k: k != "t" and k not in ALL_KEYS))] = draw(msgpack_values)
    elif how == "retype":
        m["t"] = draw(st.sampled_from(ALL_TYPES) | st.text(max_size=12))
    elif how == "huge_int":
        ints_at = [k for k in keys if type(m[k]) is int] or keys
        m[draw(st.sampled_from(ints_at))] = draw(st.sampled_from([MAX_INT + 1, 2**64 - 1, -1, -(2**63)]))
    elif how == "nul_in_str":
        key = draw(st.sampled_from(strings))
        at = draw(st.integers(0, len(m[key])))
        m[key] = m[key][:at] + "\x00" + m[key][at:]
    elif how == "deep":
        # The value of one key inside 1 to 2,000 one-item arrays (past the
        # unpacker's depth limit, 1,024, at the far end).
        key, depth = draw(st.sampled_from(keys)), draw(st.integers(1, 2000))
        raw = bytearray(_header(len(m), 0x80, 0xDE, 0xDF))
        for k, v in m.items():
            raw += (
                msgpack.packb(k)
                + (b"\x91" * depth if k == key else b"")
                + msgpack.packb(v, use_bin_type=True)
            )
        return how, bytes(raw)
    elif how == "duplicate_key":
        key = draw(st.sampled_from(keys))
        pairs = Pairs(m.items())
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(msgpack_values | st.just(m[key]))))
        return how, pack_pairs(pairs)
    elif how == "duplicate_nested_key":
        return how, pack_pairs(_nested_duplicate(draw, m))
    elif how == "wide_encoding":
        return how, pack_pairs(m, wide=True)
    elif how == "shuffled_keys":
        return how, pack_pairs(Pairs(draw(st.permutations(list(m.items())))))
    raw = bytearray(msgpack.packb(m, use_bin_type=True))
    if how == "bit_flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        del raw[draw(st.integers(0, len(raw) - 1)) :]
    elif how == "trailing":
        raw += draw(st.binary(min_size=1, max_size=8))
    return how, bytes(raw)


def _nested_duplicate(draw: st.DrawFn, m: dict[str, Any]) -> Pairs:
    """``m`` with a key repeated in its first nested map (a ``send``'s
    ``envs``, a refusal, a device map...), or a nested map with a repeated
    key added under a new key when it has none."""
    top = Pairs()
    done = False
    for k, v in m.items():
        if not done and isinstance(v, dict) and v:
            inner = Pairs(v.items())
            inner.append(inner[0])
            v, done = inner, True
        elif not done and isinstance(v, list) and v and isinstance(v[0], dict) and v[0]:
            inner = Pairs(v[0].items())
            inner.append(inner[-1])
            v, done = [inner, *v[1:]], True
        top.append((k, v))
    if not done:
        top.append(("x", Pairs([("a", 1), ("a", draw(msgpack_values))])))
    return top
