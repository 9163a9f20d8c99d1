"""A team record whose strings hold U+0000 is bad_team_record on both
stores (SPEC §3.1, §13.2 rule 1), and the connection goes on. On
PostgreSQL, `by`, `name` or `org` holding it used to fail the connection
with 1011: the hub looked `by` up, or stored the name, before any check
refused it (PostgreSQL cannot hold U+0000). `by` is looked up before the
signature is checked, so any connected client could do it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from miss_server.app import HubServer
from protocol import teams as pt
from protocol.frames import Error, TeamChange, TeamOk
from tests.support.inprocess_hub import HubFactory
from tests.support.pg_hub import postgres_store_url
from tests.support.team_wire import Team, TeamDevice, attestation_of, now_ms
from tests.support.wire import invite


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """Each store under the hub: SQLite (the default) and PostgreSQL."""
    if request.param == "sqlite":
        yield None
    else:
        async with postgres_store_url() as url:
            yield url


@pytest.fixture
async def hub(store_url: str | None, make_hub: HubFactory) -> HubServer:
    # store_url first: set up before make_hub, so torn down after the hub stops.
    return await make_hub(**({} if store_url is None else {"store": store_url}))


async def test_a_record_string_holding_nul_is_refused_and_the_connection_goes_on(hub: HubServer) -> None:
    user, code = await invite(hub, "Dr Alice", "20000100001")
    alice = TeamDevice(hub.url)
    await alice.enroll(code)
    assert alice.user_id == user
    att = await attestation_of(hub.store, alice.user_id)
    rid = 0
    for where in ("by", "name", "org", "user", "device"):
        team = Team()
        fields: dict[str, str] = {
            "by": alice.user_id,
            "device": alice.device_id,
            "name": "Réa",
            "org": "CHRU",
        }
        target = alice.user_id + "\x00" if where == "user" else alice.user_id
        if where != "user":
            fields[where] = fields[where][:2] + "\x00" + fields[where][2:]
        record = pt.TeamRecord(
            team=team.team_id,
            seq=0,
            prev=pt.ZERO_HEAD,
            op="create",
            user=target,
            at=now_ms(),
            att=att,
            **fields,
        )
        signed = pt.sign_record(record, alice.keys)
        rid += 1
        reply = await alice.ask(TeamChange(rid=rid, team=team.team_id, rec=signed.rec, sig=signed.sig))
        assert isinstance(reply, Error) and reply.code == "bad_team_record" and not reply.fatal, (
            where,
            reply,
        )
        assert await hub.store.team_info(team.team_id) is None
    # The same record without U+0000 is stored: the connection is fine.
    team = Team()
    record = pt.next_record(
        None,
        "create",
        alice.user_id,
        by=alice.user_id,
        device=alice.device_id,
        att=att,
        at=now_ms(),
        team=team.team_id,
        name="Réa",
        org="CHRU",
    )
    signed = pt.sign_record(record, alice.keys)
    reply = await alice.ask(TeamChange(rid=rid + 1, team=team.team_id, rec=signed.rec, sig=signed.sig))
    assert isinstance(reply, TeamOk), reply
