"""A care team at the size of a ward (SPEC §13), on a real ``miss-server``:
20 clinicians on the Python SDK with two devices each, and one in the
browser.

One message from one device reaches every other device of the team (the
other 38 members' devices, the browser and the sender's own other device)
exactly once, and the sending device gets one delivered receipt per
member device. After an admin removes a member, nothing sent to the team
reaches that member's devices, while the others still get everything. A
member who left cannot send to the team: the SDK says so with a typed
error (``NotMember``) and nothing reaches anyone (the hub's own answer to a
hand-made send from a former member, ``not_member``, is in
tests/server/test_teams.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from miss_client import KDF_INTERACTIVE, Client, Delivered, Message, Profile, enroll
from playwright.async_api import Page, expect

from miss_server.codes import code_hash, new_code
from miss_server.store.sqlite import SQLiteStore
from protocol.errors import NotMember
from tests.support.authority import AUTHORITY_TEXT, verify
from tests.support.client_fixtures import PASSPHRASE as SDK_PASSPHRASE
from tests.web.browser_steps import DESKTOP, T, browser_clinician, conv_item, evidence, sdk_linked_device
from tests.web.conftest import BROWSER_TEST, PageLog, WebHub, take_screenshot

# Runs among the other browser modules (test_browser_*): the session loop
# the page fixtures share is then current.
pytestmark = [*BROWSER_TEST, pytest.mark.timeout(300)]

MEMBERS = 20


@asynccontextmanager
async def hub_store(hub: WebHub) -> AsyncIterator[SQLiteStore]:
    """The ``miss-server``'s own SQLite store, opened beside it, as
    ``miss-admin`` opens it: 80 invitations and verifications in this
    process instead of 80 ``miss-admin`` start-ups of a few seconds each."""
    store = SQLiteStore(hub.process.workdir / "data" / "miss.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def two_device_clinician(
    hub: WebHub, store: SQLiteStore, root: Path, i: int
) -> tuple[Profile, Profile]:
    """Invited, first device enrolled and verified, a second linked from it
    and verified too: as an administrator (miss-admin invite and verify, the
    same store calls) and a clinician do it."""
    now = int(time.time() * 1000)
    user = await store.create_user(f"Dr Membre {i:02d}", f"1000000{i:04d}", "médecin", "CHRU", now)
    code = new_code()
    await store.add_enrollment_code(user.user_id, code_hash(code), now + 3_600_000)
    kdf = KDF_INTERACTIVE
    first = await enroll(
        hub.ws_url, code, root / f"m{i}a", SDK_PASSPHRASE, "phone", authority=AUTHORITY_TEXT, kdf=kdf
    )
    await verify(store, user.user_id)
    async with Client.connect(first) as c:
        link, _ = await c.link_code()
    second = await sdk_linked_device(hub, link, root / f"m{i}b", "laptop")
    await verify(store, user.user_id)
    return first, second


async def texts_with(client: Client, mid: bytes, seconds: float) -> list[Message]:
    """Every text message with id ``mid`` that ``client`` receives within ``seconds``."""
    events = await client.drain(idle=seconds, limit=seconds * 4)
    return [e for e in events if isinstance(e, Message) and e.id == mid]


async def test_a_ward_sized_team_gets_each_message_once_and_loses_who_left(
    web_hub: WebHub, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    async with evidence("team-scale", page_log), AsyncExitStack() as stack:
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000009999")
        store = await stack.enter_async_context(hub_store(web_hub))
        gate = asyncio.Semaphore(4)

        async def clinician(i: int) -> tuple[Profile, Profile]:
            async with gate:
                return await two_device_clinician(web_hub, store, tmp_path, i)

        profiles = await asyncio.gather(*(clinician(i) for i in range(MEMBERS)))
        devices = [await stack.enter_async_context(Client.connect(p)) for pair in profiles for p in pair]
        sender, sender_copy = devices[0], devices[1]
        users = [pair[0].user_id for pair in profiles]

        team = await sender.create_team("Médecine interne — 3e étage", org="CHRU")
        for user in [*users[1:], alice.user]:
            await sender.add_member(team, user)
        view = await sender.team(team)
        assert len(view.members) == MEMBERS + 1 and view.problem is None

        # One message: each of the 39 other SDK devices has it once, so does the browser.
        text = "Staff à 14 h en salle 3 : dossiers des entrées de la nuit."
        mid = await sender.send(team, text)
        others = devices[1:]
        got = await asyncio.gather(*(texts_with(d, mid, 2.0) for d in others))
        assert [len(g) for g in got] == [1] * len(others)
        assert all(g[0].body == text and g[0].team == team for g in got)
        assert got[0][0].outgoing_copy  # the sender's own other device
        item = conv_item(page, team)
        await expect(item).to_have_count(1, timeout=T)
        await item.click()
        shown = page.locator(f'[data-testid="message"][data-id="{mid.hex()}"]')
        await expect(shown).to_have_count(1, timeout=T)
        await expect(shown).to_contain_text(text)

        # Receipts: one per member device other than the sender's own (38 SDK + 1 browser).
        receipts = [
            e for e in await sender.drain(idle=1.0, limit=20) if isinstance(e, Delivered) and e.id == mid
        ]
        per_device = Counter(r.device for r in receipts)
        assert len(per_device) == 2 * (MEMBERS - 1) + 1 and set(per_device.values()) == {1}
        assert sender_copy.device_id not in per_device
        await take_screenshot(page, "team-scale-browser")

        # Removed: member 19's devices get nothing sent afterwards; the others still do.
        removed = users[MEMBERS - 1]
        await sender.remove_member(team, removed)
        after = await sender.send(team, "Le Dr Membre 19 a changé de service.")
        removed_devices = devices[2 * (MEMBERS - 1) :]
        kept_devices = devices[1 : 2 * (MEMBERS - 1)]
        got_removed = await asyncio.gather(*(texts_with(d, after, 2.0) for d in removed_devices))
        got_kept = await asyncio.gather(*(texts_with(d, after, 2.0) for d in kept_devices))
        assert [len(g) for g in got_removed] == [0, 0]
        assert [len(g) for g in got_kept] == [1] * len(kept_devices)

        # Left: member 18 leaves; its send is refused with a typed error, locally...
        leaver = devices[2 * (MEMBERS - 2)]
        await leaver.leave_team(team)
        with pytest.raises(NotMember):
            await leaver.send(team, "Encore là ?")
        # ...and nobody got anything from it.
        assert not [
            e
            for d in kept_devices[:4]
            for e in await d.drain(idle=0.5, limit=2)
            if isinstance(e, Message) and e.from_user == leaver.user_id
        ]
