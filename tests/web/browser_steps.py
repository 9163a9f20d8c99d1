"""What a clinician does in the browser client, as steps the browser tests
share: enroll this browser with an invitation code, wait for the
administrator's verification, find a colleague, send, unlock after a
reload; and what the tests read back: the SDK side of a conversation, the
origin's IndexedDB as stored, files holding a string.

Every step goes through the interface (the ``data-testid`` attributes of
clients/web/src/app/ui/*.ts) and waits with Playwright's ``expect``: the
browser's Argon2id and the hub's round trips take a while, so every wait
is generous (:data:`T`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miss_client import KDF_INTERACTIVE, Client, Profile, enroll
from miss_client.models import Event
from playwright.async_api import Browser, Error, Locator, Page, Response, Route, ViewportSize, expect

from tests.support.authority import AUTHORITY_TEXT
from tests.support.client_fixtures import PASSPHRASE as SDK_PASSPHRASE
from tests.support.hubproc import invite_on_store, verify_on_store
from tests.web.conftest import RECORD_CSP_VIOLATIONS, PageLog, WebHub, take_screenshot

#: A wait for anything the user waits for (ms): Argon2id, the hub, a reconnection.
T = 15_000
#: The passphrase every browser device of the tests is sealed with.
PASSPHRASE = "une phrase secrète de test"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass
class BrowserClinician:
    """A clinician whose device is this page's browser context."""

    page: Page
    user: str
    name: str
    rpps: str


def watch(page: Page) -> PageLog:
    """The console messages and uncaught errors of ``page`` from now on."""
    log = PageLog(page)
    page.on("console", lambda message: log.console.append(message))
    page.on("pageerror", lambda exc: log.errors.append(str(exc)))
    return log


@asynccontextmanager
async def another_browser(browser: Browser) -> AsyncIterator[tuple[Page, PageLog]]:
    """Another browser context (another device: its own IndexedDB) at desktop
    size, with its page and log; closed on exit."""
    ctx = await browser.new_context(viewport=DESKTOP)
    await ctx.add_init_script(RECORD_CSP_VIOLATIONS)
    try:
        page = await ctx.new_page()
        yield page, watch(page)
    finally:
        await ctx.close()


@asynccontextmanager
async def evidence(name: str, *logs: PageLog) -> AsyncIterator[None]:
    """On failure, a screenshot of each page (``<name>-failure-<i>.png``) and
    what its console said, printed (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        for i, log in enumerate(logs):
            try:
                if not log.page.is_closed():
                    path = await take_screenshot(log.page, f"{name}-failure-{i}")
                    print(f"screenshot of page {i}: {path}")
            except Exception as exc:  # the page may be gone: the report still matters
                print(f"page {i}: no screenshot ({exc})")
            print(f"page {i} console errors: {log.console_errors()}")
            print(f"page {i} uncaught: {log.errors}")
        raise


# --- enrolling and verification ---------------------------------------------


async def fill_enroll_form(page: Page, hub: WebHub, code: str, *, label: str = "Navigateur") -> None:
    """Open the hub's page (no device in this browser: the enrollment form),
    fill it in and submit it."""
    await page.goto(hub.http_url, wait_until="load")
    await expect(page.get_by_test_id("enroll-server")).to_have_value(hub.ws_url, timeout=T)
    await page.get_by_test_id("enroll-code").fill(code)
    await page.get_by_test_id("enroll-authority").fill(AUTHORITY_TEXT)
    await page.get_by_test_id("enroll-label").fill(label)
    await page.get_by_test_id("enroll-passphrase").fill(PASSPHRASE)
    await page.get_by_test_id("enroll-passphrase2").fill(PASSPHRASE)
    await page.get_by_test_id("enroll-submit").click()


async def expect_online(page: Page, timeout: float = T) -> None:
    conn = page.get_by_test_id("conn-state")
    await expect(conn).to_have_attribute("data-state", "online", timeout=timeout)
    await expect(conn).to_have_text("Connecté")


async def become_verified(page: Page, hub: WebHub, user: str) -> None:
    """``user`` verified (what ``miss-admin verify`` records, written on the
    hub's store: hubproc.verify_on_store) while not verified yet (the page
    shows the self-unverified banner first), then the banner goes away
    ("Vérifier de nouveau" clicked to spare the 10 s recheck)."""
    banner = page.get_by_test_id("self-unverified")
    await expect(banner).to_be_visible(timeout=T)
    await verify_on_store(hub.process, user)
    for _ in range(3):
        try:
            await banner.get_by_role("button", name="Vérifier de nouveau").click(timeout=2_000)
        except Exception:  # redrawn meanwhile, or already gone
            pass
        try:
            await expect(banner).to_have_count(0, timeout=5_000)
            return
        except AssertionError:
            continue
    await expect(banner).to_have_count(0, timeout=T)


async def browser_clinician(page: Page, hub: WebHub, name: str, rpps: str) -> BrowserClinician:
    """Invited by the administrator, enrolled through this page's form,
    then verified: the main view, online, without the unverified banner."""
    user, code = await invite_on_store(hub.process, name, rpps)
    await fill_enroll_form(page, hub, code)
    await expect_online(page)
    await become_verified(page, hub, user)
    return BrowserClinician(page, user, name, rpps)


async def sdk_clinician(hub: WebHub, directory: Path, name: str, rpps: str, label: str = "sdk") -> Profile:
    """A clinician enrolled with the Python SDK (its own profile in
    ``directory``), then verified (what ``miss-admin verify`` records)."""
    user, code = await invite_on_store(hub.process, name, rpps)
    profile = await enroll(
        hub.ws_url, code, directory, SDK_PASSPHRASE, label, authority=AUTHORITY_TEXT, kdf=KDF_INTERACTIVE
    )
    assert profile.user_id == user
    await verify_on_store(hub.process, user)
    return profile


async def keep_the_page_when_the_hub_is_down(page: Page, hub: WebHub) -> None:
    """Serve the page, while the hub refuses connections, with what the hub
    last served for each URL (the same bytes and headers, CSP included).

    The browser client has no offline cache of its own (no service worker):
    without this, reloading while the hub is down shows Chromium's
    connection-refused page instead of the app. A document Playwright
    fulfills has no IP address space, so Chromium's Local Network Access
    checks would then block its WebSocket to 127.0.0.1: the context is
    granted ``local-network-access`` (a page the hub itself serves needs no
    such permission; the test harness's fulfilled copy does).
    """
    served: dict[str, tuple[int, dict[str, str], bytes]] = {}

    async def remember(response: Response) -> None:
        if response.url.startswith(hub.http_url) and response.status == 200:
            with contextlib.suppress(Error):
                served[response.url] = (response.status, await response.all_headers(), await response.body())

    async def handle(route: Route) -> None:
        url = route.request.url
        if url in served and not await hub_listening(hub):
            status, headers, body = served[url]
            await route.fulfill(status=status, headers=headers, body=body)
        else:
            await route.continue_()

    await page.context.grant_permissions(["local-network-access"], origin=hub.http_url.rstrip("/"))
    page.on("response", remember)
    await page.route(f"{hub.http_url}**", handle)


async def hub_listening(hub: WebHub) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    except OSError:
        return False
    writer.close()
    return True


async def sdk_linked_device(hub: WebHub, code: str, directory: Path, label: str = "phone") -> Profile:
    """Another SDK device of a clinician, enrolled with a link code."""
    return await enroll(
        hub.ws_url, code, directory, SDK_PASSPHRASE, label, authority=AUTHORITY_TEXT, kdf=KDF_INTERACTIVE
    )


async def unlock(page: Page, passphrase: str = PASSPHRASE) -> None:
    """The unlock screen (a device is stored in this browser): unlock it."""
    field = page.get_by_test_id("unlock-passphrase")
    await expect(field).to_be_visible(timeout=T)
    await field.fill(passphrase)
    await page.get_by_test_id("unlock-submit").click()
    await expect(page.get_by_test_id("conn-state")).to_be_visible(timeout=T)


# --- conversations ---------------------------------------------------------------


async def open_by_search(page: Page, query: str, user: str) -> None:
    """Start a conversation from the directory: search, click the result."""
    await page.get_by_test_id("nav-new").click()
    await page.get_by_test_id("search-input").fill(query)
    result = page.locator(f'[data-testid="search-result"][data-user="{user}"]')
    await expect(result).to_have_count(1, timeout=T)
    await result.click()
    await expect(page.get_by_test_id("search-dialog")).to_have_count(0, timeout=T)
    await expect(page.get_by_test_id("composer-input")).to_be_visible(timeout=T)


def conv_item(page: Page, peer: str) -> Locator:
    return page.locator(f'[data-testid="conv-item"][data-peer="{peer}"]')


def conversation_presence(page: Page) -> Locator:
    return page.get_by_test_id("peer-identity").get_by_test_id("presence")


def message(page: Page, text: str) -> Locator:
    """The message of the open conversation whose text is ``text``."""
    return (
        page.get_by_test_id("messages")
        .get_by_test_id("message")
        .filter(has=page.locator(".body", has_text=re.compile(rf"^{re.escape(text)}$")))
    )


async def send_text(page: Page, text: str) -> Locator:
    """Type ``text`` in the open conversation and press Enter; the message
    as it shows (once)."""
    box = page.get_by_test_id("composer-input")
    await box.fill(text)
    await box.press("Enter")
    shown = message(page, text)
    await expect(shown).to_have_count(1, timeout=T)
    await expect(box).to_have_value("")
    return shown


async def message_id(shown: Locator) -> str:
    value = await shown.get_attribute("data-id")
    assert value and re.fullmatch(r"[0-9a-f]{32}", value), value
    return value


# --- the SDK side --------------------------------------------------------------


async def next_event(client: Client, wanted: Callable[[Event], bool], timeout: float = 15.0) -> Event:
    """The first event ``client`` receives that ``wanted`` accepts (others
    are dropped); TimeoutError if none comes within ``timeout`` seconds."""

    async def wait() -> Event:
        while True:
            event = await client.receive()
            if wanted(event):
                return event

    return await asyncio.wait_for(wait(), timeout)


# --- what is stored ------------------------------------------------------------

#: Every record of every object store of every IndexedDB database of the
#: page's origin, as stored: strings as strings, bytes as hex, the rest as
#: JSON; keys too.
DUMP_INDEXEDDB = """
async () => {
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const chunks = (value, out) => {
    if (value === null || value === undefined) return out;
    if (typeof value === "string") out.push({s: value});
    else if (value instanceof ArrayBuffer) out.push({b: hex(new Uint8Array(value))});
    else if (ArrayBuffer.isView(value)) {
      out.push({b: hex(new Uint8Array(value.buffer, value.byteOffset, value.byteLength))});
    }
    else if (value instanceof Blob) out.push({s: "[blob]"});
    else if (Array.isArray(value)) value.forEach((v) => chunks(v, out));
    else if (value instanceof Map) value.forEach((v, k) => { chunks(k, out); chunks(v, out); });
    else if (typeof value === "object") {
      Object.entries(value).forEach(([k, v]) => { out.push({s: k}); chunks(v, out); });
    }
    else out.push({s: String(value)});
    return out;
  };
  const request = (req) => new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const records = [];
  for (const info of await indexedDB.databases()) {
    const db = await request(indexedDB.open(info.name));
    try {
      for (const name of Array.from(db.objectStoreNames)) {
        const store = db.transaction(name, "readonly").objectStore(name);
        const [keys, values] = await Promise.all([request(store.getAllKeys()), request(store.getAll())]);
        keys.forEach((key, i) => records.push(
          {db: info.name, store: name, key: chunks(key, []), value: chunks(values[i], [])}));
      }
    } finally {
      db.close();
    }
  }
  return records;
}
"""


@dataclass
class StoredRecord:
    db: str
    store: str
    key: bytes
    value: bytes

    @property
    def data(self) -> bytes:
        return self.key + b"\0" + self.value


def _joined(chunks: list[dict[str, str]]) -> bytes:
    return b"\0".join(bytes.fromhex(c["b"]) if "b" in c else c["s"].encode() for c in chunks)


async def dump_indexeddb(page: Page) -> list[StoredRecord]:
    """Every IndexedDB record of the page's origin, as bytes (strings UTF-8)."""
    raw: list[dict[str, Any]] = await page.evaluate(DUMP_INDEXEDDB)
    return [StoredRecord(r["db"], r["store"], _joined(r["key"]), _joined(r["value"])) for r in raw]


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Files under ``root`` whose bytes contain ``needle``."""
    found = []
    for path in sorted(root.rglob("*")):
        try:
            if path.is_file() and needle in path.read_bytes():
                found.append(path)
        except OSError:  # a lock file, a file gone meanwhile
            continue
    return found
