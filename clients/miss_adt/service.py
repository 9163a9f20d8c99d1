"""What miss-adt does with one ADT message, and with its spool.

Theory of operation
-------------------
:meth:`AdtService.handle` takes the bytes of one MLLP block and returns
the ACK's text. Messages are processed one at a time, in arrival order,
whatever connection they came on (one lock): a cancel is never handled
before the message it cancels, and a spooled operation retried in the
background never runs beside a message about the same notice.

1. Decode and read MSH; a message whose MSH-10 was answered already gets
   the same answer again, and nothing is done (idempotency on MSH-10).
2. Parse and check (:func:`~miss_adt.hl7_events.parse`): refused ``AE``
   (``AR`` for a message that is not ADT or not v2), answer recorded.
   A trigger miss-adt does not handle is ``AA`` « ignored ».
3. A01..A08: the mapping decides (not notified: ``AA`` « ignored »); the
   movement (ZBE-1 and trigger) already made a notice: ``AA``
   « duplicate », nothing sent; a death already notified for the patient:
   the same; no GP with an RPPS: ``AE`` ``no_gp``. Then the notice is sent
   under its key (``adt:<ZBE-1>:<trigger>``, or ``adt:msg:<MSH-10>``
   without ZBE): accepted by the hub, ``AA`` « notice sent »; refused for
   good (unknown RPPS, unverified GP...): ``AE``; the hub unreachable:
   the notice goes to the spool, ``AA`` « spooled », unless the spool is
   full: ``AR`` « spool full », nothing recorded (the feed resends later).
4. A11/A12/A13: the notice of the cancelled movement (ZBE-1; without ZBE,
   the newest notice of the same visit made by A01/A04, A02 or A03) is
   recalled; still in the spool and never tried, it is just dropped; the
   hub unreachable, the recall is spooled behind it. No such notice:
   ``AA`` « nothing to recall ».

:meth:`AdtService.run_spool` retries the spool, oldest first, whenever the
hub is reachable: after a failure it waits 1 s, doubling up to
``retry_max`` seconds, and starts again at once when the hub comes back.
An operation refused for good is dropped with an audit event.
Exactly once: the SDK records a notice's key and message id before
sending, so a retry resends the same message (the hub answers ``dup``) or
returns the id of the one accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from .acks import Outcome, build_ack
from .audit import AuditLog
from .hl7_events import CANCELS, HANDLED, AdtMessage, Hl7Error, decode, header_of, parse
from .mapping import Mapping
from .sender import Link, NoticeSender, Refusal, classify
from .store import AdtStore, NoticeRow, SpoolEntry

__all__ = ["DEFAULT_SPOOL_MAX", "AdtService", "notice_key"]

log = logging.getLogger("miss_adt")

DEFAULT_SPOOL_MAX = 100_000
SENT = "notice sent"
SPOOLED = "spooled: hub unreachable, notice kept and retried"
RECALL_SPOOLED = "spooled: hub unreachable, recall kept and retried"
SPOOL_FULL = Outcome("AR", "spool full", "spool_full", 206, "", "file d'attente pleine : renvoyez plus tard")


def notice_key(msg: AdtMessage) -> tuple[str, str | None]:
    """(the notice key, the movement) of ``msg``: ``adt:<ZBE-1>:<trigger>``
    and ``<ZBE-1>|<trigger>``, or ``adt:msg:<MSH-10>`` and None without ZBE.
    A key over 200 characters is replaced by a hash of it."""
    if msg.movement is not None:
        key, movement = f"adt:{msg.movement.id}:{msg.trigger}", f"{msg.movement.id}|{msg.trigger}"
    else:
        key, movement = f"adt:msg:{msg.control_id}", None
    if len(key) > 200:
        key = "adt:h:" + hashlib.sha256(key.encode()).hexdigest()
    return key, movement


class AdtService:
    """The listener's logic (see the module docstring); ``link`` gives the
    hub when reachable, ``audit`` gets every refusal and spool event."""

    def __init__(
        self,
        store: AdtStore,
        mapping: Mapping,
        link: Link,
        audit: AuditLog,
        *,
        spool_max: int = DEFAULT_SPOOL_MAX,
        retry_max: float = 60.0,
    ) -> None:
        self.store = store
        self.mapping = mapping
        self.link = link
        self.audit = audit
        self.spool_max = spool_max
        self.retry_max = retry_max
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        link.on_up = self.wake

    def wake(self) -> None:
        """Retry the spool now (the hub came back)."""
        self._wake.set()

    # --- one message --------------------------------------------------------------

    async def handle(self, block: bytes) -> tuple[str, str]:
        """The ACK for one MLLP block, and the codec to encode it with."""
        try:
            text, codec = decode(block)
        except Hl7Error as exc:
            outcome = self._refused(exc.reason, exc.code, exc.text, exc.location, ack=exc.ack, header={})
            return build_ack(outcome, {}), "utf-8"
        header = header_of(text)
        async with self._lock:
            outcome = await self._handle(text, header)
        return build_ack(outcome, header, self.mapping.tz), codec

    async def _handle(self, text: str, header: dict[str, str]) -> Outcome:
        control_id = header.get("control_id", "")
        if control_id:
            earlier = self.store.answer(control_id)
            if earlier is not None:
                self.audit.write(
                    "resent", control_id=control_id, ack=earlier.ack, trigger=header.get("trigger")
                )
                return earlier
        try:
            msg = parse(text, self.mapping.tz)
        except Hl7Error as exc:
            outcome = self._refused(exc.reason, exc.code, exc.text, exc.location, ack=exc.ack, header=header)
            if control_id:
                self.store.record_answer(control_id, outcome)
            return outcome
        if msg.trigger not in HANDLED:
            return self._answer(msg, Outcome("AA", f"ignored: {msg.trigger} not handled"))
        if msg.is_cancel:
            return await self._cancel(msg)
        return await self._notify(msg)

    def _answer(self, msg: AdtMessage, outcome: Outcome) -> Outcome:
        self.store.record_answer(msg.control_id, outcome)
        return outcome

    def _refused(
        self,
        reason: str,
        code: int,
        detail: str,
        location: str = "",
        *,
        ack: str = "AE",
        header: dict[str, str],
        rpps: str | None = None,
        key: str | None = None,
    ) -> Outcome:
        self.audit.write(
            "refused",
            control_id=header.get("control_id", ""),
            trigger=header.get("trigger", ""),
            sender=header.get("sending_app", ""),
            ack=ack,
            reason=reason,
            detail=detail,
            rpps=rpps,
            key=key,
        )
        return Outcome(ack, "refused", reason, code, location, detail)

    def _refuse(
        self, msg: AdtMessage, refusal: Refusal, *, rpps: str | None = None, key: str | None = None
    ) -> Outcome:
        outcome = self._refused(
            refusal.reason,
            refusal.code,
            refusal.detail,
            refusal.location,
            header=_header(msg),
            rpps=rpps,
            key=key,
        )
        return self._answer(msg, outcome)

    def _pseudonyms(self, msg: AdtMessage) -> tuple[str, str]:
        p = msg.patient
        return self.store.pseudonym(p.ipp_authority, p.ipp), self.store.pseudonym(
            p.ipp_authority, p.ipp, msg.visit
        )

    async def _notify(self, msg: AdtMessage) -> Outcome:
        decision = self.mapping.decide(msg)
        if decision.notice is None or decision.event is None:
            return self._answer(msg, Outcome("AA", f"ignored: {decision.reason}"[:80]))
        key, movement = notice_key(msg)
        if movement is not None and self.store.by_movement(movement) is not None:
            self.audit.write("duplicate", control_id=msg.control_id, trigger=msg.trigger, key=key)
            return self._answer(msg, Outcome("AA", "duplicate: movement already notified"))
        patient, visit = self._pseudonyms(msg)
        if decision.event == "death" and self.store.live_death(patient) is not None:
            self.audit.write("duplicate", control_id=msg.control_id, trigger=msg.trigger, key=key)
            return self._answer(msg, Outcome("AA", "duplicate: death already notified"))
        if msg.gp is None or msg.gp.rpps is None:
            detail = "aucun médecin traitant avec un RPPS (PD1-4, ROL ODRP/FHCP)"
            if msg.named_without_rpps:
                detail = "médecin traitant sans identifiant RPPS (PD1-4/ROL)"
            return self._refuse(msg, Refusal("no_gp", 101, detail, "PD1^1^4"), key=key)
        rpps = msg.gp.rpps
        record = (key, movement, msg.trigger, decision.event, patient, visit, msg.control_id)
        sender = self.link.sender
        attempted = False
        if sender is not None:
            try:
                await sender.send_notice(decision.notice, key=key, rpps=rpps)
            except Exception as exc:
                refusal = classify(exc, rpps)
                if refusal is not None:
                    return self._refuse(msg, refusal, rpps=rpps, key=key)
                log.warning("send of %s failed (%s): spooled", msg.control_id, type(exc).__name__)
                attempted = True
            else:
                self.store.record_sent(*record, Outcome("AA", SENT))
                return Outcome("AA", SENT)
        if self.store.spooled >= self.spool_max:
            return self._spool_full(msg, rpps, key)
        outcome = Outcome("AA", SPOOLED)
        self.store.record_sent(*record, outcome, spool=(rpps, decision.notice, attempted))
        self.audit.write("spooled", control_id=msg.control_id, trigger=msg.trigger, key=key, rpps=rpps)
        self.wake()
        return outcome

    def _spool_full(self, msg: AdtMessage, rpps: str | None, key: str) -> Outcome:
        # Not recorded: the feed resends the message later, and it is then handled anew.
        self._refused(
            SPOOL_FULL.reason,
            SPOOL_FULL.code,
            SPOOL_FULL.detail,
            ack="AR",
            header=_header(msg),
            rpps=rpps,
            key=key,
        )
        return SPOOL_FULL

    def _cancelled_row(self, msg: AdtMessage) -> NoticeRow | None:
        targets = CANCELS[msg.trigger]
        if msg.movement is not None:
            for trigger in targets:
                row = self.store.by_movement(f"{msg.movement.id}|{trigger}")
                if row is not None:
                    return row
            return None
        _, visit = self._pseudonyms(msg)
        return self.store.latest_of_visit(visit, targets)

    async def _cancel(self, msg: AdtMessage) -> Outcome:
        row = self._cancelled_row(msg)
        if row is None or row.state == "refused":
            return self._answer(msg, Outcome("AA", "nothing to recall: no notice for this movement"))
        if row.state in {"recalled", "recalling", "cancelled"}:
            return self._answer(msg, Outcome("AA", "duplicate: notice already recalled"))
        entry = self.store.spooled_notice(row.key)
        if entry is not None and not entry.attempted:
            outcome = Outcome("AA", "notice cancelled before it was sent")
            self.store.record_recall(row.key, "cancelled", msg.control_id, outcome)
            self.audit.write("cancelled", control_id=msg.control_id, trigger=msg.trigger, key=row.key)
            return outcome
        sender = self.link.sender
        if entry is None and sender is not None:
            try:
                removed = await self._recall(sender, row.key)
            except Exception as exc:
                refusal = classify(exc)
                if refusal is not None:
                    return self._refuse(msg, refusal, key=row.key)
            else:
                outcome = Outcome("AA", "notice recalled" if removed is not None else "nothing to recall")
                self.store.record_recall(row.key, "recalled", msg.control_id, outcome)
                self.audit.write("recalled", control_id=msg.control_id, trigger=msg.trigger, key=row.key)
                return outcome
        if self.store.spooled >= self.spool_max:
            return self._spool_full(msg, None, row.key)
        outcome = Outcome("AA", RECALL_SPOOLED)
        self.store.record_recall(row.key, "recalling", msg.control_id, outcome, spool=True)
        self.audit.write("spooled", control_id=msg.control_id, trigger=msg.trigger, key=row.key, op="recall")
        self.wake()
        return outcome

    @staticmethod
    async def _recall(sender: NoticeSender, key: str) -> int | None:
        """Recall the notice of ``key``: hub rows removed, or None if this
        profile never sent it."""
        message_id = sender.notice_id(key)
        if message_id is None:
            return None
        return await sender.recall(message_id)

    # --- the spool ------------------------------------------------------------------

    async def run_spool(self) -> None:
        """Retry the spool for ever (see the module docstring)."""
        delay = 1.0
        while True:
            if self.store.spooled and self.link.sender is not None:
                if await self.drain_spool():
                    delay = 1.0
                    continue
                wait = delay
                delay = min(delay * 2, self.retry_max)
            else:
                wait = self.retry_max
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def drain_spool(self) -> bool:
        """One pass over the spool; False if a transient failure stopped it."""
        while True:
            entries = self.store.next_entries(50)
            if not entries:
                return True
            for entry in entries:
                async with self._lock:
                    if not await self._retry(entry):
                        return False

    async def _retry(self, entry: SpoolEntry) -> bool:
        sender = self.link.sender
        if sender is None:
            return False
        try:
            if entry.op == "notice":
                assert entry.notice is not None
                await sender.send_notice(entry.notice, key=entry.key, rpps=entry.rpps)
                state = "sent"
            else:
                await self._recall(sender, entry.key)
                state = "recalled"
        except Exception as exc:
            refusal = classify(exc, entry.rpps)
            if refusal is None:
                self.store.failed(entry)
                log.info("spool retry of %s failed (%s)", entry.control_id, type(exc).__name__)
                return False
            self.store.done(entry, "refused" if entry.op == "notice" else "recalled")
            self.audit.write(
                "spool_refused",
                control_id=entry.control_id,
                op=entry.op,
                key=entry.key,
                rpps=entry.rpps,
                reason=refusal.reason,
                detail=refusal.detail,
            )
            return True
        self.store.done(entry, state)
        self.audit.write("spool_delivered", control_id=entry.control_id, op=entry.op, key=entry.key)
        return True


def _header(msg: AdtMessage) -> dict[str, str]:
    return {"control_id": msg.control_id, "trigger": msg.trigger, "sending_app": msg.sending_app}
