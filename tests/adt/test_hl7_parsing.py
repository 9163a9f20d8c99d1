"""Reading PAM-FR ADT messages, the mapping, and the ACKs (no I/O)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from miss_adt.acks import Outcome, build_ack
from miss_adt.hl7_events import Hl7Error, decode, header_of, parse
from miss_adt.mapping import MappingError, load_mapping, parse_mapping

from tests.support.adt_feed import message, parse_ack

PARIS = ZoneInfo("Europe/Paris")


def read(name: str, **subs: str):  # type: ignore[no-untyped-def]
    return parse(decode(message(name, **subs))[0], PARIS)


def ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y%m%d%H%M").replace(tzinfo=PARIS).timestamp() * 1000)


def test_admission_with_pd1_reads_patient_gp_ward_and_movement() -> None:
    msg = read("a01_admission_pd1")
    assert (msg.control_id, msg.trigger, msg.version, msg.charset) == ("CHP000101", "A01", "2.5", "8859/1")
    p = msg.patient
    # Latin-1 on the wire (MSH-18 8859/1), the IPP and not the INS.
    assert (p.family, p.given, p.sex, p.birth_date, p.ipp) == (
        "LEFÈVRE",
        "Hélène",
        "F",
        "19480621",
        "4000123456",
    )
    assert p.ipp_authority == "CH-PROVINS" and not p.deceased
    assert msg.gp is not None and (msg.gp.rpps, msg.gp.family, msg.gp.source) == (
        "10003456789",
        "DUPONT",
        "PD1-4",
    )
    assert msg.movement is not None
    assert (msg.movement.id, msg.movement.action) == ("MVT000101^CH-PROVINS", "INSERT")
    assert (msg.ward_code, msg.ward_name, msg.room, msg.bed) == ("4001", "Cardiologie", "012", "1")
    assert msg.at == ms("202403151025")  # ZBE-2, local time


def test_gp_from_rol_odrp_and_from_a_national_ps_identifier() -> None:
    msg = read("a04_admission_rol")
    assert msg.gp is not None and (msg.gp.rpps, msg.gp.source) == ("10004567890", "ROL ODRP")
    fhcp = read("a01_no_zbe_rol_fhcp")  # UTF-8, no ZBE, ROL FHCP with « 8 » + RPPS
    assert fhcp.gp is not None and (fhcp.gp.rpps, fhcp.gp.source) == ("10003456789", "ROL FHCP")
    assert fhcp.movement is None and fhcp.patient.family == "NGUYỄN"
    assert fhcp.at == ms("202403192145")  # EVN-6


def test_rol_odrp_wins_over_pd1_and_a_deleted_rol_is_skipped() -> None:
    text = decode(message("a01_admission_pd1"))[0]
    rol = "ROL|1|UC|ODRP^Médecin traitant|10004567890^ROUX^Alain^^^DR^^^^L^^^RPPS"
    assert parse(text.replace("\rPV1|", f"\r{rol}\rPV1|"), PARIS).gp.rpps == "10004567890"  # type: ignore[union-attr]
    deleted = rol.replace("|UC|", "|DE|")
    assert parse(text.replace("\rPV1|", f"\r{deleted}\rPV1|"), PARIS).gp.rpps == "10003456789"  # type: ignore[union-attr]


def test_no_gp_and_a_gp_known_only_by_adeli() -> None:
    assert read("a01_no_gp").gp is None
    adeli = read("a01_gp_adeli")
    assert adeli.gp is None and [d.family for d in adeli.named_without_rpps] == ["BLANC"]


def test_death_discharge_and_cancel() -> None:
    death = read("a03_death")
    assert death.patient.deceased and death.patient.death_at == ms("202403220520")
    assert death.disposition == "9" and death.discharge_at == ms("202403220520")
    cancel = read("a13_cancel_discharge")
    assert cancel.is_cancel and cancel.movement is not None
    assert (cancel.movement.id, cancel.movement.action, cancel.movement.original_trigger) == (
        "MVT000104^CH-PROVINS",
        "CANCEL",
        "A03",
    )


@pytest.mark.parametrize(
    ("name", "subs", "reason", "location", "ack"),
    [
        ("malformed_no_pid", {}, "missing_segment", "PID", "AE"),
        ("malformed_bad_date", {}, "bad_timestamp", "PID^1^7", "AE"),
        ("a01_admission_pd1", {"|INSERT|": "|CANCEL|"}, "bad_value", "ZBE^1^4", "AE"),
        ("a01_admission_pd1", {"|CHP000101|": "||"}, "missing_field", "MSH^1^10", "AE"),
        ("a01_admission_pd1", {"ADT^A01^ADT_A01": "ORU^R01^ORU_R01"}, "unsupported_type", "MSH^1^9", "AR"),
        ("a01_admission_pd1", {"|2.5^FRA^2.5|": "|3.0|"}, "unsupported_version", "MSH^1^12", "AR"),
        ("a01_admission_pd1", {"4000123456^^^": "^^^"}, "missing_field", "PID^1^3", "AE"),
        ("a03_death", {"|Y\r": "|X\r"}, "bad_value", "PID^1^30", "AE"),
    ],
)
def test_malformed_messages_name_the_reason(
    name: str, subs: dict[str, str], reason: str, location: str, ack: str
) -> None:
    with pytest.raises(Hl7Error) as caught:
        read(name, **subs)
    assert (caught.value.reason, caught.value.location, caught.value.ack) == (reason, location, ack)


def test_not_hl7_at_all() -> None:
    with pytest.raises(Hl7Error) as caught:
        decode(b"GET / HTTP/1.1\r\n\r\n")
    assert caught.value.reason == "no_msh"


def test_default_mapping_makes_french_notices() -> None:
    mapping = load_mapping()
    admission = mapping.decide(read("a01_admission_pd1")).notice
    assert admission is not None
    assert admission.title == "Admission de Mme LEFÈVRE Hélène" and admission.event == "admission"
    assert dict(admission.fields) == {
        "Patient": "Mme LEFÈVRE Hélène",
        "Né(e) le": "21/06/1948",
        "IPP": "4000123456",
        "Établissement": "CH-PROVINS",
        "Service": "Cardiologie",
        "Événement": "Admission",
        "Date": "15/03/2024 à 10h25",
    }
    assert admission.reply == "Bureau des admissions : 01 64 60 40 00"
    discharge = mapping.decide(read("a03_discharge")).notice
    assert discharge is not None and dict(discharge.fields)["Mode de sortie"] == "Domicile"
    death = mapping.decide(read("a03_death"))
    assert death.event == "death" and death.notice is not None
    assert death.notice.title == "Décès de M. MOREAU Jacques"
    assert dict(death.notice.fields)["Décès le"] == "22/03/2024 à 05h20"
    update = mapping.decide(read("a08_update"))
    assert update.notice is None and "désactivés" in update.reason


def test_death_from_the_exit_mode_alone_and_from_an_update() -> None:
    mapping = load_mapping()
    by_mode = read("a03_death", **{"|Y\r": "|N\r", "20240322052000|N": "|N"})
    assert not by_mode.patient.deceased and mapping.decide(by_mode).event == "death"
    update = read("a08_update", **{"|N\r": "|Y\r"})
    assert mapping.decide(update).event == "death"


def test_ward_filters_and_a_custom_template(tmp_path: Path) -> None:
    text = (Path(load_mapping().source)).read_text(encoding="utf-8")
    custom = tmp_path / "m.toml"
    custom.write_text(
        text.replace("exclude = []", 'exclude = ["4105"]').replace(
            'admission = "Admission de {patient}"',
            'admission = "{event} : {family} ({ward_code}, ch. {room})"',
        ),
        encoding="utf-8",
    )
    mapping = load_mapping(custom)
    assert mapping.decide(read("a01_admission_pd1")).notice.title == "Admission : LEFÈVRE (4001, ch. 012)"  # type: ignore[union-attr]
    transfer = mapping.decide(read("a02_transfer"))
    assert transfer.notice is None and "4105" in transfer.reason


def test_a_mapping_with_an_unknown_placeholder_is_refused_at_load() -> None:
    data = {"titles": dict.fromkeys(("admission", "transfer", "discharge", "death", "update"), "{patient}")}
    parse_mapping(data)
    data["titles"]["death"] = "Décès de {nir}"
    with pytest.raises(MappingError, match="nir"):
        parse_mapping(data)
    with pytest.raises(MappingError, match="events"):
        parse_mapping({**data, "events": {"birth": True}})


def test_ack_swaps_sender_and_receiver_and_names_the_error() -> None:
    header = header_of(decode(message("a01_admission_pd1"))[0])
    ok = parse_ack(build_ack(Outcome("AA", "notice sent"), header, PARIS))
    assert (ok.code, ok.control_id, ok.note, ok.err_code) == ("AA", "CHP000101", "notice sent", "")
    assert ok.msh[2:6] == (
        "MISS-ADT",
        "MISS",
        "SIH-PROVINS^1.2.250.1.213.1.4.8.1^ISO",
        "CH-PROVINS^1.2.250.1.213.1.4.8^ISO",
    )
    assert (ok.msh[8], ok.msh[10], ok.msh[11], ok.msh[17]) == ("ACK^A01^ACK", "P", "2.5", "8859/1")
    refused = Outcome("AE", "refused", "no_gp", 101, "PD1^1^4", "aucun médecin | traitant")
    ae = parse_ack(build_ack(refused, header))
    assert (ae.code, ae.err_location, ae.err_code, ae.err_reason) == ("AE", "PD1^1^4", "101", "no_gp")
    assert ae.err_text == "aucun médecin \\F\\ traitant"  # the field separator escaped
