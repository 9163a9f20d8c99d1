"""miss-adt to a GP's browser (SPEC §17): an ADT feed over MLLP, miss-adt
connected to a real ``miss-server`` subprocess as « CH Provins —
Admissions », and the GP's browser. What the GP notices: the admission
and the death of their patients arrive as cards with the patient's fields
from the HL7 messages, from a service; the discharge the hospital then
cancels (A13) turns into « message retiré »."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from miss_adt.sender import HubLink
from playwright.async_api import Page, expect

from tests.support.adt_feed import MllpClient, message, running_adt
from tests.web.browser_steps import DESKTOP, T, browser_clinician, conv_item, evidence
from tests.web.conftest import BROWSER_TEST, PageLog, WebHub
from tests.web.test_browser_services import SERVICE_ORG, sdk_service

pytestmark = BROWSER_TEST


async def test_adt_notices_show_as_cards_in_the_gps_browser(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    async with evidence("adt", page_log):
        gp, service = await asyncio.gather(
            browser_clinician(page, web_hub, "Dr Marie Dupont", "10003456789"),
            sdk_service(web_hub, tmp_path / "svc"),
        )
        link = HubLink(service, request_timeout=5.0, reconnect_max=1.0)
        link_task = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(link.connected.wait(), 10)
            async with running_adt(tmp_path, link) as adt:
                feed = await MllpClient.open(adt.port)
                for name in ("a01_admission_pd1", "a03_death", "a03_discharge"):
                    assert (await feed.send(message(name))).note == "notice sent", name

                item = conv_item(page, service.user_id)
                await expect(item).to_have_count(1, timeout=T)
                await expect(item.get_by_test_id("service-badge")).to_have_text("Service")
                await expect(item.get_by_test_id("conv-organisation")).to_have_text(SERVICE_ORG)
                await item.click()
                cards = page.get_by_test_id("notice-card")
                await expect(cards).to_have_count(3, timeout=T)
                admission = page.get_by_role("article", name="Admission de Mme LEFÈVRE Hélène")
                await expect(admission).to_have_attribute("data-event", "admission")
                assert await admission.locator("dl dt").all_inner_texts() == [
                    "Patient",
                    "Né(e) le",
                    "IPP",
                    "Établissement",
                    "Service",
                    "Événement",
                    "Date",
                ]
                assert await admission.locator("dl dd").all_inner_texts() == [
                    "Mme LEFÈVRE Hélène",
                    "21/06/1948",
                    "4000123456",
                    "CH-PROVINS",
                    "Cardiologie",
                    "Admission",
                    "15/03/2024 à 10h25",
                ]
                death = page.get_by_role("article", name="Décès de M. MOREAU Jacques")
                await expect(death).to_have_attribute("data-event", "death")
                await expect(death.locator("dl")).to_contain_text("22/03/2024 à 05h20")
                await expect(death.get_by_test_id("notice-reply")).to_have_text(
                    "Pour toute question : Bureau des admissions : 01 64 60 40 00"
                )

                # The hospital cancels the discharge: the GP's copy is withdrawn.
                discharge_id = link.sender.notice_id("adt:MVT000104^CH-PROVINS:A03")  # type: ignore[union-attr]
                assert discharge_id is not None
                assert (await feed.send(message("a13_cancel_discharge"))).note == "notice recalled"
                shown = page.locator(f'[data-testid="message"][data-id="{discharge_id.hex()}"]')
                await expect(shown).to_have_attribute("data-recalled", "true", timeout=T)
                await expect(shown.locator(".body")).to_have_text("message retiré")
                await expect(cards).to_have_count(2)
                await feed.close()
        finally:
            link_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link_task
        assert gp.user != service.user_id
    assert await page_log.problems() == []
