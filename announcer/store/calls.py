"""Call records: creation, single-use stream tokens, status transitions and the event trail.

Writes go through the journal (group commit, see journal.py): each is an operation on the batch's
session, in the order submitted; `open_inbound`, which may have to roll back a lost race, is its own
transaction. Status transitions are monotonic: a late, duplicated or
out-of-order Twilio callback never moves a call backwards (ordered by SequenceNumber and status rank).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from announcer.options import StoredOptions
from announcer.store.journal import Batch, Journal
from announcer.store.models import (
    TERMINAL_STATUSES,
    Alert,
    Call,
    CallEvent,
    CallStatus,
    Delivery,
    StreamToken,
    status_rank,
    utcnow,
)

TOKEN_TTL = timedelta(minutes=10)
_SID_CACHE = 50_000
_FACTS = frozenset({"played_ms", "message_ms", "keys"})  # what `record_facts` may set
_KEYS_CHARS = 32  # the column's width: the first keys pressed are kept
# A call not heard of for this long is not counted live (the dispatcher's slot lease, delivery_rows.py)
LIVE_WITHIN = timedelta(minutes=15)
_OPEN_STATUSES = [CallStatus.QUEUED, CallStatus.INITIATED, CallStatus.RINGING, CallStatus.IN_PROGRESS]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class StreamGrant:
    """What a consumed token entitles a media stream to: the call and its message."""

    call_id: int
    call_sid: str | None
    text: str
    kind: str
    # An announcement's alert options (what happens after the message), read with the token: no query
    # of its own per call. None for the greeting line, and for grants this process issued itself.
    options: StoredOptions | None = None
    # What an answering machine is told (the template's voicemail block, rendered with the message); None:
    # the message itself.
    voicemail_text: str | None = None


@dataclass(frozen=True, slots=True)
class StatusApplied:
    """What `apply_status` did: truthy when the call moved; `answered` whether it has been answered."""

    moved: bool
    answered: bool

    def __bool__(self) -> bool:
        return self.moved


class CallStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.journal = Journal(sessions)  # every write but the call's creation goes through it
        self._ids: dict[str, tuple[int, bool]] = {}  # call SID -> (row id, carries a delivery), bounded

    async def open_inbound(
        self, *, call_sid: str, from_number: str, to_number: str, kind: str, text: str, status: str
    ) -> tuple[StreamGrant, str] | None:
        """Record an inbound call (or find it again when Twilio retries the webhook) and issue a token.
        None for a call that has already ended: a replayed webhook gives a finished call no second life."""
        now = utcnow()
        token = secrets.token_urlsafe(24)
        find = select(Call.id, Call.text, Call.kind, Call.status).where(Call.call_sid == call_sid)
        async with self.sessions() as s:
            row = (await s.execute(find)).first()
            if row is not None and CallStatus(row[3]) in TERMINAL_STATUSES:
                return None
            found = (row[0], row[1], row[2]) if row is not None else None
            events: list[dict[str, Any]] = []
            if found is None:
                try:
                    new_id = (
                        await s.execute(
                            insert(Call)
                            .values(
                                call_sid=call_sid,
                                direction="inbound",
                                kind=kind,
                                from_number=from_number,
                                to_number=to_number,
                                status=status,
                                text=text,
                                last_sequence=-1,
                                created_at=now,
                                updated_at=now,
                            )
                            .returning(Call.id)
                        )
                    ).scalar_one()
                except IntegrityError:
                    # The same webhook raced us in another process: use its row.
                    await s.rollback()
                    call_id, call_text, call_kind, _ = (await s.execute(find)).one()
                    found = (call_id, call_text, call_kind)
                else:
                    found = (new_id, text, kind)
                    events.append(_event(new_id, "status", {"status": status}, now))
            call_id, call_text, call_kind = found
            await s.execute(
                insert(StreamToken).values(
                    token_hash=hash_token(token), call_id=call_id, expires_at=now + TOKEN_TTL
                )
            )
            events.append(_event(call_id, "stream_token_issued", {}, now))
            await s.execute(insert(_EVENTS), events)
            await s.commit()
        return StreamGrant(call_id=call_id, call_sid=call_sid, text=call_text, kind=call_kind), token

    async def consume_token(self, token: str, call_sid: str) -> StreamGrant | None:
        """Use a stream token once. None when it is unknown, expired, used, or for another call."""
        return await self.journal.submit(partial(_consume_token, hash_token(token), call_sid, utcnow()))

    async def add_event(self, call_id: int, kind: str, **detail: Any) -> None:
        """Append to the call's trail and wait until it is committed."""
        await self.journal.submit(partial(_add_event, call_id, kind, detail, utcnow()), call_id)

    def record(self, call_id: int, kind: str, **detail: Any) -> None:
        """Append to the call's trail without waiting (a live call's bookkeeping): written with the next
        batch, in order after everything recorded before it."""
        self.journal.post(partial(_add_event, call_id, kind, detail, utcnow()), call_id)

    async def set_outcome(self, call_id: int, outcome: str, **detail: Any) -> None:
        """Record the outcome once: the first one that happens is the truth."""
        await self.journal.submit(partial(_set_outcome, call_id, outcome, detail, utcnow()), call_id)

    def record_outcome(self, call_id: int, outcome: str, **detail: Any) -> None:
        """`set_outcome` without waiting."""
        self.journal.post(partial(_set_outcome, call_id, outcome, detail, utcnow()), call_id)

    def record_amd(self, call_id: int, answered_by: str, amd_ms: int | None) -> None:
        """Twilio's machine detection verdict (AnsweredBy, MachineDetectionDuration), without waiting. The
        first verdict is the call's (Twilio posts one; a repeat is only noted in the trail)."""
        self.journal.post(partial(_record_amd, call_id, answered_by, amd_ms, utcnow()), call_id)

    def record_facts(self, call_id: int, **facts: Any) -> None:
        """How much of the message played (`played_ms`) of how long it is (`message_ms`), and the keys
        pressed in order (`keys`), without waiting. Each given fact replaces the one stored."""
        unknown = facts.keys() - _FACTS
        if unknown:
            raise TypeError(f"not call facts: {', '.join(sorted(unknown))}")
        if "keys" in facts and facts["keys"] is not None:
            facts["keys"] = str(facts["keys"])[:_KEYS_CHARS]
        if facts:
            self.journal.post(partial(_record_facts, call_id, facts, utcnow()), call_id)

    def record_in_progress(self, call_id: int) -> None:
        """The media stream started, so the call is answered (without waiting)."""
        self.journal.post(partial(_stream_answered, call_id), call_id)

    async def apply_status(
        self,
        call_id: int,
        status: CallStatus,
        *,
        sequence: int | None,
        source: str,
        duration_s: int | None = None,
        extra: dict[str, Any] | None = None,
        call_sid: str | None = None,
    ) -> StatusApplied:
        """Move a call forward to `status`; falsy (nothing changed, event noted) when it would go back.

        With `call_sid` the report names the call by our row id (the signed status URL of a call we
        placed): the SID is recorded if the row has none yet, and a row with another SID is left alone."""
        applied = await self.journal.submit(
            partial(_apply_status, call_id, status, sequence, source, duration_s, extra, call_sid), call_id
        )
        if call_sid is not None and applied.moved:
            self._remember(call_sid, (call_id, True))
        return applied

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        await self.journal.flush()

    async def aclose(self) -> None:
        """Write what is queued (shutdown; before the engine is disposed)."""
        await self.journal.close()

    async def attach_sid(self, call_id: int, call_sid: str) -> int | None:
        """Give the call row `call_id` its SID if it has none yet; its id, or None if it has another SID."""
        async with self.sessions() as s:
            await s.execute(
                update(Call).where(Call.id == call_id, Call.call_sid.is_(None)).values(call_sid=call_sid)
            )
            await s.commit()
            sid = (await s.execute(select(Call.call_sid).where(Call.id == call_id))).scalar_one_or_none()
        return call_id if sid == call_sid else None

    async def find_by_sid(self, call_sid: str) -> int | None:
        found = await self.find_call(call_sid)
        return found[0] if found is not None else None

    async def find_call(self, call_sid: str) -> tuple[int, bool] | None:
        """(row id, whether it carries a delivery) of a SID. Remembered: every call gets several
        callbacks, and neither a SID nor what the call carries ever changes."""
        known = self._ids.get(call_sid)
        if known is not None:
            return known
        async with self.sessions() as s:
            row = (
                await s.execute(select(Call.id, Call.delivery_id).where(Call.call_sid == call_sid))
            ).first()
        if row is None:
            return None
        found = (int(row[0]), row[1] is not None)
        self._remember(call_sid, found)
        return found

    def _remember(self, call_sid: str, found: tuple[int, bool]) -> None:
        if call_sid in self._ids:
            return
        if len(self._ids) >= _SID_CACHE:
            self._ids.pop(next(iter(self._ids)))
        self._ids[call_sid] = found

    async def machine_verdict(self, call_id: int) -> tuple[str, int | None] | None:
        """The call's machine detection verdict (`answered_by`, `amd_ms`), once one is stored."""
        async with self.sessions() as s:
            row = (await s.execute(select(Call.answered_by, Call.amd_ms).where(Call.id == call_id))).first()
        return (row[0], row[1]) if row is not None and row[0] is not None else None

    async def get(self, call_id: int) -> Call | None:
        async with self.sessions() as s:
            return await s.get(Call, call_id)

    async def events(self, call_id: int) -> list[CallEvent]:
        async with self.sessions() as s:
            rows = await s.execute(
                select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.id)
            )
            return list(rows.scalars())

    async def live(self) -> dict[str, int]:
        """Calls open now by status (ringing, in-progress...), inbound ones included. A call silent for
        `LIVE_WITHIN` is not counted: its final callback was lost (the reconciler settles it)."""
        since = utcnow() - LIVE_WITHIN
        async with self.sessions() as s:
            rows = await s.execute(
                select(Call.status, func.count())
                .where(Call.status.in_(_OPEN_STATUSES), Call.updated_at > since)
                .group_by(Call.status)
            )
            return {str(status): int(count) for status, count in rows.all()}

    async def count_calls(self) -> int:
        async with self.sessions() as s:
            return len((await s.execute(select(Call.id))).all())


def parse_rfc2822(value: str | None) -> datetime | None:
    from email.utils import parsedate_to_datetime

    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


# --- operations on a journal batch (they never commit) ---------------------------------------------
# Core statements, not the ORM: these run for every call, and the unit of work per row was most of the
# process' CPU at a few dozen calls a second.

_EVENTS = cast(Table, CallEvent.__table__)


def _event(call_id: int, kind: str, detail: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {"call_id": call_id, "kind": kind, "detail": detail, "at": at}


async def _consume_token(token_hash: str, call_sid: str, now: datetime, b: Batch) -> StreamGrant | None:
    row = (await b.session.execute(_USE_TOKEN, {"hash": token_hash, "now": now})).first()
    if row is None:
        return None  # nothing matched, nothing changed
    call = (await b.session.execute(_CALL_FOR_GRANT, {"call_id": row[0]})).first()
    if call is None or (call.call_sid is not None and call.call_sid != call_sid):
        # Presented for another call: the token has leaked. It stays burnt rather than usable.
        return None
    if CallStatus(call.status) in TERMINAL_STATUSES:
        return None  # the call has ended: a stream on it would speak to nobody and write into its record
    return StreamGrant(
        call_id=row[0],
        call_sid=call.call_sid,
        text=call.text,
        kind=call.kind,
        options=call.options,
        voicemail_text=call.voicemail_text,
    )


async def _add_event(call_id: int, kind: str, detail: dict[str, Any], at: datetime, b: Batch) -> None:
    b.insert(_EVENTS, _event(call_id, kind, detail, at))


async def _set_outcome(call_id: int, outcome: str, detail: dict[str, Any], at: datetime, b: Batch) -> None:
    await b.session.execute(_SET_OUTCOME, {"call_id": call_id, "outcome": outcome, "updated_at": at})
    b.insert(_EVENTS, _event(call_id, "outcome", {"outcome": outcome, **detail}, at))


async def _record_amd(call_id: int, answered_by: str, amd_ms: int | None, at: datetime, b: Batch) -> None:
    values = {"call_id": call_id, "answered_by": answered_by[:24], "amd_ms": amd_ms, "updated_at": at}
    await b.session.execute(_SET_AMD, values)
    b.insert(_EVENTS, _event(call_id, "amd", {"answered_by": answered_by, "amd_ms": amd_ms}, at))


async def _record_facts(call_id: int, facts: dict[str, Any], at: datetime, b: Batch) -> None:
    await b.session.execute(_UPDATE_CALL, {"call_id": call_id, **facts, "updated_at": at})


async def _apply_status(
    call_id: int,
    status: CallStatus,
    sequence: int | None,
    source: str,
    duration_s: int | None,
    extra: dict[str, Any] | None,
    call_sid: str | None,
    b: Batch,
) -> StatusApplied:
    now = utcnow()
    detail: dict[str, Any] = {"status": status.value, "source": source, **(extra or {})}
    if sequence is not None:
        detail["sequence"] = sequence
    # A report mostly moves its call forward: one UPDATE whose conditions are the checks below. One
    # it does not move (late, repeated, for another SID, or no row) is read and judged below.
    params: dict[str, Any] = {"call_id": call_id, "v_status": status.value, "v_now": now}
    if sequence is not None:
        params["v_seq"] = sequence
    if call_sid is not None:
        params["v_sid"] = call_sid
    if status in TERMINAL_STATUSES:
        params["v_duration"] = duration_s
    stmt = _forward(status, sequence is not None, call_sid is not None)
    moved = (await b.session.execute(stmt, params)).first()
    if moved is not None:
        b.insert(_EVENTS, _event(call_id, "status", detail, now))
        return StatusApplied(True, moved[0] is not None)
    call = (await b.session.execute(_CALL_FOR_STATUS, {"call_id": call_id})).first()
    if call is None:
        return StatusApplied(False, False)
    answered = call.answered_at is not None
    if call_sid is not None and call.call_sid not in (None, call_sid):
        detail["reason"] = f"reported for {call_sid}, but this call is {call.call_sid}"
        b.insert(_EVENTS, _event(call_id, "status_ignored", detail, now))
        return StatusApplied(False, answered)
    attach = call_sid is not None and call.call_sid is None
    current = CallStatus(call.status)
    stale = sequence is not None and sequence <= call.last_sequence
    backwards = current in TERMINAL_STATUSES or status_rank(status) <= status_rank(current)
    if stale or backwards:
        if attach:
            await b.session.execute(_UPDATE_CALL, {"call_id": call_id, "call_sid": call_sid})
        b.insert(_EVENTS, _event(call_id, "status_ignored", detail, now))
        return StatusApplied(False, answered)
    values: dict[str, Any] = {"call_id": call_id, "status": status.value, "updated_at": now}
    if attach:
        values["call_sid"] = call_sid
    if sequence is not None:
        values["last_sequence"] = sequence
    if status == CallStatus.IN_PROGRESS and not answered:
        values["answered_at"] = now
        answered = True
    if status in TERMINAL_STATUSES:
        values["ended_at"] = now
        values["duration_s"] = duration_s
    await b.session.execute(_UPDATE_CALL, values)
    b.insert(_EVENTS, _event(call_id, "status", detail, now))
    return StatusApplied(True, answered)


async def _stream_answered(call_id: int, b: Batch) -> None:
    """The media stream started, so the call is answered. Mostly its `in-progress` callback came first and
    this changes only the trail: one UPDATE that moves the call if nothing did yet, no read (the stream's
    grant came from the call's row, so there is one)."""
    now = utcnow()
    params = {"call_id": call_id, "v_status": CallStatus.IN_PROGRESS.value, "v_now": now}
    moved = (await b.session.execute(_forward(CallStatus.IN_PROGRESS, False, False), params)).first()
    detail = {"status": CallStatus.IN_PROGRESS.value, "source": "stream"}
    b.insert(_EVENTS, _event(call_id, "status" if moved is not None else "status_ignored", detail, now))


# Built once, on the tables rather than the mapped classes: these run several times per call, and a
# statement built per use costs its construction, its cache key and the ORM's bulk-update machinery
# every time. An UPDATE without `.values()` sets the columns named by the parameters given.
_CALLS = cast(Table, Call.__table__)
_TOKENS = cast(Table, StreamToken.__table__)
_DELIVERIES = cast(Table, Delivery.__table__)
_ALERTS = cast(Table, Alert.__table__)
_CALL_FOR_STATUS = (
    select(_CALLS.c.status, _CALLS.c.last_sequence, _CALLS.c.answered_at, _CALLS.c.call_sid)
    .where(_CALLS.c.id == bindparam("call_id"))
    .with_for_update()
)
_UPDATE_CALL = update(_CALLS).where(_CALLS.c.id == bindparam("call_id"))
_FORWARD: dict[tuple[CallStatus, bool, bool], Any] = {}


def _forward(status: CallStatus, with_sequence: bool, with_sid: bool) -> Any:
    """`_apply_status`'s move as one UPDATE: it matches only a row the report moves forward (a status of
    lower rank and not over, an older SequenceNumber, no other SID) and returns `answered_at` after it.
    Built once per kind of report."""
    key = (status, with_sequence, with_sid)
    stmt = _FORWARD.get(key)
    if stmt is None:
        c = _CALLS.c
        behind = [
            s.value for s in CallStatus if s not in TERMINAL_STATUSES and status_rank(s) < status_rank(status)
        ]
        where = [c.id == bindparam("call_id"), c.status.in_(behind)]
        now = bindparam("v_now", type_=c.updated_at.type)
        values: dict[str, Any] = {"status": bindparam("v_status", type_=c.status.type), "updated_at": now}
        if with_sequence:
            where.append(c.last_sequence < bindparam("v_seq", type_=c.last_sequence.type))
            values["last_sequence"] = bindparam("v_seq", type_=c.last_sequence.type)
        if with_sid:
            sid = bindparam("v_sid", type_=c.call_sid.type)
            where.append(or_(c.call_sid.is_(None), c.call_sid == sid))
            values["call_sid"] = sid
        if status == CallStatus.IN_PROGRESS:
            values["answered_at"] = func.coalesce(c.answered_at, now)
        if status in TERMINAL_STATUSES:
            values["ended_at"] = now
            values["duration_s"] = bindparam("v_duration", type_=c.duration_s.type)
        stmt = _FORWARD[key] = update(_CALLS).where(*where).values(values).returning(c.answered_at)
    return stmt


_SET_AMD = update(_CALLS).where(_CALLS.c.id == bindparam("call_id"), _CALLS.c.answered_by.is_(None))
_SET_OUTCOME = update(_CALLS).where(_CALLS.c.id == bindparam("call_id"), _CALLS.c.outcome.is_(None))
_USE_TOKEN = (
    update(_TOKENS)
    .where(
        _TOKENS.c.token_hash == bindparam("hash"),
        _TOKENS.c.used_at.is_(None),
        _TOKENS.c.expires_at > bindparam("now"),
    )
    .values(used_at=bindparam("now"))
    .returning(_TOKENS.c.call_id)
)
# An announcement's alert options and voicemail come with the call (what happens after the message, and
# on a machine): one query.
_CALL_FOR_GRANT = (
    select(
        _CALLS.c.call_sid,
        _CALLS.c.text,
        _CALLS.c.kind,
        _CALLS.c.status,
        _ALERTS.c.options,
        _DELIVERIES.c.voicemail_text,
    )
    .select_from(
        _CALLS.outerjoin(_DELIVERIES, _DELIVERIES.c.id == _CALLS.c.delivery_id).outerjoin(
            _ALERTS, _ALERTS.c.id == _DELIVERIES.c.alert_id
        )
    )
    .where(_CALLS.c.id == bindparam("call_id"))
)
