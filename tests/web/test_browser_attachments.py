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

import asyncio
import contextlib
import hashlib
import io
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from miss_client import Client, Message
from PIL import Image, ImageDraw
from playwright.async_api import Page, WebSocketRoute, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

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


class Wire:
    """The page's WebSocket, routed by Playwright: the frames it sends, and
    a cut of the connection after ``cut_after_puts`` ``blob_put`` frames
    (further connections refused while ``blocked``)."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.cut_after_puts: int | None = None
        self.blocked = False
        self.cut = asyncio.Event()
        self.tasks: set[asyncio.Future[None]] = set()

    def later(self, work: Any) -> None:
        """Run a close coroutine from a synchronous callback, keeping its task."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def sent(self, t: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("t") == t]

    def route(self, ws: WebSocketRoute) -> None:
        if self.blocked:
            self.later(ws.close())
            return
        server = ws.connect_to_server()
        dead = False

        def to_hub(data: str | bytes) -> None:
            nonlocal dead
            if dead:
                return
            frame = msgpack.unpackb(data, raw=False, strict_map_key=False) if isinstance(data, bytes) else {}
            frame = frame if isinstance(frame, dict) else {}
            self.frames.append(frame)
            server.send(data)
            if self.cut_after_puts is not None and frame.get("t") == "blob_put":
                self.cut_after_puts -= 1
                if self.cut_after_puts == 0:
                    self.cut_after_puts = None
                    dead = self.blocked = True
                    self.later(server.close())
                    self.later(ws.close())
                    self.cut.set()

        def to_page(data: str | bytes) -> None:
            if not dead:
                ws.send(data)

        ws.on_message(to_hub)
        server.on_message(to_page)


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
    wire = Wire()
    await page.route_web_socket(lambda url: url.startswith(("ws://", "wss://")), wire.route)
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
            assert await picker.get_attribute("multiple") is not None
            assert await picker.get_attribute("accept") == (
                "image/jpeg,image/png,image/heic,image/heif,application/pdf"
            )
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
            assert wire.sent("blob_begin") == [], "a refused file started an upload"

            await picker.set_input_files(str(web_photos[5]))
            await expect(page.locator('[data-testid="att-pending"][data-ready="true"]')).to_have_count(
                6, timeout=T
            )
            # The connection drops during the upload (after the 5th piece):
            # the progress shows where it stopped; once back, the upload
            # resumes from what the hub holds, never from 0.
            wire.cut_after_puts = 5
            await page.get_by_test_id("composer-input").fill("ECG de contrôle")
            await page.get_by_test_id("composer-send").click()
            mine = (
                page.get_by_test_id("messages").get_by_test_id("message").filter(has_text="ECG de contrôle")
            )
            await asyncio.wait_for(wire.cut.wait(), 10)
            progress = mine.get_by_test_id("att-progress")
            await expect(progress.first).to_contain_text("Envoi… 100 %", timeout=T)
            await expect(progress.nth(1)).to_have_text(re.compile(r"^ Envoi… \d{1,2} %$"))
            await expect(mine).to_have_attribute("data-status", "pending")
            await page.screenshot(path=str(DOCS_IMG / "attachments-upload-interrupted.png"))
            cut_blob = wire.sent("blob_put")[-1]["blob"]
            puts_before = len(wire.sent("blob_put"))
            wire.blocked = False
            # "Réessayer", unless the client's own backoff reconnected first
            # (the button is then gone): either way the upload must resume.
            with contextlib.suppress(PlaywrightTimeoutError):
                await page.get_by_test_id("conn-retry").click(timeout=2_000)
            await expect(mine).to_have_attribute("data-status", "accepted", timeout=T)
            await expect(mine.get_by_test_id("att-thumb")).to_have_count(6, timeout=T)
            resumed = [f for f in wire.sent("blob_begin") if f.get("blob") == cut_blob]
            assert resumed, "no blob_begin {blob} after the reconnection"
            again = [f for f in wire.sent("blob_put")[puts_before:] if f["blob"] == cut_blob]
            assert again and min(f["off"] for f in again) > 0, "the upload started over"

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
