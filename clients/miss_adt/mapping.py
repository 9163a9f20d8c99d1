"""The mapping: which ADT events make a notice, for which wards, and what
the notice says (a TOML file, ``default_mapping.toml`` beside this module
is the default and the documented example).

Theory of operation
-------------------
:func:`notice_event` names the notice event of a message: A01 and A04 are
an ``admission``, A02 a ``transfer``, A03 a ``discharge``, A08 an
``update``; an A03 or an A08 is a ``death`` instead when PID-30 is ``Y``
or PV1-36 (the discharge disposition, PAM-FR « mode de sortie ») is one of
``[death] dispositions`` (default ``9``, the PMSI « décès », and the
UB-04 patient statuses ``20``, ``40``, ``41``, ``42``, « expired »).
:meth:`Mapping.decide` then says whether that event notifies (``[events]``)
and whether the ward does (``[wards]``: ZBE-7's UF code, else PV1-3's point
of care, compared without case), and builds the :class:`~protocol.notices.Notice`
from the templates: ``[titles]`` per event, ``[[fields]]`` in order (a
field may be limited to some ``events``; a field whose value comes out
empty is left out), and ``reply``. Templates are ``str.format`` strings
whose placeholders are the names of :data:`PLACEHOLDERS`; anything else is
refused when the file is loaded (:class:`MappingError`), never when a
message arrives.
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from protocol.notices import MAX_TITLE, MAX_VALUE, Notice, event_label

from .hl7_events import AdtMessage

__all__ = [
    "DEFAULT_MAPPING",
    "NOTICE_EVENTS",
    "PLACEHOLDERS",
    "Decision",
    "Mapping",
    "MappingError",
    "load_mapping",
    "notice_event",
]

DEFAULT_MAPPING = Path(__file__).with_name("default_mapping.toml")
NOTICE_EVENTS = ("admission", "transfer", "discharge", "death", "update")
_BY_TRIGGER = {"A01": "admission", "A04": "admission", "A02": "transfer", "A03": "discharge", "A08": "update"}
#: PMSI « mode de sortie » (PAM-FR PV1-36) labels; another code is shown as sent.
DISPOSITIONS = {"6": "Mutation", "7": "Transfert", "8": "Domicile", "9": "Décès"}
_SEXES = {"M": "Homme", "F": "Femme", "U": "Inconnu", "O": "Autre", "A": "Ambigu", "N": "Non applicable"}
_CIVILITY = {"M": "M.", "F": "Mme"}

#: The placeholders a template may use, with what they hold.
PLACEHOLDERS: dict[str, str] = {
    "patient": "civilité, NOM et prénom (« M. DUPONT Jean »)",
    "civility": "« M. », « Mme » ou vide (PID-8)",
    "family": "nom (PID-5.1)",
    "given": "prénom (PID-5.2)",
    "birth_date": "date de naissance JJ/MM/AAAA (PID-7)",
    "sex": "sexe en clair (PID-8)",
    "ipp": "IPP (PID-3)",
    "ipp_authority": "autorité d'affectation de l'IPP (PID-3.4)",
    "visit": "numéro de venue (PV1-19)",
    "ward": "service / UF : libellé (ZBE-7.1, sinon PV1-3)",
    "ward_code": "code de l'UF (ZBE-7.10, sinon PV1-3.1)",
    "room": "chambre (PV1-3.2)",
    "bed": "lit (PV1-3.3)",
    "event": "libellé de l'événement (« Admission »...)",
    "date": "date de l'événement JJ/MM/AAAA à HHhMM (ZBE-2, sinon EVN-6, EVN-2, MSH-7)",
    "discharge_date": "date de sortie (PV1-45)",
    "death_date": "date du décès (PID-29)",
    "disposition": "mode de sortie en clair (PV1-36)",
    "facility": "établissement émetteur (MSH-4.1)",
}


class MappingError(ValueError):
    """The mapping file is unusable; ``str()`` says where and why."""


@dataclass(frozen=True, slots=True)
class FieldTemplate:
    label: str
    value: str
    events: frozenset[str] | None  # None: every event


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a message: ``notice`` to send (``event`` its name),
    or None and ``reason`` (why nothing is sent, for the ACK and the log)."""

    event: str | None
    notice: Notice | None
    reason: str = ""


@dataclass(frozen=True)
class Mapping:
    """A loaded mapping file (see the module docstring)."""

    tz: ZoneInfo
    events: dict[str, bool]
    include: frozenset[str]
    exclude: frozenset[str]
    death_dispositions: frozenset[str]
    titles: dict[str, str]
    fields: tuple[FieldTemplate, ...]
    reply: str | None
    source: str = field(default="")

    def decide(self, msg: AdtMessage) -> Decision:
        """The notice for ``msg`` (not a cancel), or why there is none."""
        event = notice_event(msg, self.death_dispositions)
        if event is None:
            return Decision(None, None, f"événement {msg.trigger} non traité")
        if not self.events.get(event, False):
            return Decision(event, None, f"avis « {event_label(event)} » désactivés par le mapping")
        ward = msg.ward_code.upper()
        if self.include and ward not in self.include:
            return Decision(event, None, f"UF {msg.ward_code or '(inconnue)'} hors des UF retenues")
        if ward and ward in self.exclude:
            return Decision(event, None, f"UF {msg.ward_code} exclue par le mapping")
        values = placeholder_values(msg, event, self.tz)
        title = self.titles[event].format_map(values)[:MAX_TITLE] or event_label(event)
        pairs: list[tuple[str, str]] = []
        for f in self.fields:
            if f.events is not None and event not in f.events:
                continue
            value = f.value.format_map(values).strip()
            if value:
                pairs.append((f.label, value[:MAX_VALUE]))
        return Decision(event, Notice(title, event, msg.at, tuple(pairs), self.reply))


def notice_event(msg: AdtMessage, death_dispositions: frozenset[str]) -> str | None:
    """The notice event of ``msg`` (see the module docstring), None for a
    trigger that makes none (cancels included)."""
    event = _BY_TRIGGER.get(msg.trigger)
    if event in {"discharge", "update"} and (
        msg.patient.deceased or (msg.disposition and msg.disposition in death_dispositions)
    ):
        return "death"
    return event


def _date(ms: int | None, tz: ZoneInfo, with_time: bool = True) -> str:
    if ms is None:
        return ""
    moment = datetime.fromtimestamp(ms / 1000, tz)
    return moment.strftime("%d/%m/%Y à %Hh%M" if with_time else "%d/%m/%Y")


def _birth(value: str) -> str:
    if len(value) >= 8:
        return f"{value[6:8]}/{value[4:6]}/{value[:4]}"
    if len(value) == 6:
        return f"{value[4:6]}/{value[:4]}"
    return value


def placeholder_values(msg: AdtMessage, event: str, tz: ZoneInfo) -> dict[str, str]:
    """The value of every placeholder of :data:`PLACEHOLDERS` for ``msg``."""
    p = msg.patient
    civility = _CIVILITY.get(p.sex, "")
    name = " ".join(part for part in (civility, p.family.upper(), p.given) if part)
    return {
        "patient": name,
        "civility": civility,
        "family": p.family.upper(),
        "given": p.given,
        "birth_date": _birth(p.birth_date),
        "sex": _SEXES.get(p.sex, p.sex),
        "ipp": p.ipp,
        "ipp_authority": p.ipp_authority,
        "visit": msg.visit,
        "ward": msg.ward_name,
        "ward_code": msg.ward_code,
        "room": msg.room,
        "bed": msg.bed,
        "event": event_label(event),
        "date": _date(msg.at, tz),
        "discharge_date": _date(msg.discharge_at, tz),
        "death_date": _date(p.death_at, tz),
        "disposition": DISPOSITIONS.get(msg.disposition, msg.disposition),
        "facility": msg.sending_facility.split("^")[0],
    }


def _check_template(template: object, where: str) -> str:
    if not isinstance(template, str):
        raise MappingError(f"{where} : une chaîne est attendue")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise MappingError(f"{where} : gabarit invalide ({exc})") from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            known = ", ".join(sorted(PLACEHOLDERS))
            raise MappingError(f"{where} : {{{name}}} n'est pas une variable connue ({known})")
    return template


def _strings(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MappingError(f"{where} : une liste de chaînes est attendue")
    return frozenset(v.strip().upper() for v in value)


def parse_mapping(data: dict[str, Any], source: str = "") -> Mapping:
    """A mapping from the content of a TOML file; raises MappingError."""
    tz_name = data.get("timezone", "Europe/Paris")
    try:
        tz = ZoneInfo(str(tz_name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise MappingError(f"timezone : fuseau inconnu {tz_name!r}") from exc
    raw_events = data.get("events", {})
    unknown = set(raw_events) - set(NOTICE_EVENTS)
    if unknown or not all(isinstance(v, bool) for v in raw_events.values()):
        raise MappingError(f"[events] : booléens attendus pour {', '.join(NOTICE_EVENTS)} seulement")
    events = {"admission": True, "transfer": True, "discharge": True, "death": True, "update": False}
    events.update(raw_events)
    wards = data.get("wards", {})
    titles_raw = data.get("titles", {})
    titles = {}
    for event in NOTICE_EVENTS:
        if event not in titles_raw:
            raise MappingError(f"[titles] : titre manquant pour {event}")
        titles[event] = _check_template(titles_raw[event], f"[titles] {event}")
    fields = []
    for i, raw in enumerate(data.get("fields", []), 1):
        where = f"[[fields]] n° {i}"
        if not isinstance(raw, dict) or not isinstance(raw.get("label"), str) or not raw["label"]:
            raise MappingError(f"{where} : label manquant")
        limited = raw.get("events")
        only = None
        if limited is not None:
            only = frozenset(e.lower() for e in _strings(limited, f"{where} events"))
            if only - set(NOTICE_EVENTS):
                raise MappingError(
                    f"{where} events : événements inconnus {sorted(only - set(NOTICE_EVENTS))}"
                )
        fields.append(FieldTemplate(raw["label"][:64], _check_template(raw.get("value"), where), only))
    if len(fields) > 32:
        raise MappingError("[[fields]] : 32 champs au plus")
    reply = data.get("reply")
    if reply is not None and (not isinstance(reply, str) or not 1 <= len(reply) <= 256):
        raise MappingError("reply : une chaîne de 1 à 256 caractères est attendue")
    death = data.get("death", {})
    dispositions = _strings(death.get("dispositions", ["9", "20", "40", "41", "42"]), "[death] dispositions")
    return Mapping(
        tz,
        events,
        _strings(wards.get("include", []), "[wards] include"),
        _strings(wards.get("exclude", []), "[wards] exclude"),
        dispositions,
        titles,
        tuple(fields),
        reply or None,
        source,
    )


def load_mapping(path: Path | None = None) -> Mapping:
    """Load a mapping file (default: :data:`DEFAULT_MAPPING`); raises MappingError."""
    path = path or DEFAULT_MAPPING
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MappingError(f"{path} : {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{path} : TOML invalide ({exc})") from exc
    return parse_mapping(data, str(path))
