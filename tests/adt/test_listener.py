"""miss-adt over real MLLP sockets, against a scripted hub (FakeSender):
the ACK policy, idempotency, cancels, the spool and the audit log. The
same against the real hub: test_adt_hub.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from miss_adt.acks import Outcome
from miss_adt.sender import StaticLink
from miss_adt.service import SPOOLED
from miss_adt.store import AdtStore
from miss_client.errors import RequestTimeout, UnverifiedPeer

from tests.support.adt_feed import FakeSender, MllpClient, lost, message, running_adt


async def until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_each_event_is_acked_aa_once_the_notice_is_sent(tmp_path: Path) -> None:
    hub = FakeSender()
    async with running_adt(tmp_path, StaticLink(hub)) as adt:
        feed = await MllpClient.open(adt.port)
        for name in ("a01_admission_pd1", "a04_admission_rol", "a02_transfer", "a03_discharge", "a03_death"):
            ack = await feed.send(message(name))
            assert (ack.code, ack.note) == ("AA", "notice sent"), name
        ack = await feed.send(message("a08_update"))
        assert ack.code == "AA" and ack.note.startswith("ignored:")
        await feed.close()
    assert [(rpps, n.event) for _, rpps, n in hub.sent] == [
        ("10003456789", "admission"),
        ("10004567890", "admission"),
        ("10003456789", "transfer"),
        ("10003456789", "discharge"),
        ("10003456789", "death"),
    ]
    assert [key for key, _, _ in hub.sent][:2] == [
        "adt:MVT000101^CH-PROVINS:A01",
        "adt:MVT000102^CH-PROVINS:A04",
    ]


async def test_a_resent_message_and_a_resent_movement_make_one_notice(tmp_path: Path) -> None:
    hub = FakeSender()
    async with running_adt(tmp_path, StaticLink(hub)) as adt:
        feed = await MllpClient.open(adt.port)
        first = await feed.send(message("a01_admission_pd1"))
        again = await feed.send(message("a01_admission_pd1"))  # the feed did not see the ACK
        renamed = await feed.send(message("a01_admission_pd1", CHP000101="CHP900101"))
        await feed.close()
    assert (first.code, first.note) == (again.code, again.note) == ("AA", "notice sent")
    assert again.control_id == "CHP000101" and again.msh[9] != first.msh[9]  # a fresh ACK, same answer
    assert (renamed.code, renamed.note) == ("AA", "duplicate: movement already notified")
    assert len(hub.sent) == 1
    assert [e["event"] for e in adt.audit.events] == ["resent", "duplicate"]


async def test_refusals_are_ae_with_err_and_audited_and_nothing_is_sent(tmp_path: Path) -> None:
    hub = FakeSender(unknown={"10004567890"})
    async with running_adt(tmp_path, StaticLink(hub)) as adt:
        feed = await MllpClient.open(adt.port)
        # An attestation that does not verify (a hub that lies, another authority).
        hub.fail_next = [UnverifiedPeer("u_x", "signature", "not signed by the authority")]
        unverified = await feed.send(message("a02_transfer"))
        malformed = await feed.send(message("malformed_no_pid"))
        no_gp = await feed.send(message("a01_no_gp"))
        adeli = await feed.send(message("a01_gp_adeli"))
        unknown = await feed.send(message("a04_admission_rol"))
        oru = await feed.send(message("a01_admission_pd1", **{"ADT^A01^ADT_A01": "ORU^R01^ORU_R01"}))
        await feed.close()
    assert (malformed.code, malformed.err_code, malformed.err_reason, malformed.err_location) == (
        "AE",
        "100",
        "missing_segment",
        "PID",
    )
    assert "PID" in malformed.err_text
    assert (no_gp.code, no_gp.err_reason, no_gp.err_location) == ("AE", "no_gp", "PD1^1^4")
    assert (adeli.code, adeli.err_reason) == ("AE", "no_gp") and "RPPS" in adeli.err_text
    assert (unknown.code, unknown.err_code, unknown.err_reason) == ("AE", "204", "unknown_rpps")
    assert "10004567890" in unknown.err_text
    assert (oru.code, oru.err_code) == ("AR", "200")
    assert (unverified.code, unverified.err_reason) == ("AE", "unverified_gp")
    assert hub.sent == []
    refused = [e for e in adt.audit.events if e["event"] == "refused"]
    assert [(e["control_id"], e["reason"]) for e in refused] == [
        ("CHP000103", "unverified_gp"),
        ("CHP000113", "missing_segment"),
        ("CHP000111", "no_gp"),
        ("CHP000112", "no_gp"),
        ("CHP000102", "unknown_rpps"),
        ("CHP000101", "unsupported_type"),
    ]
    assert refused[4]["rpps"] == "10004567890"


async def test_audit_log_file_never_holds_patient_data(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    hub = FakeSender(unknown={"10003456789"})
    async with running_adt(tmp_path, StaticLink(hub), audit_path=log) as adt:
        feed = await MllpClient.open(adt.port)
        for name in ("a01_admission_pd1", "a03_death", "a01_no_gp", "malformed_bad_date"):
            assert (await feed.send(message(name))).code == "AE"
        await feed.close()
    text = log.read_text(encoding="utf-8")
    assert [json.loads(line)["event"] for line in text.splitlines()] == ["refused"] * 4
    for secret in (
        "LEFÈVRE",
        "Hélène",
        "MOREAU",
        "PETIT",
        "4000123456",
        "19480621",
        "1948-06-21",
        "1480675123456",
    ):
        assert secret not in text
    assert oct(log.stat().st_mode & 0o777) == "0o600"


async def test_a13_recalls_the_discharge_notice_and_a11_the_admission(tmp_path: Path) -> None:
    hub = FakeSender()
    async with running_adt(tmp_path, StaticLink(hub)) as adt:
        feed = await MllpClient.open(adt.port)
        await feed.send(message("a01_admission_pd1"))
        await feed.send(message("a03_discharge"))
        a13 = await feed.send(message("a13_cancel_discharge"))
        a13_again = await feed.send(message("a13_cancel_discharge", CHP000109="CHP900109"))
        a11 = await feed.send(message("a11_cancel_admission"))
        a12 = await feed.send(message("a12_cancel_transfer"))  # its transfer was never notified
        await feed.close()
        assert adt.store.by_key("adt:MVT000101^CH-PROVINS:A01").state == "recalled"  # type: ignore[union-attr]
    assert (a13.code, a13.note) == ("AA", "notice recalled")
    assert a13_again.note == "duplicate: notice already recalled"
    assert a12.note.startswith("nothing to recall")
    assert hub.recalled == [hub.ids["adt:MVT000104^CH-PROVINS:A03"], hub.ids["adt:MVT000101^CH-PROVINS:A01"]]
    assert a11.code == "AA"


async def test_a_cancel_without_zbe_finds_the_notice_of_the_same_visit(tmp_path: Path) -> None:
    hub = FakeSender()
    async with running_adt(tmp_path, StaticLink(hub)) as adt:
        feed = await MllpClient.open(adt.port)
        assert (await feed.send(message("a01_no_zbe_rol_fhcp"))).note == "notice sent"
        cancel = message(
            "a01_no_zbe_rol_fhcp", CHP000110="CHP000210", **{"ADT^A01^ADT_A01": "ADT^A11^ADT_A09"}
        )
        assert (await feed.send(cancel)).note == "notice recalled"
        await feed.close()
    assert hub.recalled == [hub.ids["adt:msg:CHP000110"]]


async def test_a_second_death_of_the_same_patient_is_not_notified(tmp_path: Path) -> None:
    hub = FakeSender()
    async with running_adt(tmp_path, StaticLink(hub)) as adt:
        feed = await MllpClient.open(adt.port)
        await feed.send(message("a03_death"))
        update = message("a08_update", CHP000106="CHP000306", **{"4000123456": "4000345678", "|N\r": "|Y\r"})
        ack = await feed.send(update)
        await feed.close()
    assert (ack.code, ack.note) == ("AA", "duplicate: death already notified")
    assert [n.event for _, _, n in hub.sent] == ["death"]


async def test_hub_down_spools_acks_aa_then_delivers_each_once(tmp_path: Path) -> None:
    hub = FakeSender()
    link = StaticLink(None)
    async with running_adt(tmp_path, link) as adt:
        feed = await MllpClient.open(adt.port)
        for i in range(20):
            ack = await feed.send(message("a01_admission_pd1", CHP000101=f"B{i:05d}", MVT000101=f"MB{i:05d}"))
            assert (ack.code, ack.note) == ("AA", "spooled: hub unreachable, notice kept and retried")
        # A cancel of a spooled notice never tried: it is just dropped.
        cancel = message("a11_cancel_admission", CHP000107="BC", MVT000101="MB00003")
        assert (await feed.send(cancel)).note == "notice cancelled before it was sent"
        assert adt.store.spooled == 19
        link.set(hub)
        await until(lambda: adt.store.spooled == 0)
        await feed.close()
    assert len(hub.sent) == 19 and len({key for key, _, _ in hub.sent}) == 19
    assert "adt:MB00003^CH-PROVINS:A01" not in hub.ids
    assert sum(e["event"] == "spool_delivered" for e in adt.audit.events) == 19


async def test_a_send_that_times_out_is_spooled_and_its_cancel_recalled_after_it(tmp_path: Path) -> None:
    hub = FakeSender(fail_next=[RequestTimeout("no answer")])
    link = StaticLink(hub)
    async with running_adt(tmp_path, link) as adt:
        feed = await MllpClient.open(adt.port)
        assert (await feed.send(message("a01_admission_pd1"))).note.startswith("spooled")
        # Tried once: the hub may have it, so the cancel must recall it, after it.
        link._sender = None
        assert (await feed.send(message("a11_cancel_admission"))).note.startswith("spooled")
        link.set(hub)
        await until(lambda: adt.store.spooled == 0)
        await feed.close()
        assert adt.store.by_key("adt:MVT000101^CH-PROVINS:A01").state == "recalled"  # type: ignore[union-attr]
    assert hub.recalled == [hub.ids["adt:MVT000101^CH-PROVINS:A01"]]


async def test_spool_full_is_ar_and_the_message_is_taken_later(tmp_path: Path) -> None:
    link = StaticLink(None)
    async with running_adt(tmp_path, link, spool_max=2) as adt:
        feed = await MllpClient.open(adt.port)
        for i in range(2):
            await feed.send(message("a01_admission_pd1", CHP000101=f"F{i}", MVT000101=f"MF{i}"))
        full = await feed.send(message("a01_admission_pd1"))
        assert (full.code, full.err_reason) == ("AR", "spool_full")
        hub = FakeSender()
        link.set(hub)
        await until(lambda: adt.store.spooled == 0)
        again = await feed.send(message("a01_admission_pd1"))  # the feed resends it
        await feed.close()
    assert (again.code, again.note) == ("AA", "notice sent")
    assert len(hub.sent) == 3


async def test_a_refusal_from_the_spool_is_dropped_and_audited(tmp_path: Path) -> None:
    hub = FakeSender(unknown={"10003456789"})
    link = StaticLink(None)
    async with running_adt(tmp_path, link) as adt:
        feed = await MllpClient.open(adt.port)
        assert (await feed.send(message("a01_admission_pd1"))).note.startswith("spooled")
        link.set(hub)
        await until(lambda: adt.store.spooled == 0)
        await feed.close()
    [event] = [e for e in adt.audit.events if e["event"] == "spool_refused"]
    assert (event["control_id"], event["reason"], event["rpps"]) == (
        "CHP000101",
        "unknown_rpps",
        "10003456789",
    )


async def test_old_answers_are_forgotten_but_not_the_spool(tmp_path: Path) -> None:
    async with running_adt(tmp_path, StaticLink(None)) as adt:
        feed = await MllpClient.open(adt.port)
        await feed.send(message("a03_death"))
        await feed.send(message("a01_no_gp"))
        await feed.close()
        adt.store.db.execute("UPDATE answers SET at = 0")
        adt.store.db.execute("UPDATE notices SET at = 0")
        assert adt.store.prune() == 2  # the two answers; the death notice is still spooled
        assert adt.store.answer("CHP000111") is None and adt.store.spooled == 1


async def test_the_spool_survives_a_restart(tmp_path: Path) -> None:
    async with running_adt(tmp_path, StaticLink(None)) as adt:
        feed = await MllpClient.open(adt.port)
        await feed.send(message("a03_death"))
        await feed.close()
    store = AdtStore(tmp_path / "adt" / "miss-adt.db")
    try:
        [entry] = store.next_entries()
        assert entry.notice is not None and entry.notice.title == "Décès de M. MOREAU Jacques"
        assert (entry.rpps, entry.control_id, store.spooled) == ("10003456789", "CHP000105", 1)
        assert store.answer("CHP000105") == Outcome("AA", SPOOLED)
    finally:
        store.close()
    hub = FakeSender()
    async with running_adt(tmp_path, StaticLink(hub)) as adt:
        await until(lambda: adt.store.spooled == 0)
    assert [n.event for _, _, n in hub.sent] == ["death"]


async def test_transient_errors_keep_retrying_with_backoff(tmp_path: Path) -> None:
    hub = FakeSender()
    link = StaticLink(None)
    async with running_adt(tmp_path, link, retry_max=0.2) as adt:
        feed = await MllpClient.open(adt.port)
        await feed.send(message("a02_transfer"))
        hub.fail_next = [lost(), lost()]
        link.set(hub)
        await until(lambda: adt.store.spooled == 0)
        await feed.close()
    assert len(hub.sent) == 1 and hub.fail_next == []
