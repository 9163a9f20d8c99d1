"""The attacks of one enrolled device, each in a process of its own (started by
``bystanders.Attacker`` at nice 19) against a real hub.

    python -m tests.support.attacker MODE JSON_ARGS

The process sets itself up (authenticates the devices it is given, from the
loopback address it is given), prints ``{"ready": ...}`` and waits for
``go`` on stdin; it then prints ``{"on": ...}`` as the attack begins and
goes on until ``stop``, when it prints ``{"result": ...}`` and exits. An
attack with two phases moves to the second on ``next`` (and prints ``on``
again); ``{"phase": ...}`` lines report steps. Devices come as the
identities of ``bystanders.Device.identity``.

Modes (the point of the issue in brackets):

``poison`` [1]     link as many devices to one account as the hub lets it
                   (``links`` attempts), then send one message to the victim.
``receipts`` [2]   link devices that never connect again (as many as
                   allowed), then send messages at the device's budget to a
                   victim that acks them all; the sender never acks receipts.
``acks`` [3]       an unverified device sends 50 KB junk acks (reconnecting
                   when closed); after ``next`` it pauses, and after ``go``
                   sends empty acks as fast as its connection takes them.
``unattested`` [4] a device nobody attested asks, at its budget, for what only
                   attested devices may do.
``lockout`` [5]    bad ``auth`` frames naming the victim's device, from several
                   addresses; then wrong enrollment codes from one address.
``search`` [6]     one device searches the directory at its budget.
``silent`` [7]     ``count`` TCP and WebSocket connections from one address
                   that never authenticate, each reopened a second after it
                   ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from protocol import crypto
from protocol.frames import (
    SUBPROTOCOL,
    Accepted,
    Ack,
    Deliver,
    Delivered,
    Devices,
    Error,
    Frame,
    LinkCode,
    LinkCodeOk,
    Lookup,
    LookupOk,
    Revoke,
    Search,
    SetStatus,
    Welcome,
)
from tests.support.bystanders import Device, answer_code, auth_answer, enroll_answer, request

Commands = asyncio.Queue[str]


def say(**msg: Any) -> None:
    print(json.dumps(msg), flush=True)


async def commands() -> Commands:
    """The lines of stdin as they come; ``stop`` at its end."""
    queue: Commands = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, "stop")

    threading.Thread(target=pump, daemon=True).start()
    return queue


async def until(queue: Commands, word: str) -> None:
    while (await queue.get()) != word:
        pass


async def pause_for(reply: Frame) -> bool:
    """Sleep the ``retry_after`` of a ``rate_limited`` answer; False for any other."""
    if isinstance(reply, Error) and reply.code == "rate_limited":
        await asyncio.sleep((reply.retry_after or 100) / 1000)
        return True
    return False


async def retrying(dev: Device, build: Callable[[int], Frame], rids: list[int]) -> Frame:
    """A request, sent again while rate-limited; its answer."""
    while True:
        rids[0] += 1
        reply = await request(dev, build(rids[0]))
        if not await pause_for(reply):
            return reply


async def link_devices(dev: Device, attempts: int, addr: str | None) -> dict[str, Any]:
    """Up to ``attempts`` link codes, each enrolled at once by a new device
    that then disconnects for good; what the hub answered."""
    linked: list[str] = []
    answers: Counter[str] = Counter()
    rids = [1000]
    for _ in range(attempts):
        reply = await retrying(dev, lambda rid: LinkCode(rid=rid), rids)
        if not isinstance(reply, LinkCodeOk):
            answers[answer_code(reply)] += 1
            continue
        new = Device(dev.url, local_addr=addr)
        welcome, _ = await enroll_answer(new, reply.code, "attacker")
        await new.close()
        if isinstance(welcome, Welcome):
            linked.append(new.device_id)
            answers["linked"] += 1
        else:
            answers[f"enroll:{answer_code(welcome)}"] += 1
    return {"linked": linked, "answers": dict(answers)}


async def first_error(dev: Device) -> Error | None:
    """The first ``error`` frame the hub sends (None: closed without one)."""
    try:
        while True:
            frame = await dev.recv(timeout=3600)
            if isinstance(frame, Error):
                return frame
    except ConnectionClosed:
        return None


async def send_to(dev: Device, to: LookupOk, body: str) -> Frame:
    """One message, sent again while rate-limited: ``accepted`` or the error."""
    frame = dev.message(to, body)
    while True:
        await dev.send_frame(frame)
        while True:
            reply = await dev.recv(timeout=30)
            if isinstance(reply, Accepted) and reply.id == frame.id:
                return reply
            if isinstance(reply, Error) and (reply.id == frame.id or reply.fatal):
                break
        if not await pause_for(reply):
            return reply


# --- the attacks ------------------------------------------------------------------------


async def poison(args: dict[str, Any], cmd: Commands) -> dict[str, Any]:
    addr = args.get("addr")
    dev = Device.from_identity(args["attacker"], addr)
    await dev.auth()
    say(ready=True)
    await until(cmd, "go")
    say(on=True)
    links = await link_devices(dev, args["links"], addr)
    victim = await retrying(dev, lambda rid: Lookup(rid=rid, user=args["victim"]), [1])
    assert isinstance(victim, LookupOk), victim
    answer = await send_to(dev, victim, "ceci n'est pas un message")
    say(phase="sent", answer=answer_code(answer))
    await until(cmd, "stop")
    await dev.close()
    return {**links, "message": answer_code(answer)}


async def receipts(args: dict[str, Any], cmd: Commands) -> dict[str, Any]:
    addr = args.get("addr")
    sender = Device.from_identity(args["sender"], addr)
    victim = Device.from_identity(args["victim"], addr)
    await sender.auth()
    await victim.auth()
    links = await link_devices(sender, args["links"], addr)
    to = await retrying(sender, lambda rid: Lookup(rid=rid, user=victim.user_id), [1])
    assert isinstance(to, LookupOk), to
    say(ready=links)
    await until(cmd, "go")
    say(on=True)
    counts: Counter[str] = Counter()
    stopping = asyncio.create_task(until(cmd, "stop"))

    async def acker() -> None:
        """The victim: keeps every message and acks it, as any client does."""
        while True:
            frame = await victim.recv(timeout=3600)
            if isinstance(frame, Deliver | Delivered):
                await victim.ack(frame.seq)
                counts["victim_acked"] += 1

    acking = asyncio.create_task(acker())
    i = 0
    while not stopping.done():
        answer = await send_to(sender, to, f"message {i}")
        counts[answer_code(answer)] += 1
        i += 1
    await asyncio.sleep(1.0)  # the last acks reach the hub
    acking.cancel()
    await sender.close()
    await victim.close()
    return {**links, **counts}


async def acks(args: dict[str, Any], cmd: Commands) -> dict[str, Any]:
    dev = Device.from_identity(args["device"], args.get("addr"))
    reply, code, _ = await auth_answer(dev)
    assert isinstance(reply, Welcome), (reply, code)
    await dev.close()
    junk = msgpack.packb({"t": "ack", "seqs": [], "junk": os.urandom(args["junk_bytes"])})
    say(ready=True)
    await until(cmd, "go")
    say(on="junk")
    answers: Counter[str] = Counter()
    sent = 0
    moving_on = asyncio.create_task(until(cmd, "next"))
    while not moving_on.done():
        reply, code, _ = await auth_answer(dev)
        if not isinstance(reply, Welcome):
            answers[f"auth:{answer_code(reply)}:{code}"] += 1
            await pause_for(reply) if reply is not None else await asyncio.sleep(0.1)
            continue
        assert dev.ws is not None
        # Junk as fast as the connection takes it, while reading what the hub says.
        reading = asyncio.create_task(first_error(dev))
        while not reading.done() and not moving_on.done():
            try:
                await asyncio.wait_for(dev.ws.send(junk), 1.0)
            except (ConnectionClosed, TimeoutError):
                break
            sent += 1
        try:
            error = await asyncio.wait_for(reading, 1.0)
            answers[answer_code(error) if error else "closed"] += 1
        except TimeoutError:
            answers["no answer"] += 1
            reading.cancel()
        # A fatal error is followed by a close; its handshake would wait
        # behind the junk still in flight.
        dev.ws.transport.abort()
    reply, code, _ = await auth_answer(dev)
    assert isinstance(reply, Welcome), (reply, code)
    assert dev.ws is not None
    say(phase="paused")  # the test measures quiet again
    await until(cmd, "go")
    say(on="empty")
    stopping = asyncio.create_task(until(cmd, "stop"))
    empty = Ack(())
    written = 0

    async def flood() -> None:
        nonlocal written
        while True:
            await dev.send_frame(empty)  # waits while the hub does not read
            written += 1
            if written % 64 == 0:
                await asyncio.sleep(0)

    started = time.monotonic()
    flooding = asyncio.create_task(flood())
    await asyncio.wait([flooding, stopping], return_when=asyncio.FIRST_COMPLETED)
    flooding.cancel()
    closed = isinstance((await asyncio.gather(flooding, return_exceptions=True))[0], ConnectionClosed)
    seconds = time.monotonic() - started
    dev.ws.transport.abort()  # a close handshake would wait behind the unread acks
    return {
        "junk_sent": sent,
        "junk_answers": dict(answers),
        "empty_written": written,
        "empty_seconds": round(seconds, 2),
        "empty_closed_by_hub": closed,
    }


async def unattested(args: dict[str, Any], cmd: Commands) -> dict[str, Any]:
    dev = Device.from_identity(args["device"], args.get("addr"))
    await dev.auth()
    say(ready=True)
    await until(cmd, "go")
    say(on=True)
    stopping = asyncio.create_task(until(cmd, "stop"))
    builders: list[Callable[[int], Frame]] = [
        lambda rid: SetStatus(rid=rid, status="off_duty"),
        lambda rid: LinkCode(rid=rid),
        lambda rid: Lookup(rid=rid, user=args["owner"]),
        lambda rid: Search(rid=rid, query="Bystander"),
        lambda rid: Devices(rid=rid),
        lambda rid: Revoke(rid=rid, device=args["owner_device"]),
    ]
    answers: Counter[str] = Counter()
    rid = 0
    while not stopping.done():
        rid += 1
        frame = builders[rid % len(builders)](rid)
        reply = await request(dev, frame)
        answers[f"{frame.TYPE}:{answer_code(reply)}"] += 1
        await pause_for(reply)
    await dev.close()
    return {"answers": dict(answers)}


async def lockout(args: dict[str, Any], cmd: Commands) -> dict[str, Any]:
    url, victim = args["url"], args["victim"]
    say(ready=True)
    await until(cmd, "go")
    say(on=True)

    async def bad_auth(addr: str) -> str:
        dev = Device(url, crypto.DeviceKeys.generate(), victim["user"], victim["device"], local_addr=addr)
        reply, code, _ = await auth_answer(dev, sig=bytes(64))
        return f"{answer_code(reply)}:{code}"

    async def bad_enroll(addr: str) -> tuple[str, float]:
        dev = Device(url, local_addr=addr)
        reply, took = await enroll_answer(dev, "0000-0000-0000-0000")
        _, code = await dev.until_closed(10)
        return f"{answer_code(reply)}:{code}", took

    async def spread(i: int, attempt: Awaitable[Any]) -> Any:
        await asyncio.sleep(i / args["per_second"])
        return await attempt

    addrs = args["auth_addrs"]
    auths = await asyncio.gather(*(spread(i, bad_auth(addrs[i % len(addrs)])) for i in range(args["bad"])))
    enrolls = [asyncio.create_task(spread(i, bad_enroll(args["enroll_addr"]))) for i in range(args["bad"])]
    # Once the address has spent its failure budget (the rest may be held), the test tries.
    answered = 0
    for attempt in asyncio.as_completed(enrolls):
        await attempt
        answered += 1
        if answered == args["budget"]:
            break
    say(done={"bad_auth": dict(Counter(auths)), "bad_enroll_answered": answered})
    await until(cmd, "stop")
    done = await asyncio.gather(*enrolls)
    return {
        "bad_auth": dict(Counter(auths)),
        "bad_enroll": dict(Counter(code for code, _ in done)),
        "bad_enroll_longest_s": round(max(took for _, took in done), 2),
    }


async def search(args: dict[str, Any], cmd: Commands) -> dict[str, Any]:
    dev = Device.from_identity(args["device"], args.get("addr"))
    await dev.auth()
    say(ready=True)
    await until(cmd, "go")
    say(on=True)
    stopping = asyncio.create_task(until(cmd, "stop"))
    answers: Counter[str] = Counter()
    took: list[float] = []
    queries = args["queries"]
    started = time.monotonic()
    rid = 0
    while not stopping.done():
        rid += 1
        t0 = time.monotonic()
        reply = await request(dev, Search(rid=rid, query=queries[rid % len(queries)]))
        answers[answer_code(reply)] += 1
        if not await pause_for(reply) and not isinstance(reply, Error):
            took.append(round((time.monotonic() - t0) * 1000, 2))
    seconds = time.monotonic() - started
    await dev.close()
    return {"answers": dict(answers), "seconds": round(seconds, 2), "search_ms": sorted(took)}


async def silent(args: dict[str, Any], cmd: Commands) -> dict[str, Any]:
    """Half raw TCP connections that never send a byte, half WebSocket
    handshakes that never answer the challenge."""
    host, port, addr = args["host"], args["port"], args["addr"]
    counts: Counter[str] = Counter()
    held: set[int] = set()
    say(ready=True)
    await until(cmd, "go")
    stopping = asyncio.create_task(until(cmd, "stop"))

    async def held_until_closed(k: int, closed: Awaitable[Any]) -> str:
        held.add(k)
        t0 = time.monotonic()
        waiting = asyncio.ensure_future(closed)
        try:
            await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            held.discard(k)
            waiting.cancel()
        return "fast" if time.monotonic() - t0 < 0.5 else "later"

    async def tcp_slot(k: int) -> None:
        while not stopping.done():
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(addr, 0))
            except OSError:
                counts["tcp_connect_failed"] += 1
                await asyncio.sleep(1)
                continue
            counts["tcp_opened"] += 1
            counts[f"tcp_closed_{await held_until_closed(k, reader.read(1))}"] += 1
            writer.transport.abort()
            await asyncio.sleep(1)

    async def ws_slot(k: int) -> None:
        while not stopping.done():
            try:
                ws = await connect(
                    f"ws://{host}:{port}/",
                    subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    local_addr=(addr, 0),
                    open_timeout=30,
                )
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed):
                counts["ws_refused"] += 1
                await asyncio.sleep(1)
                continue
            counts["ws_opened"] += 1
            counts[f"ws_closed_{await held_until_closed(k, ws.wait_closed())}"] += 1
            ws.transport.abort()
            await asyncio.sleep(1)

    n = args["count"]
    slots = [asyncio.create_task(tcp_slot(k) if k % 2 else ws_slot(k)) for k in range(n)]
    deadline = time.monotonic() + 15
    while len(held) < args["hold_at_least"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    say(on={"held": len(held)})
    most = len(held)
    while not stopping.done():
        await asyncio.sleep(0.2)
        most = max(most, len(held))
    for slot in slots:
        slot.cancel()
    await asyncio.gather(*slots, return_exceptions=True)
    return {**counts, "most_held": most}


MODES: dict[str, Callable[[dict[str, Any], Commands], Awaitable[dict[str, Any]]]] = {
    "poison": poison,
    "receipts": receipts,
    "acks": acks,
    "unattested": unattested,
    "lockout": lockout,
    "search": search,
    "silent": silent,
}


async def main(mode: str, args: dict[str, Any]) -> None:
    cmd = await commands()
    result = await MODES[mode](args, cmd)
    say(result=result)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
