"""The dispatcher's side of the deliveries: what is due, claims, the SID of a dialed call, refused dials,
the slots in use.

Exactly once across crashes (design.md): a delivery is claimed (state `dialing`, a lease, the attempt's
call row and stream token) in one transaction before Twilio is asked to call, and the Call SID is written
after. A claim whose lease ran out without a SID is reconciled against Twilio before it may be dialed
again (reconcile.py).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from announcer.options import StoredOptions
from announcer.store.calls import TOKEN_TTL, hash_token
from announcer.store.delivery_rows import (
    ALERTS,
    CALLS,
    DELIVERIES,
    EVENTS,
    OPEN_CALL,
    SLOT_LEASE,
    WAITING,
    DeliveryRecords,
    event,
)
from announcer.store.journal import Batch
from announcer.store.models import (
    Alert,
    AlertStatus,
    Call,
    CallDirection,
    CallEvent,
    CallKind,
    CallStatus,
    Delivery,
    DeliveryEvent,
    DeliveryState,
    StreamToken,
    utcnow,
)
from announcer.store.opt_outs import opted_out_among
from announcer.store.transitions import Move, after_final, finish, requeue

# Built once on the tables (see calls.py for why); `d_*` names avoid the deliveries table's `call_id`.
_UPDATE_CALL = update(CALLS).where(CALLS.c.id == bindparam("call_id"))
_DIALED = update(DELIVERIES).where(
    DELIVERIES.c.id == bindparam("d_id"), DELIVERIES.c.attempt == bindparam("d_attempt")
)
_ALERT_STATUS = select(ALERTS.c.status).where(ALERTS.c.id == bindparam("alert_id"))


@dataclass(frozen=True)
class Claim:
    """A delivery this dispatcher may dial now: its attempt's call row and stream token are ready."""

    delivery_id: int
    alert_id: str
    attempt: int
    call_id: int
    token: str
    phone: str
    text: str
    options: StoredOptions
    voicemail_text: str | None = None  # what a machine is told; None: the text
    claimed_mono: float = field(default_factory=time.monotonic)  # when claimed (this process's clock)


@dataclass(frozen=True)
class Refusals:
    """Twilio's refusals to place one attempt's call so far, the current one included."""

    count: int
    since: datetime  # when the first of them was claimed


class ClaimRecords(DeliveryRecords):
    async def next_due(self) -> datetime | None:
        """When the earliest waiting delivery falls due (None: nothing waits)."""
        async with self.sessions() as s:
            return (
                await s.execute(select(func.min(Delivery.next_attempt_at)).where(Delivery.state.in_(WAITING)))
            ).scalar_one_or_none()

    async def claim(self, *, limit: int, lease: timedelta, from_number: str) -> list[Claim]:
        """Claim up to `limit` due deliveries for dialing (state `dialing`, a lease, a call row, a token).
        Due ones whose number opted out since are finished `opted_out`; ones inside quiet hours (the rules
        say until when) are deferred."""
        now = utcnow()
        async with self.sessions() as s:
            query = (
                select(Delivery, Alert.options)
                .join(Alert, Alert.id == Delivery.alert_id)
                .where(
                    Delivery.state.in_(WAITING),
                    Delivery.next_attempt_at <= now,
                    Alert.status == AlertStatus.ACTIVE,
                )
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
                .with_for_update(of=Delivery, skip_locked=self._skip_locked)
            )
            rows = [(d, o) for d, o in (await s.execute(query)).all()]
            events: list[dict[str, Any]] = []
            taken = await self._screen(s, rows, events, now)
            await s.flush()  # the opted-out ones; the claimed ones are written in bulk below
            claims = await _take(s, taken, events, now, lease, from_number) if taken else []
            if events:
                await s.execute(insert(EVENTS), events)
            await s.commit()
        return claims

    async def _screen(
        self,
        s: AsyncSession,
        rows: list[tuple[Delivery, StoredOptions]],
        events: list[dict[str, Any]],
        now: datetime,
    ) -> list[tuple[Delivery, StoredOptions]]:
        """The due rows that may be dialed now; the others are finished (opted out) or deferred."""
        opted = await opted_out_among(s, [d.phone for d, _ in rows])
        taken = []
        for delivery, options in rows:
            # opted out after the alert was accepted (a page never is: see create_alert)
            if delivery.phone in opted and options.page is None:
                finish(delivery, DeliveryState.OPTED_OUT, now, reason="this number opted out")
                events.append(event(delivery.id, "state", now, state="opted_out"))
                # An outcome like any other: it may complete the alert, and its webhook goes out with it.
                await after_final(s, delivery, now)
                continue
            resume = self._rules.deferral(options, delivery.timezone, now)
            if resume is not None:  # inside the recipient's quiet hours: due again at their end
                delivery.next_attempt_at = resume
                delivery.updated_at = now
                events.append(
                    event(delivery.id, "deferred", now, reason="quiet hours", until=resume.isoformat())
                )
                continue
            taken.append((delivery, options))
        return taken

    async def dialed(self, claim: Claim, call_sid: str) -> bool:
        """Twilio accepted the call: its SID belongs to this attempt. False when the alert was canceled
        while the request was on its way (the caller then cancels the call). Through the journal: at
        50 calls a second these share transactions."""
        return await self._journal.submit(partial(_dialed, claim, call_sid, utcnow()), claim.call_id)

    async def refusals(self, claim: Claim) -> Refusals:
        """How often Twilio refused to place this attempt's call, this time included, and since when: each
        refused dial left its call row without a SID (`failed`; the current one is still `queued`)."""
        async with self.sessions() as s:
            count, since = (
                await s.execute(
                    select(func.count(), func.min(Call.created_at)).where(
                        Call.delivery_id == claim.delivery_id,
                        Call.attempt == claim.attempt,
                        Call.call_sid.is_(None),
                        Call.status.in_([CallStatus.FAILED, CallStatus.QUEUED]),
                    )
                )
            ).one()
        return Refusals(max(int(count), 1), since or utcnow())

    async def dial_refused(
        self, claim: Claim, *, code: int | None, reason: str, retry_at: datetime | None
    ) -> Move | None:
        """Twilio refused to place the call (or the destination policy did: no code). With `retry_at` the
        attempt did not count (429, 5xx, network): the delivery waits for that time; else it fails with
        Twilio's code."""
        now = utcnow()
        async with self.sessions() as s:
            delivery = await s.get(Delivery, claim.delivery_id, with_for_update=True)
            if (
                delivery is None
                or delivery.attempt != claim.attempt
                or delivery.state != DeliveryState.DIALING
            ):
                return None
            await s.execute(update(Call).where(Call.id == claim.call_id).values(status=CallStatus.FAILED))
            if retry_at is not None:
                delivery.attempt -= 1
                requeue(delivery, retry_at, now)
                detail = {"code": code, "reason": reason[:300], "retry_at": retry_at.isoformat()}
                s.add(DeliveryEvent(delivery_id=delivery.id, kind="dial_retry", at=now, detail=detail))
                await s.commit()
                return None
            finish(delivery, DeliveryState.FAILED, now, code=code, reason=reason)
            detail = {"state": "failed", "code": code}
            s.add(DeliveryEvent(delivery_id=delivery.id, kind="state", at=now, detail=detail))
            move = await after_final(s, delivery, now)  # its webhooks, in this transaction
            await s.commit()
            return move

    async def waiting(self) -> tuple[int, int]:
        """The dial queue: (deliveries due now, deliveries waiting in all, later retries included)."""
        now = utcnow()
        async with self.sessions() as s:
            row = (
                await s.execute(
                    select(func.count().filter(Delivery.next_attempt_at <= now), func.count()).where(
                        Delivery.state.in_(WAITING)
                    )
                )
            ).one()
        return int(row[0]), int(row[1])

    async def in_flight(self) -> int:
        """Announcement calls alive at Twilio (claimed and not yet reported over): the slots in use.

        Counted on calls rather than deliveries: a delivery is final when its message was heard, a moment
        before its call is hung up. A call silent for `SLOT_LEASE` no longer holds a slot (its final
        callback was lost; the reconciler settles the delivery)."""
        since = utcnow() - SLOT_LEASE
        async with self.sessions() as s:
            return int(
                (
                    await s.execute(
                        select(func.count()).where(
                            Call.delivery_id.is_not(None),
                            Call.status.in_(OPEN_CALL),
                            Call.updated_at > since,
                        )
                    )
                ).scalar_one()
            )

    async def due(self) -> int:
        """Deliveries due to be dialed now and not claimed yet: the dial queue's depth (one count over the
        `ix_deliveries_due` index)."""
        async with self.sessions() as s:
            found = await s.execute(
                select(func.count()).where(Delivery.state.in_(WAITING), Delivery.next_attempt_at <= utcnow())
            )
            return int(found.scalar_one())


async def _take(
    s: AsyncSession,
    taken: list[tuple[Delivery, StoredOptions]],
    events: list[dict[str, Any]],
    now: datetime,
    lease: timedelta,
    from_number: str,
) -> list[Claim]:
    """Claim the screened rows: each attempt's call row and stream token, the deliveries `dialing`."""
    # Bulk statements, not the unit of work: one INSERT ... RETURNING for every call row of the batch
    # instead of a flush (a round trip) per claimed delivery.
    call_rows = [
        {
            "direction": CallDirection.OUTBOUND,
            "kind": CallKind.ANNOUNCEMENT,
            "from_number": from_number,
            "to_number": d.phone,
            "status": CallStatus.QUEUED,
            "text": d.text,
            "delivery_id": d.id,
            "attempt": d.attempt + 1,
            "created_at": now,
            "updated_at": now,
        }
        for d, _ in taken
    ]
    call_ids = (
        (await s.execute(insert(Call).returning(Call.id, sort_by_parameter_order=True), call_rows))
        .scalars()
        .all()
    )
    claims: list[Claim] = []
    tokens: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for (delivery, options), call_id in zip(taken, call_ids, strict=True):
        attempt = delivery.attempt + 1
        token = secrets.token_urlsafe(24)
        tokens.append({"token_hash": hash_token(token), "call_id": call_id, "expires_at": now + TOKEN_TTL})
        updates.append(
            {
                "id": delivery.id,
                "attempt": attempt,
                "state": DeliveryState.DIALING,
                "lease_expires_at": now + lease,
                "call_sid": None,
                "call_id": call_id,
                "updated_at": now,
            }
        )
        events.append(event(delivery.id, "state", now, state="dialing", attempt=attempt))
        claims.append(
            Claim(
                delivery_id=delivery.id,
                alert_id=delivery.alert_id,
                attempt=attempt,
                call_id=call_id,
                token=token,
                phone=delivery.phone,
                text=delivery.text,
                options=options,
                voicemail_text=delivery.voicemail_text,
            )
        )
    await s.execute(insert(StreamToken), tokens)
    await s.execute(
        insert(CallEvent),
        [{"call_id": c.call_id, "kind": "stream_token_issued", "detail": {}, "at": now} for c in claims],
    )
    # Expunged first: the bulk UPDATE by primary key must not race the loaded objects' state.
    for delivery, _ in taken:
        s.expunge(delivery)
    await s.execute(update(Delivery), updates)
    return claims


async def _dialed(claim: Claim, call_sid: str, now: datetime, b: Batch) -> bool:
    s = b.session
    await s.execute(_UPDATE_CALL, {"call_id": claim.call_id, "call_sid": call_sid, "updated_at": now})
    await s.execute(
        _DIALED,
        {"d_id": claim.delivery_id, "d_attempt": claim.attempt, "call_sid": call_sid, "updated_at": now},
    )
    b.insert(EVENTS, event(claim.delivery_id, "dialed", now, attempt=claim.attempt, call_sid=call_sid))
    status = (await s.execute(_ALERT_STATUS, {"alert_id": claim.alert_id})).scalar_one()
    return bool(status == AlertStatus.ACTIVE)
