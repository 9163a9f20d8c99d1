"""A hub that lies about care teams (SPEC §13.4, §13.8), for the client tests:
the in-process hub of the ``hub`` fixture, changed behind its back the way
an operator with a shell on its host could.

* :meth:`TeamOperator.insert_member`: a member row written straight into
  the hub's SQLite file, with no record in the chain (nobody signed it); the
  hub then routes by it and asks senders for that user's devices.
* :meth:`TeamOperator.freeze_chain_for`: the hub's ``team_chain`` answers,
  for one user only, stop at a given number of records, so that this user
  and the others see different chains.
* :meth:`TeamOperator.forge_chain_for`: the hub's ``team_chain`` answers,
  for one user only, carry records whose signature nobody made.

Like tests/support/tamper.py, each operation reads its effect back through
the hub's own reads, so that a test cannot pass because nothing changed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from miss_server.app import HubServer
from protocol import frames as f


class TeamOperator:
    """Tampers with the teams ``hub`` serves."""

    def __init__(self, hub: HubServer) -> None:
        self.hub = hub

    async def insert_member(self, team: str, user_id: str) -> None:
        """Make ``user_id`` a member of ``team`` in the hub's tables, without
        any record: the chain still says they are not."""
        db = sqlite3.connect(self.hub.settings.sqlite_path)
        try:
            with db:
                db.execute(
                    "INSERT INTO team_members (team, user_id, admin) VALUES (?, ?, 0)", (team, user_id)
                )
        finally:
            db.close()
        info = await self.hub.store.team_info(team)
        assert info is not None and user_id in info.members, (
            f"{user_id} is not a member of {team} for the hub"
        )

    def _rewrite_chain_for(
        self, user_id: str, rewrite: Callable[[f.TeamChain, f.TeamChainOk], f.TeamChainOk]
    ) -> None:
        """From now on, the hub's ``team_chain`` answers to ``user_id`` are
        ``rewrite(request, answer)``; other users get the true chain."""
        service = self.hub.hub.teams
        original = service.chain

        async def chain(user: str, frame: f.TeamChain) -> bytes:
            data = await original(user, frame)
            if user != user_id:
                return data
            reply = f.decode(data, f.SERVER_FRAMES)
            assert isinstance(reply, f.TeamChainOk)
            return f.encode(rewrite(frame, reply))

        service.chain = chain  # type: ignore[method-assign]

    def freeze_chain_for(self, user_id: str, records: int) -> None:
        """From now on, ``team_chain`` answers to ``user_id`` hold at most the
        first ``records`` records of any team (and never ``more``)."""

        def frozen(frame: f.TeamChain, reply: f.TeamChainOk) -> f.TeamChainOk:
            keep = max(0, records - frame.from_seq)
            return f.TeamChainOk(reply.rid, reply.team, reply.recs[:keep], False)

        self._rewrite_chain_for(user_id, frozen)

    def forge_chain_for(self, user_id: str) -> None:
        """From now on, ``team_chain`` answers to ``user_id`` carry every
        record after the creation with a signature nobody made."""

        def forged(frame: f.TeamChain, reply: f.TeamChainOk) -> f.TeamChainOk:
            recs = tuple(
                e if frame.from_seq + i == 0 else f.ChainEntry(e.rec, bytes(64))
                for i, e in enumerate(reply.recs)
            )
            return f.TeamChainOk(reply.rid, reply.team, recs, reply.more)

        self._rewrite_chain_for(user_id, forged)
