"""A hospital's ADT feed for the ``adt`` scenario: IHE PAM-FR messages
(HL7 v2.5, ISO 8859-1 as MSH-18 says), patients' stays, and the MLLP
client that sends them.

Each patient of the feed has a stay: admission (A01), then, some messages
later, a transfer to another ward (A02), then a discharge (A03; one in
:data:`DEATH_EVERY` is a death: PID-29/PID-30 and PV1-36 « 9 »). Stays
overlap, so that at any time the feed speaks of many patients, and the mix
settles at a third of each trigger. Every message has its own MSH-10 and
its own movement (ZBE-1), and names the patient's GP in PD1-4 (an RPPS
number, assigning authority ``1.2.250.1.71.4.2.1``), as PAM-FR's
« médecin traitant ». The segments are those of the samples in
``tests/adt/messages`` (written from the standard), with these values.

The notice a message gives carries the patient's IPP and its event
(``admission``, ``transfer``, ``discharge``, ``death``): the pair
identifies the message at the GP's device (:attr:`FeedMessage.match`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hl7.mllp import open_hl7_connection

__all__ = ["DEATH_EVERY", "Ack", "FeedMessage", "Gp", "MllpFeed", "gps_of", "parse_ack", "plan"]

TZ = ZoneInfo("Europe/Paris")
HOSPITAL = "CH-PROVINS"
HOSPITAL_OID = "1.2.250.1.213.1.4.8"
MSH_HEAD = (
    f"MSH|^~\\&|SIH-PROVINS^{HOSPITAL_OID}.1^ISO|{HOSPITAL}^{HOSPITAL_OID}^ISO|MISS-ADT|MISS|{{ts}}||"
    "ADT^{trigger}^ADT_{trigger}|{control}|P|2.5^FRA^2.5|||||FRA|8859/1|FR^Français^ISO639"
)
AUTH = f"{HOSPITAL}&{HOSPITAL_OID}&ISO"
#: One discharge in this many is a death.
DEATH_EVERY = 20
#: Patients between a patient's admission and transfer, and transfer and
#: discharge (fewer in a short feed, so that it has discharges too).
STAY_LAG = 24
#: (UF code, ward), as ZBE-7 and PV1-3 name them.
WARDS = (
    ("4001", "Cardiologie"),
    ("4105", "Médecine gériatrique"),
    ("4210", "Pneumologie"),
    ("4302", "Chirurgie orthopédique"),
    ("4420", "Néphrologie"),
    ("4501", "Soins de suite et de réadaptation"),
    ("4610", "Médecine polyvalente"),
)
_GIVEN_F = "Hélène Marie Françoise Chloé Léa Inès Jeanne Monique Josiane Aïcha Nathalie Émilie".split()
_GIVEN_M = "Jean Lucien Jacques André René Karim Loïc Noël Hervé Mamadou Gérard Thierry".split()
_FAMILY = (
    "LEFÈVRE GARNIER MOREAU DUPONT ROUSSEAU FAURE GIRARD MERCIER BLANC GUÉRIN BOYER CHEVALIER "
    "LEMAÎTRE BÉNARD HAMON PERRIN NGUYEN TRAORÉ BENALI MARÉCHAL DELAUNAY PASQUIER"
).split()
_GP_FAMILY = "DUPONT ROUX MARTIN BERNARD DURAND PETIT LAMBERT BONNET FRANÇOIS MOREL".split()


@dataclass(frozen=True, slots=True)
class Gp:
    """A GP of the feed: their RPPS number and name (PD1-4)."""

    rpps: str
    family: str
    given: str


def gps_of(count: int, seed: int) -> list[Gp]:
    """``count`` GPs with distinct random 11-digit RPPS numbers (consecutive
    from a random base: unique in a fresh store)."""
    rng = random.Random(seed)
    base = 10_000_000_000 + rng.randrange(80_000_000_000)
    return [
        Gp(f"{base + k:011d}", rng.choice(_GP_FAMILY), rng.choice(_GIVEN_F + _GIVEN_M)) for k in range(count)
    ]


@dataclass(frozen=True, slots=True)
class _Patient:
    ipp: str
    ins: str
    family: str
    given: str
    sex: str
    birth: str
    visit: str
    gp: Gp
    ward: tuple[str, str]
    admitted: datetime


@dataclass(frozen=True, slots=True)
class FeedMessage:
    """One message of the feed: its bytes, and the notice it should give."""

    index: int
    trigger: str
    control_id: str
    event: str
    ipp: str
    rpps: str
    data: bytes

    @property
    def match(self) -> tuple[str, str]:
        """(IPP, event): what identifies its notice at the GP's device."""
        return self.ipp, self.event


def _ts(at: datetime) -> str:
    return at.strftime("%Y%m%d%H%M%S")


def _segments(
    trigger: str, control: str, movement: str, p: _Patient, at: datetime, ward: tuple[str, str], death: bool
) -> str:
    """The message's text (segments joined by CR)."""
    pid = [""] * 31
    pid[1] = "1"
    pid[3] = f"{p.ipp}^^^{AUTH}^PI~{p.ins}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"
    pid[5] = f"{p.family}^{p.given}^^^{'Mme' if p.sex == 'F' else 'M.'}^^L"
    pid[7], pid[8] = p.birth, p.sex
    pid[11] = "12 rue Saint-Thibault^^Provins^^77160^FRA^H"
    pid[13] = "^PRN^PH^^^^^^^^^0164000000"
    pid[29], pid[30] = (_ts(at), "Y") if death else ("", "N")
    pv1 = [""] * 46
    pv1[1], pv1[2], pv1[4], pv1[10] = "1", "I", "R", "CAR"
    pv1[3] = f"{ward[0]}^{100 + int(p.ipp[-2:]):03d}^1^{HOSPITAL}^^^^^{ward[1]}"
    if trigger == "A02":
        pv1[6] = f"{p.ward[0]}^{100 + int(p.ipp[-2:]):03d}^1^{HOSPITAL}"
    pv1[19] = f"{p.visit}^^^{AUTH}^VN"
    pv1[44] = _ts(p.admitted)
    if trigger == "A03":
        pv1[36], pv1[45] = ("9" if death else "8"), _ts(at)
    nature = {"A01": "HMS", "A02": "M", "A03": "D"}[trigger]
    segments = [
        MSH_HEAD.format(ts=_ts(at + timedelta(seconds=5)), trigger=trigger, control=control),
        f"EVN||{_ts(at + timedelta(seconds=4))}|||ADMJD^DURAND^Julie|{_ts(at)}",
        "|".join(["PID", *pid[1:]]),
        f"PD1||||{p.gp.rpps}^{p.gp.family}^{p.gp.given}^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^L^^^RPPS",
        "|".join(["PV1", *pv1[1:]]),
        f"ZBE|{movement}^{HOSPITAL}^{HOSPITAL_OID}^ISO|{_ts(at)}||INSERT|N||"
        f"{ward[1]}^^^^^{HOSPITAL}^UF^^^{ward[0]}||{nature}",
    ]
    return "\r".join(segments) + "\r"


def plan(count: int, gps: list[Gp], *, prefix: str, ipp_base: int, seed: int = 7) -> list[FeedMessage]:
    """``count`` messages of overlapping stays (see the module docstring);
    MSH-10 ``<prefix><index>``, patients' IPPs from ``ipp_base`` up, each
    patient's GP one of ``gps`` in turn."""
    rng = random.Random(seed)
    now = datetime.now(TZ).replace(microsecond=0)
    admitted: deque[_Patient] = deque()
    transferred: deque[_Patient] = deque()
    out: list[FeedMessage] = []
    patients = discharges = 0
    lag = max(1, min(STAY_LAG, count // 15))
    while len(out) < count:
        j = len(out)
        at = now + timedelta(seconds=j)
        control = f"{prefix}{j:08d}"
        movement = f"MVT{control}"
        step = j % 3
        if step == 2 and len(transferred) > lag:
            p = transferred.popleft()
            discharges += 1
            death = discharges % DEATH_EVERY == 0
            text = _segments("A03", control, movement, p, at, p.ward, death)
            out.append(
                FeedMessage(
                    j, "A03", control, "death" if death else "discharge", p.ipp, p.gp.rpps, _enc(text)
                )
            )
        elif step == 1 and len(admitted) > lag:
            p = admitted.popleft()
            ward = rng.choice([w for w in WARDS if w != p.ward])
            text = _segments("A02", control, movement, p, at, ward, False)
            transferred.append(_moved(p, ward))
            out.append(FeedMessage(j, "A02", control, "transfer", p.ipp, p.gp.rpps, _enc(text)))
        else:
            p = _new_patient(rng, ipp_base + patients, gps[patients % len(gps)], at)
            patients += 1
            admitted.append(p)
            text = _segments("A01", control, movement, p, at, p.ward, False)
            out.append(FeedMessage(j, "A01", control, "admission", p.ipp, p.gp.rpps, _enc(text)))
    return out


def _enc(text: str) -> bytes:
    return text.encode("latin-1")  # MSH-18 8859/1


def _moved(p: _Patient, ward: tuple[str, str]) -> _Patient:
    return _Patient(p.ipp, p.ins, p.family, p.given, p.sex, p.birth, p.visit, p.gp, ward, p.admitted)


def _new_patient(rng: random.Random, number: int, gp: Gp, at: datetime) -> _Patient:
    sex = rng.choice("FM")
    born = datetime(rng.randrange(1925, 2005), rng.randrange(1, 13), rng.randrange(1, 29), tzinfo=TZ)
    ins = f"{1 if sex == 'M' else 2}{born:%y%m}77{rng.randrange(1, 500):03d}{rng.randrange(1, 999):03d}"
    return _Patient(
        ipp=f"{number:010d}",
        ins=ins + f"{97 - int(ins) % 97:02d}",  # the NIR key
        family=rng.choice(_FAMILY),
        given=rng.choice(_GIVEN_F if sex == "F" else _GIVEN_M),
        sex=sex,
        birth=f"{born:%Y%m%d}",
        visit=f"24{number % 100_000_000:08d}",
        gp=gp,
        ward=rng.choice(WARDS),
        admitted=at,
    )


# --- the wire --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """What an ACK says: MSA-1 (``AA``, ``AE``, ``AR``), MSA-2, MSA-3, ERR-5."""

    code: str
    control_id: str
    note: str
    reason: str = ""


def parse_ack(raw: bytes) -> Ack:
    """Read an ACK (any character set: only ASCII fields are read)."""
    segments = {s.split("|", 1)[0]: s.split("|") for s in raw.decode("latin-1").split("\r") if s}
    msa = segments.get("MSA", []) + [""] * 4
    err = segments.get("ERR", []) + [""] * 6
    return Ack(msa[1], msa[2], msa[3], err[5].split("^")[0])


class MllpFeed:
    """One MLLP connection of the feed (the ``hl7`` library's client), in
    original mode: one message, then its ACK."""

    def __init__(self, reader: Any, writer: Any, host: str, port: int) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.port = port

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> MllpFeed:
        reader, writer = await open_hl7_connection(host, port)
        return cls(reader, writer, host, port)

    async def reopen(self) -> None:
        """A new connection instead of this one (after a message without ACK)."""
        await self.close()
        self.reader, self.writer = await open_hl7_connection(self.host, self.port)

    async def send(self, block: bytes, timeout: float = 30.0) -> Ack:
        self.writer.writeblock(block)
        await self.writer.drain()
        return parse_ack(await asyncio.wait_for(self.reader.readblock(), timeout))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
