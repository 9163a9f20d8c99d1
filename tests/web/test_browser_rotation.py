"""Authority key rotation (SPEC §15) in the browser client: Debian's
Chromium (Playwright) on the page a real ``miss-server`` subprocess serves,
restarted (SIGTERM: the hub drains, its clients get close 1001) with the
settings ``miss-admin authority rotate`` printed, and a Python SDK
clinician on the other end.

What the clinician at the browser sees, in order:

1. Enrolled under the old key (the tests' authority), she writes to an SDK
   clinician.
2. The hub comes back announcing a new key with a statement signed by a key
   she never trusted: while it restarts the connection pill only says
   "Reconnexion…" (never "Hors ligne", no retry button); once back she sees
   "Nouvelle clé d'autorité refusée : la déclaration n'est pas signée par la
   clé connue", and her vault keeps the old key.
3. The hub comes back with the real statement, old key → new key: she sees
   "Clé de l'autorité de vérification renouvelée (empreinte …), annoncée par
   l'ancienne clé" (docs/img/authority-rotated.png comes from this step),
   her vault now holds the new key and the statement, and she keeps
   messaging both ways with the SDK clinician: first under the attestations
   the old key signed (valid until the statement's ``until``), then once
   ``miss-admin authority reissue`` re-signed both under the new key (and
   ``authority retire`` says nothing depends on the old key any more).
4. A colleague given only the old key enrolls another browser: the
   statement leads from it to the announced key, her vault keeps the new
   one, and her message reaches the first clinician.

No re-enrollment, no reload, nothing the user must act on.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import nacl.signing
from miss_client import Client, Message
from playwright.async_api import Browser, Page, expect

from miss_server.authority import load_authority
from protocol import attestation, rotation
from tests.support.authority import AUTHORITY_PK
from tests.support.hubproc import BIN
from tests.web.browser_steps import (
    DESKTOP,
    T,
    another_browser,
    browser_clinician,
    conv_item,
    evidence,
    expect_online,
    message,
    next_event,
    open_by_search,
    sdk_clinician,
    send_text,
)
from tests.web.conftest import BROWSER_TEST, PageLog, WebHub, take_screenshot

pytestmark = BROWSER_TEST

#: A key nobody trusts, that signs a statement naming the new key.
STRANGER = nacl.signing.SigningKey(bytes(range(0xC0, 0xE0)))
DAY_MS = 86_400_000

#: The clear profile of this browser's vault (IndexedDB "miss", store
#: "meta", key "profile"): the authority key and statements, as hex.
READ_PROFILE = """
async () => {
  const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const db = await new Promise((resolve, reject) => {
    const req = indexedDB.open("miss");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  try {
    const profile = await new Promise((resolve, reject) => {
      const req = db.transaction("meta", "readonly").objectStore("meta").get("profile");
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    return { authority: hex(profile.authority), rotations: (profile.rotations || []).map(hex) };
  } finally {
    db.close();
  }
}
"""


async def stored_authority(page: Page) -> tuple[str, list[str]]:
    found = await page.evaluate(READ_PROFILE)
    return str(found["authority"]), [str(r) for r in found["rotations"]]


def admin(hub: WebHub, *args: str) -> tuple[int, dict[str, Any]]:
    """``miss-admin --json ARGS`` with the hub's settings: (exit status, output)."""
    out = subprocess.run(
        [str(BIN / "miss-admin"), "--json", *args],
        cwd=hub.process.workdir,
        env=hub.process.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode in (0, 1) and out.stdout, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return out.returncode, result


async def restart_watching(page: Page, hub: WebHub, env: dict[str, str]) -> list[tuple[str, str]]:
    """SIGTERM the hub (it drains: close 1001), start it again on the same
    port with ``env`` on top of its settings, and wait until the page is
    online again; the distinct (data-state, text) of the connection pill
    seen meanwhile, every 50 ms."""
    pill = page.get_by_test_id("conn-state")
    seen: list[tuple[str, str]] = []
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            try:
                state = (
                    await pill.get_attribute("data-state", timeout=1_000) or "",
                    await pill.inner_text(timeout=1_000),
                )
            except Exception:  # redrawn between the two reads
                continue
            if not seen or seen[-1] != state:
                seen.append(state)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(poll())
    try:
        await hub.process.stop_async()
        hub.process.env.update(env)
        await asyncio.to_thread(hub.process.start)
        await expect_online(page, timeout=45_000)
    finally:
        done.set()
        await watcher
    return seen


async def test_the_browser_follows_a_rotation_and_refuses_a_statement_of_another_key(
    web_hub: WebHub, browser: Browser, page: Page, page_log: PageLog, tmp_path: Path
) -> None:
    await page.set_viewport_size(DESKTOP)
    # The administrators' rotation, as the operations guide says: the new
    # key file, the statement and the settings of every node.
    new_key_file = tmp_path / "authority-new.key"
    _, rotated = await asyncio.to_thread(
        admin, web_hub, "authority", "rotate", "--new-key-file", str(new_key_file), "--overlap-days", "30"
    )
    new_pk = attestation.decode_authority_key(rotated["public_key"])
    good = rotation.decode_text(rotated["statement"])
    assert rotated["authority_rotations"] == [rotated["statement"]]
    now = int(time.time() * 1000)
    forged = rotation.sign(STRANGER, load_authority(new_key_file), now, now + 30 * DAY_MS)
    new_settings = {
        "MISS_AUTHORITY_KEY": rotated["public_key"],
        "MISS_AUTHORITY_KEY_FILE": str(new_key_file),
    }
    async with evidence("authority-rotation", page_log):
        alice = await browser_clinician(page, web_hub, "Dr Alice Martin", "10000000061")
        bob_profile = await sdk_clinician(web_hub, tmp_path / "bob", "Dr Bernard Petit", "10000000062")
        async with Client.connect(bob_profile) as bob:
            await open_by_search(page, "Petit", bob.user_id)
            await send_text(page, "Avant la rotation")
            got = await next_event(bob, lambda e: isinstance(e, Message))
            assert isinstance(got, Message) and got.body == "Avant la rotation"
        assert await stored_authority(page) == (AUTHORITY_PK.hex(), [])

        # A statement the old key did not sign: refused, the old key kept.
        seen = await restart_watching(
            page,
            web_hub,
            {**new_settings, "MISS_AUTHORITY_ROTATIONS": json.dumps([rotation.encode_text(forged)])},
        )
        print(f"connection pill during the first restart: {seen}")
        assert ("reconnecting", "Reconnexion…") in seen, seen
        assert not [s for s in seen if s[0] in ("offline", "stopped")], seen
        refused = page.get_by_test_id("rotation-refused")
        await expect(refused).to_have_text(
            "Nouvelle clé d'autorité refusée : la déclaration n'est pas signée par la clé connue", timeout=T
        )
        await expect(page.get_by_test_id("authority-rotated")).to_have_count(0)
        assert await stored_authority(page) == (AUTHORITY_PK.hex(), [])

        # The real statement, old key → new key: accepted, no re-enrollment.
        seen = await restart_watching(
            page,
            web_hub,
            {**new_settings, "MISS_AUTHORITY_ROTATIONS": json.dumps(rotated["authority_rotations"])},
        )
        print(f"connection pill during the second restart: {seen}")
        assert not [s for s in seen if s[0] in ("offline", "stopped")], seen
        fingerprint = attestation.authority_fingerprint(new_pk)
        notice = page.get_by_test_id("authority-rotated")
        await expect(notice).to_contain_text(
            f"Clé de l'autorité de vérification renouvelée (empreinte {fingerprint}), "
            "annoncée par l'ancienne clé",
            timeout=T,
        )
        await expect(refused).to_have_count(0)
        assert await stored_authority(page) == (new_pk.hex(), [good.hex()])
        await take_screenshot(page, "authority-rotated")
        # The settings name both keys while the old one still counts.
        await page.get_by_test_id("nav-settings").click()
        dialog = page.get_by_test_id("settings-dialog")
        await expect(dialog).to_contain_text(f"Empreinte de l'autorité : {fingerprint}", timeout=T)
        old_fingerprint = attestation.authority_fingerprint(AUTHORITY_PK)
        await expect(dialog.get_by_test_id("authority-previous")).to_contain_text(
            f"Ancienne clé de l'autorité {old_fingerprint}, encore valable jusqu'au"
        )
        await page.get_by_test_id("dialog-close").click()

        async with Client.connect(bob_profile) as bob:
            # Under the attestations the old key signed: still valid.
            mid = await bob.send(alice.user, "Après la rotation, attestations de l'ancienne clé")
            got_in_page = message(page, "Après la rotation, attestations de l'ancienne clé")
            await expect(got_in_page).to_have_attribute("data-status", "received", timeout=T)
            await expect(got_in_page).to_have_attribute("data-id", mid.hex())
            await send_text(page, "Bien reçu")
            got = await next_event(bob, lambda e: isinstance(e, Message) and e.body == "Bien reçu")
            assert isinstance(got, Message)

            # Both re-attested under the new key (miss-admin authority reissue);
            # the old key can then be retired; past LOOKUP_FRESH_MS, the page
            # looks both up again.
            status, retire = await asyncio.to_thread(
                admin, web_hub, "authority", "retire", "--statement", rotated["statement"]
            )
            assert (status, sorted(retire["users"])) == (1, sorted([alice.user, bob.user_id])), retire
            _, reissued = await asyncio.to_thread(admin, web_hub, "authority", "reissue")
            assert sorted(reissued["reissued"]) == sorted([alice.user, bob.user_id]), reissued
            status, retire = await asyncio.to_thread(
                admin, web_hub, "authority", "retire", "--statement", rotated["statement"]
            )
            assert (status, retire["remaining"]) == (0, 0), retire
            await page.wait_for_timeout(5_500)
            await send_text(page, "Attestations renouvelées")
            got = await next_event(
                bob, lambda e: isinstance(e, Message) and e.body == "Attestations renouvelées"
            )
            assert isinstance(got, Message) and got.from_user == alice.user
        await expect(page.get_by_test_id("self-unverified")).to_have_count(0)
        await page.get_by_test_id("authority-rotated").get_by_role("button", name="Compris").click()
        await expect(notice).to_have_count(0)

        # A colleague given the old key on paper still enrolls: the statement
        # leads from it to the key the hub announces, and the new key is kept.
        async with another_browser(browser) as (page_c, log_c), evidence("authority-rotation-enroll", log_c):
            carol = await browser_clinician(page_c, web_hub, "Dr Claire Roux", "10000000063")
            assert await stored_authority(page_c) == (new_pk.hex(), [good.hex()])
            await open_by_search(page_c, "Martin", alice.user)
            await send_text(page_c, "Bonjour, enrôlée avec l'ancienne clé")
            item = conv_item(page, carol.user)
            await expect(item.get_by_test_id("unread")).to_have_text("1", timeout=T)
            assert await log_c.problems() == []
        assert await page_log.problems() == []
