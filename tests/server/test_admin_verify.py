"""``miss-admin verify``, ``renew`` and ``revoke`` (SPEC.md §11.1): the
administrator sees every device before it is attested and attests only
those confirmed; revoked devices leave the attestation."""

from __future__ import annotations

import asyncio

import nacl.signing

from miss_server.app import HubServer
from miss_server.store.base import Store, User
from protocol import attestation
from tests.support.admin_cli import Admin
from tests.support.authority import verify
from tests.support.clock import DAY_MS, now_ms
from tests.support.wire import enrolled


def names(found: User | None) -> list[str] | None:
    """The devices the user's stored attestation names (None: no attestation)."""
    if found is None or found.attestation is None:
        return None
    return sorted(d.device for d in attestation.peek(found.attestation).devices)


def named(run: Admin, user: str) -> list[str] | None:
    return names(run.on_store(lambda s: s.get_user(user)))


def validity_days(run: Admin, user: str) -> float:
    found = run.on_store(lambda s: s.get_user(user))
    assert found is not None and found.attestation is not None
    att = attestation.peek(found.attestation)
    return (att.not_after - now_ms()) / DAY_MS


# --- verify ---------------------------------------------------------------------------


async def test_verify_shows_each_device_and_attests_only_those_confirmed(
    hub: HubServer, hub_admin: Admin
) -> None:
    """A device enrolled from a stolen link code became attested at
    the next `miss-admin verify`, which signed every active device unseen."""
    bob = await enrolled(hub, "Dr Bob", "10000000002")  # his phone, attested at enrollment
    laptop = await bob.link()
    hidden = await bob.link()  # enrolled with a link code someone else got hold of
    await hub.audit.flush()

    done = await asyncio.to_thread(hub_admin.with_key, "verify", "10000000002", stdin="y\nn\n")

    assert names(await hub.store.get_user(bob.user_id)) == sorted([bob.device_id, laptop.device_id])
    assert done["issued"] is True
    assert sorted(done["devices"]) == sorted([bob.device_id, laptop.device_id])
    # Shown before anything is asked: every device, its label, when and where it enrolled.
    shown = done["stderr"]
    for device in (bob, laptop, hidden):
        assert f'{device.device_id}  "test"  enrolled ' in shown
    assert shown.count("from 127.0.0.1") >= 3
    (phone_line,) = [line for line in shown.splitlines() if line.startswith(f"  {bob.device_id}")]
    assert phone_line.endswith("from 127.0.0.1  attested already")
    # Asked for the two not attested yet, in order, never for the attested phone.
    assert shown.count("[y/N]") == 2
    assert f'Attest {laptop.device_id} ("test", enrolled ' in shown
    assert shown.index(f"Attest {laptop.device_id}") < shown.index(f"Attest {hidden.device_id}")
    assert f"Attest {bob.device_id}" not in shown
    assert [(r["device"], r["attested"]) for r in done["listing"]] == [
        (bob.device_id, True),
        (laptop.device_id, True),
        (hidden.device_id, False),
    ]
    att = attestation.peek((await hub.store.get_user(bob.user_id)).attestation)  # type: ignore[union-attr,arg-type]
    assert 89.9 < (att.not_after - now_ms()) / DAY_MS <= 90  # the new default
    listed = await asyncio.to_thread(hub_admin, "devices", "10000000002")
    assert [d["attested"] for d in listed["devices"]] == [True, True, False]
    assert [d["address"] for d in listed["devices"]] == ["127.0.0.1"] * 3

    text = await asyncio.to_thread(
        hub_admin.text, "verify", "10000000002", "--key-file", str(hub_admin.key_file), stdin="n\n"
    )
    assert text.splitlines()[-1].endswith(f"the attestation names {bob.device_id}, {laptop.device_id}")
    assert f"{hidden.device_id}" in text and "NOT attested (declined)" in text


async def test_verify_with_device_names_attests_exactly_those(hub: HubServer, hub_admin: Admin) -> None:
    bob = await enrolled(hub, "Dr Bob", "10000000002")
    laptop = await bob.link()
    tablet = await bob.link()
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    await hub.audit.flush()

    # Nothing read from stdin (it is empty: a question would fail the command).
    done = await asyncio.to_thread(hub_admin.with_key, "verify", bob.user_id, "--device", tablet.device_id)
    assert sorted(done["devices"]) == sorted([bob.device_id, tablet.device_id])
    assert "[y/N]" not in done["stderr"]
    assert names(await hub.store.get_user(bob.user_id)) == sorted([bob.device_id, tablet.device_id])

    # Someone else's device, or one that is gone, is refused, and nothing changes.
    before = names(await hub.store.get_user(bob.user_id))
    for stranger in (alice.device_id, "d_0000000000000000"):
        refused = await asyncio.to_thread(
            hub_admin.with_key, "verify", bob.user_id, "--device", stranger, status=1
        )
        assert f"{stranger}: not an active device of Dr Bob (RPPS 10000000002)" in refused["error"]
    await hub.store.revoke_device(laptop.device_id, now_ms())
    refused = await asyncio.to_thread(
        hub_admin.with_key, "verify", bob.user_id, "--device", laptop.device_id, status=1
    )
    assert "not an active device" in refused["error"]
    assert names(await hub.store.get_user(bob.user_id)) == before


def test_verify_needs_an_answer_for_every_device(run: Admin) -> None:
    invited = run.invite()
    first = run.enroll_device(invited["code"])
    run.with_key("verify", "10000000001", "--device", first)
    before = run.on_store(lambda s: s.get_user(invited["user"]))
    run.enroll_device(run.new_code(invited["user"]), label="laptop")

    refused = run.with_key("verify", "10000000001", status=1, stdin="")
    assert "no answer for d_" in refused["error"] and "--device" in refused["error"]
    assert "nothing attested" in refused["error"]
    after = run.on_store(lambda s: s.get_user(invited["user"]))
    assert after is not None and before is not None and after.attestation == before.attestation


def test_verify_issues_nothing_when_no_device_is_confirmed(run: Admin) -> None:
    invited = run.invite()
    run.enroll_device(invited["code"])
    declined = run.with_key("verify", "10000000001", stdin="n\n")
    assert named(run, invited["user"]) is None
    assert declined["issued"] is False and declined["devices"] == []
    assert run("audit", "--action", "account.verified")["events"] == []
    text = run.text("verify", "10000000001", "--key-file", str(run.key_file), stdin="\n")  # Enter: no
    assert text.splitlines()[-1] == "no device confirmed: no attestation issued"


def test_verify_does_not_trust_an_attestation_the_authority_did_not_sign(run: Admin) -> None:
    """A device slipped into the stored attestation by whoever can write the
    hub's database is asked about like any other."""
    invited = run.invite()
    device = run.enroll_device(invited["code"])
    forged = run.on_store(lambda s: verify(s, invited["user"], key=nacl.signing.SigningKey.generate()))
    refused = run.with_key("verify", "10000000001", stdin="n\n")
    assert run.on_store(lambda s: s.get_user(invited["user"])).attestation == forged  # type: ignore[union-attr]
    assert refused["issued"] is False and f"Attest {device}" in refused["stderr"]


# --- renew ----------------------------------------------------------------------------


async def _expiring_in(
    store: Store, user: str, days: float, devices: list[attestation.AttestedDevice] | None = None
) -> None:
    """Attest ``user`` (their active devices, or ``devices``) until ``days`` from now."""
    now = now_ms()
    await verify(store, user, not_before=now - DAY_MS, not_after=now + int(days * DAY_MS), devices=devices)


def test_renew_drops_revoked_devices_and_extends_what_expires(run: Admin) -> None:
    """Attestations kept naming revoked devices for up to a year."""
    users = {}
    devices: dict[str, list[str]] = {}
    for i, name in enumerate(["Ana", "Ben", "Cat", "Dan", "Eve", "Fay"]):
        invited = run.invite(name=name, rpps=f"1000000001{i}")
        users[name] = invited["user"]
        devices[name] = [run.enroll_device(invited["code"], label=f"{name}'s phone")]
        devices[name].append(run.enroll_device(run.new_code(invited["user"]), label=f"{name}'s laptop"))
    both = devices["Ana"]
    run.with_key("verify", users["Ana"], "--device", both[0], "--device", both[1])
    # Ana's laptop is revoked by its owner, from a client: the attestation still names it.
    run.on_store(lambda s: s.revoke_device(both[1], now_ms()))
    # Ben's attestation (both devices) expires in 3 days, Cat's in 60, Dan's (suspended) in 2;
    # Eve's names her phone only, her laptop linked since, and expires in 2 days.
    run.on_store(lambda s: _expiring_in(s, users["Ben"], 3))
    run.on_store(lambda s: _expiring_in(s, users["Cat"], 60))
    run.on_store(lambda s: _expiring_in(s, users["Dan"], 2))
    run("suspend", users["Dan"])
    eve_phone = run.on_store(lambda s: s.get_device(devices["Eve"][0]))
    assert eve_phone is not None
    phone_only = [attestation.AttestedDevice(eve_phone.device_id, eve_phone.sign_pk, eve_phone.box_pk)]
    run.on_store(lambda s: _expiring_in(s, users["Eve"], 2, devices=phone_only))
    # Fay's expired yesterday, and her laptop was revoked since: clients refuse it already.
    run.on_store(
        lambda s: verify(s, users["Fay"], not_before=now_ms() - 9 * DAY_MS, not_after=now_ms() - DAY_MS)
    )
    run.on_store(lambda s: s.revoke_device(devices["Fay"][1], now_ms()))
    untouched = {n: run.on_store(lambda s, n=n: s.get_user(users[n])) for n in ("Cat", "Dan", "Fay")}

    done = run.with_key("renew")

    outcome = {r["user"]: r for r in done["results"]}
    assert set(outcome) == {users["Ana"], users["Ben"], users["Dan"], users["Eve"]}
    assert named(run, users["Ana"]) == [both[0]] and outcome[users["Ana"]]["renewed"]
    assert f"it named {both[1]}, no longer active" in outcome[users["Ana"]]["why"]
    assert (
        named(run, users["Ben"]) == sorted(devices["Ben"]) and 89.9 < validity_days(run, users["Ben"]) <= 90
    )
    assert named(run, users["Eve"]) == [devices["Eve"][0]]  # never a device it did not name
    assert outcome[users["Dan"]] == {"user": users["Dan"], "renewed": False, "skipped": "suspended"}
    for n, before in untouched.items():
        after = run.on_store(lambda s, n=n: s.get_user(users[n]))
        assert before is not None and after is not None and after.attestation == before.attestation, n
    renewed = run("audit", "--action", "account.verified", "--since", "1m")["events"][-3:]
    assert sorted(e["user"] for e in renewed) == sorted([users["Ana"], users["Ben"], users["Eve"]])
    assert all(e["detail"].startswith("renewed (") for e in renewed)

    text = run.text("renew", "--key-file", str(run.key_file))
    assert text == "skipped Dan (RPPS 10000000013): suspended\n0 attestation(s) renewed, 1 skipped\n"
    run("unsuspend", users["Dan"])
    later = run.with_key("renew", "--within", "1")
    assert later["results"] == []


def test_renew_never_signs_again_what_the_authority_did_not_sign(run: Admin) -> None:
    invited = run.invite()
    device = run.enroll_device(invited["code"])
    forged = nacl.signing.SigningKey.generate()
    run.on_store(lambda s: verify(s, invited["user"], key=forged))
    run.on_store(lambda s: s.revoke_device(device, now_ms()))
    before = run.on_store(lambda s: s.get_user(invited["user"]))
    done = run.with_key("renew")
    assert [r["skipped"] for r in done["results"]] == ["its attestation is not signed by this authority key"]
    after = run.on_store(lambda s: s.get_user(invited["user"]))
    assert before is not None and after is not None and after.attestation == before.attestation


# --- revoke ---------------------------------------------------------------------------


def test_revoke_reissues_the_attestation_without_the_device(run: Admin) -> None:
    """`miss-admin revoke` left the revoked device in the attestation."""
    invited = run.invite()
    phone = run.enroll_device(invited["code"])
    laptop = run.enroll_device(run.new_code(invited["user"]), label="laptop")
    tablet = run.enroll_device(run.new_code(invited["user"]), label="tablet")
    run.with_key("verify", "10000000001", stdin="y\ny\ny\n")

    done = run.with_key("revoke", laptop, "--reason", "stolen")
    assert done["reissued"] is True
    assert named(run, invited["user"]) == sorted([phone, tablet])
    text = run.text("revoke", tablet, "--key-file", str(run.key_file))
    assert text.startswith(f"revoked {tablet} of {invited['user']}\nrenewed Dr A (RPPS 10000000001) until ")
    assert text.rstrip().endswith(f"naming {phone} (it named {tablet}, no longer active)")

    # Where the key file is not, it says what is left to do.
    undone = run("revoke", phone)
    assert undone["reissued"] is False and undone["renew_needed"] is True
    assert named(run, invited["user"]) == [phone]
    text = run.text("audit", "--action", "device.revoked")
    assert text.count("device.revoked") == 3
    code, out, _ = run.raw("revoke", "d_0000000000000000")
    assert code == 1 and out == ""
