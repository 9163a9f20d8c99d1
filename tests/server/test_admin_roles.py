"""``miss-admin role``: on-call roles made by the deployment's
administrators (SPEC §14): holders assigned or scheduled by a CSV import
(refused whole on any bad line), escalation policies within the hub's caps,
organisation defaults, and the audit trail of each change."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from miss_server.app import HubServer
from protocol.frames import RoleChanged, RoleGet, RoleOk
from protocol.oncall import is_role_id
from tests.support.admin_cli import Admin
from tests.support.oncall_wire import OncallDevice
from tests.support.store_fixtures import POSTGRES_DSN
from tests.support.wire import invite

PARIS = ZoneInfo("Europe/Paris")
CARDIO = "Cardiologie — senior de garde"
REA = "Réanimation — interne de nuit"
HEADER = "role,rpps,start,end\n"


def clinician(run: Admin, name: str, rpps: str, org: str = "CHRU de Lille", verify: bool = True) -> str:
    """A clinician invited, with one enrolled device, attested unless not ``verify``; the user id."""
    invited = run.invite(name, rpps, org)
    device = run.enroll_device(invited["code"])
    if verify:
        run.with_key("verify", rpps, "--device", device)
    user: str = invited["user"]
    return user


def paris(day: datetime, hour: int) -> datetime:
    """``hour``:00 Paris time on ``day``'s date (aware)."""
    return datetime(day.year, day.month, day.day, hour, tzinfo=PARIS)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_create_list_show_assign_unassign(run: Admin) -> None:
    alice = clinician(run, "Dr Alice Martin", "10000000001")
    made = run("role", "create", CARDIO, "--org", "CHRU de Lille", "--reserved")
    role = made["role"]
    assert is_role_id(role) and made["reserved"] and made["policy"] is None
    assert run.text("role", "create", "Pédiatrie — garde", "--org", "").strip().startswith("r_")
    listed = run("role", "list")["roles"]
    assert {r["name"] for r in listed} == {CARDIO, "Pédiatrie — garde"}
    assert all(r["holders"] == [] for r in listed)
    assert "nobody holds it" in run.text("role", "show", role)

    assigned = run("role", "assign", CARDIO, "10000000001")  # by exact name and RPPS
    assert (assigned["role"], assigned["holders"]) == (role, [alice])
    shown = run("role", "show", role)
    assert shown["holders"] == [{"user": alice, "scheduled_until": None}]
    assert shown["policy_source"] == "deployment"
    assert shown["effective_policy"] == {"interval": 120_000, "steps": [], "final": 600_000}
    assert "Dr Alice Martin (RPPS 10000000001)  manual" in run.text("role", "show", CARDIO)

    assert run("role", "unassign", role, alice)["holders"] == []
    assert "does not hold" in run("role", "unassign", role, alice, status=1)["error"]
    actions = ["role.created", "role.assigned", "role.unassigned"]
    events = run("audit", *(a for action in actions for a in ("--action", action)))["events"]
    assert [e["action"] for e in events] == [
        "role.created",
        "role.created",
        "role.assigned",
        "role.unassigned",
    ]
    assert (events[0]["detail"], events[2]["detail"], events[3]["detail"]) == (role, role, role)
    assert events[2]["user"] == events[3]["user"] == alice


def test_bad_role_commands_change_nothing(run: Admin) -> None:
    clinician(run, "Dr Alice Martin", "10000000001")
    clinician(run, "Dr Noé Petit", "10000000002", verify=False)
    role = run("role", "create", CARDIO, "--org", "CHRU de Lille")["role"]
    assert "exists already" in run("role", "create", CARDIO, "--org", "CHRU de Lille", status=1)["error"]
    assert (
        "no organisation" in run("role", "create", "Garde", "--org", "CHRU de Nulle Part", status=1)["error"]
    )
    assert "no role" in run("role", "assign", "Cardiologie", "10000000001", status=1)["error"]
    assert "no role" in run("role", "show", "r_0000000000000000", status=1)["error"]
    assert "no clinician" in run("role", "assign", role, "10000000099", status=1)["error"]
    assert "not a verified clinician" in run("role", "assign", role, "10000000002", status=1)["error"]
    assert len(run("role", "list")["roles"]) == 1
    assert run("role", "show", role)["holders"] == []


def _week(tmp_path: Path, start: datetime) -> tuple[str, list[tuple[str, str, datetime, datetime]]]:
    """A week of shifts from ``start``'s date: Cardiologie by day (08:00 to 20:00,
    naive Paris time) and by night (20:00 to 08:00, with the offset), the
    Réanimation intern by night; the file and its rows."""
    rows = []
    for d in range(7):
        day = start + timedelta(days=d)
        night_end = paris(day + timedelta(days=1), 8)
        rows.append((CARDIO, "10000000001" if d % 2 else "10000000002", paris(day, 8), paris(day, 20)))
        rows.append((CARDIO, "10000000003", paris(day, 20), night_end))
        rows.append((REA, "10000000004", paris(day, 20), night_end))
    lines = [
        # Day shifts start in naive Paris time, the others with their offset.
        f"{role},{rpps},{(s.replace(tzinfo=None) if s.hour == 8 else s).isoformat()},{e.isoformat()}"
        for role, rpps, s, e in rows
    ]
    return write(tmp_path, "semaine.csv", HEADER + "\n".join(lines) + "\n"), rows


@pytest.fixture
def team(run: Admin) -> Iterator[dict[str, str]]:
    users = {
        rpps: clinician(run, name, rpps)
        for name, rpps in [
            ("Dr Alice Martin", "10000000001"),
            ("Dr Bruno Lefèvre", "10000000002"),
            ("Dr Chloé Dubois", "10000000003"),
            ("Dr Élise Garnier", "10000000004"),
        ]
    }
    run("role", "create", CARDIO, "--org", "CHRU de Lille", "--reserved")
    run("role", "create", REA, "--org", "CHRU de Lille")
    yield users


def test_import_a_week_and_show_holders_at_an_instant(
    run: Admin, team: dict[str, str], tmp_path: Path
) -> None:
    now = datetime.now(PARIS)
    start = now - timedelta(days=2)  # shifts already over are skipped
    path, rows = _week(tmp_path, start)
    done = run("role", "import", path)
    cardio, rea = (r["role"] for r in sorted(run("role", "list")["roles"], key=lambda r: r["name"]))
    over = sum(e <= now for _, _, _, e in rows)
    assert over > 0 and done["skipped"] == over
    assert done["imported"] == len(rows) - over == done["stored"]
    assert done["roles"] == {
        cardio: sum(r == CARDIO and e > now for r, _, _, e in rows),
        rea: sum(r == REA and e > now for r, _, _, e in rows),
    }
    # Tomorrow at noon: Cardiologie's day shift; at 23:00, the night shift.
    tomorrow = now + timedelta(days=1)
    noon = run("role", "show", CARDIO, "--at", paris(tomorrow, 12).isoformat())
    day_rpps = "10000000001" if (tomorrow.date() - start.date()).days % 2 else "10000000002"
    assert [h["user"] for h in noon["holders"]] == [team[day_rpps]]
    assert noon["holders"][0]["scheduled_until"] is not None
    night = run("role", "show", rea, "--at", paris(tomorrow, 23).replace(tzinfo=None).isoformat())
    assert [h["user"] for h in night["holders"]] == [team["10000000004"]]
    assert night["upcoming"] and all(u["user"] == team["10000000004"] for u in night["upcoming"])
    text = run.text("role", "show", CARDIO, "--at", paris(tomorrow, 23).isoformat())
    assert "Dr Chloé Dubois (RPPS 10000000003)  shift until" in text and "upcoming shifts:" in text
    events = run("audit", "--action", "role.schedule_imported")["events"]
    assert sorted(e["detail"] for e in events) == sorted(f"{r} shifts={n}" for r, n in done["roles"].items())


def test_holders_now_and_a_new_import_replaces_only_the_roles_it_names(
    run: Admin, team: dict[str, str], tmp_path: Path
) -> None:
    now = datetime.now(PARIS).replace(microsecond=0)
    naive = (now - timedelta(hours=1)).replace(tzinfo=None).isoformat()  # Paris time
    later = now + timedelta(hours=1)
    first = write(
        tmp_path,
        "maintenant.csv",
        HEADER
        + f"{CARDIO},10000000001,{naive},{later.isoformat()}\n"
        + f"{REA},10000000004,{naive},{later.astimezone(ZoneInfo('UTC')).isoformat()}\n"
        + f'"{CARDIO}",10000000002,{later.isoformat()},{(later + timedelta(hours=12)).isoformat()}\n',
    )
    assert run("role", "import", first)["imported"] == 3
    assert [h["user"] for h in run("role", "show", CARDIO)["holders"]] == [team["10000000001"]]
    assert [h["user"] for h in run("role", "show", REA)["holders"]] == [team["10000000004"]]
    # A manual holder adds to the scheduled one.
    run("role", "assign", CARDIO, "10000000003")
    assert {h["user"] for h in run("role", "show", CARDIO)["holders"]} == {
        team["10000000001"],
        team["10000000003"],
    }
    # Semicolons (a French spreadsheet), and only Cardiologie's shifts replaced.
    second = write(
        tmp_path,
        "relève.csv",
        "role;rpps;start;end\n" + f"{CARDIO};10000000002;{naive};{later.isoformat()}\n",
    )
    assert run("role", "import", second)["roles"] == {run("role", "show", CARDIO)["role"]: 1}
    shown = run("role", "show", CARDIO)
    assert {h["user"] for h in shown["holders"]} == {team["10000000002"], team["10000000003"]}
    assert shown["upcoming"] == []
    assert [h["user"] for h in run("role", "show", REA)["holders"]] == [team["10000000004"]]


def test_a_bad_schedule_is_refused_whole_with_every_bad_line(
    run: Admin, team: dict[str, str], tmp_path: Path
) -> None:
    clinician(run, "Dr Noé Petit", "10000000005", verify=False)
    now = datetime.now(PARIS).replace(microsecond=0)
    good = write(
        tmp_path,
        "bonne.csv",
        HEADER
        + f"{CARDIO},10000000001,{now - timedelta(hours=1):%Y-%m-%dT%H:%M:%S%z},"
        + f"{(now + timedelta(hours=8)).isoformat()}\n",
    )
    run("role", "import", good)
    before = run("role", "show", CARDIO)
    s, e = now + timedelta(hours=8), now + timedelta(hours=20)
    bad = write(
        tmp_path,
        "mauvaise.csv",
        HEADER
        + f"{CARDIO},10000000002,{s.isoformat()},{e.isoformat()}\n"  # line 2: good
        + f"{CARDIO},10000000099,{s.isoformat()},{e.isoformat()}\n"  # 3: unknown RPPS
        + f"{REA},10000000004,{e.isoformat()},{s.isoformat()}\n"  # 4: end before start
        + f"Cardiologie,10000000003,{s.isoformat()},{e.isoformat()}\n"  # 5: unknown role
        + "\n"  # 6: blank, ignored
        + f"{REA},10000000004,demain soir,{e.isoformat()}\n"  # 7: bad date
        + f"{REA},10000000005,{s.isoformat()},{e.isoformat()}\n"  # 8: not verified
        + f"{REA},10000000004,{s.isoformat()}\n",  # 9: a column missing
    )
    error = run("role", "import", bad, status=1)["error"]
    assert "nothing imported, 6 bad line(s)" in error
    lines = {line.split(":")[0]: line for line in error.splitlines() if line.startswith("line ")}
    assert sorted(lines) == ["line 3", "line 4", "line 5", "line 7", "line 8", "line 9"]
    assert "no clinician '10000000099'" in lines["line 3"]
    assert "is not after start" in lines["line 4"]
    assert "no role named 'Cardiologie'" in lines["line 5"]
    assert "start: 'demain soir' is not an ISO 8601 time" in lines["line 7"]
    assert "unverified, not a verified clinician" in lines["line 8"]
    assert "3 columns" in lines["line 9"]
    after = run("role", "show", CARDIO)
    assert (after["holders"], after["upcoming"]) == (before["holders"], before["upcoming"])
    assert run("role", "show", REA)["upcoming"] == []
    assert len(run("audit", "--action", "role.schedule_imported")["events"]) == 1
    header = write(tmp_path, "entete.csv", "rôle,rpps,début,fin\n")
    assert (
        "line 1: the header must be role,rpps,start,end" in run("role", "import", header, status=1)["error"]
    )


def test_policies_within_caps_and_defaults(run: Admin) -> None:
    alice = clinician(run, "Dr Alice Martin", "10000000001")
    rea = run("role", "create", REA, "--org", "CHRU de Lille")["role"]
    run("role", "assign", rea, alice)
    made = run(
        "role", "create", CARDIO, "--org", "CHRU de Lille",
        "--interval", "90", "--step", f"{REA}:5m", "--step", "10000000001:120", "--final", "10m",
    )  # fmt: skip
    cardio = made["role"]
    assert made["policy"] == {
        "interval": 90_000,
        "steps": [{"delay": 300_000, "role": rea}, {"delay": 120_000, "user": alice}],
        "final": 600_000,
    }
    shown = run("role", "show", cardio)
    assert shown["policy_source"] == "role"
    assert shown["effective_policy"]["steps"] == [
        {"delay": 300_000, "role": rea, "holders": [alice]},
        {"delay": 120_000, "user": alice, "holders": [alice]},
    ]
    # Beyond the caps (60 s floor, 3 steps by default): status 2, nothing changed.
    short = run("role", "policy", cardio, "--interval", "5", status=2)["error"]
    assert "beyond this hub's caps" in short and "interval = 5000 ms" in short and "nothing changed" in short
    many = ["--step", f"{rea}:60"] * 4
    assert "4 steps" in run("role", "policy", cardio, *many, status=2)["error"]
    assert run("role", "policy", cardio, "--final", "25h", status=2)["error"]
    assert run("role", "create", "Garde", "--org", "", "--final", "30", status=2)["error"]
    assert [r["name"] for r in run("role", "list")["roles"]] == sorted([CARDIO, REA])
    assert run("role", "show", cardio)["policy"] == made["policy"]
    # In part: the rest kept; --no-steps; --clear falls back to the defaults.
    changed = run("role", "policy", cardio, "--interval", "2m", "--no-steps")
    assert changed["policy"] == {"interval": 120_000, "steps": [], "final": 600_000}
    assert (
        run("role", "defaults", "--org", "CHRU de Lille", "--interval", "3m", "--final", "15m")["final"]
        == 900_000
    )
    assert (
        "beyond"
        in run("role", "defaults", "--org", "CHRU de Lille", "--interval", "1", "--final", "15m", status=2)[
            "error"
        ]
    )
    assert (
        "no organisation"
        in run("role", "defaults", "--org", "Ailleurs", "--interval", "3m", "--final", "15m", status=1)[
            "error"
        ]
    )
    cleared = run("role", "policy", cardio, "--clear")
    assert cleared["policy"] is None and cleared["policy_source"] == "organisation"
    assert run("role", "show", rea)["effective_policy"] == {
        "interval": 180_000,
        "steps": [],
        "final": 900_000,
    }
    # A role made after the defaults completes a partial policy from them.
    garde = run("role", "create", "Garde", "--org", "CHRU de Lille", "--final", "20m")
    assert garde["policy"] == {"interval": 180_000, "steps": [], "final": 1_200_000}
    actions = [
        e["action"]
        for e in run("audit", "--action", "role.policy_set", "--action", "org.policy_set")["events"]
    ]
    assert actions == ["role.policy_set", "org.policy_set", "role.policy_set"]


async def test_a_running_hub_sees_and_announces_admin_assignments(hub: HubServer, hub_admin: Admin) -> None:
    _, code = await invite(hub, "Dr Bob Durand", "10000000012")
    bob = OncallDevice(hub.url)
    await bob.enroll(code)
    made = await asyncio.to_thread(hub_admin, "role", "create", CARDIO, "--org", "", "--reserved")
    role = made["role"]
    await asyncio.to_thread(hub_admin, "role", "assign", role, "10000000012")
    assert await bob.next_of(RoleChanged, timeout=5) == RoleChanged(role, (bob.user_id,))
    got = await bob.ask(RoleGet(rid=1, role=role))
    assert isinstance(got, RoleOk) and got.info.holders == (bob.user_id,) and got.info.reserved
    await asyncio.to_thread(hub_admin, "role", "unassign", CARDIO, bob.user_id)
    assert await bob.next_of(RoleChanged, timeout=5) == RoleChanged(role, ())


def test_on_postgresql(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same commands on a PostgreSQL store (a schema of its own, dropped after)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MISS_AUTHORITY_KEY", raising=False)
    monkeypatch.delenv("MISS_AUTHORITY_KEY_FILE", raising=False)
    schema = "miss_test_" + secrets.token_hex(6)
    dsn = os.environ.get("MISS_TEST_POSTGRES", POSTGRES_DSN)
    pg = Admin(f"{dsn}?schema={schema}", tmp_path / "authority.key", capsys, monkeypatch)
    try:
        pg("migrate")
        alice = clinician(pg, "Dr Alice Martin", "10000000001")
        role = pg("role", "create", CARDIO, "--org", "CHRU de Lille")["role"]
        pg("role", "assign", role, alice)
        now = datetime.now(PARIS).replace(microsecond=0)
        path = write(
            tmp_path,
            "pg.csv",
            HEADER
            + f"{CARDIO},10000000001,{(now + timedelta(hours=1)).isoformat()},"
            + f"{(now + timedelta(hours=2)).isoformat()}\n",
        )
        assert pg("role", "import", path)["stored"] == 1
        shown = pg("role", "show", CARDIO)
        assert [h["user"] for h in shown["holders"]] == [alice] and len(shown["upcoming"]) == 1
        pg("role", "defaults", "--org", "CHRU de Lille", "--interval", "2m", "--final", "20m")
        assert pg("role", "show", role)["effective_policy"]["final"] == 1_200_000
        assert pg("role", "policy", role, "--interval", "1", status=2)["error"]
    finally:

        async def drop() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()

        asyncio.run(drop())
