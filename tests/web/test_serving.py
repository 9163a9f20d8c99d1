"""The hub serves the browser client on its own port (miss_server/web.py,
SPEC §2): the page and its assets with a strict CSP and the other security
headers, nothing outside the bundle, the WebSocket on ``/`` as before; the
``web_client`` setting turns it off; ``miss-admin web-hash`` prints the
bundle's hash; and a WebSocket upgrade from another site's page is refused
unless its origin is allowed. Real HTTP requests and real WebSocket
connections to an in-process hub."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request

from miss_server import admin
from miss_server.app import HubServer
from miss_server.config import load_settings
from miss_server.web import BUNDLE_DIR, CONTENT_SECURITY_POLICY, OriginPolicy, WebBundle, normalise_origin
from protocol.frames import SUBPROTOCOL
from tests.support.inprocess_hub import HubFactory
from tests.support.wire import RawDevice, enrolled, invite

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


def bundle_files() -> dict[str, bytes]:
    """The committed bundle, read here independently of web.py."""
    files = {p.name: p.read_bytes() for p in BUNDLE_DIR.iterdir() if p.is_file()}
    missing = [name for name in TYPES if name not in files]
    if missing:
        pytest.fail(f"the web client's bundle in {BUNDLE_DIR} lacks {', '.join(missing)} (build clients/web)")
    return files


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def _fetch(port: int, path: str, method: str, headers: dict[str, str]) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers)  # the path is sent as is, never normalised
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


async def fetch(hub: HubServer, path: str, method: str = "GET", **headers: str) -> Answer:
    return await asyncio.to_thread(_fetch, hub.port, path, method, headers)


def assert_served(answer: Answer, body: bytes, content_type: str) -> None:
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == content_type
    assert answer.headers["Content-Length"] == str(len(body))
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers.get_all(name) == [value], name
    assert answer.body == body


# --- the page and its assets -----------------------------------------------


@pytest.mark.parametrize("path", ["/", "/index.html", "/?from=bookmark"])
async def test_the_page_is_served_with_the_security_headers(hub: HubServer, path: str) -> None:
    assert_served(await fetch(hub, path), bundle_files()["index.html"], TYPES["index.html"])


async def test_every_file_of_the_bundle_is_served_with_its_type(hub: HubServer) -> None:
    for name, body in bundle_files().items():
        answer = await fetch(hub, f"/{name}")
        assert_served(answer, body, TYPES.get(name, answer.headers["Content-Type"]))


async def test_head_answers_the_headers_without_the_body(hub: HubServer) -> None:
    index = bundle_files()["index.html"]
    for path in ("/", "/app.js"):
        answer = await fetch(hub, path, "HEAD")
        assert answer.status == 200
        assert answer.body == b""
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    answer = await fetch(hub, "/", "HEAD")
    assert answer.headers["Content-Length"] == str(len(index))


async def test_other_methods_are_not_allowed(hub: HubServer) -> None:
    answer = await fetch(hub, "/app.js", "POST")
    assert answer.status == 405
    assert answer.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/app.js.map",
        "/static/app.js",
        "/index.htm",
        "/app.js/",
        "/web.py",
        "/__init__.py",
    ],
)
async def test_unknown_paths_answer_404(hub: HubServer, path: str) -> None:
    answer = await fetch(hub, path)
    assert (answer.status, answer.body) == (404, b"not found\n")
    assert "Content-Security-Policy" not in answer.headers


@pytest.mark.parametrize(
    "path",
    [
        "/../pyproject.toml",
        "/../../pyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/%2E%2E/%2E%2E/pyproject.toml",
        "/..%2fpyproject.toml",
        "/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/static/../pyproject.toml",
        "/static/../app.js",
        "/./app.js",
        "//app.js",
        "/app.js/../../web.py",
        "/..\\web.py",
        "/%2fetc%2fpasswd",
        "//etc/passwd",
    ],
)
async def test_no_path_leaves_the_bundle(hub: HubServer, path: str) -> None:
    answer = await fetch(hub, path)
    assert (answer.status, answer.body) == (404, b"not found\n"), path


async def test_health_and_metrics_are_unchanged(hub: HubServer) -> None:
    health = await fetch(hub, "/healthz")
    assert (health.status, health.body) == (200, b"ok\n")
    assert "Content-Security-Policy" not in health.headers
    metrics = await fetch(hub, "/metrics")
    assert metrics.status == 200
    assert b"miss_origin_refused_total 0.0" in metrics.body


def test_the_bundle_holds_regular_visible_files_only(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>t</title>")
    (tmp_path / "app.js").write_text("")
    (tmp_path / ".hidden").write_text("secret")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "icon.svg").write_text("<svg/>")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("outside")
    (tmp_path / "link.txt").symlink_to(outside)
    bundle = WebBundle.load(tmp_path)
    assert sorted(bundle.assets) == ["app.js", "index.html", "sub/icon.svg"]
    assert bundle.asset_for("/sub/icon.svg") is not None
    assert bundle.assets["sub/icon.svg"].content_type == "image/svg+xml"
    for path in ("/link.txt", "/.hidden", "/sub/../index.html", "/sub", "index.html"):
        assert bundle.asset_for(path) is None, path


# --- the WebSocket on / ----------------------------------------------------


async def test_an_upgrade_on_root_still_reaches_the_hub(hub: HubServer) -> None:
    device = await enrolled(hub, "Dr Alice Martin", "10000000001")
    await device.close()
    welcome = await device.auth()  # authenticates again on /
    assert welcome.device == device.device_id
    await device.close()


async def test_web_client_off_serves_no_file(make_hub: HubFactory) -> None:
    hub = await make_hub(web_client=False)
    root = await fetch(hub, "/")
    assert root.status == 426  # as before: websockets asks for an upgrade
    assert "Content-Security-Policy" not in root.headers
    for path in ("/index.html", "/app.js", "/app.css"):
        assert (await fetch(hub, path)).status == 404, path
    device = await enrolled(hub, "Dr Alice Martin", "10000000001")
    await device.close()


def test_web_client_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISS_WEB_CLIENT", "0")
    monkeypatch.setenv("MISS_ALLOWED_ORIGINS", "https://miss.chu-exemple.fr, http://127.0.0.1:9000/")
    settings = load_settings()
    assert settings.web_client is False
    assert settings.allowed_origins == ("https://miss.chu-exemple.fr", "http://127.0.0.1:9000")


# --- miss-admin web-hash -----------------------------------------------------


def test_web_hash_prints_the_hash_of_index_html(capsys: pytest.CaptureFixture[str]) -> None:
    files = bundle_files()
    assert admin.main(["web-hash"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sha256:" + hashlib.sha256(files["index.html"]).hexdigest()
    for name, body in files.items():
        assert any(line.split()[:2] == [name, f"{len(body):,}"] for line in lines[1:]), name


def test_web_hash_of_another_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(BUNDLE_DIR, copy)
    changed = (copy / "index.html").read_bytes() + b"<!-- changed -->\n"
    (copy / "index.html").write_bytes(changed)
    assert admin.main(["web-hash", "--dir", str(copy), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["hash"] == "sha256:" + hashlib.sha256(changed).hexdigest()
    assert {"name": "index.html", "size": len(changed)} in result["files"]
    assert admin.main(["web-hash", "--dir", str(tmp_path / "nothing")]) == 1
    assert "no index.html" in capsys.readouterr().err


# --- the Origin rule ---------------------------------------------------------


@dataclass
class BrowserLikeDevice(RawDevice):
    """A device whose handshake carries an Origin header, as a browser's does."""

    origin: str = ""

    def connect_options(self) -> dict[str, str]:
        return {"origin": self.origin}


async def enroll_from(hub: HubServer, origin: str, rpps: str) -> None:
    _, code = await invite(hub, "Dr Web", rpps)
    device = BrowserLikeDevice(hub.url, origin=origin)
    welcome = await device.enroll(code)
    assert welcome.device
    await device.close()


async def refused_origin(hub: HubServer, origin: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(hub.url, origin=origin, subprotocols=[SUBPROTOCOL]):  # type: ignore[arg-type, list-item]
            pass
    response = refused.value.response
    assert (response.status_code, bytes(response.body)) == (403, b"origin not allowed\n")


def refused_count(hub: HubServer) -> float:
    value = hub.metrics.registry.get_sample_value("miss_origin_refused_total")
    assert value is not None
    return value


async def test_a_foreign_origin_is_refused_with_403(hub: HubServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "miss.app")
    await refused_origin(hub, "https://evil.example")
    (logged,) = [r for r in caplog.records if "origin not allowed" in r.getMessage()]
    assert vars(logged)["origin"] == "'https://evil.example'"
    assert vars(logged)["host"] == f"'127.0.0.1:{hub.port}'"
    await refused_origin(hub, f"http://127.0.0.1:{hub.port + 1}")  # same host, another port
    await refused_origin(hub, "null")  # a sandboxed page or a file
    assert refused_count(hub) == 3
    metrics = await fetch(hub, "/metrics")
    assert b"miss_origin_refused_total 3.0" in metrics.body


async def test_the_hubs_own_origin_is_upgraded(hub: HubServer) -> None:
    await enroll_from(hub, f"http://127.0.0.1:{hub.port}", "10000000001")
    await enroll_from(hub, f"https://127.0.0.1:{hub.port}", "10000000002")  # any http(s) scheme
    assert refused_count(hub) == 0


async def test_a_configured_origin_is_upgraded(make_hub: HubFactory) -> None:
    hub = await make_hub(allowed_origins=["https://miss.chu-exemple.fr"])
    await enroll_from(hub, "https://miss.chu-exemple.fr", "10000000001")
    await enroll_from(hub, "HTTPS://MISS.CHU-EXEMPLE.FR:443", "10000000002")  # the same origin
    await refused_origin(hub, "https://miss.chu-exemple.fr.evil.example")
    await refused_origin(hub, "http://miss.chu-exemple.fr")  # another scheme is another origin
    assert refused_count(hub) == 2


async def test_a_handshake_without_origin_is_upgraded(make_hub: HubFactory) -> None:
    hub = await make_hub(allowed_origins=["https://miss.chu-exemple.fr"])
    device = await enrolled(hub, "Dr Alice Martin", "10000000001")  # the SDK sends no Origin
    await device.close()
    assert refused_count(hub) == 0


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("https://miss.example.org", "miss.example.org", True),
        ("https://miss.example.org", "miss.example.org:443", True),
        ("http://miss.example.org", "miss.example.org:80", True),
        ("https://miss.example.org", "MISS.example.org", True),
        ("https://miss.example.org:8443", "miss.example.org:8443", True),
        ("https://miss.example.org:8443", "miss.example.org", False),
        ("https://miss.example.org", "miss.example.org:8443", False),
        ("http://[::1]:8765", "[::1]:8765", True),
        ("https://evil.example", "miss.example.org", False),
        ("https://miss.example.org", "evil@miss.example.org", False),
        ("https://miss.example.org/", "miss.example.org", True),
        ("null", "miss.example.org", False),
        ("file://", "miss.example.org", False),
    ],
)
def test_own_origin_is_matched_on_host(origin: str, host: str, allowed: bool) -> None:
    request = Request("/", Headers([("Host", host), ("Origin", origin)]))
    assert OriginPolicy().allows(request) is allowed


def test_allowed_origins_must_be_origins() -> None:
    assert normalise_origin("https://Miss.Example.org:443/") == "https://miss.example.org"
    for bad in ("miss.example.org", "ftp://miss.example.org", "https://miss.example.org/app", "null"):
        with pytest.raises(ValueError):
            normalise_origin(bad)
