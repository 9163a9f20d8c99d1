"""The teams half of a profile's state DB (SPEC §13.2): each team's
verified chain of records and the view it comes to.
:class:`~miss_client.state.LocalState` gets it by inheritance."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack

from .models import TeamView, now_ms
from .state_schema import StateDatabase

__all__ = ["TeamRecords"]

_TEAM_COLUMNS = "team, name, org, lifespan, members, admins, seq, head, closed, problem"


def _team_view(row: tuple[Any, ...]) -> TeamView:
    team, name, org, lifespan, members, admins, seq, head, closed, problem = row
    return TeamView(
        team,
        name,
        org,
        lifespan,
        tuple(sorted(msgpack.unpackb(members))),
        tuple(sorted(msgpack.unpackb(admins))),
        bytes(head),
        seq,
        bool(closed),
        problem,
    )


class TeamRecords(StateDatabase):
    """Teams' records and views, on :class:`~miss_client.state.LocalState`'s database."""

    def team_records(self, team: str) -> list[tuple[bytes, bytes]]:
        """The verified chain of ``team`` as ``(rec, sig)`` pairs, in order."""
        rows = self._db.execute(
            "SELECT rec, sig FROM team_records WHERE team = ? ORDER BY seq", (team,)
        ).fetchall()
        return [(bytes(r), bytes(s)) for r, s in rows]

    def save_team(self, view: TeamView, new_records: Iterable[tuple[int, bytes, bytes, bytes]]) -> None:
        """Store a team's state and the records ``(seq, rec, sig, hash)`` that
        extend its stored chain (verified by the caller, whole)."""
        with self._tx() as db:
            for seq, rec, sig, digest in new_records:
                db.execute(
                    "INSERT OR REPLACE INTO team_records (team, seq, rec, sig, hash) VALUES (?, ?, ?, ?, ?)",
                    (view.team, seq, rec, sig, digest),
                )
            db.execute(
                "INSERT OR REPLACE INTO teams (team, name, org, lifespan, members, admins, seq, head, "
                "closed, problem, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "coalesce(?, (SELECT problem FROM teams WHERE team = ?)), ?)",
                (
                    view.team,
                    view.name,
                    view.org,
                    view.lifespan,
                    msgpack.packb(list(view.members)),
                    msgpack.packb(list(view.admins)),
                    view.seq,
                    view.head,
                    int(view.closed),
                    view.problem,
                    view.team,
                    now_ms(),
                ),
            )

    def set_team_problem(self, team: str, problem: str | None) -> bool:
        """Set (or clear) the problem of a known team; True if it changed."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE teams SET problem = ? WHERE team = ? AND problem IS NOT ?", (problem, team, problem)
            )
            return cur.rowcount > 0

    def get_team(self, team: str) -> TeamView | None:
        row = self._db.execute(f"SELECT {_TEAM_COLUMNS} FROM teams WHERE team = ?", (team,)).fetchone()
        return None if row is None else _team_view(row)

    def list_teams(self) -> list[TeamView]:
        rows = self._db.execute(f"SELECT {_TEAM_COLUMNS} FROM teams ORDER BY name, team").fetchall()
        return [_team_view(row) for row in rows]

    def team_heads(self, team: str) -> list[bytes]:
        """The hash of each record of the verified chain, in order."""
        rows = self._db.execute("SELECT hash FROM team_records WHERE team = ? ORDER BY seq", (team,))
        return [bytes(r[0]) for r in rows]
