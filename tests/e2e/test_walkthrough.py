"""The README's five-minute walkthrough and its care team commands, as a
user types them: ``miss-server`` trusting the verification authority,
``miss-admin org add`` and ``invite`` while the hub runs, ``miss-chat enroll
--authority``, ``miss-admin verify`` once the devices are enrolled, then
``send``, ``inbox``, ``safety``, ``verify``, ``search``; then ``team
create``/``add``/``show``/``leave``, a ``send`` to the team, and ``miss-admin
team create``/``list``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.hubproc import BIN, HubProcess

pytestmark = pytest.mark.slow


def chat(profile: Path, *args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [str(BIN / "miss-chat"), "--profile", str(profile), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, f"miss-chat {args[0]} failed: {out.stderr}"
    return out.stdout


async def test_readme_walkthrough(tmp_path: Path) -> None:
    # HubProcess plays `miss-admin authority init`: an authority key file for
    # miss-admin, and its public key in MISS_AUTHORITY_KEY for the hub.
    hub = HubProcess(tmp_path / "hub")
    hub.start()
    env = {**os.environ, "MISS_PASSPHRASE": "une phrase de passe solide"}
    try:
        authority = hub.admin("authority", "show")
        hub.admin("org", "add", "CHRU de Lille")
        invited = [
            hub.admin(
                "invite",
                "--name",
                name,
                "--rpps",
                rpps,
                "--profession",
                profession,
                "--organisation",
                "CHRU de Lille",
            )
            for name, rpps, profession in (
                ("Dr Alice Martin", "10000000001", "médecin"),
                ("Dr Bob Durand", "10000000002", "cardiologue"),
            )
        ]
        key = str(invited[0]["authority"])  # `invite` prints the key to give along with the code
        assert key == authority["public_key"]
        code_a, code_b = (str(i["code"]) for i in invited)
        alice, bob = tmp_path / "alice", tmp_path / "bob"

        def run() -> dict[str, str]:
            out = {}
            out["enroll"] = chat(
                alice,
                "enroll",
                "--server",
                hub.url,
                "--authority",
                key,
                "--kdf",
                "interactive",
                code_a,
                env=env,
            )
            chat(
                bob,
                "enroll",
                "--server",
                hub.url,
                "--authority",
                key,
                "--kdf",
                "interactive",
                code_b,
                env=env,
            )
            out["whoami"] = chat(alice, "whoami", env=env)
            # The administrator checks each identity, then attests the enrolled devices.
            hub.verify("10000000001")
            hub.verify("10000000002")
            out["sent"] = chat(alice, "send", "10000000002", "Bonjour Bob, un avis sur un patient ?", env=env)
            out["inbox"] = chat(bob, "inbox", env=env)
            chat(bob, "send", "10000000001", "Oui, envoyez-le.", env=env)
            out["answer"] = chat(alice, "inbox", env=env)
            out["safety_a"] = chat(alice, "safety", "10000000002", env=env)
            out["safety_b"] = chat(bob, "safety", "10000000001", env=env)
            out["verify"] = chat(alice, "verify", "10000000002", "--yes", env=env)
            out["search"] = chat(alice, "search", "Durand", env=env)
            out["again"] = chat(bob, "inbox", env=env)
            # Care teams, as the README's section shows them.
            team = "Cardiologie — garde"
            create = ("team", "create", team, "--org", "CHRU de Lille", "--lifespan", "7d")
            out["team_create"] = chat(alice, *create, env=env)
            chat(alice, "team", "add", team, "10000000002", env=env)
            out["team_sent"] = chat(alice, "send", team, "Patient box 4 : troponine à 3 h ?", env=env)
            out["team_show"] = chat(bob, "team", "show", team, env=env)
            out["team_inbox"] = chat(bob, "inbox", env=env)
            chat(bob, "team", "leave", team, env=env)
            out["team_after"] = chat(alice, "team", "show", team, env=env)
            out["admin_team"] = json.dumps(
                ensure_ascii=False,
                obj=hub.admin(
                    "team",
                    "create",
                    "--name",
                    "Pharmacie — astreinte",
                    "--org",
                    "CHRU",
                    "--admin",
                    "10000000001",
                ),
            )
            out["admin_teams"] = json.dumps(hub.admin("team", "list"), ensure_ascii=False)
            # On-call roles and urgent messages, as the README's section shows them.
            role = "Cardiologie — senior de garde"
            hub.admin("role", "create", role, "--org", "CHRU de Lille")
            out["role_take"] = chat(bob, "role", "take", role, env=env)
            out["role_search"] = chat(alice, "role", "search", "cardio", env=env)
            out["urgent_sent"] = chat(
                alice, "send", role, "Box 3 : sus-ST inférieur, avis ?", "--urgent", env=env
            )
            out["urgent_inbox"] = chat(bob, "inbox", env=env)
            sent_id = out["urgent_sent"].split()[0]
            out["ack"] = chat(bob, "ack", sent_id, env=env)
            out["urgent_after"] = chat(alice, "urgent", env=env) + chat(alice, "inbox", env=env)
            return out

        out = await asyncio.to_thread(run)
        assert f"authority fingerprint: {authority['fingerprint']}" in out["enroll"]
        assert str(authority["fingerprint"]) in out["whoami"]
        assert "accepted" in out["sent"]
        assert "Dr Alice Martin (10000000001): Bonjour Bob, un avis sur un patient ?" in out["inbox"]
        assert (
            "✓ delivered" in out["answer"]
            and "Dr Bob Durand (10000000002): Oui, envoyez-le." in out["answer"]
        )
        number = re.search(r"(\d{5} ){11}\d{5}", out["safety_a"])
        assert number and number.group(0) in out["safety_b"] and number.group(0) in out["verify"]
        assert "Dr Bob Durand (10000000002) is verified in person ✓" in out["verify"]
        assert re.fullmatch(
            r"Dr Bob Durand ✓ \| RPPS 10000000002 \| cardiologue \| CHRU de Lille \| u_[0-9a-f]{16}\n",
            out["search"],
        ), out["search"]
        # Bob's inbox is empty the second time: the message was acked.
        assert "Bonjour Bob" not in out["again"]
        # The team: Bob sees both members and Alice's message; after he left, Alice's view says so.
        assert "accepted" in out["team_sent"]
        assert (
            "Dr Bob Durand (10000000002)" in out["team_show"]
            and "Dr Alice Martin (10000000001) ★ admin" in out["team_show"]
        )
        assert (
            "[Cardiologie — garde] Dr Alice Martin (10000000001): Patient box 4 : troponine à 3 h ?"
            in out["team_inbox"]
        )
        assert "Dr Alice Martin" in out["team_after"] and "Dr Bob Durand" not in out["team_after"]
        assert "durée de vie des messages: 7 j" in out["team_show"]
        assert "Pharmacie — astreinte" in out["admin_teams"] and "Cardiologie" not in out["admin_team"]
        # The role: Bob holds it, Alice finds him through it, he acknowledges, she learns it.
        assert "Dr Bob Durand" in out["role_search"], out["role_search"]
        assert "accepted" in out["urgent_sent"], out["urgent_sent"]
        assert "🔴 URGENT — à acquitter" in out["urgent_inbox"], out["urgent_inbox"]
        assert "Box 3 : sus-ST inférieur, avis ?" in out["urgent_inbox"]
        assert re.search(r"acquitté par Dr Bob Durand à \d\d:\d\d", out["urgent_after"]), out["urgent_after"]
    finally:
        await hub.stop_async()
