"""Attachments in the browser client (SPEC §16), against a real
``miss-server`` subprocess and the Python SDK on the other end.

What a clinician notices: six photos sent from the SDK show as six
thumbnails in the browser, open in the viewer and download byte for byte;
six photos picked in the browser reach the SDK byte for byte; a seventh
file and a file over the hub's limit are refused in French at once, before
any byte is uploaded (no ``blob_begin`` leaves the page). The screenshots
of docs/WEB_CLIENT.md are taken here (docs/img/attachments-*.png).
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable
from pathlib import Path

from miss_client import Client, Message
from PIL import Image, ImageDraw
from playwright.async_api import Page, WebSocket, expect

from tests.web.browser_steps import (
    DESKTOP,
    PHONE,
    T,
    browser_clinician,
    conv_item,
    evidence,
    next_event,
    sdk_clinician,
)
from tests.web.conftest import BROWSER_TEST, ROOT, PageLog, WebHub

pytestmark = BROWSER_TEST

DOCS_IMG = ROOT / "docs" / "img"
#: The hub's largest attachment in this test (plaintext bytes): small, so
#: that an "oversized" file is quick to make.
LIMIT = 1_500_000


def photo(path: Path, seed: int, size: tuple[int, int], fmt: str) -> Path:
    """A picture that looks like something (gradient, shapes) and does not
    compress to nothing: noise, so files span several 64 KiB chunks."""
    rng = random.Random(seed)
    w, h = size
    img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    tint = Image.new("RGB", (w, h), (rng.randrange(60, 255), rng.randrange(60, 200), rng.randrange(60, 255)))
    img = Image.blend(img, tint, 0.6)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(10, max(11, w // 5))
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color, outline=(0, 0, 0))
    noise = Image.effect_noise((w, h), 40).convert("RGB")
    img = Image.blend(img, noise, 0.15)
    out = io.BytesIO()
    img.save(out, format=fmt, quality=92) if fmt == "JPEG" else img.save(out, format=fmt)
    path.write_bytes(out.getvalue())
    return path


def pad_file(source: Path, target: Path, extra: int) -> None:
    """``target``: ``source``'s bytes and ``extra`` zero bytes (still a JPEG to sniff)."""
    target.write_bytes(source.read_bytes() + bytes(extra))


def sha256(path: Path | str) -> str:
    """The hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def test_six_images_round_trip_between_the_sdk_and_the_browser(
    start_web_hub: Callable[..., WebHub],
    page: Page,
    page_log: PageLog,
    tmp_path: Path,
) -> None:
    hub = start_web_hub(MISS_MAX_ATTACHMENT_BYTES=str(LIMIT))
    await page.set_viewport_size(DESKTOP)
    sent_frames: list[bytes] = []

    def on_ws(ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: sent_frames.append(payload if isinstance(payload, bytes) else b""))

    page.on("websocket", on_ws)
    files = tmp_path / "files"
    files.mkdir()
    sdk_photos = [
        photo(
            files / f"plaie-{i}.{'png' if i == 2 else 'jpg'}",
            i,
            (640 + 97 * i, 480 + 41 * i),
            "PNG" if i == 2 else "JPEG",
        )
        for i in range(6)
    ]
    async with evidence("attachments", page_log):
        alice = await browser_clinician(page, hub, "Dr Alice Martin", "10000000071")
        bob_profile = await sdk_clinician(hub, tmp_path / "bob", "Dr Bernard Petit", "10000000072")
        async with Client.connect(bob_profile) as bob:
            # SDK -> browser: six photos, shown as six thumbnails.
            await bob.send(alice.user, "Six photos de la plaie, J+3", attachments=sdk_photos)
            item = conv_item(page, bob_profile.user_id)
            await expect(item).to_have_count(1, timeout=T)
            await item.click()
            shown = (
                page.get_by_test_id("messages")
                .get_by_test_id("message")
                .filter(has_text="Six photos de la plaie")
            )
            await expect(shown.get_by_test_id("att-thumb")).to_have_count(6, timeout=T)
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(DOCS_IMG / "attachments-conversation.png"))

            # Each downloads byte for byte; the viewer shows the first one.
            for i, path in enumerate(sdk_photos):
                async with page.expect_download(timeout=T) as info:
                    await shown.get_by_test_id("att-download").nth(i).click()
                download = await info.value
                assert download.suggested_filename == path.name
                saved = await download.path()
                assert sha256(saved) == sha256(path), path.name
            await shown.get_by_test_id("att-open").first.click()
            image = page.get_by_test_id("viewer-image")
            await expect(image).to_have_attribute("data-sha256", sha256(sdk_photos[0]), timeout=T)
            assert await image.evaluate("img => img.complete && img.naturalWidth") == 640
            await page.screenshot(path=str(DOCS_IMG / "attachments-viewer.png"))
            await page.get_by_test_id("viewer-close").click()

            # Browser -> SDK: six picked; a seventh and an oversized one refused at once.
            web_photos = [
                photo(files / f"ecg-{i}.jpg", 100 + i, (800, 600 - 30 * i), "JPEG") for i in range(6)
            ]
            seventh = photo(files / "ecg-7.jpg", 107, (300, 200), "JPEG")
            big = files / "scanner.jpg"
            pad_file(photo(files / "base.jpg", 200, (400, 300), "JPEG"), big, LIMIT)
            picker = page.get_by_test_id("att-input")
            tray = page.get_by_test_id("att-pending")
            error = page.get_by_test_id("att-error")
            await picker.set_input_files([str(p) for p in web_photos])
            await expect(tray).to_have_count(6, timeout=T)
            await expect(page.locator('[data-testid="att-pending"][data-ready="true"]')).to_have_count(
                6, timeout=T
            )
            await picker.set_input_files(str(seventh))
            await expect(error).to_have_text("Pas plus de 6 pièces jointes par message.")
            await expect(tray).to_have_count(6)
            await tray.last.get_by_test_id("att-remove").click()
            await expect(error).to_be_hidden()
            await picker.set_input_files(str(big))
            await expect(error).to_contain_text(
                "« scanner.jpg » dépasse la taille maximale d'une pièce jointe"
            )
            await expect(tray).to_have_count(5)
            await page.screenshot(path=str(DOCS_IMG / "attachments-refused.png"))
            assert not any(b"blob_begin" in f for f in sent_frames), "a refused file started an upload"

            await picker.set_input_files(str(web_photos[5]))
            await expect(page.locator('[data-testid="att-pending"][data-ready="true"]')).to_have_count(
                6, timeout=T
            )
            await page.get_by_test_id("composer-input").fill("ECG de contrôle")
            await page.get_by_test_id("composer-send").click()
            mine = (
                page.get_by_test_id("messages").get_by_test_id("message").filter(has_text="ECG de contrôle")
            )
            await expect(mine).to_have_attribute("data-status", "accepted", timeout=T)
            await expect(mine.get_by_test_id("att-thumb")).to_have_count(6, timeout=T)

            got = await next_event(bob, lambda e: isinstance(e, Message) and e.body == "ECG de contrôle")
            assert isinstance(got, Message)
            assert [a.name for a in got.attachments] == [p.name for p in web_photos]
            assert all(a.thumb and len(a.thumb) <= 4096 and a.w == 800 for a in got.attachments)
            out = tmp_path / "saved"
            out.mkdir()
            paths = await bob.save(got, out)
            assert [sha256(p) for p in paths] == [sha256(p) for p in web_photos]

            # A phone: the camera button, the thumbnails in the conversation.
            await page.set_viewport_size(PHONE)
            await expect(page.get_by_test_id("att-camera")).to_be_visible()
            camera = page.get_by_test_id("att-camera-input")
            assert await camera.get_attribute("capture") == "environment"
            assert await camera.get_attribute("accept") == "image/*"
            await mine.scroll_into_view_if_needed()
            await page.screenshot(path=str(DOCS_IMG / "attachments-phone.png"))
        assert await page_log.problems() == []
