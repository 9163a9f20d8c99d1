"""The plain HTTP file transfer: the baseline of the ``attachments`` scenario,
and the small HTTP/1.1 client the scenario downloads blobs with.

The server is the least a file transfer over HTTP can do on ``asyncio``
streams, nothing more: ``PUT /files/NAME`` writes the request's body to a
file (``Content-Length`` bytes, read and written in 64 KiB slices, then
``fsync``: durable like an upload the hub completes), and ``GET /files/NAME``
with ``Range: bytes=a-b`` answers 206 with at most ``HTTP_PART_MAX`` bytes
read from the file (200 with the whole file when it fits and no Range is
asked). Every response closes its connection, as the hub's HTTP answers do
(``websockets`` serves one non-WebSocket request per connection). No
authentication, no store, no crypto: what moving the same bytes costs a
process at the least, so that the hub's CPU per MB can be set against it.

Run as ``python -m bench.http_baseline --dir DIR [--port 0]``; it prints
``baseline serving http://HOST:PORT/`` once it listens.

The client functions (:func:`get_range`, :func:`download`, :func:`put`)
speak HTTP/1.1 on a fresh connection per request, with no library: the load
generator stays cheap and the same for the hub and the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from protocol.attachments import HTTP_PART_MAX

from .harness import ServerProcess

__all__ = ["HttpError", "download", "get_range", "main", "put", "start_baseline"]

#: What the server reads from a request's body and writes at a time.
SLICE = 65536
_NAME = re.compile(r"^/files/([A-Za-z0-9_.-]{1,100})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_URL_LINE = re.compile(r"serving (http://\S+)")


class HttpError(Exception):
    """An HTTP answer other than the one expected: its status and Retry-After (s)."""

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


# --- the server ---------------------------------------------------------------------------


async def _respond(
    writer: asyncio.StreamWriter, status: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> None:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()


async def _put(reader: asyncio.StreamReader, path: Path, length: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = length
        while left:
            data = await reader.read(min(SLICE, left))
            if not data:
                raise ConnectionError("body cut short")
            os.write(fd, data)
            left -= len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_part(path: Path, range_header: str | None) -> tuple[str, dict[str, str], bytes]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "404 Not Found", {}, b""
    if range_header is None:
        if size > HTTP_PART_MAX:
            return "400 Bad Request", {}, b"range required"
        start, end = 0, size - 1
    else:
        m = _RANGE.match(range_header)
        if not m:
            return "416 Range Not Satisfiable", {}, b""
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
        if start >= size or end < start:
            return "416 Range Not Satisfiable", {}, b""
        end = min(end, size - 1, start + HTTP_PART_MAX - 1)
    with path.open("rb") as f:
        f.seek(start)
        body = f.read(end - start + 1)
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    if range_header is None:
        return "200 OK", headers, body
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return "206 Partial Content", headers, body


async def _serve_one(directory: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        m = _NAME.match(target)
        if m is None:
            await _respond(writer, "404 Not Found")
        elif method in ("PUT", "POST"):
            await _put(reader, directory / m.group(1), int(headers.get("content-length", "0")))
            await _respond(writer, "201 Created")
        elif method == "GET":
            await _respond(writer, *_read_part(directory / m.group(1), headers.get("range")))
        else:
            await _respond(writer, "405 Method Not Allowed")
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def serve_forever(directory: Path, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(
        lambda r, w: _serve_one(directory, r, w), host, port, limit=SLICE, backlog=1024
    )
    async with server:
        bound = server.sockets[0].getsockname()
        print(f"baseline serving http://{bound[0]}:{bound[1]}/", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http_baseline", description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="where the uploaded files go")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve_forever(args.dir, args.host, args.port))
    return 0


def start_baseline(workdir: Path, cpus: set[int]) -> ServerProcess:
    """The baseline server as a child process pinned to ``cpus`` (the
    servers' CPUs, like the hub), storing its files under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "baseline.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISS_")}
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.http_baseline", "--dir", str(workdir / "files")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = _URL_LINE.search(line)
        if m:
            return ServerProcess("baseline", proc, m.group(1), log_path)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the HTTP baseline did not start; its log:\n{log_path.read_text()[-3000:]}")


# --- the client ----------------------------------------------------------------------------


async def _exchange(host: str, port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port, limit=SLICE)
    try:
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        length = int(headers.get("content-length", "0"))
        return status, headers, await reader.readexactly(length)
    finally:
        writer.close()


def _retry_after(headers: dict[str, str]) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None


async def put(host: str, port: int, path: str, data: bytes) -> None:
    """PUT ``data`` to ``path``; HttpError unless 200/201/204."""
    head = f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(data)}\r\n\r\n"
    status, headers, _ = await _exchange(host, port, head, data)
    if status not in (200, 201, 204):
        raise HttpError(status, _retry_after(headers))


async def get_range(host: str, port: int, path: str, start: int, end: int) -> bytes:
    """Bytes ``start``..``end`` (inclusive) of ``path`` as the server gives
    them (it may clip the part); HttpError unless 206."""
    head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nRange: bytes={start}-{end}\r\n\r\n"
    status, headers, body = await _exchange(host, port, head)
    if status != 206:
        raise HttpError(status, _retry_after(headers))
    return body


async def download(
    host: str,
    port: int,
    path: str,
    size: int,
    on_part: Callable[[bytes], None],
    on_busy: Callable[[int], None] | None = None,
) -> int:
    """Every byte of a ``size``-byte resource, in order, in Range parts of
    ``HTTP_PART_MAX`` bytes, each handed to ``on_part``; a 503 (the server
    busy) or a 429 (a budget spent) is retried after its Retry-After
    (``on_busy`` is told each one's status). Returns the parts asked."""
    have = parts = 0
    while have < size:
        try:
            data = await get_range(host, port, path, have, min(size, have + HTTP_PART_MAX) - 1)
        except HttpError as exc:
            if exc.status not in (429, 503):
                raise
            if on_busy is not None:
                on_busy(exc.status)
            await asyncio.sleep(exc.retry_after or 0.1)
            continue
        if not data:
            raise HttpError(206)
        parts += 1
        have += len(data)
        on_part(data)
    return parts


if __name__ == "__main__":
    sys.exit(main())
