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
            # Dropped: "offline" until its first retry (under a second away),
            # then "connecting" to a hub that still does not answer.
            await expect(conn).not_to_have_attribute("data-state", "online", timeout=T)
            await expect(conn).not_to_have_text("Connecté")
            await screenshot(page, "silent-hub-dropped")
        finally:
            proc.send_signal(signal.SIGCONT)
        # The page reconnects on its own once the hub answers again.
        await expect_online(page, timeout=45_000)
    warned = [m.text for m in page_log.console if m.type == "warning" and "did not answer" in m.text]
    assert warned, "the page says in its console why it dropped the connection"
    assert await page_log.problems() == []


async def test_a_tab_that_comes_back_into_view_looks_at_its_connection_at_once(
    web_hub: WebHub, page: Page, page_log: PageLog
) -> None:
    """A hidden tab's timers are throttled (once a minute): the page does
    not wait for its next tick when it is shown again. The page's clock is
    paused and moved without firing any timer (``set_system_time``), so
    only the ``visibilitychange`` can make it look."""
    conn = page.get_by_test_id("conn-state")
    await page.clock.install()
    async with evidence("silent-hub-visible", page_log):
        await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000062")
        await expect_online(page)
        proc = web_hub.process.proc
        assert proc is not None
        shown_again = "document.dispatchEvent(new Event('visibilitychange'))"
        start = await page.evaluate("Date.now()") / 1000  # Playwright's clock takes seconds here
        await page.clock.pause_at(start + 0.5)  # from now on no timer runs unless told
        proc.send_signal(signal.SIGSTOP)
        try:
            await page.clock.set_system_time(start + 20)  # quiet for 20 s
            await page.evaluate(shown_again)  # shown: the ping leaves now
            await page.clock.set_system_time(start + 31)  # unanswered for 11 s
            await page.evaluate(shown_again)  # shown again: 11 s unanswered, dropped now
            # The pill is drawn by the page's timers: let them run. Without
            # the look at visibilitychange, the ping would only leave now.
            await page.clock.resume()
            await expect(conn).not_to_have_attribute("data-state", "online", timeout=3_000)
        finally:
            proc.send_signal(signal.SIGCONT)
        await expect_online(page, timeout=45_000)
