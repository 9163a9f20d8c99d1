"""Fixtures of the web tests: in-process hubs (``make_hub``), a real
``miss-server`` subprocess serving the browser client (``start_web_hub``,
``web_hub``), another origin serving the same bundle (``foreign_site``), and
Debian's Chromium driven by Playwright (``browser``, ``context``, ``page``,
``screenshot``).

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``
(``.ci/run`` installs Debian's package). Without it the browser tests fail,
they never skip.

Playwright's async API, on pytest-asyncio's session loop: the sync API
would keep its own event loop marked running in this thread for as long as
the session-scoped browser lives, and every async test after it would fail
("Runner.run() cannot be called from a running event loop"). A browser test
therefore runs on the session loop: ``pytestmark =
pytest.mark.asyncio(loop_scope="session")`` (see :data:`BROWSER_TEST`).
"""

from __future__ import annotations

import http.client
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, async_playwright

from bench.web_startup import CHROMIUM as CHROMIUM_PATH
from bench.web_startup import CHROMIUM_ARGS
from miss_server.web import BUNDLE_DIR
from tests.server.conftest import make_hub  # noqa: F401 - a fixture: in-process hubs, as the server tests make them
from tests.support.hubproc import HubProcess

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(CHROMIUM_PATH)
#: The marks of a browser test module: ``pytestmark = BROWSER_TEST``.
BROWSER_TEST = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


# --- a real miss-server serving the browser client ------------------------


@dataclass
class WebHub:
    """A ``miss-server`` subprocess (support/hubproc.py: SQLite in its
    directory, the tests' verification authority) and its http:// URL."""

    process: HubProcess

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def metric(self, name: str) -> float:
        """The value of an unlabelled metric, from ``GET /metrics`` (loopback)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        assert response.status == 200, text
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert m, f"{name} not in /metrics"
        return float(m.group(1))


@pytest.fixture
def start_web_hub(tmp_path: Path) -> Iterator[Callable[..., WebHub]]:
    """``start_web_hub(MISS_ALLOWED_ORIGINS=...)``: a ``miss-server``
    subprocess on a free port with these extra environment variables,
    stopped after the test."""
    started: list[HubProcess] = []

    def start(**env: str) -> WebHub:
        process = HubProcess(tmp_path / f"hub{len(started)}", env=env)
        started.append(process)
        process.start()
        return WebHub(process)

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def web_hub(start_web_hub: Callable[..., WebHub]) -> WebHub:
    """A ``miss-server`` subprocess with the default settings (web client on)."""
    return start_web_hub()


@dataclass
class Site:
    """A plain static web server (another origin) serving a directory."""

    server: ThreadingHTTPServer

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return self.origin + "/"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def foreign_site() -> Iterator[Site]:
    """The hub's bundle (miss_server/static/) served by Python's http.server
    on another port: another origin than the hub's."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(BUNDLE_DIR)))
    thread = threading.Thread(target=server.serve_forever, name="foreign-site", daemon=True)
    thread.start()
    try:
        yield Site(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- the browser ------------------------------------------------------------


def require_chromium() -> Path:
    """Debian's Chromium; the test fails (never skips) without it."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package "
            "(apt-get install -y chromium; .ci/run installs it)"
        )
    return CHROMIUM


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as p:
        yield p


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(playwright: Playwright, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, on a fresh profile directory; tests get
    a context of their own (``context``)."""
    persistent = await playwright.chromium.launch_persistent_context(
        tmp_path_factory.mktemp("chromium-profile"),
        executable_path=str(require_chromium()),
        headless=True,
        args=CHROMIUM_ARGS,
    )
    assert persistent.browser is not None
    try:
        yield persistent.browser
    finally:
        await persistent.close()


@dataclass
class PageLog:
    """What a page reported: console messages, uncaught errors and CSP
    violations (``securitypolicyviolation`` events, recorded by an init script)."""

    page: Page
    console: list[ConsoleMessage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def violations(self) -> list[dict[str, str]]:
        found: list[dict[str, str]] = await self.page.evaluate("() => window.__missCspViolations || []")
        return found

    def csp_console(self) -> list[str]:
        return [m.text for m in self.console if "Content Security Policy" in m.text]

    def console_errors(self) -> list[str]:
        return [f"{m.text} ({m.location.get('url', '')})" for m in self.console if m.type == "error"]

    async def problems(self) -> list[str]:
        """CSP violations (events and console reports) and uncaught errors."""
        return (
            [f"CSP violation: {v}" for v in await self.violations()]
            + [f"console: {text}" for text in self.csp_console()]
            + [f"uncaught: {error}" for error in self.errors]
        )


RECORD_CSP_VIOLATIONS = """
window.__missCspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__missCspViolations.push({
    directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile, line: String(e.lineNumber),
  });
});
"""


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser context (no cookies, no storage) for one test."""
    ctx = await browser.new_context()
    await ctx.add_init_script(RECORD_CSP_VIOLATIONS)
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(context: BrowserContext) -> Page:
    return await context.new_page()


@pytest_asyncio.fixture(loop_scope="session")
async def page_log(page: Page) -> PageLog:
    """The console messages and uncaught errors of ``page`` from now on.
    Async, on the session loop: ``page.on`` schedules on the running loop,
    and a synchronous fixture has none once another test has reset the
    thread's current loop."""
    log = PageLog(page)
    page.on("console", lambda message: log.console.append(message))
    page.on("pageerror", lambda exc: log.errors.append(str(exc)))
    return log


def screenshot_dir() -> Path:
    """$MISS_SCREENSHOTS, or artifacts/screenshots/ at the repository's root."""
    return Path(os.environ.get("MISS_SCREENSHOTS") or ROOT / "artifacts" / "screenshots")


async def take_screenshot(page: Page, name: str) -> Path:
    """Save ``page`` as ``<screenshot_dir>/<name>.png`` (full page); its path."""
    directory = screenshot_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


Screenshot = Callable[[Page, str], Awaitable[Path]]


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Screenshot:
    """``await screenshot(page, "step")``: saves ``<test name>-step.png`` in
    :func:`screenshot_dir`; returns the file's path."""
    return lambda page, step: take_screenshot(page, f"{request.node.name}-{step}")
