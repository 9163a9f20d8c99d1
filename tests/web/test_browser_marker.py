"""The marker test of the browser client: a clinician writes a message
holding a random marker from the browser; the marker then shows in the
page (so the search below can succeed) and reaches the peer, but is found
nowhere in clear: not in any file of the hub's store (the SQLite database
and its -wal/-shm included, read while the hub runs and again after it
stopped), not in the hub's log, not in any record of the origin's
IndexedDB databases as the page reads them back, and not in the browser's
profile directory on disk.

Each search is shown able to succeed: the IndexedDB dump holds the user id
(the profile's routing facts are kept in clear by design), the hub's store
holds the clinician's name, the log the user id, and the browser's profile
directory the user id as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

import pytest
from miss_client import Client, Message
from playwright.async_api import Browser, BrowserContext, expect

from tests.web.browser_steps import (
    DESKTOP,
    T,
    browser_clinician,
    dump_indexeddb,
    evidence,
    files_containing,
    message,
    next_event,
    open_by_search,
    sdk_clinician,
    send_text,
    watch,
)
from tests.web.conftest import BROWSER_TEST, WebHub

pytestmark = BROWSER_TEST


def encodings(text: str) -> list[bytes]:
    """``text`` as it may lie in a file: UTF-8 (also Latin-1 for ASCII, as
    V8 serializes one-byte strings) and UTF-16 (two-byte strings)."""
    return [text.encode(), text.encode("utf-16-le")]


def holding(root: Path, text: str) -> list[Path]:
    return sorted({path for needle in encodings(text) for path in files_containing(root, needle)})


def chromium_profile(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The profile directory conftest's ``browser`` was launched with."""
    found = sorted(tmp_path_factory.getbasetemp().glob("chromium-profile*"))
    return found[0] if found else None


def on_disk_context(browser: Browser) -> BrowserContext | None:
    """The persistent context of the profile directory: the one whose
    IndexedDB is written to disk (the ``context`` fixture's contexts are
    off the record: kept in memory)."""
    return browser.contexts[0] if browser.contexts else None


async def test_the_marker_is_nowhere_in_clear(
    web_hub: WebHub, browser: Browser, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    marker = f"MRK{secrets.token_hex(12)}"
    text = f"Patient {marker} : bilan à refaire demain"
    persistent = on_disk_context(browser)
    context = persistent or await browser.new_context()
    page = await context.new_page()
    await page.set_viewport_size(DESKTOP)
    log = watch(page)
    try:
        async with evidence("marker", log):
            alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000071")
            bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000072")
            await open_by_search(page, "Petit", bob_profile.user_id)
            shown = await send_text(page, text)
            async with Client.connect(bob_profile) as bob:
                got = await next_event(bob, lambda e: isinstance(e, Message))
                assert isinstance(got, Message) and got.body == text
                await expect(shown.get_by_test_id("receipt")).to_have_attribute(
                    "data-state", "delivered", timeout=T
                )

            # The marker is on the screen: the searches below could find it.
            await expect(message(page, text)).to_have_count(1)
            assert marker in await page.get_by_test_id("messages").inner_text()
            assert marker.encode() in (await page.content()).encode()

            # The origin's IndexedDB, record by record, as stored.
            records = await dump_indexeddb(page)
            assert {(r.db, r.store) for r in records} >= {("miss", "meta"), ("miss", "records")}
            dump = b"\0".join(r.data for r in records)
            assert alice.user.encode() in dump, "the dump search cannot find what is in clear"
            assert any(b"msg:" in r.key for r in records), "the message's record is not in the dump"
            in_clear = [(r.db, r.store, r.key) for r in records if marker.encode() in r.data]
            assert in_clear == [], f"the marker is stored in clear in IndexedDB: {in_clear}"

            # The browser's profile directory on disk.
            profile = chromium_profile(tmp_path_factory)
            if persistent is not None and profile is not None:
                origin_dirs = sorted(
                    (profile / "Default" / "IndexedDB").glob(f"http_127.0.0.1_{web_hub.port}*")
                )
                assert origin_dirs, f"no IndexedDB directory of the origin under {profile}"
                print("on disk, holding the user id:", holding(profile, alice.user))
                assert holding(profile, alice.user), "the disk search cannot find the user id"
                assert holding(profile, marker) == []
            else:
                print(f"Chromium profile not checked on disk (profile: {profile}, persistent: {persistent})")

            # The hub's store, while it runs (the -wal holds the latest writes).
            workdir = web_hub.process.workdir
            assert (workdir / "data" / "miss.db").is_file()
            assert holding(workdir, "Dr Bernard Petit"), "the store search cannot find what is in clear"
            assert holding(workdir, marker) == []
    finally:
        # Forget this origin's data in the shared profile, then close the page.
        with contextlib.suppress(Exception):
            await page.goto(f"{web_hub.http_url}no-such-page", wait_until="load")
            await page.evaluate(
                "() => new Promise((resolve) => { const r = indexedDB.deleteDatabase('miss');"
                " r.onsuccess = r.onerror = r.onblocked = () => resolve(null); })"
            )
        await page.close()
        if persistent is None:
            await context.close()

    # The hub stopped: its store and its log, checkpointed and complete.
    await asyncio.to_thread(web_hub.process.stop)
    workdir = web_hub.process.workdir
    files = sorted(p.name for p in (workdir / "data").iterdir())
    assert "miss.db" in files, files
    assert holding(workdir, "Dr Bernard Petit")
    assert holding(workdir, marker) == []
    hub_log = web_hub.process.log_path.read_bytes()
    assert alice.user.encode() in hub_log, "the log search cannot find the user id"
    assert all(needle not in hub_log for needle in encodings(marker))
