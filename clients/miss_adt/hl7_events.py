"""Reading an HL7 v2.5 ADT message of the IHE PAM-FR profile into an
:class:`AdtMessage`, without I/O.

Theory of operation
-------------------
:func:`decode` turns the bytes of one MLLP block into text, with the
character set MSH-18 names (``8859/1`` is common in French feeds; without
MSH-18: UTF-8, else Latin-1), and normalises segment separators to CR.
:func:`parse` splits it with the ``hl7`` library and checks what miss-adt
needs, raising :class:`Hl7Error` for anything it cannot use; the error
carries the HL7 table 0357 code, the ERR-2 location, the ACK code to answer
with (``AE``, or ``AR`` for a message that is not ADT or not version 2) and
a French text for ERR-8.

What is read:

* MSH-3..6 (applications and facilities: swapped in the ACK), MSH-7,
  MSH-9 (``ADT^A01``...; EVN-1 when MSH-9.2 is empty), MSH-10 (the control
  id, required), MSH-11, MSH-12 (``2.x``), MSH-18;
* EVN-2 (recorded) and EVN-6 (occurred): the event time when ZBE-2 is absent;
* PID-3 (the IPP: the repetition of identifier type ``PI``, else the first
  without type ``INS``/``NH``/``INS-C``, with its assigning authority),
  PID-5 (the name of type ``L``, else the first), PID-7, PID-8, PID-29,
  PID-30 (``Y``/``N``);
* PD1-4 and ROL (ROL-3 ``ODRP`` or ``FHCP``, ROL-4; ROL-2 ``DE`` ignored):
  the GP (:func:`choose_gp`);
* PV1-3 (point of care, room, bed), PV1-19 (visit number), PV1-36
  (discharge disposition, PAM-FR « mode de sortie »), PV1-45;
* ZBE-1 (movement id), ZBE-2, ZBE-4 (``INSERT``/``UPDATE``/``CANCEL``),
  ZBE-6 (original trigger), ZBE-7 (responsible medical ward: UF name and code).

Timestamps without an offset are in the feed's time zone (``tz``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import hl7

__all__ = [
    "CANCELS",
    "HANDLED",
    "RPPS_OID",
    "AdtMessage",
    "Hl7Error",
    "Movement",
    "Patient",
    "Physician",
    "choose_gp",
    "decode",
    "parse",
    "parse_ts",
]

#: The trigger events miss-adt acts on.
HANDLED = frozenset({"A01", "A02", "A03", "A04", "A08", "A11", "A12", "A13"})
#: What each cancel cancels.
CANCELS: dict[str, tuple[str, ...]] = {"A11": ("A01", "A04"), "A12": ("A02",), "A13": ("A03",)}
#: The OID of French health professionals' national identifiers (RPPS, ADELI).
RPPS_OID = "1.2.250.1.71.4.2.1"
#: ROL-3 roles that name the patient's GP: PAM-FR's « médecin traitant
#: officiellement déclaré », then HL7's family health care professional.
GP_ROLES = ("ODRP", "FHCP")

_CHARSETS = {
    "": None,
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
}
_TS_RE = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?")
_RPPS_RE = re.compile(r"\d{11}")


class Hl7Error(Exception):
    """A message miss-adt cannot use. ``code``: HL7 table 0357 (100 segment
    sequence error, 101 required field missing, 102 data type error, 103
    table value not found, 200 unsupported message type, 201 unsupported
    event, 203 unsupported version); ``location``: ERR-2 (``PID^1^3``...);
    ``ack``: ``AE`` or ``AR``; ``reason``: a short stable name for logs;
    ``text``: French, for ERR-8. ``control_id``: MSH-10 if it was read."""

    def __init__(
        self,
        reason: str,
        text: str,
        *,
        code: int = 101,
        location: str = "",
        ack: str = "AE",
        control_id: str = "",
    ) -> None:
        super().__init__(f"{reason}: {text}")
        self.reason = reason
        self.text = text
        self.code = code
        self.location = location
        self.ack = ack
        self.control_id = control_id


@dataclass(frozen=True, slots=True)
class Patient:
    """What the notice says of the patient. ``birth_date`` is ``YYYYMMDD``
    (or shorter, as sent); ``death_at`` ms since the epoch."""

    ipp: str
    ipp_authority: str
    family: str
    given: str
    birth_date: str
    sex: str
    death_at: int | None
    deceased: bool


@dataclass(frozen=True, slots=True)
class Physician:
    """A physician named by PD1-4 or ROL-4 (``source``). ``rpps``: the
    11-digit RPPS number, or None if the identifier is not an RPPS."""

    rpps: str | None
    family: str
    given: str
    source: str


@dataclass(frozen=True, slots=True)
class Movement:
    """The ZBE segment: ``id`` is ZBE-1 as ``id^namespace``."""

    id: str
    at: int | None
    action: str
    original_trigger: str
    ward_code: str
    ward_name: str


@dataclass(frozen=True, slots=True)
class AdtMessage:
    """One ADT message, checked (see the module docstring)."""

    control_id: str
    trigger: str
    version: str
    processing_id: str
    charset: str
    sending_app: str
    sending_facility: str
    receiving_app: str
    receiving_facility: str
    at: int
    patient: Patient
    visit: str
    ward_code: str
    ward_name: str
    room: str
    bed: str
    disposition: str
    discharge_at: int | None
    movement: Movement | None
    gp: Physician | None
    #: Physicians named without an RPPS (why ``gp`` may be None).
    named_without_rpps: tuple[Physician, ...]

    @property
    def is_cancel(self) -> bool:
        return self.trigger in CANCELS


def decode(block: bytes) -> tuple[str, str]:
    """The text of an MLLP block, decoded with MSH-18's character set and
    with CR as the only segment separator, and the codec used (for the
    ACK). Raises Hl7Error if the block does not start with MSH or names a
    character set this does not know."""
    text = block.replace(b"\r\n", b"\r").replace(b"\n", b"\r").lstrip(b"\r")
    if not text.startswith(b"MSH") or len(text) < 8:
        raise Hl7Error("no_msh", "le message ne commence pas par un segment MSH", code=100, location="MSH")
    sep = text[3:4]
    msh = text.split(b"\r", 1)[0].split(sep)
    name = msh[17].decode("ascii", "replace").split("~")[0].strip().upper() if len(msh) > 17 else ""
    if name not in _CHARSETS:
        raise Hl7Error("charset", f"jeu de caractères inconnu : {name}", code=103, location="MSH^1^18")
    codec = _CHARSETS[name]
    if codec is None:
        try:
            return text.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            return text.decode("latin-1"), "latin-1"
    try:
        return text.decode(codec), codec
    except UnicodeDecodeError as exc:
        raise Hl7Error(
            "charset", f"octets invalides pour le jeu {name}", code=102, location="MSH^1^18"
        ) from exc


def parse_ts(value: str, tz: ZoneInfo, where: str) -> int | None:
    """An HL7 TS/DTM (``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]``) as ms
    since the epoch, None if empty; without an offset, in ``tz``. Raises
    Hl7Error (102) naming ``where`` if it is not one."""
    if not value:
        return None
    m = _TS_RE.fullmatch(value)
    if m is None:
        raise Hl7Error("bad_timestamp", f"date invalide en {where}", code=102, location=where)
    year, month, day, hour, minute, second, frac, offset = m.groups()
    zone: tzinfo = tz
    if offset:
        sign = 1 if offset[0] == "+" else -1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    try:
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((frac or "0").ljust(6, "0")[:6]),
            tzinfo=zone,
        )
    except ValueError as exc:
        raise Hl7Error("bad_timestamp", f"date invalide en {where}", code=102, location=where) from exc
    return int(moment.timestamp() * 1000)


class _Reader:
    """Safe access to one parsed message: missing parts read as ``""``."""

    def __init__(self, message: Any) -> None:
        self.message = message

    def has(self, segment: str) -> bool:
        try:
            self.message.segments(segment)
        except KeyError:
            return False
        return True

    def segments(self, segment: str) -> list[Any]:
        try:
            return list(self.message.segments(segment))
        except KeyError:
            return []

    def get(self, segment: str, field: int, rep: int = 1, comp: int = 1, sub: int = 1, nth: int = 1) -> str:
        try:
            seg = self.message.segments(segment)(nth)
        except (KeyError, IndexError):
            return ""
        return self.field_of(seg, field, rep, comp, sub)

    def raw(self, segment: str, field: int) -> str:
        """Field ``field`` of the first ``segment`` as sent (components and
        escapes kept): what an ACK copies."""
        try:
            return str(self.message.segments(segment)(1)(field))
        except (KeyError, IndexError):
            return ""

    def field_of(self, seg: Any, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        try:
            value = seg.extract_field(None, field, rep, comp, sub)
        except (IndexError, KeyError):
            return ""
        return str(value).strip()

    def repetitions(self, seg: Any, field: int) -> int:
        try:
            value = seg(field)
        except IndexError:
            return 0
        if isinstance(value, hl7.Field):
            return len(value)
        return 1 if str(value) else 0


def _xcn(reader: _Reader, seg: Any, field: int, rep: int, source: str) -> Physician | None:
    """A physician from an XCN (``id^family^given^...^authority(9)^...^type(13)``),
    None if the repetition is empty. The id is an RPPS if the identifier
    type (XCN-13) is ``RPPS``, or the authority is the national PS OID, or
    there is no type and it is 11 digits; a 12-digit national PS id ``8`` +
    RPPS is read as that RPPS."""
    ident = reader.field_of(seg, field, rep, 1)
    family = reader.field_of(seg, field, rep, 2)
    given = reader.field_of(seg, field, rep, 3)
    if not (ident or family):
        return None
    id_type = reader.field_of(seg, field, rep, 13).upper()
    oid = reader.field_of(seg, field, rep, 9, 2)
    rpps: str | None = None
    if id_type == "RPPS" or oid == RPPS_OID or (not id_type and _RPPS_RE.fullmatch(ident)):
        if len(ident) == 12 and ident.startswith("8") and ident.isdigit():
            ident = ident[1:]
        rpps = ident if _RPPS_RE.fullmatch(ident) else None
    return Physician(rpps, family, given, source)


def choose_gp(reader: _Reader) -> tuple[Physician | None, tuple[Physician, ...]]:
    """The patient's GP: the first physician with an RPPS among ROL segments
    of role ``ODRP``, then PD1-4's repetitions, then ROL ``FHCP`` (a ROL
    whose ROL-2 action is ``DE``, deleted, is skipped); and the physicians
    named without an RPPS."""
    candidates: list[Physician] = []
    rols = [seg for seg in reader.segments("ROL") if reader.field_of(seg, 2).upper() != "DE"]

    def from_rol(role: str) -> None:
        for seg in rols:
            if reader.field_of(seg, 3).upper() == role:
                for rep in range(1, reader.repetitions(seg, 4) + 1):
                    doc = _xcn(reader, seg, 4, rep, f"ROL {role}")
                    if doc is not None:
                        candidates.append(doc)

    from_rol(GP_ROLES[0])
    for seg in reader.segments("PD1")[:1]:
        for rep in range(1, reader.repetitions(seg, 4) + 1):
            doc = _xcn(reader, seg, 4, rep, "PD1-4")
            if doc is not None:
                candidates.append(doc)
    from_rol(GP_ROLES[1])
    with_rpps = [c for c in candidates if c.rpps]
    return (with_rpps[0] if with_rpps else None), tuple(c for c in candidates if not c.rpps)


def _patient(reader: _Reader, tz: ZoneInfo, control_id: str) -> Patient:
    pid = reader.segments("PID")[0]
    chosen = 0
    for rep in range(1, reader.repetitions(pid, 3) + 1):
        kind = reader.field_of(pid, 3, rep, 5).upper()
        if kind == "PI":
            chosen = rep
            break
        if not chosen and kind not in {"INS", "INS-C", "INS-NIR", "NH"} and reader.field_of(pid, 3, rep, 1):
            chosen = rep
    ipp = reader.field_of(pid, 3, chosen, 1) if chosen else ""
    if not ipp:
        raise Hl7Error(
            "missing_field",
            "champ obligatoire absent : PID-3 (IPP)",
            location="PID^1^3",
            control_id=control_id,
        )
    authority = reader.field_of(pid, 3, chosen, 4) or reader.field_of(pid, 3, chosen, 4, 2)
    name_rep = 1
    for rep in range(1, reader.repetitions(pid, 5) + 1):
        if reader.field_of(pid, 5, rep, 7).upper() == "L":
            name_rep = rep
            break
    family = reader.field_of(pid, 5, name_rep, 1)
    if not family:
        raise Hl7Error(
            "missing_field",
            "champ obligatoire absent : PID-5 (nom du patient)",
            location="PID^1^5",
            control_id=control_id,
        )
    birth = reader.field_of(pid, 7)
    parse_ts(birth, tz, "PID^1^7")
    sex = reader.field_of(pid, 8).upper()
    death_at = parse_ts(reader.field_of(pid, 29), tz, "PID^1^29")
    indicator = reader.field_of(pid, 30).upper()
    if indicator not in {"", "Y", "N"}:
        raise Hl7Error(
            "bad_value",
            f"valeur inconnue en PID-30 (indicateur de décès) : {indicator!r}",
            code=103,
            location="PID^1^30",
            control_id=control_id,
        )
    return Patient(
        ipp,
        authority,
        family,
        reader.field_of(pid, 5, name_rep, 2),
        birth[:8],
        sex,
        death_at,
        indicator == "Y",
    )


def _movement(reader: _Reader, trigger: str, tz: ZoneInfo, control_id: str) -> Movement | None:
    if not reader.has("ZBE"):
        return None
    ident = reader.get("ZBE", 1)
    if not ident:
        raise Hl7Error(
            "missing_field",
            "champ obligatoire absent : ZBE-1 (identifiant du mouvement)",
            location="ZBE^1^1",
            control_id=control_id,
        )
    namespace = reader.get("ZBE", 1, 1, 2)
    action = reader.get("ZBE", 4).upper()
    allowed = {"CANCEL"} if trigger in CANCELS else {"INSERT", "UPDATE"}
    if action not in allowed:
        raise Hl7Error(
            "bad_value",
            f"ZBE-4 (action) vaut {action!r} pour un {trigger} : attendu {' ou '.join(sorted(allowed))}",
            code=103,
            location="ZBE^1^4",
            control_id=control_id,
        )
    return Movement(
        f"{ident}^{namespace}" if namespace else ident,
        parse_ts(reader.get("ZBE", 2), tz, "ZBE^1^2"),
        action,
        reader.get("ZBE", 6).upper(),
        reader.get("ZBE", 7, 1, 10) or reader.get("ZBE", 7, 1, 3),
        reader.get("ZBE", 7, 1, 1),
    )


def parse(text: str, tz: ZoneInfo) -> AdtMessage:
    """Parse and check one ADT message (see the module docstring); raises
    Hl7Error. A trigger outside :data:`HANDLED` parses as far as MSH: the
    caller answers it without acting on it."""
    try:
        message = hl7.parse(text)
    except Exception as exc:  # the library raises assorted errors on garbage
        raise Hl7Error("unparsable", "message HL7 illisible", code=100, location="MSH") from exc
    reader = _Reader(message)
    if not reader.has("MSH"):
        raise Hl7Error("no_msh", "segment MSH absent", code=100, location="MSH")
    control_id = reader.get("MSH", 10)
    if not control_id:
        raise Hl7Error("missing_field", "champ obligatoire absent : MSH-10", location="MSH^1^10")
    msg_type = reader.get("MSH", 9).upper()
    if msg_type != "ADT":
        raise Hl7Error(
            "unsupported_type",
            f"type de message non pris en charge : {msg_type or '(vide)'}",
            code=200,
            location="MSH^1^9",
            ack="AR",
            control_id=control_id,
        )
    version = reader.get("MSH", 12)
    if not version.startswith("2."):
        raise Hl7Error(
            "unsupported_version",
            f"version HL7 non prise en charge : {version or '(vide)'}",
            code=203,
            location="MSH^1^12",
            ack="AR",
            control_id=control_id,
        )
    tz_msh = parse_ts(reader.get("MSH", 7), tz, "MSH^1^7")
    trigger = (reader.get("MSH", 9, 1, 2) or reader.get("EVN", 1)).upper()
    if not trigger:
        raise Hl7Error(
            "missing_field", "événement absent (MSH-9.2)", location="MSH^1^9", control_id=control_id
        )
    header: dict[str, Any] = {
        "control_id": control_id,
        "trigger": trigger,
        "version": version,
        "processing_id": reader.get("MSH", 11),
        "charset": reader.get("MSH", 18),
        "sending_app": reader.raw("MSH", 3),
        "sending_facility": reader.raw("MSH", 4),
        "receiving_app": reader.raw("MSH", 5),
        "receiving_facility": reader.raw("MSH", 6),
    }
    for segment in ("EVN", "PID", "PV1"):
        if not reader.has(segment):
            raise Hl7Error(
                "missing_segment",
                f"segment obligatoire absent : {segment}",
                code=100,
                location=segment,
                control_id=control_id,
            )
    patient = _patient(reader, tz, control_id)
    movement = _movement(reader, trigger, tz, control_id)
    recorded = parse_ts(reader.get("EVN", 2), tz, "EVN^1^2")
    occurred = parse_ts(reader.get("EVN", 6), tz, "EVN^1^6")
    discharge_at = parse_ts(reader.get("PV1", 45), tz, "PV1^1^45")
    at = next(
        (t for t in (movement.at if movement else None, occurred, recorded, tz_msh) if t is not None),
        None,
    )
    if at is None:
        raise Hl7Error(
            "missing_field",
            "aucune date d'événement (ZBE-2, EVN-6, EVN-2 ou MSH-7)",
            location="EVN^1^2",
            control_id=control_id,
        )
    gp, without = choose_gp(reader)
    ward_code = (movement.ward_code if movement else "") or reader.get("PV1", 3, 1, 1)
    ward_name = (movement.ward_name if movement else "") or reader.get("PV1", 3, 1, 9) or ward_code
    return AdtMessage(
        **header,
        at=at,
        patient=patient,
        visit=reader.get("PV1", 19),
        ward_code=ward_code,
        ward_name=ward_name,
        room=reader.get("PV1", 3, 1, 2),
        bed=reader.get("PV1", 3, 1, 3),
        disposition=reader.get("PV1", 36),
        discharge_at=discharge_at,
        movement=movement,
        gp=gp,
        named_without_rpps=without,
    )


def header_of(text: str) -> dict[str, str]:
    """MSH's fields an ACK needs, read leniently from a message :func:`parse`
    refused (empty strings where unreadable)."""
    try:
        reader = _Reader(hl7.parse(text))
    except Exception:
        return {}
    return {
        "control_id": reader.get("MSH", 10),
        "trigger": reader.get("MSH", 9, 1, 2),
        "processing_id": reader.get("MSH", 11),
        "charset": reader.get("MSH", 18),
        "sending_app": reader.raw("MSH", 3),
        "sending_facility": reader.raw("MSH", 4),
        "receiving_app": reader.raw("MSH", 5),
        "receiving_facility": reader.raw("MSH", 6),
    }
