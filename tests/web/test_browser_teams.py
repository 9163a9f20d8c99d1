"""Care teams, read marks, lifespan and recall (SPEC §13) in the browser
client, as clinicians see them: Debian's Chromium (Playwright) on the page a
real ``miss-server`` subprocess serves, and Python SDK clinicians on the
other end.

Each test asserts what a user notices: a browser member of a team the SDK
users made reads and writes in it; a browser admin creates a team and adds
a colleague found in the directory; "✓✓ Lu" on the browser's own message
once the SDK reader marks it read, and nothing when the reader turned read
receipts off; a recall from the browser turns the SDK's copy into
"message retiré", and the SDK's recall does the same in the browser; and a
hub whose store lists a member no record added gets the red banner, with
nothing sent. Screenshots: artifacts/screenshots/teams-*.png (docs/img
shows the team view and the banner).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from miss_client import Client, Message
from miss_client.models import Event, ReadBy, Recalled
from playwright.async_api import Locator, Page, expect

from tests.web.browser_steps import (
    DESKTOP,
    T,
    browser_clinician,
    conv_item,
    evidence,
    message,
    message_id,
    next_event,
    open_by_search,
    sdk_clinician,
    send_text,
    unlock,
)
from tests.web.conftest import BROWSER_TEST, PageLog, WebHub, take_screenshot

pytestmark = BROWSER_TEST


# --- steps ----------------------------------------------------------------------


def team_item(page: Page, team: str) -> Locator:
    return conv_item(page, team)


async def open_team(page: Page, team: str) -> None:
    item = team_item(page, team)
    await expect(item).to_have_count(1, timeout=T)
    await item.click()
    await expect(page.get_by_test_id("team-identity")).to_have_attribute("data-team", team, timeout=T)


def by_id(page: Page, mid: bytes) -> Locator:
    """The message of the open conversation with this id (whatever its text now)."""
    return page.locator(f'[data-testid="message"][data-id="{mid.hex()}"]')


def read_mark(shown: Locator) -> Locator:
    return shown.get_by_test_id("read-mark")


async def confirm(page: Page) -> None:
    """Say yes in the application's confirmation dialog."""
    await page.get_by_test_id("confirm-dialog").get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("confirm-dialog")).to_have_count(0, timeout=T)


async def message_from(client: Client, user: str, timeout: float = 15.0) -> Message:
    """The next text message ``client`` receives from ``user`` (other events dropped)."""
    event = await next_event(
        client, lambda e: isinstance(e, Message) and e.kind == "text" and e.from_user == user, timeout
    )
    assert isinstance(event, Message)
    return event


async def events_of(client: Client, seconds: float) -> list[Event]:
    """Whatever ``client`` receives within ``seconds``."""
    return await client.drain(idle=seconds, limit=seconds)


def insert_member_without_record(hub: WebHub, team: str, user: str) -> None:
    """What a hostile operator (or a corrupted store) does: the hub's store
    routes ``team`` to ``user`` too, though no signed record added them."""
    db = hub.process.workdir / "data" / "miss.db"
    with sqlite3.connect(db, timeout=10) as conn:
        conn.execute("INSERT INTO team_members (team, user_id, admin) VALUES (?, ?, 0)", (team, user))


# --- tests ------------------------------------------------------------------------


async def test_a_browser_member_of_an_sdk_team_reads_and_writes(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    async with evidence("teams-member", page_log):
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000111")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000112")
        claire_profile = await sdk_clinician(web_hub, tmp_path / "claire", "Claire Dubois", "10000000113")
        async with Client.connect(bob_profile) as bob, Client.connect(claire_profile) as claire:
            team = await bob.create_team("Réanimation — garde", org="CHRU de Lille")
            await bob.add_member(team, claire.user_id)
            await bob.add_member(team, alice.user)
            question = "Lit 12 : patient extubé ce matin, qui passe le voir ?"
            mid = await bob.send(team, question)

            # The team shows in Alice's list, beside 1:1 conversations, with its size.
            item = team_item(page, team)
            await expect(item).to_contain_text("Réanimation — garde", timeout=T)
            await expect(item.get_by_test_id("member-count")).to_have_text("3 membre(s)", timeout=T)
            await expect(item.get_by_test_id("unread")).to_have_text("1", timeout=T)
            await open_team(page, team)
            got = message(page, question)
            await expect(got).to_have_attribute("data-id", mid.hex(), timeout=T)
            await expect(got.get_by_test_id("sender")).to_have_text("Dr Bernard Petit")
            events = page.get_by_test_id("team-event")
            await expect(
                events.filter(has_text="Dr Bernard Petit a créé l'équipe « Réanimation — garde »")
            ).to_have_count(1)
            await expect(events.filter(has_text="Dr Bernard Petit a ajouté Dr Alice Martin")).to_have_count(1)
            await expect(events.filter(has_text="Dr Bernard Petit a ajouté Claire Dubois")).to_have_count(1)
            await expect(page.get_by_test_id("team-problem")).to_have_count(0)

            # Her answer reaches both SDK members as a team message.
            answer = await send_text(page, "J'y passe à 14 h.")
            answer_id = await message_id(answer)
            for client in (bob, claire):
                m = await message_from(client, alice.user)
                assert (m.id.hex(), m.body, m.team) == (answer_id, "J'y passe à 14 h.", team)

            # Both read it: "Lu par 2", unfolding to their names.
            await bob.mark_read(team)
            await claire.mark_read(team)
            mark = read_mark(answer)
            await expect(mark).to_have_attribute("data-count", "2", timeout=T)
            await expect(mark).to_contain_text("Lu par 2")
            await mark.locator("summary").click()
            names = mark.get_by_test_id("read-by-user")
            await expect(names).to_have_count(2)
            await expect(mark).to_contain_text("Dr Bernard Petit")
            await expect(mark).to_contain_text("Claire Dubois")

            # The members' list: Bernard is the admin; Alice may only leave.
            await page.get_by_test_id("team-manage").click()
            dialog = page.get_by_test_id("team-dialog")
            rows = dialog.get_by_test_id("team-member")
            await expect(rows).to_have_count(3, timeout=T)
            await expect(
                dialog.locator(f'[data-testid="team-member"][data-user="{bob.user_id}"]')
            ).to_have_attribute("data-admin", "true")
            await expect(dialog.get_by_test_id("team-add")).to_have_count(0)
            await expect(dialog.get_by_test_id("member-remove")).to_have_count(0)
            await expect(dialog.get_by_test_id("team-leave")).to_be_visible()
            await take_screenshot(page, "teams-members-dialog")
            await dialog.get_by_test_id("dialog-close").click()
            await take_screenshot(page, "teams-team-view")

            # Alice leaves: her composer closes, the SDK members' chain says so.
            await page.get_by_test_id("team-manage").click()
            await page.get_by_test_id("team-dialog").get_by_test_id("team-leave").click()
            await expect(page.get_by_test_id("confirm-dialog")).to_contain_text(
                "Quitter l'équipe « Réanimation — garde » ?"
            )
            await confirm(page)
            await page.get_by_test_id("dialog-close").click()
            await expect(page.get_by_test_id("composer-input")).to_be_disabled(timeout=T)
            await expect(page.get_by_test_id("composer-input")).to_have_attribute(
                "placeholder", "Vous ne faites plus partie de cette équipe : envoi impossible."
            )
            await expect(
                page.get_by_test_id("team-event").filter(has_text="Dr Alice Martin a quitté l'équipe")
            ).to_have_count(1)
            await expect(item.get_by_test_id("member-count")).to_have_text("2 membre(s)")
            left = await bob.team(team)
            assert set(left.members) == {bob.user_id, claire.user_id}
        assert await page_log.problems() == []


async def test_a_browser_admin_creates_a_team_and_manages_its_members(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    async with evidence("teams-admin", page_log):
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000121")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000122")
        claire_profile = await sdk_clinician(web_hub, tmp_path / "claire", "Claire Dubois", "10000000123")
        async with Client.connect(bob_profile) as bob, Client.connect(claire_profile) as claire:
            # "Nouvelle équipe": a name, an organisation, a default lifespan of 8 h.
            await page.get_by_test_id("nav-new-team").click()
            form = page.get_by_test_id("new-team-dialog")
            await form.get_by_test_id("team-name").fill("Urgences — nuit")
            await form.get_by_test_id("team-org").fill("CHRU de Lille")
            await form.get_by_test_id("team-lifespan").select_option(label="8 h")
            await form.get_by_test_id("team-create").click()
            await expect(form).to_have_count(0, timeout=T)
            identity = page.get_by_test_id("team-identity")
            await expect(identity).to_contain_text("Urgences — nuit", timeout=T)
            await expect(identity).to_contain_text("1 membre(s)")
            team = await identity.get_attribute("data-team")
            assert team and team.startswith("t_")
            await expect(
                page.get_by_test_id("team-event").filter(
                    has_text="Dr Alice Martin a créé l'équipe « Urgences — nuit »"
                )
            ).to_have_count(1)

            # Alice adds Bernard and Claire from the directory.
            await page.get_by_test_id("team-manage").click()
            for query, who, name in (
                ("Petit", bob.user_id, "Dr Bernard Petit"),
                ("Dubois", claire.user_id, "Claire Dubois"),
            ):
                await page.get_by_test_id("team-dialog").get_by_test_id("team-add").click()
                adding = page.get_by_test_id("team-add-dialog")
                await adding.get_by_test_id("search-input").fill(query)
                await adding.locator(f'[data-testid="search-result"][data-user="{who}"]').click()
                dialog = page.get_by_test_id("team-dialog")
                await expect(dialog.get_by_test_id("team-status")).to_have_text(
                    f"{name} a été ajouté·e à l'équipe.", timeout=T
                )
            rows = page.get_by_test_id("team-dialog").get_by_test_id("team-member")
            await expect(rows).to_have_count(3)

            # Then makes Bernard an admin, and removes Claire.
            def row(user: str) -> Locator:
                return page.get_by_test_id("team-dialog").locator(
                    f'[data-testid="team-member"][data-user="{user}"]'
                )

            await row(bob.user_id).get_by_test_id("member-promote").click()
            await expect(row(bob.user_id)).to_have_attribute("data-admin", "true", timeout=T)
            await expect(row(bob.user_id).get_by_test_id("admin-badge")).to_have_text("admin")
            await row(claire.user_id).get_by_test_id("member-remove").click()
            await confirm(page)
            await expect(row(claire.user_id)).to_have_count(0, timeout=T)
            await expect(rows).to_have_count(2)
            await take_screenshot(page, "teams-admin-dialog")
            promoted = await bob.team(team)
            assert set(promoted.admins) == {alice.user, bob.user_id}

            # "Retirer le rôle d'admin": Bernard is a member again.
            await row(bob.user_id).get_by_test_id("member-demote").click()
            await expect(row(bob.user_id)).to_have_attribute("data-admin", "false", timeout=T)
            await expect(row(bob.user_id).get_by_test_id("admin-badge")).to_have_count(0)
            await page.get_by_test_id("dialog-close").click()

            # The SDK side verifies the same chain: Bernard a member again, Claire gone.
            seen = await bob.team(team)
            assert (seen.name, seen.org, seen.lifespan) == ("Urgences — nuit", "CHRU de Lille", 8 * 3_600_000)
            assert set(seen.members) == {alice.user, bob.user_id}
            assert set(seen.admins) == {alice.user}
            assert seen.problem is None
            events = page.get_by_test_id("team-event")
            for text in (
                "Dr Alice Martin a ajouté Dr Bernard Petit",
                "Dr Alice Martin a nommé Dr Bernard Petit admin",
                "Dr Alice Martin a retiré Claire Dubois",
                "Dr Alice Martin a retiré le rôle d'admin à Dr Bernard Petit",
            ):
                await expect(events.filter(has_text=text)).to_have_count(1, timeout=T)

            # The team's default lifespan is preselected; the message carries it.
            await expect(page.get_by_test_id("lifespan-select")).to_have_value(str(8 * 3_600_000))
            sent = await send_text(page, "Box 3 libre pour le prochain patient.")
            await expect(sent.get_by_test_id("expiry")).to_contain_text("expire dans 8 h")
            got = await message_from(bob, alice.user)
            assert (got.id.hex(), got.team, got.body) == (
                await message_id(sent),
                team,
                "Box 3 libre pour le prochain patient.",
            )
            assert got.expires_at is not None and abs(got.expires_at - got.sent_at - 8 * 3_600_000) < 1_000
            assert [
                e for e in await events_of(claire, 2.0) if isinstance(e, Message) and e.team == team
            ] == []
        assert await page_log.problems() == []


async def test_read_ticks_follow_the_readers_setting(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    async with evidence("teams-read", page_log):
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000131")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000132")
        async with Client.connect(bob_profile) as bob:
            await open_by_search(page, "Petit", bob.user_id)

            # Bernard reads: "✓✓ Lu" on Alice's message.
            first = await send_text(page, "Pouvez-vous rappeler la famille de M. L. ?")
            await message_from(bob, alice.user)
            await expect(first.get_by_test_id("receipt")).to_have_attribute(
                "data-state", "delivered", timeout=T
            )
            await expect(read_mark(first)).to_have_count(0)
            assert await bob.mark_read(alice.user) == 1
            await expect(read_mark(first)).to_have_text("· ✓✓ Lu", timeout=T)
            await take_screenshot(page, "teams-read-tick")

            # He turns read receipts off: he reads the next one, Alice sees no tick.
            bob.set_read_receipts(False)
            second = await send_text(page, "Et lui prescrire un bilan ?")
            await message_from(bob, alice.user)
            await expect(second.get_by_test_id("receipt")).to_have_attribute(
                "data-state", "delivered", timeout=T
            )
            assert await bob.mark_read(alice.user) == 1
            await page.wait_for_timeout(3_000)
            await expect(read_mark(second)).to_have_count(0)
            await expect(read_mark(first)).to_have_count(1)

            # Alice's own setting, in the browser: on, Bernard learns she read his message...
            question = "Le bilan est prescrit."
            mid = await bob.send(alice.user, question)
            await expect(message(page, question)).to_have_count(1, timeout=T)  # open and visible: read
            read = await next_event(bob, lambda e: isinstance(e, ReadBy) and mid in e.ids)
            assert isinstance(read, ReadBy) and read.user == alice.user

            # ...off ("Envoyer les confirmations de lecture" unticked), he does not.
            await page.get_by_test_id("nav-settings").click()
            toggle = page.get_by_test_id("read-receipts-toggle")
            await expect(toggle).to_be_checked()
            await toggle.uncheck()
            await page.get_by_test_id("dialog-close").click()
            await page.get_by_test_id("nav-settings").click()
            await expect(page.get_by_test_id("read-receipts-toggle")).not_to_be_checked()
            await page.get_by_test_id("dialog-close").click()
            quiet = "Merci, je passe demain."
            mid2 = await bob.send(alice.user, quiet)
            await expect(message(page, quiet)).to_have_count(1, timeout=T)
            later = await events_of(bob, 3.0)
            assert [e for e in later if isinstance(e, ReadBy) and mid2 in e.ids] == []
        assert await page_log.problems() == []


async def test_a_recall_either_way_shows_message_retire(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    async with evidence("teams-recall", page_log):
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000141")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000142")
        async with Client.connect(bob_profile) as bob:
            await open_by_search(page, "Petit", bob.user_id)

            # Alice recalls a message Bernard already has.
            wrong = "Mme R., chambre 12 : potassium à 6,8"
            mid = bytes.fromhex(await message_id(await send_text(page, wrong)))
            shown = by_id(page, mid)
            await message_from(bob, alice.user)
            await shown.get_by_test_id("recall").click()
            await expect(page.get_by_test_id("confirm-dialog")).to_contain_text("Retirer ce message ?")
            await confirm(page)
            await expect(shown).to_have_attribute("data-recalled", "true", timeout=T)
            await expect(shown.locator(".body")).to_have_text("message retiré")
            await expect(shown.get_by_test_id("recall")).to_have_count(0)
            recalled = await next_event(bob, lambda e: isinstance(e, Recalled) and e.id == mid)
            assert isinstance(recalled, Recalled) and recalled.known and recalled.from_user == alice.user
            entry = bob.state.get_message(alice.user, mid)
            assert entry is not None and entry.gone == "recalled" and entry.body == ""

            # Bernard recalls one of his: Alice's copy says "message retiré" too.
            his = "Erreur de patient, ignorez."
            his_id = await bob.send(alice.user, his)
            got = message(page, his)
            await expect(got).to_have_attribute("data-id", his_id.hex(), timeout=T)
            await bob.recall(his_id)
            gone = by_id(page, his_id)
            await expect(gone).to_have_attribute("data-recalled", "true", timeout=T)
            await expect(gone.locator(".body")).to_have_text("message retiré")
            await expect(page.get_by_test_id("messages")).not_to_contain_text(his)
            await expect(page.get_by_test_id("messages")).not_to_contain_text(wrong)
            await take_screenshot(page, "teams-recalled")

            # A lifespan picked in a 1:1 conversation goes with the message and
            # stays the conversation's default on this device, reload included.
            await page.get_by_test_id("lifespan-select").select_option(label="24 h")
            brief = await send_text(page, "Code de la porte : 4512")
            await expect(brief.get_by_test_id("expiry")).to_contain_text("expire dans 24 h")
            got_brief = await message_from(bob, alice.user)
            assert got_brief.body == "Code de la porte : 4512" and got_brief.expires_at is not None
            assert abs(got_brief.expires_at - got_brief.sent_at - 24 * 3_600_000) < 1_000
            await page.reload()
            await unlock(page)
            await conv_item(page, bob.user_id).click()
            await expect(page.get_by_test_id("lifespan-select")).to_have_value(str(24 * 3_600_000), timeout=T)
            await expect(by_id(page, mid)).to_have_attribute("data-recalled", "true", timeout=T)
            await expect(by_id(page, his_id)).to_have_attribute("data-recalled", "true")
        assert await page_log.problems() == []


async def test_a_member_the_hub_added_without_a_record_blocks_sending(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    async with evidence("teams-tampered", page_log):
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000151")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000152")
        eve_profile = await sdk_clinician(web_hub, tmp_path / "eve", "Dr Ève Intruse", "10000000153")
        async with Client.connect(bob_profile) as bob, Client.connect(eve_profile) as eve:
            team = await bob.create_team("Cardiologie", org="CHRU de Lille")
            await bob.add_member(team, alice.user)
            await bob.send(team, "Staff à 8 h demain.")
            await open_team(page, team)
            await expect(message(page, "Staff à 8 h demain.")).to_have_count(1, timeout=T)
            await expect(page.get_by_test_id("team-problem")).to_have_count(0)

            # The hub's store now routes the team to Ève too; no record says so.
            await asyncio.to_thread(insert_member_without_record, web_hub, team, eve.user_id)
            blocked = await send_text(page, "Le patient du lit 4 est instable.")
            banner = page.get_by_test_id("team-problem")
            await expect(banner).to_have_attribute("data-problem", "tampered", timeout=T)
            await expect(banner).to_contain_text(
                "Le hub présente une liste de membres que personne n'a signée : envoi bloqué"
            )
            await expect(page.get_by_test_id("composer-input")).to_be_disabled()
            await expect(page.get_by_test_id("composer-send")).to_be_disabled()
            await expect(blocked).not_to_have_attribute("data-status", "accepted")
            await expect(team_item(page, team)).to_contain_text("⚠")
            await take_screenshot(page, "teams-tampered-banner")

            # Nothing went out: neither the intruder nor the real member got it.
            for client in (eve, bob):
                later = await events_of(client, 2.0)
                assert [e for e in later if isinstance(e, Message) and e.from_user == alice.user] == []
        assert await page_log.problems() == []


async def test_a_message_past_its_lifespan_shows_message_expire(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    """The page's clock (Playwright's, not the hub's) runs past the
    lifespan: both the received and the sent message lose their text."""
    await page.set_viewport_size(DESKTOP)
    await page.clock.install()
    async with evidence("teams-expiry", page_log):
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000161")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000162")
        async with Client.connect(bob_profile) as bob:
            text = "Mot de passe du poste de garde : tulipe"
            mid = await bob.send(alice.user, text, lifespan_ms=3_600_000)
            await conv_item(page, bob.user_id).click()
            got = by_id(page, mid)
            await expect(got.locator(".body")).to_have_text(text, timeout=T)
            await expect(got.get_by_test_id("expiry")).to_contain_text("expire dans 1 h")
            await page.get_by_test_id("lifespan-select").select_option(label="1 h")
            mine = await send_text(page, "Noté, merci.")
            mine_id = bytes.fromhex(await message_id(mine))
            await expect(mine.get_by_test_id("expiry")).to_contain_text("expire dans 1 h")
            await message_from(bob, alice.user)

            await page.clock.fast_forward("01:01:00")
            await expect(got).to_have_attribute("data-expired", "true", timeout=T)
            await expect(got.locator(".body")).to_have_text("message expiré")
            await expect(by_id(page, mine_id)).to_have_attribute("data-expired", "true", timeout=T)
            await expect(page.get_by_test_id("messages")).not_to_contain_text(text)
            await expect(page.get_by_test_id("messages")).not_to_contain_text("Noté, merci.")
            await expect(page.get_by_test_id("expiry")).to_have_count(0)
        assert await page_log.problems() == []
