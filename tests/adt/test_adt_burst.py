"""No loss, honest ACKs: the hub (a real ``miss-server`` process) stops
during a burst of 1,000 ADT messages; every one is answered ``AA``
« spooled »; once the hub is back, each notice reaches the GP's device
exactly once. And ``miss-adt serve`` as its operators run it."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from miss_adt.sender import HubLink
from miss_client import KDF_INTERACTIVE, Client, Message, Profile, enroll

from miss_server.app import HubServer
from miss_server.codes import code_hash, new_code
from tests.support.adt_feed import MllpClient, message, running_adt
from tests.support.authority import AUTHORITY_PK
from tests.support.client_fixtures import PASSPHRASE
from tests.support.clock import now_ms
from tests.support.hubproc import HubProcess, invite_on_store, opened_store, verify_on_store
from tests.support.notice_fixtures import SERVICE_NAME, SERVICE_ORG, enroll_service
from tests.support.verified_hubs import ClinicianFactory

pytestmark = pytest.mark.slow

DUPONT = "10003456789"
BURST = 1000


async def enrolled_on(hub: HubProcess, directory: Path, *, service: bool) -> Profile:
    """The service « CH Provins — Admissions », or Dr DUPONT, on the hub
    process's store, enrolled with the SDK and verified."""
    if service:
        async with opened_store(hub) as store:
            user = await store.create_service(
                SERVICE_NAME, "svc:provins-adt", SERVICE_ORG, False, now_ms(), 20
            )
            code = new_code()
            await store.add_enrollment_code(user.user_id, code_hash(code), now_ms() + 3_600_000)
    else:
        _, code = await invite_on_store(hub, "Dr Marie Dupont", DUPONT)
    profile = await enroll(
        hub.url, code, directory, PASSPHRASE, "adt", authority=AUTHORITY_PK, kdf=KDF_INTERACTIVE
    )
    await verify_on_store(hub, profile.user_id)
    return profile


async def until(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def burst_message(i: int) -> bytes:
    return message(
        "a01_admission_pd1",
        CHP000101=f"BURST{i:05d}",
        MVT000101=f"MVTB{i:05d}",
        **{"LEFÈVRE^Hélène": f"PATIENT{i:04d}^Hélène", "4000123456": f"41{i:08d}"},
    )


async def test_hub_down_during_a_burst_nothing_lost_each_notice_once(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub", env={"MISS_RATE_SERVICE": "100000/s burst 100000"})
    hub.start()
    try:
        service = await enrolled_on(hub, tmp_path / "service", service=True)
        gp = await enrolled_on(hub, tmp_path / "gp", service=False)
        link = HubLink(service, request_timeout=3.0, reconnect_max=1.0)
        link_task = asyncio.create_task(link.run())
        async with running_adt(tmp_path, link, retry_max=1.0) as adt:
            await asyncio.wait_for(link.connected.wait(), 10)
            feed = await MllpClient.open(adt.port)
            await hub.stop_async()
            await until(lambda: not link.connected.is_set(), 10)

            started = time.monotonic()
            acks = [await feed.send(burst_message(i)) for i in range(BURST)]
            burst_s = time.monotonic() - started
            assert collections.Counter((a.code, a.note) for a in acks) == {
                ("AA", "spooled: hub unreachable, notice kept and retried"): BURST
            }
            assert [a.control_id for a in acks] == [f"BURST{i:05d}" for i in range(BURST)]
            assert adt.store.spooled == BURST

            hub.start()
            started = time.monotonic()
            await until(lambda: adt.store.spooled == 0, 30)
            drain_s = time.monotonic() - started
            # The feed resends some it had no ACK for: the same answer, nothing sent again.
            for i in (0, 499, 999):
                again = await feed.send(burst_message(i))
                assert (again.code, again.note) == ("AA", "spooled: hub unreachable, notice kept and retried")
            await feed.close()
            delivered = sum(e["event"] == "spool_delivered" for e in adt.audit.events)
        link_task.cancel()

        async with Client.connect(gp) as client:
            events = await client.drain(idle=1.0, limit=60)
        got = [e for e in events if isinstance(e, Message) and e.notice is not None]
        per_patient = collections.Counter(dict(m.notice.fields)["Patient"] for m in got)  # type: ignore[union-attr]
        print(
            f"adt burst: {BURST} messages ACKed AA (spooled) in {burst_s:.1f} s with the hub down; "
            f"spool delivered in {drain_s:.1f} s after the hub came back; "
            f"{len(got)} notices at the GP's device, {len(per_patient)} patients, "
            f"{sum(n - 1 for n in per_patient.values())} duplicates"
        )
        assert delivered == BURST
        assert len(got) == BURST and len({m.id for m in got}) == BURST
        assert per_patient == {f"Mme PATIENT{i:04d} Hélène": 1 for i in range(BURST)}
    finally:
        hub.stop()


async def test_miss_adt_serve_from_its_config_file(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    gp = await clinician("dupont", DUPONT)
    await enroll_service(hub, tmp_path / "service")
    (tmp_path / "passphrase").write_text(PASSPHRASE + "\n")
    (tmp_path / "adt.toml").write_text(
        '[listen]\nhost = "127.0.0.1"\nport = 0\n'
        '[hub]\nprofile = "service"\npassphrase_file = "passphrase"\nreconnect_max_seconds = 1\n'
        '[spool]\ndatabase = "state/miss-adt.db"\nmax = 10\n'
        '[audit]\nfile = "log/audit.jsonl"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "miss-adt"),
        "serve",
        "--config",
        str(tmp_path / "adt.toml"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("miss-adt listening on 127.0.0.1:")
        feed = await MllpClient.open(int(line.rsplit(":", 1)[1]))
        deadline = time.monotonic() + 10
        while True:  # until the service's connection is up
            ack = await feed.send(message("a01_no_gp", CHP000111=f"W{time.monotonic_ns()}"))
            assert ack.code == "AE"
            assert time.monotonic() < deadline
            ack = await feed.send(message("a03_death", CHP000105=f"D{time.monotonic_ns()}"))
            if ack.note == "notice sent" or ack.note.startswith("spooled"):
                break
        await feed.close()
        async with Client.connect(gp) as client:
            [notice] = [e for e in await client.drain(idle=0.5) if isinstance(e, Message)]
        assert notice.notice is not None and notice.notice.title == "Décès de M. MOREAU Jacques"
        assert '"reason": "no_gp"' in (tmp_path / "log" / "audit.jsonl").read_text()
        # A second listener on the same profile is refused.
        second = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "miss-adt"),
            "serve",
            "--config",
            str(tmp_path / "adt.toml"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 1 and "déjà utilisé" in err.decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
