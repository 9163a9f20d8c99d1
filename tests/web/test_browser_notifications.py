"""Desktop notifications (the Notification API) while the tab is hidden.

Headless Chromium shows no desktop, and its pages stay "visible": an init
script makes this page report itself hidden and records each
``new Notification(...)`` the application makes, in place of the system's
notification centre, which cannot run here. Everything else is real: the
hub subprocess, the SDK sender, the browser's client.
"""

from __future__ import annotations

from pathlib import Path

from miss_client import Client
from playwright.async_api import BrowserContext, Page, expect

from tests.web.browser_steps import T, browser_clinician, conv_item, evidence, sdk_clinician
from tests.web.conftest import BROWSER_TEST, PageLog, WebHub

pytestmark = BROWSER_TEST

HIDDEN_TAB_AND_RECORDED_NOTIFICATIONS = """
window.__missNotifications = [];
Object.defineProperty(document, "visibilityState", { get: () => window.__missHidden ? "hidden" : "visible" });
class RecordedNotification {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.__missNotifications.push({ title, body: options && options.body }); }
  close() {}
}
window.Notification = RecordedNotification;
"""


async def recorded(page: Page) -> list[dict[str, str]]:
    found: list[dict[str, str]] = await page.evaluate("() => window.__missNotifications")
    return found


async def test_a_message_to_a_hidden_tab_notifies_who_wrote_never_what(
    web_hub: WebHub, context: BrowserContext, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await context.add_init_script(HIDDEN_TAB_AND_RECORDED_NOTIFICATIONS)
    async with evidence("notifications", page_log):
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000041")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000042")
        async with Client.connect(bob_profile) as bob:
            # Visible tab: the message shows, and nothing pops up.
            await bob.send(alice.user, "Premier message, onglet visible")
            await expect(conv_item(page, bob.user_id).get_by_test_id("unread")).to_have_text("1", timeout=T)
            assert await recorded(page) == []

            await page.evaluate("() => { window.__missHidden = true; }")
            secret = "Kaliémie de M. L. à 6,8"
            await bob.send(alice.user, secret)
            await expect(conv_item(page, bob.user_id).get_by_test_id("unread")).to_have_text("2", timeout=T)
            notes = await recorded(page)
            assert notes == [{"title": "Nouveau message", "body": "Dr Bernard Petit vous a écrit."}]
            assert all(secret not in (n["body"] or "") + n["title"] for n in notes)
            # The hidden tab's title counts what is unread.
            await expect(page).to_have_title("(2) MiSS — messagerie sécurisée de santé", timeout=T)
