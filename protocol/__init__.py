"""MiSS protocol v1, sans I/O: frames, codec, crypto helpers, session state
(the hub's side in ``session``, the client's in ``client_session``).

This package imports no asyncio, network or database library (a test
enforces it); the hub and every client build on it. The contract it
implements is ``protocol/SPEC.md``.
"""

from .frames import MAX_FRAME_BYTES, PROTOCOL_VERSION, SUBPROTOCOL

__all__ = ["MAX_FRAME_BYTES", "PROTOCOL_VERSION", "SUBPROTOCOL"]
