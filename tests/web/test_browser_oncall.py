"""On-call roles and urgent messages (SPEC §14) in the browser client, as
clinicians see them: Debian's Chromium (Playwright) on the page a real
``miss-server`` subprocess serves, with a time-scaled escalation (100 ms
floor, 50 ms tick), roles made with ``miss-admin role``, and a raw wire
device (tests/support/oncall_wire.py) on the other end.

Each test asserts what a user notices: an urgent message to the role the
browser's clinician holds shows with its red "URGENT" band and banner, and
rings again (banner count, notification, beep) at each of the hub's
reminders until "Acquitter" is clicked; then the sender is told who
acknowledged, and nothing rings any more (an urgent 1:1 message likewise).
The browser's own urgent message to a role shows its escalation: the step
that released a backup, then who acknowledged, or "Aucun acquittement". And the role search of the
directory shows who is on call, and "Prendre la garde" hands the role over
(the hub's holders change, the released holder is told at once).
Screenshots: docs/img/urgent-message.png and docs/img/role-search.png come
from these tests (also kept under the test's tmp dir and
artifacts/screenshots/).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from playwright.async_api import BrowserContext, Page, expect

from protocol import crypto
from protocol.frames import (
    Acknowledge,
    AcknowledgeOk,
    Deliver,
    Frame,
    Lookup,
    LookupOk,
    RoleChanged,
    Urgent,
    UrgentStatus,
)
from tests.support.hubproc import invite_on_store, verify_on_store
from tests.support.oncall_wire import OncallDevice, sealed
from tests.web.browser_steps import DESKTOP, T, browser_clinician, evidence
from tests.web.conftest import BROWSER_TEST, PageLog, WebHub, take_screenshot

pytestmark = BROWSER_TEST

#: A whole escalation in about a second (SPEC §14.2's protocol floor is 100 ms).
FAST = {"MISS_ESCALATION_MIN_INTERVAL_MS": "100", "MISS_ESCALATION_TICK_MS": "50"}
ORG = "CHRU"
CARDIO = "Cardiologie — senior de garde"

#: Notifications the page makes, recorded (headless Chromium has no
#: notification centre); the permission is granted.
RECORDED_NOTIFICATIONS = """
window.__missNotifications = [];
class RecordedNotification {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) {
    window.__missNotifications.push({ title, body: options && options.body, tag: options && options.tag });
  }
  close() {}
}
window.Notification = RecordedNotification;
"""


async def notifications(page: Page) -> list[dict[str, str]]:
    found: list[dict[str, str]] = await page.evaluate("() => window.__missNotifications")
    return found


async def alerts_shown(page: Page) -> int:
    """The ring count of the urgent banner (0 when none shows)."""
    banner = page.get_by_test_id("urgent-alert")
    if await banner.count() == 0:
        return 0
    return int(await banner.first.get_attribute("data-alerts") or 0)


async def sender_device(hub: WebHub, name: str, rpps: str) -> OncallDevice:
    """A clinician of ORG on a raw device that names ``oncall``, enrolled then verified."""
    user, code = await invite_on_store(hub.process, name, rpps, ORG)
    dev = OncallDevice(hub.ws_url)
    await dev.enroll(code)
    assert dev.user_id == user
    await verify_on_store(hub.process, user)
    await dev.close()
    await dev.auth()  # again, now attested
    return dev


async def until(dev: OncallDevice, wanted: Callable[[Frame], bool], timeout: float = 15.0) -> Frame:
    """The next frame ``dev`` receives that ``wanted`` accepts (others dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"nothing wanted within {timeout} s"
        frame = await dev.recv(timeout=left)
        if wanted(frame):
            return frame


async def shot(page: Page, tmp_path: Path, name: str) -> None:
    """The page as ``<tmp_path>/<name>.png`` and in the screenshot directory."""
    await page.screenshot(path=str(tmp_path / f"{name}.png"))
    await take_screenshot(page, name)


async def test_an_urgent_message_to_the_role_rings_until_acknowledged(
    start_web_hub: Callable[..., WebHub],
    context: BrowserContext,
    page: Page,
    page_log: PageLog,
    tmp_path: Path,
) -> None:
    hub = start_web_hub(**FAST)
    await context.add_init_script(RECORDED_NOTIFICATIONS)
    await page.set_viewport_size(DESKTOP)
    async with evidence("oncall-urgent", page_log):
        alice = await browser_clinician(page, hub, "Dr Alice Martin", "10000000151")
        bob = await sender_device(hub, "Dr Bernard Petit", "10000000152")
        created = await asyncio.to_thread(
            hub.process.admin,
            *("role", "create", CARDIO, "--org", ORG, "--interval", "0.4", "--final", "60"),
        )
        role = str(created["role"])
        await asyncio.to_thread(hub.process.admin, "role", "assign", role, alice.user)

        # Bob writes urgently to the role; Alice's browser holds it.
        found = await bob.ask(Lookup(rid=1, user=alice.user))
        assert isinstance(found, LookupOk)
        targets = {d.device: d.box_pk for d in found.devices}
        text = "Douleur thoracique box 3, sus-ST en inférieur : besoin d'un avis immédiat."
        send = sealed(bob, role, targets, text, urgent=Urgent())
        accepted = await bob.ask(send)
        assert getattr(accepted, "id", None) == send.id, accepted

        # It shows as urgent, with its banner, and rings again at each reminder.
        banner = page.get_by_test_id("urgent-alert")
        await expect(banner).to_have_count(1, timeout=T)
        await expect(banner).to_contain_text("URGENT")
        await expect(banner).to_contain_text(f"Message urgent de Dr Bernard Petit pour « {CARDIO} »")
        deadline = time.monotonic() + 15
        while await alerts_shown(page) < 3:
            assert time.monotonic() < deadline, "fewer than two reminders rang"
            await asyncio.sleep(0.1)
        notes = await notifications(page)
        assert len(notes) >= 3, notes
        assert all(n["title"] == "URGENT — MiSS" and text not in (n["body"] or "") for n in notes), notes
        assert notes[0]["body"] == f"Dr Bernard Petit a envoyé un message urgent à « {CARDIO} »."

        await banner.get_by_test_id("alert-view").click()
        shown = page.locator(f'[data-testid="message"][data-id="{send.id.hex()}"]')
        await expect(shown).to_have_attribute("data-urgent", "true", timeout=T)
        await expect(shown).to_have_attribute("data-acknowledged", "false")
        await expect(shown.get_by_test_id("urgent-tag")).to_have_text("URGENT")
        await expect(shown.get_by_test_id("to-role")).to_have_text(f"→ {CARDIO}")
        await expect(shown.locator(".body")).to_have_text(text)
        await shot(page, tmp_path, "urgent-message")

        # "Acquitter": the alert stops here, and Bob learns who acknowledged.
        await shown.get_by_test_id("acknowledge").click()
        await expect(shown).to_have_attribute("data-acknowledged", "true", timeout=T)
        await expect(shown.get_by_test_id("ack-state")).to_contain_text("Acquitté par vous à")
        await expect(banner).to_have_count(0, timeout=T)
        status = await until(bob, lambda f: isinstance(f, UrgentStatus))
        assert isinstance(status, UrgentStatus)
        assert (status.id, status.sender, status.state) == (send.id, bob.user_id, "acknowledged")
        assert (status.user, status.step) == (alice.user, 0)
        rang = len(await notifications(page))
        await asyncio.sleep(1.5)  # several reminder intervals: nothing rings any more
        assert len(await notifications(page)) == rang
        await expect(banner).to_have_count(0)

        # An urgent 1:1 message (the organisation's default policy) rings too.
        direct = sealed(bob, alice.user, targets, "Rappelez-moi au 4412, urgent.", urgent=Urgent())
        assert getattr(await bob.ask(direct), "id", None) == direct.id
        await expect(banner).to_have_count(1, timeout=T)
        await expect(banner).to_contain_text("Message urgent de Dr Bernard Petit")
        one = page.locator(f'[data-testid="message"][data-id="{direct.id.hex()}"]')
        await expect(one).to_have_attribute("data-urgent", "true", timeout=T)
        await expect(one.get_by_test_id("to-role")).to_have_count(0)
        await banner.get_by_test_id("acknowledge").click()
        await expect(one).to_have_attribute("data-acknowledged", "true", timeout=T)
        await expect(banner).to_have_count(0, timeout=T)
        status = await until(bob, lambda f: isinstance(f, UrgentStatus) and f.id == direct.id)
        assert isinstance(status, UrgentStatus) and (status.state, status.user) == (
            "acknowledged",
            alice.user,
        )
        await bob.close()
        assert await page_log.problems() == []


async def test_the_role_search_shows_who_is_on_call_and_takes_the_role(
    start_web_hub: Callable[..., WebHub], page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    hub = start_web_hub(**FAST)
    await page.set_viewport_size(DESKTOP)
    async with evidence("oncall-roles", page_log):
        alice = await browser_clinician(page, hub, "Dr Alice Martin", "10000000161")
        bob = await sender_device(hub, "Dr Bernard Petit", "10000000162")
        created = await asyncio.to_thread(
            hub.process.admin,
            "role",
            "create",
            "Pédiatrie — interne de garde",
            "--org",
            ORG,
        )
        role = str(created["role"])
        await asyncio.to_thread(hub.process.admin, "role", "assign", role, bob.user_id)
        other = await asyncio.to_thread(
            hub.process.admin,
            "role",
            "create",
            "Pédiatrie — senior d'astreinte",
            "--org",
            ORG,
        )

        await page.get_by_test_id("nav-new").click()
        dialog = page.get_by_test_id("search-dialog")
        await expect(dialog.get_by_test_id("role-status")).to_have_text(
            "Vous n'êtes de garde sur aucun rôle.", timeout=T
        )
        await dialog.get_by_test_id("search-input").fill("pédia")
        row = dialog.locator(f'[data-testid="role-result"][data-role="{role}"]')
        await expect(row).to_have_count(1, timeout=T)
        holders = row.get_by_test_id("role-holders")
        await expect(holders).to_have_text("De garde : Dr Bernard Petit", timeout=T)
        vacant = dialog.locator(f'[data-testid="role-result"][data-role="{other["role"]}"]')
        await expect(vacant.get_by_test_id("role-holders")).to_have_text("Personne de garde")

        await expect(vacant.get_by_test_id("role-take")).to_be_visible()
        await shot(page, tmp_path, "role-search")

        # "Prendre la garde": a handover; the hub's holders are Alice alone,
        # and Bob is told at once.
        await row.get_by_test_id("role-take").click()
        await expect(row).to_have_attribute("data-mine", "true", timeout=T)
        await expect(row.get_by_test_id("role-holders")).to_have_text("De garde : vous")
        await expect(dialog.get_by_test_id("role-status")).to_have_text(
            "Vous êtes de garde : Pédiatrie — interne de garde."
        )
        await expect(row.get_by_test_id("role-leave")).to_be_visible()
        shown = await asyncio.to_thread(hub.process.admin, "role", "show", role)
        assert [h["user"] for h in shown["holders"]] == [alice.user]
        # (The administrator's assignment was announced to Bob first.)
        changed = await until(bob, lambda f: isinstance(f, RoleChanged) and alice.user in f.holders)
        assert isinstance(changed, RoleChanged) and (changed.role, changed.holders) == (role, (alice.user,))

        # "Quitter": nobody holds it any more.
        await row.get_by_test_id("role-leave").click()
        await expect(row.get_by_test_id("role-holders")).to_have_text("Personne de garde", timeout=T)
        shown = await asyncio.to_thread(hub.process.admin, "role", "show", role)
        assert shown["holders"] == []
        await bob.close()
        assert await page_log.problems() == []


async def test_the_sender_sees_the_escalation_then_who_acknowledged_or_that_nobody_did(
    start_web_hub: Callable[..., WebHub], page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    hub = start_web_hub(**FAST)
    await page.set_viewport_size(DESKTOP)
    async with evidence("oncall-sender", page_log):
        alice = await browser_clinician(page, hub, "Dr Alice Martin", "10000000171")
        bob = await sender_device(hub, "Dr Bernard Petit", "10000000172")
        carol = await sender_device(hub, "Dr Claire Dubois", "10000000173")
        name = "Réanimation — senior de garde"
        backup = "Réanimation — senior d'astreinte"
        made = await asyncio.to_thread(hub.process.admin, "role", "create", backup, "--org", ORG)
        await asyncio.to_thread(hub.process.admin, "role", "assign", str(made["role"]), carol.user_id)
        step = f"{made['role']}:0.6"
        created = await asyncio.to_thread(
            hub.process.admin,
            *("role", "create", name, "--org", ORG, "--interval", "0.3", "--step", step, "--final", "1.5"),
        )
        role = str(created["role"])
        await asyncio.to_thread(hub.process.admin, "role", "assign", role, bob.user_id)

        # Alice finds the role and writes to it, urgently.
        await page.get_by_test_id("nav-new").click()
        dialog = page.get_by_test_id("search-dialog")
        await dialog.get_by_test_id("search-input").fill("réa")
        row = dialog.locator(f'[data-testid="role-result"][data-role="{role}"]')
        await expect(row.get_by_test_id("role-holders")).to_have_text(
            "De garde : Dr Bernard Petit", timeout=T
        )
        await row.get_by_test_id("role-write").click()
        await expect(page.get_by_test_id("role-identity")).to_have_attribute("data-role", role, timeout=T)
        await expect(page.get_by_test_id("role-identity")).to_contain_text(
            "Relance toutes les 300 ms, 1 étape(s) d'escalade, fin après 1,5 s"
        )
        text = "Patient du box 7 désature à 82 % sous 6 L, venez vite."
        await page.get_by_test_id("urgent-toggle").check()
        box = page.get_by_test_id("composer-input")
        await box.fill(text)
        await box.press("Enter")
        shown = page.get_by_test_id("message").filter(has_text=text)
        await expect(shown).to_have_attribute("data-urgent", "true", timeout=T)
        escalation = shown.get_by_test_id("escalation")

        # Bob does not answer: step 1 releases the copy of Carol (the backup
        # role's holder), sealed for her at send time.
        await expect(escalation).to_have_text(f" · Escalade : étape 1 → {backup}", timeout=T)
        await shot(page, tmp_path, "urgent-escalation")
        got = await until(carol, lambda f: isinstance(f, Deliver) and f.step == 1)
        assert isinstance(got, Deliver) and got.role == role and got.urgent
        sender_keys = await bob.ask(Lookup(rid=2, user=alice.user))
        assert isinstance(sender_keys, LookupOk)
        key = crypto.unwrap_key(got.env, carol.keys, sender_keys.devices[0].box_pk)
        plain = crypto.unpack_plaintext(
            crypto.open_body(got.body or b"", key, got.id, sender_keys.devices[0].sign_pk)
        )
        assert (plain.body, plain.urgent, plain.to_user) == (text, True, role)

        # Carol acknowledges: Alice sees who, and when.
        ack = await carol.ask(Acknowledge(rid=3, id=got.id, sender=alice.user))
        assert isinstance(ack, AcknowledgeOk) and ack.first and ack.user == carol.user_id
        await expect(escalation).to_contain_text("Acquitté par Dr Claire Dubois à", timeout=T)
        await expect(escalation).to_have_attribute("data-state", "acknowledged")

        # Another urgent message nobody acknowledges: "Aucun acquittement" at the end.
        second = "Deuxième appel : toujours personne au box 7."
        await page.get_by_test_id("urgent-toggle").check()
        await box.fill(second)
        await box.press("Enter")
        unanswered = page.get_by_test_id("message").filter(has_text=second).get_by_test_id("escalation")
        await expect(unanswered).to_have_attribute("data-state", "unacknowledged", timeout=T)
        await expect(unanswered).to_have_text(" · Aucun acquittement")
        await shot(page, tmp_path, "urgent-outcomes")
        for dev in (bob, carol):
            await dev.close()
        assert await page_log.problems() == []
