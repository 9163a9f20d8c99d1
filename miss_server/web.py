"""The browser client's static bundle, served on the hub's own port, and the
Origin rule of WebSocket upgrades (SPEC §2).

The bundle (``miss_server/static/``: ``index.html``, ``app.js``, ``app.css``,
written by ``clients/web``'s build and committed) is read once, at start,
into memory: only the regular files found there then are served, by exact
name, so no request path ever reaches the file system (no traversal, no
file appearing later). ``index.html`` pins the other files with SRI
``integrity`` attributes, so the hash of ``index.html`` alone identifies the
whole bundle (:func:`bundle_hash`, printed by ``miss-admin web-hash``).

A browser sends ``Origin`` with every WebSocket handshake; a page of another
site must not drive a clinician's session, so the hub accepts an upgrade
that carries one only from its own origin or a configured one
(:class:`OriginPolicy`). Clients that send no ``Origin`` (the SDK, bots)
are not browsers, and nothing changes for them.
"""

from __future__ import annotations

import email.utils
import hashlib
import mimetypes
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

__all__ = [
    "BUNDLE_DIR",
    "CONTENT_SECURITY_POLICY",
    "Asset",
    "OriginPolicy",
    "WebBundle",
    "bundle_hash",
    "is_upgrade",
    "normalise_origin",
]

#: Where the committed bundle lives (package data of ``miss_server``).
BUNDLE_DIR = Path(__file__).resolve().parent / "static"
INDEX = "index.html"

#: What a served page may do: its own scripts (and WebAssembly), styles,
#: images and connections (CSP3's 'self' covers ws:/wss: to the same host
#: and port, and fetching /blobs/ from its hub), images it made itself
#: (blob: URLs of attachments it decrypted, SPEC §16), nothing inline, no
#: framing, no forms, no plugins.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-cache"),
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Methods a static file answers; others get 405.
METHODS = ("GET", "HEAD")


def bundle_hash(index_html: bytes) -> str:
    """The bundle hash: ``sha256:`` and the lowercase hex SHA-256 of the
    bytes of ``index.html``, which pins every other file by SRI."""
    return "sha256:" + hashlib.sha256(index_html).hexdigest()


def content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


@dataclass(frozen=True)
class Asset:
    """One file of the bundle, in memory."""

    name: str  # relative to the bundle directory, with "/" separators
    body: bytes
    content_type: str


class WebBundle:
    """The files of a bundle directory, read once. :meth:`load` on a
    directory without ``index.html`` raises FileNotFoundError."""

    def __init__(self, directory: Path, assets: dict[str, Asset]) -> None:
        self.directory = directory
        self.assets = assets

    @classmethod
    def load(cls, directory: Path = BUNDLE_DIR) -> WebBundle:
        directory = Path(directory)
        if not (directory / INDEX).is_file():
            raise FileNotFoundError(f"no {INDEX} in {directory}: not a web client bundle")
        assets: dict[str, Asset] = {}
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            # Regular files only (no symbolic link can lead out of the
            # directory), and nothing hidden (.gitkeep, editor files).
            if path.is_symlink() or not path.is_file() or any(p.startswith(".") for p in relative.parts):
                continue
            name = relative.as_posix()
            assets[name] = Asset(name, path.read_bytes(), content_type(name))
        return cls(directory, assets)

    @property
    def hash(self) -> str:
        return bundle_hash(self.assets[INDEX].body)

    def asset_for(self, path: str) -> Asset | None:
        """The file a request path names, by exact name (``/`` is
        ``index.html``); None for anything else, ``..`` and ``%2e`` included."""
        path = path.split("?", 1)[0]
        if path == "/":
            return self.assets[INDEX]
        if not path.startswith("/"):
            return None
        return self.assets.get(path[1:])

    def response(self, request: Request, asset: Asset) -> Response:
        """The answer to a GET or HEAD of ``asset`` (405 for other methods)."""
        method = request.method
        if method not in METHODS:
            headers = Headers([("Allow", ", ".join(METHODS)), *_close_headers(0)])
            return Response(HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed", headers, b"")
        headers = Headers(
            [
                ("Content-Type", asset.content_type),
                *SECURITY_HEADERS,
                *_close_headers(len(asset.body)),
            ]
        )
        return Response(HTTPStatus.OK, "OK", headers, b"" if method == "HEAD" else asset.body)


def _close_headers(length: int) -> list[tuple[str, str]]:
    # websockets closes the connection after any answer other than 101.
    return [
        ("Content-Length", str(length)),
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
    ]


def is_upgrade(request: Request) -> bool:
    """Whether the request asks for a WebSocket (``Upgrade: websocket``)."""
    return any(
        token.strip().lower() == "websocket"
        for value in request.headers.get_all("Upgrade")
        for token in value.split(",")
    )


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]``, lowercase, without a default port or a
    trailing slash; ValueError for anything else (a path, another scheme)."""
    parts = urlsplit(origin.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{origin!r} is not an origin like https://miss.example.org")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{origin!r} is not an origin: scheme://host[:port] and nothing else")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{origin!r} has an invalid port") from None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class OriginPolicy:
    """Which ``Origin`` a WebSocket upgrade may carry: the hub's own (the
    origin's host[:port] is the request's ``Host``, over http or https; a
    reverse proxy forwards Host) or one of ``allowed``."""

    def __init__(self, allowed: list[str] | tuple[str, ...] = ()) -> None:
        self.allowed = frozenset(normalise_origin(o) for o in allowed)

    def allows(self, request: Request) -> bool:
        origins = request.headers.get_all("Origin")
        if not origins:
            return True  # not a browser
        if len(origins) > 1:
            return False
        try:
            normal = normalise_origin(origins[0])
        except ValueError:
            return False  # "null" (a sandboxed page, a file), garbage
        if normal in self.allowed:
            return True
        hosts = request.headers.get_all("Host")
        if len(hosts) != 1:
            return False
        host = hosts[0]
        scheme = normal.split("://", 1)[0]
        try:  # the origin's scheme with the Host: a default port matches its absence
            return normal == normalise_origin(f"{scheme}://{host}")
        except ValueError:
            return False
