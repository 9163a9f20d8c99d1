"""miss-adt end to end with the real hub in this process: a hospital feed
over MLLP, the service's SDK connection (HubLink), and the GPs' SDK
devices receiving the notices. The hub-down burst is test_adt_burst.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from miss_adt.sender import HubLink
from miss_client import Client, Message, Profile, Recalled

from miss_server.app import HubServer
from tests.support.adt_feed import Ack, AdtRunning, MllpClient, message, running_adt
from tests.support.notice_fixtures import SERVICE_NAME, SERVICE_ORG, enroll_service
from tests.support.verified_hubs import ClinicianFactory

DUPONT = "10003456789"  # PD1-4 and ROL FHCP of the sample messages
ROUX = "10004567890"  # ROL ODRP of a04_admission_rol


@contextlib.asynccontextmanager
async def adt_on(hub: HubServer, tmp_path: Path) -> AsyncIterator[tuple[AdtRunning, MllpClient]]:
    """miss-adt connected to ``hub`` as the service « CH Provins — Admissions », and a feed."""
    service = await enroll_service(hub, tmp_path / "service")
    link = HubLink(service, request_timeout=5.0, reconnect_max=1.0)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        async with running_adt(tmp_path, link) as adt:
            feed = await MllpClient.open(adt.port)
            try:
                yield adt, feed
            finally:
                await feed.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def received(profile: Profile, idle: float = 0.4) -> list[object]:
    async with Client.connect(profile) as client:
        return await client.drain(idle=idle)


def notices(events: list[object]) -> list[Message]:
    return [e for e in events if isinstance(e, Message) and e.notice is not None]


async def test_each_event_reaches_the_gp_device_with_the_patient_fields(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    dupont = await clinician("dupont", DUPONT)
    roux = await clinician("roux", ROUX)
    async with adt_on(hub, tmp_path) as (adt, feed):
        acks: dict[str, Ack] = {}
        for name in ("a01_admission_pd1", "a04_admission_rol", "a02_transfer", "a03_discharge", "a03_death"):
            acks[name] = await feed.send(message(name))
        resent = await feed.send(message("a01_admission_pd1"))
        a13 = await feed.send(message("a13_cancel_discharge"))
        service_user = adt.link.sender.client.user_id  # type: ignore[union-attr]
    assert {(a.code, a.note) for a in acks.values()} == {("AA", "notice sent")}
    assert (resent.code, resent.note) == ("AA", "notice sent")
    assert (a13.code, a13.note) == ("AA", "notice recalled")

    events = await received(dupont)
    got = notices(events)
    # One notice per movement, none for the resent A01; the discharge was recalled
    # before this device connected: the hub dropped it, and the recall notice tells the device.
    assert [m.notice.event for m in got] == ["admission", "transfer", "death"]  # type: ignore[union-attr]
    assert {m.from_user for m in got} == {service_user}
    admission = got[0].notice
    assert admission is not None and admission.title == "Admission de Mme LEFÈVRE Hélène"
    assert dict(admission.fields) == {
        "Patient": "Mme LEFÈVRE Hélène",
        "Né(e) le": "21/06/1948",
        "IPP": "4000123456",
        "Établissement": "CH-PROVINS",
        "Service": "Cardiologie",
        "Événement": "Admission",
        "Date": "15/03/2024 à 10h25",
    }
    assert dict(got[1].notice.fields)["Service"] == "Médecine gériatrique"  # type: ignore[union-attr]
    death = got[2].notice
    assert death is not None and death.title == "Décès de M. MOREAU Jacques"
    assert dict(death.fields)["Décès le"] == "22/03/2024 à 05h20"
    assert death.reply == "Bureau des admissions : 01 64 60 40 00"
    assert any(isinstance(e, Recalled) for e in events)

    [roux_notice] = notices(await received(roux))
    assert roux_notice.notice is not None and roux_notice.notice.title == "Admission de M. GARNIER Lucien"
    # The sender shows as a service of its organisation, not as a clinician.
    async with Client.connect(roux) as client:
        peer = await client.lookup(user=roux_notice.from_user)
    assert peer.service and peer.display == f"[Service] {SERVICE_NAME} — {SERVICE_ORG}"


async def test_a13_recalls_a_discharge_notice_the_gp_already_has(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    dupont = await clinician("dupont", DUPONT)
    async with adt_on(hub, tmp_path) as (_adt, feed), Client.connect(dupont) as gp:
        assert (await feed.send(message("a03_discharge"))).note == "notice sent"
        [discharge] = notices(await gp.drain(idle=0.3))
        assert discharge.notice is not None and discharge.notice.event == "discharge"
        assert (await feed.send(message("a13_cancel_discharge"))).note == "notice recalled"
        events = await gp.drain(idle=0.3)
    assert [e.id for e in events if isinstance(e, Recalled) and e.known] == [discharge.id]
    with dupont.open_state() as state:
        [entry] = state.history(discharge.from_user)
    assert entry.notice is None  # « message retiré »: the patient data is gone from the device


async def test_refusals_from_the_hub_are_ae_audited_and_nothing_is_sent(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    # Dr DUPONT is enrolled but not verified yet, which the hub does not tell
    # apart from not on MiSS (SPEC §11.3); Dr ROUX is not on MiSS.
    await clinician("dupont", DUPONT, verified=False)
    async with adt_on(hub, tmp_path) as (adt, feed):
        unverified = await feed.send(message("a01_admission_pd1"))
        unknown = await feed.send(message("a04_admission_rol"))
        malformed = await feed.send(message("malformed_bad_date"))
        no_gp = await feed.send(message("a01_no_gp"))
        refused = [(e["control_id"], e["reason"]) for e in adt.audit.events if e["event"] == "refused"]
        assert adt.store.spooled == 0
    assert (unverified.code, unverified.err_code, unverified.err_reason) == ("AE", "204", "unknown_rpps")
    assert unverified.err_text == "médecin traitant inconnu de MiSS ou pas encore vérifié (RPPS 10003456789)"
    assert (unknown.code, unknown.err_reason) == ("AE", "unknown_rpps")
    assert (malformed.code, malformed.err_location) == ("AE", "PID^1^7")
    assert (no_gp.code, no_gp.err_reason) == ("AE", "no_gp")
    assert refused == [
        ("CHP000101", "unknown_rpps"),
        ("CHP000102", "unknown_rpps"),
        ("CHP000114", "bad_timestamp"),
        ("CHP000111", "no_gp"),
    ]
