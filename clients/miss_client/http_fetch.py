"""Downloading a blob from the hub's port over HTTP GET (SPEC §16).

Theory of operation
-------------------
``blob_link_ok`` gives a path, ``/blobs/<token>``; :func:`blob_url` joins
it to the hub's HTTP address, derived from the profile's WebSocket URL
(``wss://`` → ``https://``, ``ws://`` → ``http://``; plain ``http`` only
to this machine's loopback, as ``ws://``). :func:`fetch_blob` then asks
for ``Range: bytes=<have>-`` until it has ``size`` bytes: the hub answers
at most ``HTTP_PART_MAX`` bytes per response (206 with ``Content-Range``),
so neither side holds more than a part; each part is handed to ``sink``
(a :class:`protocol.attachments.Decryptor`'s ``feed``) and dropped.

Each request runs in a worker thread with :mod:`urllib.request`. TLS is
verified as the WebSocket connection verifies it (the websockets library
uses :func:`ssl.create_default_context` for ``wss://``: the system's
certificate store, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``; the host name
checked). Redirects are not followed: a capability URL goes to the hub
only. A 503 (the node's downloads are at ``max_blob_downloads``, or its
store is unreachable) or a 429 (this address's ``rate_download`` is
spent) is retried after its ``Retry-After``, a few times.

Errors: :class:`BlobGone` (404: unknown, expired or revoked token: one
answer), :class:`BlobFetchFailed` (anything else: refused connection, TLS,
another status, an answer that does not match the range asked). Neither
message contains the token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

from protocol.attachments import HTTP_PART_MAX

from .errors import ClientError

__all__ = ["BUSY_RETRIES", "BlobFetchFailed", "BlobGone", "blob_url", "fetch_blob", "http_base"]

#: How many times a 503 is retried (after its Retry-After, capped).
BUSY_RETRIES = 4
#: Longest wait for one retry, in seconds.
BUSY_WAIT_MAX = 5.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class BlobFetchFailed(ClientError):
    """The download failed for another reason than the blob being gone."""


class BlobGone(BlobFetchFailed):
    """HTTP 404: the link is unknown, expired or revoked (or the blob gone)."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_base(ws_url: str) -> str:
    """The hub's HTTP(S) origin for its WebSocket URL ``ws_url``; raises
    BlobFetchFailed for a scheme that is not ws/wss, or ``ws://`` to a host
    that is not this machine (no TLS: SPEC §2)."""
    parts = urlsplit(ws_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme)
    if scheme is None:
        raise BlobFetchFailed(f"adresse du hub inattendue : {parts.scheme}://")
    if scheme == "http" and not _loopback(parts.hostname or ""):
        raise BlobFetchFailed("refus de télécharger sans TLS (ws://) depuis un hub qui n'est pas local")
    return urlunsplit((scheme, parts.netloc, parts.path or "/", "", ""))


def blob_url(ws_url: str, path: str) -> str:
    """The absolute URL of ``path`` (``/blobs/<token>``) on the hub at
    ``ws_url``; raises BlobFetchFailed if ``path`` names another host."""
    base = http_base(ws_url)
    url = urljoin(base, path)
    if urlsplit(url).netloc != urlsplit(base).netloc or urlsplit(url).scheme != urlsplit(base).scheme:
        raise BlobFetchFailed("le hub a donné un lien vers un autre serveur")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _opener(url: str) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if urlsplit(url).scheme == "https":
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context()))
    return urllib.request.build_opener(*handlers)


class _Busy(Exception):
    def __init__(self, wait: float) -> None:
        self.wait = wait


def _get_part(
    opener: urllib.request.OpenerDirector, url: str, start: int, total: int, timeout: float
) -> bytes:
    """One GET from ``start``: the bytes it brought (1 to HTTP_PART_MAX)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"})
    try:
        with opener.open(request, timeout=timeout) as resp:
            status = resp.status
            data: bytes = resp.read(HTTP_PART_MAX + 1)
            content_range = resp.headers.get("Content-Range", "")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise BlobGone("lien de téléchargement inconnu ou expiré (HTTP 404)") from None
        if exc.code in (429, 503):  # busy node, or this address's download budget spent
            try:
                wait = float(exc.headers.get("Retry-After", "1"))
            except ValueError:
                wait = 1.0
            raise _Busy(min(max(wait, 0.1), BUSY_WAIT_MAX)) from None
        raise BlobFetchFailed(f"le hub a refusé le téléchargement (HTTP {exc.code})") from None
    except urllib.error.URLError as exc:
        raise BlobFetchFailed(f"téléchargement impossible : {exc.reason}") from None
    except (OSError, TimeoutError) as exc:
        raise BlobFetchFailed(f"téléchargement interrompu : {exc}") from None
    if len(data) > HTTP_PART_MAX or not data:
        raise BlobFetchFailed("le hub a répondu par une partie de taille invalide")
    if status == 206:
        m = _CONTENT_RANGE.fullmatch(content_range.strip())
        if m is None or int(m[1]) != start or int(m[3]) != total or int(m[2]) - int(m[1]) + 1 != len(data):
            raise BlobFetchFailed("le hub a répondu par une autre plage que celle demandée")
    elif status != 200 or start != 0 or len(data) != total:
        raise BlobFetchFailed(f"réponse inattendue du hub (HTTP {status})")
    return data


async def fetch_blob(url: str, total: int, sink: Callable[[bytes], object], *, timeout: float = 30.0) -> None:
    """GET the ``total`` bytes at ``url`` by ranges, handing each part to
    ``sink`` in order (it may raise to stop). Raises BlobGone,
    BlobFetchFailed, or what ``sink`` raised."""
    opener = _opener(url)
    have = 0
    busy = 0
    while have < total:
        try:
            data = await asyncio.to_thread(_get_part, opener, url, have, total, timeout)
        except _Busy as exc:
            busy += 1
            if busy > BUSY_RETRIES:
                busy_text = "le hub est trop occupé pour ce téléchargement (HTTP 503 ou 429)"
                raise BlobFetchFailed(busy_text) from None
            await asyncio.sleep(exc.wait)
            continue
        if have + len(data) > total:
            raise BlobFetchFailed("le hub a envoyé plus d'octets que la pièce jointe n'en a")
        sink(data)
        have += len(data)
