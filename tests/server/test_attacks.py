"""what one enrolled device (or one address) could
break, each attack run against a real ``miss-server`` with its default
limits while bystanders talk (tests/support/bystanders.py).

Each test checks the defect is gone (the functional assertion) and prints
the bystanders' p50/p99 quiet and under the attack, asserting the attacked
p99 stays within 2 x the quiet one (docs/ARCHITECTURE.md guarantee 6). The attacker
runs in a process of its own at nice 19 (tests/support/attacker.py); where
an attack is per address it connects from 127.0.0.2 and up, so that the
bystanders at 127.0.0.1 keep their address budget, as they would behind
their own hospital's address. The hub's SQLite store is in memory
(bystanders.LimitedHub says why). Point 6 at 57,000 clinicians is measured
by ``miss-bench run --scenario search``; the test here uses fewer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from miss_client import Client, Message, enroll
from miss_client.profile import KDF_INTERACTIVE

from miss_server.app import build_store
from miss_server.config import Settings, load_settings
from miss_server.store.base import Store
from protocol.frames import (
    MAX_ACK_BYTES,
    Deliver,
    Delivered,
    Devices,
    Error,
    LinkCode,
    LinkCodeOk,
    Lookup,
    Revoke,
    Search,
    SetStatus,
    Welcome,
)
from tests.support.authority import AUTHORITY, AUTHORITY_PK, verify
from tests.support.bystanders import (
    Attacker,
    Bystanders,
    Device,
    LimitedHub,
    answer_code,
    attacked_window,
    auth_answer,
    clinician,
    default_rate,
    enroll_answer,
    hub_metric,
    hub_store,
    invite,
    judge,
    percentile,
    request,
)
from tests.support.client_fixtures import PASSPHRASE

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # bystanders: attacked vs quiet latency

#: Length of each measured window (s): at 6 messages a second from each of
#: 12 bystanders, 432 latencies a window.
WINDOW = 6.0
#: The most devices a hub may let one clinician have (SPEC §5.3, ``max_devices`` ≤ 32).
MOST_DEVICES = 32


def default(name: str) -> Any:
    """The hub's default for setting ``name``."""
    return Settings.model_fields[name].default


@dataclass
class Arena:
    """What an attack test runs in: see :func:`arena`."""

    hub: LimitedHub
    store: Store
    bystanders: Bystanders
    attackers: list[Attacker]

    def attacker(self, mode: str, **args: Any) -> Attacker:
        attacker = Attacker(mode, args)
        self.attackers.append(attacker)
        return attacker


@asynccontextmanager
async def arena(tmp_path: Path, *, nofile: int | None = None) -> AsyncIterator[Arena]:
    """A hub with the default limits, its store, and the bystanders,
    connected; attackers made with :meth:`Arena.attacker` are killed at the end."""
    hub = LimitedHub(tmp_path, nofile=nofile)
    await asyncio.to_thread(hub.start)
    attackers: list[Attacker] = []
    try:
        async with hub_store(hub) as store:
            bystanders = await Bystanders.enroll(hub, store)
            try:
                yield Arena(hub, store, bystanders, attackers)
            finally:
                for attacker in attackers:
                    await attacker.kill()
                await bystanders.close()
    finally:
        await hub.stop_async()


async def request_send(dev: Device, frame: Any) -> Any:
    """Send one message; its answer (``accepted`` or an error)."""
    await dev.send_frame(frame)
    while True:
        reply = await dev.recv(timeout=10)
        if getattr(reply, "id", None) == frame.id:
            return reply


# --- 1 ---------------------------------------------------------------------------------------


async def test_inbox_poisoning_device_cap(tmp_path: Path) -> None:
    """A verified clinician tries to link 64 devices, then writes to the
    victim: the cap stops the links, and the victim's client (the SDK)
    goes on reading its queue: a later message from a colleague arrives."""
    async with arena(tmp_path) as a:
        _, code = await invite(a.store, "Dr Victime")
        profile = await enroll(
            a.hub.url,
            code,
            tmp_path / "victim",
            PASSPHRASE,
            "victim",
            authority=AUTHORITY_PK,
            kdf=KDF_INTERACTIVE,
        )
        await verify(a.store, profile.user_id)
        colleague = await clinician(a.store, a.hub.url, "Dr Collègue")
        poisoner = await clinician(a.store, a.hub.url, "Dr Empoisonneur")
        await poisoner.close()

        async with Client.connect(profile) as victim:
            received: list[Message] = []
            ended: list[BaseException] = []

            async def consume() -> None:
                try:
                    async for event in victim.events():
                        if isinstance(event, Message):
                            received.append(event)
                except Exception as exc:
                    ended.append(exc)

            consumer = asyncio.create_task(consume())
            attacker = a.attacker(
                "poison", attacker=poisoner.identity(), victim=profile.user_id, links=64, addr="127.0.0.2"
            )
            await attacker.start()
            latency, result = await attacked_window(
                a.bystanders, attacker, WINDOW, "1. inbox poisoning: bystanders' message latency"
            )
            print(f"poisoner: {result['answers']}, its message: {result['message']}")

            to_victim = await colleague.lookup(profile.user_id)
            later = colleague.message(to_victim, "Le patient de la chambre 12 ?")
            assert answer_code(await request_send(colleague, later)) == "accepted"
            deadline = time.monotonic() + 10
            while later.id not in {m.id for m in received} and time.monotonic() < deadline and not ended:
                await asyncio.sleep(0.05)
            consumer.cancel()
            assert not ended, f"the victim's client stopped: {ended[0]!r}"
            assert later.id in {m.id for m in received}, "the victim never got the colleague's message"
            assert not victim.closed

        devices = await a.store.user_devices(poisoner.user_id)
        assert len(devices) <= default("max_devices"), f"{len(devices)} active devices for one clinician"
        assert result["answers"].get("too_many_devices", 0) > 0, result["answers"]
        assert len(result["linked"]) == default("max_devices") - 1
        latency.check()


# --- 2 ---------------------------------------------------------------------------------------


async def test_receipt_amplification_attested_devices_only(tmp_path: Path) -> None:
    """An account with as many devices as it may link, that never connect
    again, writes at its budget to a victim that acks everything: receipts
    are queued for its attested device only."""
    async with arena(tmp_path) as a:
        sender = await clinician(a.store, a.hub.url, "Dr Amplificateur")
        victim = await clinician(a.store, a.hub.url, "Dr Cible")
        await sender.close()
        await victim.close()
        attacker = a.attacker(
            "receipts",
            sender=sender.identity(),
            victim=victim.identity(),
            links=MOST_DEVICES,
            addr="127.0.0.2",
        )
        ready = (await attacker.start())["ready"]
        linked = ready["linked"]
        latency, result = await attacked_window(
            a.bystanders, attacker, WINDOW, "2. receipt amplification: bystanders' message latency"
        )
        pending = {d: await a.store.count_pending(d) for d in linked}
        own = await a.store.count_pending(sender.device_id)
        acked = result.get("victim_acked", 0)
        print(
            f"linked {len(linked)} devices ({ready['answers']}); {result.get('accepted', 0)} messages "
            f"accepted, {acked} acked by the victim; receipts queued: {own} for the sending device, "
            f"{sum(pending.values())} for the {len(linked)} devices nobody attested"
        )
        assert acked > 0
        assert sum(pending.values()) == 0, (
            f"{sum(pending.values())} receipts queued for {len(linked)} devices nobody attested"
        )
        assert own == acked, "one receipt per ack for the attested sender"
        assert len(linked) == default("max_devices") - 1 and ready["answers"].get("too_many_devices", 0) > 0
        latency.check()


# --- 3 ---------------------------------------------------------------------------------------


def junk_ack(size: int) -> bytes:
    """An ``ack`` of exactly ``size`` bytes, padded with a key the hub does not know."""
    frame = {"t": "ack", "seqs": [], "junk": b""}
    overhead = len(msgpack.packb({**frame, "junk": bytes(1000)})) - 1000  # bin16 header
    data: bytes = msgpack.packb({**frame, "junk": bytes(size - overhead)})
    assert len(data) == size
    return data


def widest_ack() -> bytes:
    """The largest ack an honest client may send (SPEC §2): 1024 seqs and 64 refusals, each at its widest."""
    data: bytes = msgpack.packb(
        {
            "t": "ack",
            "seqs": [2**63 - 1] * 1024,
            "refused": [{"seq": 2**63 - 1, "reason": "x" * 32}] * 64,
        }
    )
    assert len(data) == MAX_ACK_BYTES
    return data


# A latency ratio on a shared 2-core machine: one scheduler stall during the
# attacked window breaks it, while an unmetered flood breaks it every time.
# So a failure is measured again (twice at most) before it counts.
@pytest.mark.flaky(reruns=2)
async def test_acks_are_bounded_and_metered(tmp_path: Path) -> None:
    """An unverified device: an ack over MAX_ACK_BYTES is malformed_frame
    (the widest honest one is not); 50 KB junk acks and then a flood of
    empty acks leave the bystanders' latency within 2x, and the hub reads
    the empty acks no faster than the device's ack budget."""
    async with arena(tmp_path) as a:
        intruder = await clinician(a.store, a.hub.url, "Dr Non Vérifié", verified=False)
        await intruder.close()
        probe = Device.from_identity(intruder.identity(), "127.0.0.3")

        assert isinstance((await auth_answer(probe))[0], Welcome)
        assert probe.ws is not None
        await probe.ws.send(widest_ack())
        # answered in order: the widest ack was read without closing the connection
        reply = await request(probe, Devices(rid=1))
        assert not (isinstance(reply, Error) and reply.fatal), reply
        await probe.ws.send(junk_ack(MAX_ACK_BYTES + 1))
        error, code = await probe.until_closed(5)
        assert (answer_code(error) if error else None, code) == ("malformed_frame", 4400)

        attacker = a.attacker("acks", device=intruder.identity(), junk_bytes=50_000, addr="127.0.0.2")
        await attacker.start()
        quiet = await a.bystanders.converse(WINDOW, "quiet")
        await attacker.go()
        junk = await a.bystanders.converse(WINDOW, "junk acks")
        await attacker.tell("next")
        await attacker.expect("phase")
        quiet_again = await a.bystanders.converse(WINDOW, "quiet")
        # counted from before the flood starts, so that its burst is inside
        before = hub_metric(a.hub, "miss_frames_received_total", type="ack")
        acks_before, t0 = a.bystanders.acks, time.monotonic()
        await attacker.go()
        empty = await a.bystanders.converse(WINDOW, "empty acks")
        read = hub_metric(a.hub, "miss_frames_received_total", type="ack") - before
        read -= a.bystanders.acks - acks_before  # the bystanders' own
        elapsed = time.monotonic() - t0
        result = await attacker.stop()
        latency_junk = judge("3a. 50 KB junk acks: bystanders' message latency", quiet, junk)
        latency_empty = judge("3b. empty acks: bystanders' message latency", quiet_again, empty)
        per_second, burst = default_rate("rate_ack")
        print(
            f"junk acks: {result['junk_sent']} sent, answers {result['junk_answers']}; empty acks: "
            f"{result['empty_written']} written in {result['empty_seconds']} s, about {read:.0f} read "
            f"by the hub in {elapsed:.1f} s (budget {burst:g} + {per_second:g}/s)"
        )
        # each junk ack is fatal (the probe above saw its close code); the
        # attacker reconnects, at an authentication each time
        answers = result["junk_answers"]
        assert answers.get("malformed_frame", 0) >= 1, answers
        assert set(answers) <= {"malformed_frame", "auth:rate_limited:1008"}, answers
        # slack: the bystanders' own acks at the edges of the window
        assert read <= burst + per_second * elapsed + 50, "the hub read acks beyond the device's budget"
        latency_junk.check()
        latency_empty.check()


# --- 4 ---------------------------------------------------------------------------------------


async def test_unattested_device_cannot_act_for_its_owner(tmp_path: Path) -> None:
    """A device enrolled from a stolen link code, not attested, may
    authenticate, ack and revoke itself, and nothing else."""
    async with arena(tmp_path) as a:
        owner = await clinician(a.store, a.hub.url, "Dr Propriétaire")
        peer = await clinician(a.store, a.hub.url, "Dr Correspondant")
        reply = await request(owner, LinkCode(rid=1))
        assert isinstance(reply, LinkCodeOk), reply
        thief = Device(a.hub.url, local_addr="127.0.0.2")
        assert isinstance((await enroll_answer(thief, reply.code, "volé"))[0], Welcome)
        status = (await a.store.get_user(owner.user_id)).status  # type: ignore[union-attr]

        seen: dict[str, Any] = {
            "set_status": answer_code(await request(thief, SetStatus(rid=2, status="off_duty"))),
            "link_code": answer_code(await request(thief, LinkCode(rid=3))),
            "lookup": answer_code(await request(thief, Lookup(rid=4, user=peer.user_id))),
            "search": answer_code(await request(thief, Search(rid=5, query="Correspondant"))),
            "devices": answer_code(await request(thief, Devices(rid=6))),
        }
        # the owner writes, the peer acks: a receipt for the owner's attested device only
        message = owner.message(await owner.lookup(peer.user_id), "Résultats reçus ?")
        assert answer_code(await request_send(owner, message)) == "accepted"
        deliver = await peer.recv()
        assert isinstance(deliver, Deliver)
        await peer.ack(deliver.seq)
        receipt = await owner.recv()
        assert isinstance(receipt, Delivered) and receipt.id == message.id
        try:
            seen["receipt_to_thief"] = answer_code(await thief.recv(timeout=1.0))
        except TimeoutError:
            seen["receipt_to_thief"] = None
        seen["rows_for_thief"] = await a.store.count_pending(thief.device_id)
        seen["status_unchanged"] = (await a.store.get_user(owner.user_id)).status == status  # type: ignore[union-attr]
        seen["revoke_owner"] = answer_code(await request(thief, Revoke(rid=7, device=owner.device_id)))
        await owner.close()
        seen["owner_authenticates"] = answer_code((await auth_answer(owner))[0])
        assert seen == {
            "set_status": "not_verified",
            "link_code": "not_verified",
            "lookup": "not_verified",
            "search": "not_verified",
            "devices": "not_verified",
            "receipt_to_thief": None,
            "rows_for_thief": 0,
            "status_unchanged": True,
            "revoke_owner": "not_verified",
            "owner_authenticates": "welcome",
        }

        await thief.close()
        attacker = a.attacker(
            "unattested",
            device=thief.identity(),
            owner=owner.user_id,
            owner_device=owner.device_id,
            addr="127.0.0.2",
        )
        await attacker.start()
        latency, result = await attacked_window(
            a.bystanders, attacker, WINDOW, "4. unattested device: bystanders' message latency"
        )
        print(f"the unattested device's requests: {result['answers']}")
        assert {k.split(":")[1] for k in result["answers"]} <= {"not_verified", "rate_limited"}

        # it may still revoke itself, for ever
        assert isinstance((await auth_answer(thief))[0], Welcome)
        assert answer_code(await request(thief, Revoke(rid=8, device=thief.device_id))) == "ok"
        refused, code, _ = await auth_answer(thief)
        assert (answer_code(refused), code) == ("device_revoked", 4410)
        assert answer_code((await auth_answer(owner))[0]) == "welcome"
        latency.check()


# --- 5 ---------------------------------------------------------------------------------------


async def test_failures_never_lock_out_a_correct_signature(tmp_path: Path) -> None:
    """25 bad auths naming the victim's device from other addresses, and 25
    wrong enrollment codes from one address: the victim is welcomed at once;
    from the guessing address a correct auth is welcomed at once and a
    correct enrollment gets in (held a few seconds at most)."""
    async with arena(tmp_path) as a:
        victim = await clinician(a.store, a.hub.url, "Dr Visée")
        neighbour = await clinician(a.store, a.hub.url, "Dr Voisine")
        await victim.close()
        await neighbour.close()
        _, newcomer_code = await invite(a.store, "Dr Nouvelle")
        guesser_addr = "127.0.0.7"
        attacker = a.attacker(
            "lockout",
            url=a.hub.url,
            victim={"user": victim.user_id, "device": victim.device_id},
            auth_addrs=[f"127.0.0.{i}" for i in range(2, 7)],
            enroll_addr=guesser_addr,
            bad=25,
            per_second=25,
            budget=int(default_rate("rate_failed_auth")[1]),
        )
        await attacker.start()
        quiet = await a.bystanders.converse(WINDOW, "quiet")
        seen: dict[str, Any] = {}

        async def attack_then_try() -> None:
            await attacker.go()
            seen.update((await attacker.expect("done", 60))["done"])
            reply, _, took = await auth_answer(victim)
            seen["victim"] = (answer_code(reply), took)
            behind = Device.from_identity(neighbour.identity(), guesser_addr)
            reply, _, took = await auth_answer(behind)
            seen["same_address_auth"] = (answer_code(reply), took)
            await behind.close()
            newcomer = Device(a.hub.url, local_addr=guesser_addr)
            reply, took = await enroll_answer(newcomer, newcomer_code)
            seen["same_address_enroll"] = (answer_code(reply), took)
            await newcomer.close()

        attacked, _ = await asyncio.gather(a.bystanders.converse(WINDOW, "lockout"), attack_then_try())
        seen.update(await attacker.stop())
        latency = judge("5. targeted lockout: bystanders' message latency", quiet, attacked)
        print(seen)
        assert seen["victim"][0] == "welcome" and seen["victim"][1] < 1.0, seen["victim"]
        assert seen["same_address_auth"][0] == "welcome" and seen["same_address_auth"][1] < 1.0
        # held while the address is over its failure budget (up to 5 s), never refused
        assert seen["same_address_enroll"][0] == "welcome" and seen["same_address_enroll"][1] < 6.5
        # every failure was checked and answered as such, none refused unchecked
        assert seen["bad_auth"] == {"auth_failed:4401": 25}
        assert seen["bad_enroll"] == {"invalid_code:4402": 25}
        await victim.close()
        latency.check()


# --- 6 ---------------------------------------------------------------------------------------

#: The directory of the search test (the bench measures 57,000: miss-bench run --scenario search).
DIRECTORY = 10_000
#: Authentications a second of the bystanders while one device searches.
AUTH_RATE = 30.0


async def authentications(devices: list[Device], seconds: float, rate: float = AUTH_RATE) -> list[float]:
    """Devices connect and authenticate in turn, ``rate`` a second (open
    loop), each closing once welcomed; the time to each ``welcome`` (ms)."""
    took: list[float] = []
    start = time.monotonic()

    async def one(i: int) -> None:
        dev = devices[i % len(devices)]
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        reply, _, seconds = await auth_answer(dev)
        assert isinstance(reply, Welcome), reply
        took.append(seconds * 1000)
        await dev.close()

    await asyncio.gather(*(one(i) for i in range(int(seconds * rate))))
    return took


async def test_search_does_not_slow_authentication(tmp_path: Path) -> None:
    """With thousands of clinicians in the directory, one device searching
    at its budget (hard queries) leaves others' authentication p99 within
    2x, and gets no more than its own search budget."""
    from bench.scenarios.search import QUERIES, provision_directory

    hub = LimitedHub(tmp_path)
    store = build_store(load_settings(store=hub.store_url))
    await store.migrate()
    await store.open()
    try:
        await provision_directory(store, DIRECTORY, AUTHORITY)
    finally:
        await store.close()
    await asyncio.to_thread(hub.start)
    try:
        async with hub_store(hub) as store:
            searcher = await clinician(store, hub.url, "Dr Chercheur")
            await searcher.close()
            probes = [await clinician(store, hub.url, f"Dr Sonde {i}") for i in range(8)]
            for dev in probes:
                await dev.close()
            attacker = Attacker(
                "search", {"device": searcher.identity(), "queries": QUERIES, "addr": "127.0.0.2"}
            )
            try:
                await attacker.start()
                await authentications(probes, 1.0)  # warm up
                quiet = await authentications(probes, 8.0)
                await attacker.go()
                attacked = await authentications(probes, 8.0)
                result = await attacker.stop()
            finally:
                await attacker.kill()
        latency = judge(
            f"6. directory search ({DIRECTORY:,} clinicians): bystanders' authentication time",
            quiet,
            attacked,
        )
        searches = result["search_ms"]
        print(
            f"the searcher: {result['answers']} in {result['seconds']} s; a search (request to answer) "
            f"p50 {percentile(searches, 50):.1f} ms, p99 {percentile(searches, 99):.1f} ms"
        )
        latency.check()
        per_second, burst = default_rate("rate_search")
        answered = result["answers"].get("search_ok", 0)
        assert answered <= burst + per_second * result["seconds"] + 2, "more searches than the search budget"
    finally:
        await hub.stop_async()


# --- 7 ---------------------------------------------------------------------------------------

#: The open-file limit of the hub of test 7: the common default.
NOFILE = 1024
SILENT = 1000


async def test_silent_connections_do_not_block_authentication(tmp_path: Path) -> None:
    """~1,000 connections that never authenticate from one address, against
    a hub limited to 1,024 open files: bystanders from another address
    authenticate at once and talk as before, and the hub's log stays small."""
    async with arena(tmp_path, nofile=NOFILE) as a:
        quiet = await a.bystanders.converse(WINDOW, "quiet")
        await a.bystanders.disconnect()
        log_before = a.hub.log_path.stat().st_size
        attacker = a.attacker(
            "silent",
            host="127.0.0.1",
            port=a.hub.port,
            addr="127.0.0.2",
            count=SILENT,
            hold_at_least=200,
        )
        await attacker.start()
        held = (await attacker.go())["on"]["held"]
        try:
            took = await a.bystanders.reconnect(timeout=10)
        except Exception as exc:
            result = await attacker.stop()
            grown = a.hub.log_path.stat().st_size - log_before
            pytest.fail(
                f"a bystander could not authenticate beside {held} silent connections ({exc!r}); "
                f"attacker: {result}; the hub's log grew by {grown:,} bytes"
            )
        attacked = await a.bystanders.converse(WINDOW, "silent connections")
        result = await attacker.stop()
        grown = a.hub.log_path.stat().st_size - log_before
        latency = judge("7. silent connections: bystanders' message latency", quiet, attacked)
        print(
            f"silent connections: {held} held when the bystanders connected; {result}\n"
            f"bystanders' authentication beside them: p50 {percentile(took, 50):.1f} ms, "
            f"max {max(took):.1f} ms; the hub's log grew by {grown:,} bytes"
        )
        assert max(took) < 2000, "a bystander's authentication waited seconds"
        assert grown < 1_000_000, f"the hub's log grew by {grown:,} bytes"
        latency.check()
