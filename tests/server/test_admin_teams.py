"""``miss-admin team``: care teams made by the deployment's administrators
with records signed by the authority key (SPEC §13.1), stored where hubs
route by them at once, and announced to the members connected to a
running hub (``team_changed``)."""

from __future__ import annotations

import asyncio

from miss_server.app import HubServer
from protocol import teams as pt
from protocol.frames import Accepted, Deliver, TeamChanged
from tests.support.admin_cli import Admin
from tests.support.authority import AUTHORITY_PK
from tests.support.team_wire import Team, TeamDevice, open_team_deliver, team_send
from tests.support.wire import invite


def test_create_add_remove_list_and_show(run: Admin) -> None:
    alice = run.invite("Dr Alice Martin", "10000000001")["user"]
    bob = run.invite("Dr Bob Durand", "10000000002")["user"]
    made = run.with_key(
        "team", "create", "--name", "Réa nuit", "--org", "CHRU", "--lifespan", "24h", "--admin", "10000000001"
    )
    team = made["team"]
    assert pt.is_team_id(team)
    assert (made["members"], made["admins"], made["lifespan"], made["seq"], made["creator"]) == (
        [alice],
        [alice],
        86_400_000,
        1,
        "authority",
    )
    added = run.with_key("team", "add", team, bob)
    assert added["members"] == sorted([alice, bob]) and added["seq"] == 2
    shown = run("team", "show", team)
    assert [(r["op"], r["user"], r["by"]) for r in shown["records"]] == [
        ("create", alice, "authority"),
        ("add", bob, "authority"),
    ]
    # The stored chain is what any client verifies with the authority key.
    records, _ = run.on_store(lambda s: s.team_records(team, 0, 1 << 20))
    state = pt.verify_chain([pt.SignedRecord(r.rec, r.sig) for r in records], AUTHORITY_PK, team)
    assert state.members == {alice, bob} and state.name == "Réa nuit" and state.lifespan == 86_400_000
    removed = run.with_key("team", "remove", team, "10000000002")
    assert removed["members"] == [alice]
    assert [t["team"] for t in run("team", "list")["teams"]] == [team]
    assert "Réa nuit" in run.text("team", "list")
    events = run("audit", "--action", "team.changed")["events"]
    assert len(events) == 3


def test_bad_team_commands_change_nothing(run: Admin) -> None:
    alice = run.invite("Dr Alice Martin", "10000000001")["user"]
    team = run.with_key("team", "create", "--name", "Garde", "--admin", alice)["team"]
    assert "no clinician" in run.with_key("team", "add", team, "10000000099", status=1)["error"]
    assert "no team" in run.with_key("team", "add", "t_0000000000000000", alice, status=1)["error"]
    assert "already a member" in run.with_key("team", "add", team, alice, status=1)["error"]
    assert (
        "--lifespan"
        in run.with_key("team", "create", "--name", "X", "--lifespan", "5m", "--admin", alice, status=1)[
            "error"
        ]
    )
    # Without the authority key nothing can be signed.
    assert run("team", "add", team, alice, "--key-file", "/nonexistent/key", status=1)["error"]
    assert run("team", "show", team)["seq"] == 1
    assert len(run("team", "list")["teams"]) == 1


async def test_a_running_hub_routes_by_and_announces_admin_changes(hub: HubServer, hub_admin: Admin) -> None:
    _, code = await invite(hub, "Dr Alice", "10000000011")
    alice = TeamDevice(hub.url)
    await alice.enroll(code)
    _, code = await invite(hub, "Dr Bob", "10000000012")
    bob = TeamDevice(hub.url)
    await bob.enroll(code)
    made = await asyncio.to_thread(
        hub_admin.with_key, "team", "create", "--name", "Réa", "--admin", alice.user_id
    )
    team_id = made["team"]
    await asyncio.to_thread(hub_admin.with_key, "team", "add", team_id, bob.user_id)
    pushed = await bob.next_of(TeamChanged, timeout=5)
    assert pushed.team == team_id and pushed.seq == 2
    # Alice sends with the head the chain gives; Bob reads it.
    records, _ = await hub.store.team_records(team_id, 0, 1 << 20)
    team = Team(team_id=team_id)
    for r in records:
        team.accepted(pt.SignedRecord(r.rec, r.sig), AUTHORITY_PK)
    send = team_send(alice, team, {bob.device_id: bob.keys.box_pk}, "bonjour l'équipe")
    assert isinstance(await alice.ask(send), Accepted)
    got = await bob.next_of(Deliver)
    assert open_team_deliver(bob, got, alice).body == "bonjour l'équipe"
    # Bob removed by the administrator: he hears of it, and a send with the old head is stale.
    await asyncio.to_thread(hub_admin.with_key, "team", "remove", team_id, bob.user_id)
    assert (await bob.next_of(TeamChanged, timeout=5)).seq == 3
    stale = team_send(alice, team, {bob.device_id: bob.keys.box_pk}, "encore")
    reply = await alice.ask(stale)
    assert getattr(reply, "code", None) == "team_changed"
