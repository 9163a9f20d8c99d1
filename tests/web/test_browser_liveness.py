"""The browser client notices a hub that has gone silent (SPEC §4.1).

A browser sees no WebSocket ping. On a network that drops without a word
(Wi-Fi roaming, a VPN, a laptop waking up), the page would otherwise go on
showing « Connecté » while nothing arrives. Here the hub is stopped with
SIGSTOP: its sockets stay open and nothing answers, as on such a network.
The page's clock is Playwright's, moved forward by hand, so the test does
not wait out the half minute."""

from __future__ import annotations

import signal

from playwright.async_api import Page, expect

from tests.web.browser_steps import T, browser_clinician, evidence, expect_online
from tests.web.conftest import BROWSER_TEST, PageLog, Screenshot, WebHub

pytestmark = BROWSER_TEST


async def test_a_silent_hub_is_noticed_within_half_a_minute_and_the_page_comes_back_when_it_answers(
    web_hub: WebHub, page: Page, page_log: PageLog, screenshot: Screenshot
) -> None:
    conn = page.get_by_test_id("conn-state")
    await page.clock.install()  # the page's timers and Date, moved by fast_forward
    async with evidence("silent-hub", page_log):
        await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000061")
        await expect_online(page)
        proc = web_hub.process.proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        try:
            # The page looks every 5 s; fast_forward runs each due timer once.
            await page.clock.fast_forward(17_000)  # quiet, not yet long enough to ask
            await expect(conn).to_have_attribute("data-state", "online")
            await page.clock.fast_forward(5_000)  # 22 s of silence: the ping leaves
            await expect(conn).to_have_attribute("data-state", "online")
            await page.clock.fast_forward(11_000)  # and nothing answers it for 10 s
            await expect(conn).to_have_attribute("data-state", "offline", timeout=T)
            await expect(conn).not_to_have_text("Connecté")
            await screenshot(page, "silent-hub-offline")
        finally:
            proc.send_signal(signal.SIGCONT)
        # The page reconnects on its own once the hub answers again.
        await expect_online(page, timeout=45_000)
    warned = [m.text for m in page_log.console if m.type == "warning" and "did not answer" in m.text]
    assert warned, "the page says in its console why it dropped the connection"
    assert await page_log.problems() == []
