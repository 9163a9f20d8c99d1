"""Services and notices in the browser client (SPEC §17), against a real
``miss-server`` subprocess and a service account driven by the Python SDK.

What a clinician notices: an admission notice from « CH Provins —
Admissions » shows in the conversation as a card (the event in words, the
title as a heading, the patient's fields in order, the event's time, whom
to call), the sender carries the « Service » badge and its organisation
(never a profession or an RPPS number) in the list, the header and the
directory; the composer is replaced by « Ce service n'accepte pas de
réponse » with the notice's reply line; and when the browser's hint is
stale (the hub's ``lookup_ok.replies`` hidden by the test), the hub refuses
the reply and the message shows as not sent, with the French sentence.
The screenshots of docs/WEB_CLIENT.md are taken here
(docs/img/service-notice*.png).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import msgpack
from miss_client import KDF_INTERACTIVE, Client, Profile, enroll
from playwright.async_api import Page, WebSocketRoute, expect

from miss_server.codes import code_hash, new_code
from protocol.notices import Notice
from tests.support.authority import AUTHORITY_TEXT
from tests.support.client_fixtures import PASSPHRASE as SDK_PASSPHRASE
from tests.support.clock import now_ms
from tests.support.hubproc import opened_store, verify_on_store
from tests.web.browser_steps import DESKTOP, PHONE, T, browser_clinician, conv_item, evidence
from tests.web.conftest import BROWSER_TEST, ROOT, PageLog, WebHub, take_screenshot

pytestmark = BROWSER_TEST

DOCS_IMG = ROOT / "docs" / "img"
SERVICE_NAME = "CH Provins — Admissions"
SERVICE_ID = "svc:provins-adt"
SERVICE_ORG = "CH de Provins"
REPLY = "Bureau des admissions : 01 64 60 40 00"


def admission(at: int) -> Notice:
    return Notice(
        title="Admission de M. DUPONT Jean",
        event="admission",
        at=at,
        fields=(
            ("Patient", "DUPONT Jean"),
            ("Né(e) le", "14/03/1951"),
            ("IPP", "000123456"),
            ("Service", "Cardiologie — UF 2104"),
            ("Événement", "Admission en hospitalisation complète"),
            ("Chambre", ""),
        ),
        reply=REPLY,
    )


async def sdk_service(hub: WebHub, directory: Path) -> Profile:
    """A service account (what ``miss-admin service create`` records, on the
    hub's store: replies off), its device enrolled with the SDK, then
    attested (profession "service", rpps its ``svc:`` identifier)."""
    async with opened_store(hub.process) as store:
        if SERVICE_ORG not in {o.name for o in await store.list_organisations()}:
            await store.add_organisation(SERVICE_ORG, now_ms())
        user = await store.create_service(SERVICE_NAME, SERVICE_ID, SERVICE_ORG, False, now_ms(), 20)
        code = new_code()
        await store.add_enrollment_code(user.user_id, code_hash(code), now_ms() + 3_600_000)
    profile = await enroll(
        hub.ws_url, code, directory, SDK_PASSPHRASE, "adt", authority=AUTHORITY_TEXT, kdf=KDF_INTERACTIVE
    )
    await verify_on_store(hub.process, profile.user_id)
    return profile


class HintWire:
    """The page's WebSocket, routed by Playwright: while ``hide_replies``,
    ``lookup_ok.replies`` is taken out of the hub's answers (as a hint
    gone stale would be), everything else passes as it is; ``sent_to``
    lists the recipient of every ``send`` the page made."""

    def __init__(self) -> None:
        self.hide_replies = False
        self.hidden = 0
        self.sent_to: list[str] = []

    def route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def to_page(data: str | bytes) -> None:
            if self.hide_replies and isinstance(data, bytes):
                frame: Any = msgpack.unpackb(data, raw=False)
                if isinstance(frame, dict) and frame.get("t") == "lookup_ok" and "replies" in frame:
                    del frame["replies"]  # the last key: the rest stays canonical
                    data = msgpack.packb(frame, use_bin_type=True)
                    self.hidden += 1
            ws.send(data)

        def to_hub(data: str | bytes) -> None:
            if isinstance(data, bytes):
                frame: Any = msgpack.unpackb(data, raw=False, strict_map_key=False)
                if isinstance(frame, dict) and frame.get("t") == "send":
                    self.sent_to.append(frame["to"])
            server.send(data)

        ws.on_message(to_hub)
        server.on_message(to_page)


async def test_a_service_notice_is_a_card_and_replies_are_refused(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    hub = web_hub
    await page.set_viewport_size(DESKTOP)
    wire = HintWire()
    await page.route_web_socket(lambda url: url.startswith(("ws://", "wss://")), wire.route)
    async with evidence("services", page_log):
        alice, service = await asyncio.gather(
            browser_clinician(page, hub, "Dr Alice Martin", "10000000091"),
            sdk_service(hub, tmp_path / "svc"),
        )
        notice = admission(now_ms() - 20 * 60_000)
        async with Client.connect(service) as svc:
            await svc.send_notice(notice, key="ADT^A01-000017", user=alice.user)

            # The list: the service's badge and organisation, the notice as its preview.
            item = conv_item(page, service.user_id)
            await expect(item).to_have_count(1, timeout=T)
            await expect(item.get_by_test_id("service-badge")).to_have_text("Service")
            await expect(item.get_by_test_id("conv-organisation")).to_have_text(SERVICE_ORG)
            await expect(item).to_contain_text("Admission — Admission de M. DUPONT Jean")
            await item.click()

            # The card: event in words, title as a heading, the fields in order, time, whom to call.
            card = page.get_by_test_id("notice-card")
            await expect(card).to_have_count(1, timeout=T)
            await expect(card).to_have_attribute("data-event", "admission")
            await expect(card.get_by_test_id("notice-event")).to_have_text(re.compile(r"Admission$"))
            await expect(card.get_by_role("heading", name="Admission de M. DUPONT Jean")).to_be_visible()
            await expect(page.get_by_role("article", name="Admission de M. DUPONT Jean")).to_have_count(1)
            assert await card.locator("dl dt").all_inner_texts() == [label for label, _ in notice.fields]
            assert await card.locator("dl dd").all_inner_texts() == [v or "—" for _, v in notice.fields]
            await expect(card.get_by_test_id("notice-at")).to_contain_text("Événement du ")
            await expect(card.get_by_test_id("notice-reply")).to_have_text(f"Pour toute question : {REPLY}")
            await expect(card.get_by_test_id("notice-from")).to_have_count(0)  # a service, not a clinician

            # The header: a service of its organisation, never a clinician.
            header = page.get_by_test_id("peer-identity")
            await expect(header).to_have_attribute("data-service", "true")
            await expect(header.get_by_test_id("service-badge")).to_have_text("Service")
            await expect(header.get_by_test_id("peer-organisation")).to_have_text(SERVICE_ORG)
            await expect(header).not_to_contain_text("RPPS")
            await expect(header).not_to_contain_text("svc:")

            # Replying: no composer, the sentence and whom to call instead.
            await expect(page.get_by_test_id("composer")).to_be_hidden()
            no_reply = page.get_by_test_id("no-reply")
            await expect(no_reply).to_contain_text("Ce service n'accepte pas de réponse")
            reply_line = no_reply.get_by_test_id("no-reply-line")
            await expect(reply_line).to_have_text(f"Pour toute question : {REPLY}")
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(DOCS_IMG / "service-notice.png"))
            await take_screenshot(page, "service-notice-desktop")

            # The directory finds a service by its identifier, shown as a service.
            await page.get_by_test_id("nav-new").click()
            await page.get_by_test_id("search-input").fill(SERVICE_ID)
            result = page.locator(f'[data-testid="search-result"][data-user="{service.user_id}"]')
            await expect(result).to_have_count(1, timeout=T)
            await expect(result.get_by_test_id("service-badge")).to_be_visible()
            await expect(result).to_contain_text(SERVICE_ORG)
            await expect(result).not_to_contain_text("RPPS")
            await page.get_by_test_id("dialog-close").click()

            # On a phone: the card readable at 390 px, nothing wider than the screen.
            await page.set_viewport_size(PHONE)
            await expect(card).to_be_visible()
            box = await card.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
            await expect(page.get_by_test_id("no-reply")).to_be_visible()
            await page.screenshot(path=str(DOCS_IMG / "service-notice-phone.png"))
            await take_screenshot(page, "service-notice-phone")

            # A stale hint (the hub's `replies` hidden): the composer is back,
            # the hub refuses the reply, the message shows as not sent, and
            # the hint looked up again replaces the composer.
            wire.hide_replies = True
            await page.get_by_test_id("nav-back").click()
            await item.click()
            composer = page.get_by_test_id("composer-input")
            await expect(composer).to_be_visible(timeout=T)
            assert wire.hidden >= 1
            wire.hide_replies = False
            await composer.fill("Merci, je le vois demain en consultation")
            await composer.press("Enter")
            thread = page.get_by_test_id("messages").get_by_test_id("message")
            mine = thread.filter(has_text="Merci, je le vois")
            await expect(mine).to_have_attribute("data-status", "failed", timeout=T)
            receipt = mine.get_by_test_id("receipt")
            await expect(receipt).to_have_attribute("data-failure", "replies_refused")
            await expect(receipt).to_contain_text(
                f"Non envoyé : Ce service n'accepte pas de réponse. Pour toute question : {REPLY}"
            )
            await expect(page.get_by_test_id("composer")).to_be_hidden(timeout=T)
            await expect(page.get_by_test_id("no-reply")).to_be_visible()
            # The card keeps its whole height when the thread outgrows the screen.
            clipped = "el => { const li = el.closest('li'); return li.scrollHeight > li.clientHeight + 1; }"
            assert not await card.evaluate(clipped)
            await take_screenshot(page, "service-reply-refused-phone")
            # Only that reply was addressed to the service: the notice was
            # read, but its read notice went to our own devices only.
            assert wire.sent_to.count(service.user_id) == 1, wire.sent_to
            await page.set_viewport_size(DESKTOP)
