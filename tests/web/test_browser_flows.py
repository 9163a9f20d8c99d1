"""The browser client as clinicians use it: Debian's Chromium (Playwright)
on the page a real ``miss-server`` subprocess serves, and the Python SDK on
the other end where a test needs to read what arrived.

Each test asserts what a user sees: two browser clinicians talking, with
receipts and presence, at desktop and phone sizes (the screenshots the
README shows: artifacts/screenshots/{list,conversation}-{desktop,phone}.png);
a browser and an SDK clinician talking both ways; a key change of the peer
holding a message back until it is accepted; a message sent while the hub
is down (or whose acceptance never reached the page), then the page
reloaded, delivered exactly once; and the errors the forms and the
connection pill show.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from miss_client import Client, Delivered, Message
from playwright.async_api import Browser, Locator, Page, WebSocketRoute, expect

from tests.support.hubproc import invite_on_store
from tests.web.browser_steps import (
    DESKTOP,
    PASSPHRASE,
    PHONE,
    T,
    another_browser,
    become_verified,
    browser_clinician,
    conv_item,
    conversation_presence,
    evidence,
    expect_online,
    fill_enroll_form,
    keep_the_page_when_the_hub_is_down,
    message,
    message_id,
    next_event,
    open_by_search,
    sdk_clinician,
    sdk_linked_device,
    send_text,
    unlock,
)
from tests.web.conftest import BROWSER_TEST, PageLog, WebHub, take_screenshot

pytestmark = BROWSER_TEST


def receipt(shown: Locator) -> Locator:
    return shown.get_by_test_id("receipt")


async def accepted(hub: WebHub) -> tuple[int, int]:
    """(messages the hub accepted, resends of an accepted id), from its metrics."""
    counts = [
        await asyncio.to_thread(hub.metric, name)
        for name in ("miss_messages_accepted_total", "miss_messages_duplicate_total")
    ]
    return int(counts[0]), int(counts[1])


async def test_two_browser_clinicians_talk(
    web_hub: WebHub, browser: Browser, page: Page, page_log: PageLog
) -> None:
    await page.set_viewport_size(DESKTOP)
    async with another_browser(browser) as (page_b, log_b), evidence("two-browsers", page_log, log_b):
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000011")
        bob = await browser_clinician(page_b, web_hub, "Dr Bruno Durand", "10000000012")

        # Alice finds Bruno in the directory and writes to him.
        await open_by_search(page, "Durand", bob.user)
        await expect(page.get_by_test_id("peer-identity")).to_contain_text("Dr Bruno Durand")
        await expect(page.get_by_test_id("peer-identity")).to_contain_text("10000000012")
        sent = await send_text(page, "Bonjour Bruno, pouvez-vous voir Mme D. en salle 4 ?")

        # Bruno sees it arrive, live: a new conversation with one unread message.
        item = conv_item(page_b, alice.user)
        await expect(item).to_have_count(1, timeout=T)
        await expect(item).to_contain_text("Dr Alice Martin")
        await expect(item.get_by_test_id("unread")).to_have_text("1", timeout=T)
        await expect(item.get_by_test_id("presence")).to_have_attribute("data-online", "true", timeout=T)
        await take_screenshot(page_b, "list-desktop")

        await item.click()
        identity = page_b.get_by_test_id("peer-identity")
        await expect(identity).to_contain_text("Dr Alice Martin")
        await expect(identity).to_contain_text("médecin")
        await expect(identity).to_contain_text("CHRU")
        await expect(identity).to_contain_text("10000000011")
        got = message(page_b, "Bonjour Bruno, pouvez-vous voir Mme D. en salle 4 ?")
        await expect(got).to_have_attribute("data-status", "received", timeout=T)
        assert await got.get_attribute("data-id") == await message_id(sent)
        await expect(item.get_by_test_id("unread")).to_have_count(0, timeout=T)  # read once opened

        # Alice's receipt: delivered to Bruno's (one) device.
        await expect(receipt(sent)).to_have_attribute("data-state", "delivered", timeout=T)
        await expect(receipt(sent)).to_have_attribute("data-delivered", "1")

        # Bruno answers; Alice, whose conversation is open, sees it.
        answer = await send_text(page_b, "Oui, j'y passe dans dix minutes.")
        await expect(receipt(answer)).to_have_attribute("data-state", "delivered", timeout=T)
        await expect(message(page, "Oui, j'y passe dans dix minutes.")).to_have_attribute(
            "data-status", "received", timeout=T
        )

        # Presence: each sees the other online; Bruno goes on call.
        await expect(conversation_presence(page)).to_have_attribute("data-online", "true", timeout=T)
        await expect(conversation_presence(page_b)).to_have_attribute("data-online", "true", timeout=T)
        await page_b.get_by_test_id("status-select").select_option("on_call")
        await expect(conversation_presence(page)).to_have_attribute("data-status", "on_call", timeout=T)
        await expect(conv_item(page, bob.user).get_by_test_id("presence")).to_have_attribute(
            "data-status", "on_call", timeout=T
        )
        await take_screenshot(page_b, "conversation-desktop")

        # A phone: the list and the conversation show one at a time.
        await page.set_viewport_size(PHONE)
        await page.get_by_test_id("nav-back").click()
        alice_item = conv_item(page, bob.user)
        await expect(alice_item).to_be_visible(timeout=T)
        await expect(page.get_by_test_id("composer-input")).to_be_hidden()
        await take_screenshot(page, "list-phone")
        await alice_item.click()
        await expect(page.get_by_test_id("composer-input")).to_be_visible(timeout=T)
        await expect(alice_item).to_be_hidden()
        await expect(message(page, "Oui, j'y passe dans dix minutes.")).to_be_visible()
        await take_screenshot(page, "conversation-phone")

        # Bruno closes his browser: Alice sees him offline.
        await page_b.context.close()
        await expect(conversation_presence(page)).to_have_attribute("data-online", "false", timeout=T)
        assert await page_log.problems() == []


async def test_a_browser_and_an_sdk_clinician_talk_both_ways(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    async with evidence("browser-sdk", page_log):
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000021")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000022")
        async with Client.connect(bob_profile) as bob:
            question = "Les résultats de M. L. sont-ils arrivés ?"
            mid = await bob.send(alice.user, question)

            item = conv_item(page, bob.user_id)
            await expect(item.get_by_test_id("unread")).to_have_text("1", timeout=T)
            await item.click()
            got = message(page, question)
            await expect(got).to_have_attribute("data-status", "received", timeout=T)
            await expect(got).to_have_attribute("data-id", mid.hex())
            await expect(page.get_by_test_id("peer-identity")).to_contain_text("Dr Bernard Petit")
            await expect(page.get_by_test_id("peer-identity")).to_contain_text("10000000022")

            answer = await send_text(page, "Oui, je vous les transmets.")
            answer_id = await message_id(answer)

            # The SDK gets the browser's receipt for its message, and the answer.
            receipt_seen: Delivered | None = None
            answer_seen: Message | None = None

            def wanted(event: Any) -> bool:
                nonlocal receipt_seen, answer_seen
                if isinstance(event, Delivered) and event.id == mid:
                    receipt_seen = event
                elif isinstance(event, Message) and event.id.hex() == answer_id:
                    answer_seen = event
                return receipt_seen is not None and answer_seen is not None

            await next_event(bob, wanted)
            assert receipt_seen is not None and answer_seen is not None
            assert (receipt_seen.user, receipt_seen.device) == (alice.user, await own_device(page))
            assert (answer_seen.from_user, answer_seen.to_user, answer_seen.body) == (
                alice.user,
                bob.user_id,
                "Oui, je vous les transmets.",
            )
            await expect(receipt(answer)).to_have_attribute("data-state", "delivered", timeout=T)
        assert await page_log.problems() == []


async def own_device(page: Page) -> str:
    """This browser's device id, from the devices dialog (the row marked as this one)."""
    await page.get_by_test_id("nav-devices").click()
    rows = page.get_by_test_id("devices-dialog").get_by_test_id("device")
    await expect(rows).to_have_count(1, timeout=T)
    device = await rows.get_attribute("data-device")
    await page.get_by_test_id("dialog-close").click()
    assert device
    return device


async def test_a_key_change_of_the_peer_holds_the_message_until_accepted(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    async with evidence("key-change", page_log):
        await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000031")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000032")
        async with Client.connect(bob_profile) as bob:
            await open_by_search(page, "Petit", bob.user_id)  # Bernard's one device, pinned
            first = await send_text(page, "Premier message")
            got = await next_event(bob, lambda e: isinstance(e, Message))
            assert isinstance(got, Message) and got.body == "Premier message"
            await expect(receipt(first)).to_have_attribute("data-state", "delivered", timeout=T)

            # Bernard links a second device; the administrator verifies him again.
            code, _ = await bob.link_code()
            phone = await sdk_linked_device(web_hub, code, tmp_path / "bob-phone")
            # The real miss-admin verify. The hub must have reloaded its cached
            # account before Alice sends: its poll of the audit log does within
            # half a second, a lookup (which reads the account afresh) at once.
            await asyncio.to_thread(web_hub.process.verify, bob.user_id)
            await bob.lookup(bob.user_id, refresh=True)

            held = await send_text(page, "Deuxième message, après le changement")
            warning = page.get_by_test_id("key-warning")
            await expect(warning).to_be_visible(timeout=T)
            await expect(warning).to_contain_text("Dr Bernard Petit")
            await expect(warning).to_contain_text("1 ajouté(s)")
            await expect(held).to_have_attribute("data-status", "pending")
            await expect(receipt(held)).to_have_attribute("data-state", "pending")
            await take_screenshot(page, "key-warning-desktop")
            with pytest.raises(TimeoutError):
                await next_event(bob, lambda e: isinstance(e, Message), timeout=3.0)
            await expect(held).to_have_attribute("data-status", "pending")
            assert await accepted(web_hub) == (1, 0), "the held message reached the hub"

            await warning.get_by_test_id("key-accept").click()
            await expect(warning).to_have_count(0, timeout=T)
            got = await next_event(bob, lambda e: isinstance(e, Message))
            assert isinstance(got, Message)
            assert (got.id.hex(), got.body) == (
                await message_id(held),
                "Deuxième message, après le changement",
            )
            await expect(receipt(held)).to_have_attribute("data-state", "delivered", timeout=T)
            again = await bob.drain(idle=1.0, limit=5.0)
            assert [e for e in again if isinstance(e, Message)] == []
            assert await accepted(web_hub) == (2, 0)
        # The new device got it too, once.
        async with Client.connect(phone) as p:
            copies = [e for e in await p.drain(idle=1.0, limit=10.0) if isinstance(e, Message)]
        assert [(m.id.hex(), m.body) for m in copies] == [
            (await message_id(held), "Deuxième message, après le changement")
        ]
        assert await page_log.problems() == []


async def test_a_message_sent_while_the_hub_is_down_survives_a_reload(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    conn = page.get_by_test_id("conn-state")
    text = "Écrit pendant la coupure du serveur"
    await keep_the_page_when_the_hub_is_down(page, web_hub)
    async with evidence("reload-offline", page_log):
        await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000041")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000042")
        await open_by_search(page, "Petit", bob_profile.user_id)

        await web_hub.process.stop_async()
        await expect(conn).to_have_attribute("data-state", "offline", timeout=T)
        shown = await send_text(page, text)
        await expect(shown).to_have_attribute("data-status", "pending")
        await expect(receipt(shown)).to_have_attribute("data-state", "pending")
        mid = await message_id(shown)

        await page.reload()
        await unlock(page)
        await expect(conn).not_to_have_attribute("data-state", "online")
        await conv_item(page, bob_profile.user_id).click()
        shown = message(page, text)
        await expect(shown).to_have_attribute("data-id", mid, timeout=T)
        await expect(shown).to_have_attribute("data-status", "pending")

        await asyncio.to_thread(web_hub.process.start)
        await expect_online(page, timeout=45_000)  # the reconnection backs off up to 30 s
        await expect(shown).to_have_attribute("data-status", "accepted", timeout=T)
        async with Client.connect(bob_profile) as bob:
            got = await next_event(bob, lambda e: isinstance(e, Message))
            assert isinstance(got, Message) and (got.id.hex(), got.body) == (mid, text)
            again = await bob.drain(idle=1.0, limit=5.0)
            assert [e for e in again if isinstance(e, Message)] == []
            await expect(receipt(shown)).to_have_attribute("data-state", "delivered", timeout=T)
        await expect(message(page, text)).to_have_count(1)
        assert await accepted(web_hub) == (1, 0)  # the restarted hub's counters


async def test_a_message_whose_acceptance_never_reached_the_page_is_sent_once_after_a_reload(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    """The hub stores the message, but its ``accepted`` answer is cut
    (Playwright routes the page's WebSocket) and the page reloaded: the
    outbox resends the message with its id, and the peer gets it once."""
    await page.set_viewport_size(DESKTOP)
    armed = False
    swallowed = asyncio.Event()

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        cut = False

        def to_hub(data: str | bytes) -> None:
            nonlocal cut
            if armed and frame_type(data) == "send":
                cut = True  # from now on the page hears nothing on this connection
            server.send(data)

        def to_page(data: str | bytes) -> None:
            if not cut:
                ws.send(data)
            elif frame_type(data) == "accepted":
                swallowed.set()

        ws.on_message(to_hub)
        server.on_message(to_page)

    await page.route_web_socket(lambda url: url.startswith(("ws://", "wss://")), route)
    text = "Accepté par le serveur, mais la page ne l'a pas su"
    async with evidence("reload-cut", page_log):
        await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000051")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000052")
        await open_by_search(page, "Petit", bob_profile.user_id)

        armed = True
        shown = await send_text(page, text)
        await asyncio.wait_for(swallowed.wait(), 15)
        armed = False
        mid = await message_id(shown)
        await expect(shown).to_have_attribute("data-status", "pending")

        await page.reload()
        await unlock(page)
        await expect_online(page)
        await conv_item(page, bob_profile.user_id).click()
        shown = message(page, text)
        await expect(shown).to_have_attribute("data-id", mid, timeout=T)
        await expect(shown).to_have_attribute("data-status", "accepted", timeout=T)
        async with Client.connect(bob_profile) as bob:
            got = await next_event(bob, lambda e: isinstance(e, Message))
            assert isinstance(got, Message) and (got.id.hex(), got.body) == (mid, text)
            again = await bob.drain(idle=1.0, limit=5.0)
            assert [e for e in again if isinstance(e, Message)] == []
            await expect(receipt(shown)).to_have_attribute("data-state", "delivered", timeout=T)
        await expect(message(page, text)).to_have_count(1)
        assert await accepted(web_hub) == (1, 1), "resent once after the reload, and deduplicated"


def frame_type(data: str | bytes) -> str | None:
    """The ``t`` of a MiSS frame (msgpack), or None."""
    if not isinstance(data, bytes):
        return None
    with contextlib.suppress(Exception):
        frame = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if isinstance(frame, dict) and isinstance(frame.get("t"), str):
            return str(frame["t"])
    return None


async def test_errors_show_in_the_interface(web_hub: WebHub, page: Page, page_log: PageLog) -> None:
    await page.set_viewport_size(DESKTOP)
    error = page.get_by_test_id("form-error")
    conn = page.get_by_test_id("conn-state")
    async with evidence("errors", page_log):
        # A code the hub never issued.
        await fill_enroll_form(page, web_hub, "ABCD-EFGH-JKLM-NPQR")
        await expect(error).to_be_visible(timeout=T)
        await expect(error).to_contain_text("Ce code est invalide, expiré ou déjà utilisé")
        await expect(page.get_by_test_id("enroll-submit")).to_be_enabled()
        await take_screenshot(page, "error-invalid-code")

        # The right code; then a reload and a wrong passphrase.
        user, code = await invite_on_store(web_hub.process, "Dr Alice Martin", "10000000061")
        await fill_enroll_form(page, web_hub, code)
        await expect_online(page)
        await page.reload()
        await page.get_by_test_id("unlock-passphrase").fill("pas la bonne phrase")
        await page.get_by_test_id("unlock-submit").click()
        await expect(error).to_have_text("Phrase secrète incorrecte.", timeout=T)
        await expect(page.get_by_test_id("unlock-submit")).to_be_enabled()
        await unlock(page, PASSPHRASE)
        await expect_online(page)
        await become_verified(page, web_hub, user)

        # The hub goes away, then comes back.
        await web_hub.process.stop_async()
        await expect(conn).to_have_attribute("data-state", "offline", timeout=T)
        await expect(conn).to_contain_text("Hors ligne")
        await take_screenshot(page, "error-offline")
        await asyncio.to_thread(web_hub.process.start)
        # The clinician does not wait for the backoff (up to 30 s): "Réessayer".
        await page.get_by_test_id("conn-retry").click()
        await expect_online(page, timeout=T)
        assert await page_log.problems() == []
