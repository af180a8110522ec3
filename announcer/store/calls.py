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
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from announcer.store.journal import Journal
from announcer.store.models import (
    TERMINAL_STATUSES,
    Call,
    CallEvent,
    CallStatus,
    StreamToken,
    status_rank,
    utcnow,
)

TOKEN_TTL = timedelta(minutes=10)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class StreamGrant:
    """What a consumed token entitles a media stream to: the call and its message."""

    call_id: int
    call_sid: str | None
    text: str
    kind: str


class CallStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.journal = Journal(sessions)  # every write but the call's creation goes through it

    async def open_inbound(
        self, *, call_sid: str, from_number: str, to_number: str, kind: str, text: str, status: str
    ) -> tuple[StreamGrant, str]:
        """Record an inbound call (or find it again when Twilio retries the webhook) and issue a token."""
        async with self.sessions() as s:
            call = (await s.execute(select(Call).where(Call.call_sid == call_sid))).scalar_one_or_none()
            if call is None:
                call = Call(
                    call_sid=call_sid,
                    direction="inbound",
                    kind=kind,
                    from_number=from_number,
                    to_number=to_number,
                    status=status,
                    text=text,
                )
                s.add(call)
                try:
                    await s.flush()
                except IntegrityError:
                    # The same webhook raced us in another process: use its row.
                    await s.rollback()
                    call = (await s.execute(select(Call).where(Call.call_sid == call_sid))).scalar_one()
                else:
                    s.add(CallEvent(call_id=call.id, kind="status", detail={"status": status}))
            token = secrets.token_urlsafe(24)
            s.add(StreamToken(token_hash=hash_token(token), call_id=call.id, expires_at=utcnow() + TOKEN_TTL))
            s.add(CallEvent(call_id=call.id, kind="stream_token_issued", detail={}))
            await s.commit()
            return StreamGrant(call_id=call.id, call_sid=call.call_sid, text=call.text, kind=call.kind), token

    async def consume_token(self, token: str, call_sid: str) -> StreamGrant | None:
        """Use a stream token once. None when it is unknown, expired, used, or for another call."""
        return await self.journal.submit(partial(_consume_token, hash_token(token), call_sid, utcnow()))

    async def add_event(self, call_id: int, kind: str, **detail: Any) -> None:
        """Append to the call's trail and wait until it is committed."""
        await self.journal.submit(partial(_add_event, call_id, kind, detail, utcnow()))

    def record(self, call_id: int, kind: str, **detail: Any) -> None:
        """Append to the call's trail without waiting (a live call's bookkeeping): written with the next
        batch, in order after everything recorded before it."""
        self.journal.post(partial(_add_event, call_id, kind, detail, utcnow()))

    async def set_outcome(self, call_id: int, outcome: str, **detail: Any) -> None:
        """Record the outcome once: the first one that happens is the truth."""
        await self.journal.submit(partial(_set_outcome, call_id, outcome, detail, utcnow()))

    def record_outcome(self, call_id: int, outcome: str, **detail: Any) -> None:
        """`set_outcome` without waiting."""
        self.journal.post(partial(_set_outcome, call_id, outcome, detail, utcnow()))

    def record_in_progress(self, call_id: int) -> None:
        """The media stream started, so the call is answered (without waiting)."""
        self.journal.post(partial(_apply_status, call_id, CallStatus.IN_PROGRESS, None, "stream", None, None))

    async def apply_status(
        self,
        call_id: int,
        status: CallStatus,
        *,
        sequence: int | None,
        source: str,
        duration_s: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> bool:
        """Move a call forward to `status`; False (nothing changed, event noted) when it would go back."""
        return await self.journal.submit(
            partial(_apply_status, call_id, status, sequence, source, duration_s, extra)
        )

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        await self.journal.flush()

    async def aclose(self) -> None:
        """Write what is queued (shutdown; before the engine is disposed)."""
        await self.journal.close()

    async def find_by_sid(self, call_sid: str) -> int | None:
        async with self.sessions() as s:
            return (await s.execute(select(Call.id).where(Call.call_sid == call_sid))).scalar_one_or_none()

    async def get(self, call_id: int) -> Call | None:
        async with self.sessions() as s:
            return await s.get(Call, call_id)

    async def events(self, call_id: int) -> list[CallEvent]:
        async with self.sessions() as s:
            rows = await s.execute(
                select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.id)
            )
            return list(rows.scalars())

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


# --- operations on a journal batch's session (they never commit) -----------------------------------


async def _consume_token(
    token_hash: str, call_sid: str, now: datetime, s: AsyncSession
) -> StreamGrant | None:
    row = (
        await s.execute(
            update(StreamToken)
            .where(
                StreamToken.token_hash == token_hash,
                StreamToken.used_at.is_(None),
                StreamToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(StreamToken.call_id)
        )
    ).first()
    if row is None:
        return None  # nothing matched, nothing changed
    call = await s.get(Call, row[0])
    if call is None or (call.call_sid is not None and call.call_sid != call_sid):
        # Presented for another call: the token has leaked. It stays burnt rather than usable.
        return None
    return StreamGrant(call_id=call.id, call_sid=call.call_sid, text=call.text, kind=call.kind)


async def _add_event(call_id: int, kind: str, detail: dict[str, Any], at: datetime, s: AsyncSession) -> None:
    s.add(CallEvent(call_id=call_id, kind=kind, detail=detail, at=at))


async def _set_outcome(
    call_id: int, outcome: str, detail: dict[str, Any], at: datetime, s: AsyncSession
) -> None:
    await s.execute(update(Call).where(Call.id == call_id, Call.outcome.is_(None)).values(outcome=outcome))
    s.add(CallEvent(call_id=call_id, kind="outcome", detail={"outcome": outcome, **detail}, at=at))


async def _apply_status(
    call_id: int,
    status: CallStatus,
    sequence: int | None,
    source: str,
    duration_s: int | None,
    extra: dict[str, Any] | None,
    s: AsyncSession,
) -> bool:
    call = await s.get(Call, call_id, with_for_update=True)
    if call is None:
        return False
    current = CallStatus(call.status)
    stale = sequence is not None and sequence <= call.last_sequence
    backwards = current in TERMINAL_STATUSES or status_rank(status) <= status_rank(current)
    detail: dict[str, Any] = {"status": status.value, "source": source, **(extra or {})}
    if sequence is not None:
        detail["sequence"] = sequence
    if stale or backwards:
        s.add(CallEvent(call_id=call_id, kind="status_ignored", detail=detail))
        return False
    call.status = status.value
    if sequence is not None:
        call.last_sequence = sequence
    now = utcnow()
    if status == CallStatus.IN_PROGRESS and call.answered_at is None:
        call.answered_at = now
    if status in TERMINAL_STATUSES:
        call.ended_at = now
        call.duration_s = duration_s
    s.add(CallEvent(call_id=call_id, kind="status", detail=detail))
    return True
