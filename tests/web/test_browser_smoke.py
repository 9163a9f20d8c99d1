"""The browser client in a real browser (Debian's Chromium through
Playwright) against a real ``miss-server``: the page loads under the hub's
Content-Security-Policy without a violation or an uncaught error, its
WebSocket to the hub is allowed by ``connect-src 'self'``, and a page of
another origin cannot open a WebSocket to a hub that does not list that
origin in ``allowed_origins``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Page

from miss_server.web import CONTENT_SECURITY_POLICY
from tests.web.conftest import BROWSER_TEST, PageLog, Screenshot, Site, WebHub

pytestmark = BROWSER_TEST

#: Open a WebSocket (subprotocol miss.v1) and report whether it opened,
#: or how it closed without opening.
OPEN_WEBSOCKET = """
async (url) => await new Promise((resolve) => {
  let ws;
  try {
    ws = new WebSocket(url, ["miss.v1"]);
  } catch (e) {
    resolve({state: "thrown", error: String(e)});
    return;
  }
  ws.binaryType = "arraybuffer";
  let opened = false;
  ws.onopen = () => { opened = true; resolve({state: "open", protocol: ws.protocol}); ws.close(); };
  ws.onclose = (e) => { if (!opened) resolve({state: "closed", code: e.code}); };
  setTimeout(() => resolve({state: "timeout"}), 10000);
})
"""


async def test_the_page_loads_under_its_csp(
    web_hub: WebHub, page: Page, page_log: PageLog, screenshot: Screenshot
) -> None:
    response = await page.goto(web_hub.http_url, wait_until="load")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    await page.wait_for_load_state("networkidle")
    assert (await page.title()).strip(), "the page has no title"
    assert (await screenshot(page, "loaded")).is_file()
    problems = await page_log.problems()
    assert problems == [], "\n".join(problems)
    # Every file the page names is served (the browser asks for /favicon.ico
    # by itself, whatever the page says: a bundle without one gets a 404).
    failed = [
        text
        for text in page_log.console_errors()
        if "Failed to load resource" in text and not text.endswith("/favicon.ico)")
    ]
    assert failed == [], "\n".join(failed)


async def test_connect_src_self_allows_the_hubs_websocket(
    web_hub: WebHub, page: Page, page_log: PageLog
) -> None:
    """CSP3: 'self' in connect-src matches ws:// (wss://) to the page's own
    host and port; the hub's page can reach the hub."""
    await page.goto(web_hub.http_url, wait_until="load")
    result: dict[str, Any] = await page.evaluate(OPEN_WEBSOCKET, web_hub.ws_url)
    assert result == {"state": "open", "protocol": "miss.v1"}
    problems = await page_log.problems()
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("listed", [False, True], ids=["not-listed", "listed"])
async def test_another_origins_page_needs_allowed_origins(
    start_web_hub: Callable[..., WebHub], foreign_site: Site, page: Page, listed: bool
) -> None:
    env = {"MISS_ALLOWED_ORIGINS": foreign_site.origin} if listed else {}
    hub = await asyncio.to_thread(start_web_hub, **env)
    response = await page.goto(foreign_site.url, wait_until="load")
    assert response is not None and response.status == 200  # the same bundle, another origin
    result: dict[str, Any] = await page.evaluate(OPEN_WEBSOCKET, hub.ws_url)
    refused = await asyncio.to_thread(hub.metric, "miss_origin_refused_total")
    # "timeout" would mean the browser itself blocked the connection (a CSP
    # <meta> in index.html, say), not the hub: neither event fires then.
    if listed:
        assert result == {"state": "open", "protocol": "miss.v1"}, result
        assert refused == 0
    else:
        assert result["state"] == "closed", result  # the handshake got 403: no open event
        assert refused == 1
