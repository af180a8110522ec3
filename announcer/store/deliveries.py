"""Alerts and their deliveries in the database: acceptance, the dispatcher's claims, transitions, opt-outs.

Every method is one transaction. A delivery only moves forward (store/delivery_states.py decides what
forward means), and every move, and every refused one, is a `delivery_events` row.

Exactly once across crashes (design.md): the alert and all its deliveries are committed before the API
answers; a delivery is claimed (state `dialing`, a lease, the attempt's call row and stream token) in one
transaction before Twilio is asked to call, and the Call SID is written after. A claim whose lease ran
out without a SID is reconciled against Twilio before it may be dialed again.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from announcer.store.calls import TOKEN_TTL, hash_token
from announcer.store.delivery_states import is_final, moves_forward
from announcer.store.journal import Batch, Journal
from announcer.store.models import (
    FINAL_DELIVERY_STATES,
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
    OptOut,
    StreamToken,
    utcnow,
)
from announcer.store.quiet_hours import QuietHoursError, parse_quiet_hours

_DELIVERIES = cast(Table, Delivery.__table__)
_EVENTS = cast(Table, DeliveryEvent.__table__)
_CHUNK = 500  # parameters per IN (...) list
_SLOT_LEASE = timedelta(minutes=15)
_OPEN_DELIVERY = [s for s in DeliveryState if s not in FINAL_DELIVERY_STATES]
_OPEN_CALL = [CallStatus.QUEUED, CallStatus.INITIATED, CallStatus.RINGING, CallStatus.IN_PROGRESS]

# The statements every call runs, built once on the tables (see calls.py for why). Parameters named
# after a column set it; `d_*` names avoid the deliveries table's own `call_id` column.
_CALLS = cast(Table, Call.__table__)
_ALERTS = cast(Table, Alert.__table__)
_UPDATE_CALL = update(_CALLS).where(_CALLS.c.id == bindparam("call_id"))
_UPDATE_DELIVERY = update(_DELIVERIES).where(_DELIVERIES.c.id == bindparam("d_id"))
_DIALED = update(_DELIVERIES).where(
    _DELIVERIES.c.id == bindparam("d_id"), _DELIVERIES.c.attempt == bindparam("d_attempt")
)
_ALERT_STATUS = select(_ALERTS.c.status).where(_ALERTS.c.id == bindparam("alert_id"))
_DELIVERY_OF_CALL = (
    select(
        _DELIVERIES.c.id, _DELIVERIES.c.state, _DELIVERIES.c.attempt, _DELIVERIES.c.alert_id, _CALLS.c.attempt
    )
    .select_from(_DELIVERIES.join(_CALLS, _CALLS.c.delivery_id == _DELIVERIES.c.id))
    .where(_CALLS.c.id == bindparam("call_id"))
    .with_for_update(of=_DELIVERIES)
)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class AlertFinished(Exception):
    """The alert has nothing left to cancel."""


@dataclass(frozen=True)
class NewDelivery:
    position: int
    phone: str
    name: str | None
    timezone: str | None
    variables: dict[str, Any]
    text: str


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
    options: dict[str, Any]


@dataclass(frozen=True)
class ExpiredClaim:
    delivery_id: int
    attempt: int
    call_id: int
    phone: str
    claimed_at: datetime
    call_sid: str | None  # set when a status callback revealed it (the callback URL names the call)


@dataclass(frozen=True)
class Move:
    """A transition that happened (for the caller to act on: webhooks, retries, alert completion)."""

    delivery_id: int
    alert_id: str
    state: DeliveryState
    attempt: int
    final: bool
    retry_at: datetime | None = None
    callback_url: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    position: int = 0
    phone: str = ""
    outcome_code: int | None = None
    outcome_reason: str | None = None


@dataclass(frozen=True)
class AlertView:
    id: str
    status: str
    recipients: int
    created_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]
    options: dict[str, Any]
    template: str | None


@dataclass(frozen=True)
class DeliveryView:
    id: int
    position: int
    phone: str
    name: str | None
    state: str
    attempt: int
    outcome: str | None
    outcome_code: int | None
    outcome_reason: str | None
    call_sid: str | None
    text: str
    updated_at: datetime
    history: list[dict[str, Any]]


def _event(delivery_id: int, kind: str, at: datetime, **detail: Any) -> dict[str, Any]:
    return {"delivery_id": delivery_id, "kind": kind, "at": at, "detail": detail}


class DeliveryStore:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, postgres: bool, journal: Journal | None = None
    ) -> None:
        self.sessions = sessions
        # Moves driven by calls (several per call, many calls at once) go through the group-commit journal.
        self._journal = journal or Journal(sessions)
        self._skip_locked = postgres  # FOR UPDATE SKIP LOCKED lets several dispatchers share the table

    # --- acceptance ------------------------------------------------------------------------------

    async def create_alert(
        self,
        *,
        idempotency_key: str | None,
        request_hash: str,
        source: str,
        template: str | None,
        template_text: str | None,
        variables: dict[str, Any],
        options: dict[str, Any],
        callback_url: str | None,
        deliveries: Sequence[NewDelivery],
        max_attempts: int,
    ) -> tuple[str, bool]:
        """Store the alert and its deliveries; (id, True) when created, (id, False) for a replay."""
        if idempotency_key is not None:
            existing = await self._by_key(idempotency_key, request_hash)
            if existing is not None:
                return existing, False
        alert_id = "al_" + secrets.token_hex(12)
        now = utcnow()
        async with self.sessions() as s:
            opted = await _opted_out(s, [d.phone for d in deliveries])
            try:
                await s.execute(
                    insert(Alert).values(
                        id=alert_id,
                        idempotency_key=idempotency_key,
                        request_hash=request_hash,
                        source=source,
                        template=template,
                        template_text=template_text,
                        variables=variables,
                        options=options,
                        callback_url=callback_url,
                        status=AlertStatus.ACTIVE,
                        recipients=len(deliveries),
                        created_at=now,
                    )
                )
            except IntegrityError:
                await s.rollback()  # the same key won a race in another request
                assert idempotency_key is not None
                existing = await self._by_key(idempotency_key, request_hash)
                assert existing is not None
                return existing, False
            rows = []
            for d in deliveries:
                out = d.phone in opted
                rows.append(
                    {
                        "alert_id": alert_id,
                        "position": d.position,
                        "phone": d.phone,
                        "name": d.name,
                        "timezone": d.timezone,
                        "variables": d.variables,
                        "text": d.text,
                        "state": DeliveryState.OPTED_OUT if out else DeliveryState.PENDING,
                        "attempt": 0,
                        "max_attempts": max_attempts,
                        "next_attempt_at": now,
                        "outcome": DeliveryState.OPTED_OUT if out else None,
                        "outcome_reason": "this number opted out earlier" if out else None,
                        "created_at": now,
                        "updated_at": now,
                        "finished_at": now if out else None,
                    }
                )
            # Each delivery's first state is its row (state and created_at): no event row per recipient,
            # which would double the rows written before the answer (`deliveries()` lists it first).
            await s.execute(insert(_DELIVERIES), rows)
            if opted and len(opted) >= len(deliveries):
                await _complete(s, alert_id, now)
            await s.commit()
        return alert_id, True

    async def _by_key(self, key: str, request_hash: str) -> str | None:
        async with self.sessions() as s:
            row = (
                await s.execute(select(Alert.id, Alert.request_hash).where(Alert.idempotency_key == key))
            ).first()
        if row is None:
            return None
        if row.request_hash != request_hash:
            raise IdempotencyConflict(key)
        return str(row.id)

    # --- reading ---------------------------------------------------------------------------------

    async def alert(self, alert_id: str) -> AlertView | None:
        async with self.sessions() as s:
            alert = await s.get(Alert, alert_id)
            if alert is None:
                return None
            counts = dict(
                (
                    await s.execute(
                        select(Delivery.state, func.count())
                        .where(Delivery.alert_id == alert_id)
                        .group_by(Delivery.state)
                    )
                ).all()
            )
        return AlertView(
            id=alert.id,
            status=alert.status,
            recipients=alert.recipients,
            created_at=alert.created_at,
            finished_at=alert.finished_at,
            counts={str(k): int(v) for k, v in counts.items()},
            options=alert.options,
            template=alert.template,
        )

    async def deliveries(self, alert_id: str, *, after: int, limit: int) -> list[DeliveryView]:
        """Page through an alert's deliveries by recipient index (positions after `after`)."""
        async with self.sessions() as s:
            rows = list(
                (
                    await s.execute(
                        select(Delivery)
                        .where(Delivery.alert_id == alert_id, Delivery.position > after)
                        .order_by(Delivery.position)
                        .limit(limit)
                    )
                ).scalars()
            )
            history: dict[int, list[dict[str, Any]]] = {
                d.id: [
                    {
                        "at": d.created_at.isoformat(),
                        "kind": "state",
                        "state": DeliveryState.OPTED_OUT.value
                        if d.outcome == DeliveryState.OPTED_OUT and d.attempt == 0
                        else DeliveryState.PENDING.value,
                    }
                ]
                for d in rows
            }
            ids = list(history)
            for start in range(0, len(ids), _CHUNK):
                events = await s.execute(
                    select(DeliveryEvent)
                    .where(DeliveryEvent.delivery_id.in_(ids[start : start + _CHUNK]))
                    .order_by(DeliveryEvent.id)
                )
                for e in events.scalars():
                    history[e.delivery_id].append({"at": e.at.isoformat(), "kind": e.kind, **e.detail})
        return [
            DeliveryView(
                id=d.id,
                position=d.position,
                phone=d.phone,
                name=d.name,
                state=d.state,
                attempt=d.attempt,
                outcome=d.outcome,
                outcome_code=d.outcome_code,
                outcome_reason=d.outcome_reason,
                call_sid=d.call_sid,
                text=d.text,
                updated_at=d.updated_at,
                history=history[d.id],
            )
            for d in rows
        ]

    # --- cancel ----------------------------------------------------------------------------------

    async def cancel_alert(
        self, alert_id: str, unplaced: Sequence[Claim] = ()
    ) -> tuple[int, list[tuple[int, str]]]:
        """Cancel what has not been dialed; return (how many, [(delivery id, call sid)] still ringing or
        dialing, for the caller to cancel at Twilio). `unplaced`: claims of this alert that the
        dispatcher took back before dialing them; they are canceled too. Raises LookupError /
        AlertFinished."""
        now = utcnow()
        # Locks are taken in the order every other writer takes them, deliveries before their alert (a
        # delivery's final outcome completes its alert): the other order deadlocked against the dispatcher.
        async with self.sessions() as s:
            status = (await s.execute(select(Alert.status).where(Alert.id == alert_id))).scalar_one_or_none()
            if status is None:
                raise LookupError(alert_id)
            if status != AlertStatus.ACTIVE:
                raise AlertFinished(status)
            # A delivery being claimed right now is skipped: its call is canceled once placed (`dialed`).
            waiting = list(
                (
                    await s.execute(
                        select(Delivery.id)
                        .where(
                            Delivery.alert_id == alert_id,
                            Delivery.state.in_([DeliveryState.PENDING, DeliveryState.QUEUED]),
                        )
                        .order_by(Delivery.id)
                        .with_for_update(skip_locked=self._skip_locked)
                    )
                ).scalars()
            )
            for start in range(0, len(waiting), _CHUNK):
                chunk = waiting[start : start + _CHUNK]
                await s.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(chunk))
                    .values(
                        state=DeliveryState.CANCELED,
                        outcome=DeliveryState.CANCELED,
                        outcome_reason="the alert was canceled before this call was placed",
                        updated_at=now,
                        finished_at=now,
                    )
                )
            for claim in unplaced:
                taken_back = await s.execute(
                    update(Delivery)
                    .where(
                        Delivery.id == claim.delivery_id,
                        Delivery.attempt == claim.attempt,
                        Delivery.state == DeliveryState.DIALING,
                        Delivery.call_sid.is_(None),
                    )
                    .values(
                        state=DeliveryState.CANCELED,
                        outcome=DeliveryState.CANCELED,
                        outcome_reason="the alert was canceled before this call was placed",
                        lease_expires_at=None,
                        updated_at=now,
                        finished_at=now,
                    )
                )
                if taken_back.rowcount:  # type: ignore[attr-defined]
                    await s.execute(
                        update(Call).where(Call.id == claim.call_id).values(status=CallStatus.CANCELED)
                    )
                    waiting.append(claim.delivery_id)
            if waiting:
                await s.execute(
                    insert(_EVENTS),
                    [_event(i, "state", now, state="canceled", reason="alert canceled") for i in waiting],
                )
            live = (
                await s.execute(
                    select(Delivery.id, func.coalesce(Delivery.call_sid, Call.call_sid))
                    .outerjoin(Call, Call.id == Delivery.call_id)
                    .where(
                        Delivery.alert_id == alert_id,
                        Delivery.state.in_([DeliveryState.DIALING, DeliveryState.RINGING]),
                    )
                )
            ).all()
            done = await s.execute(
                update(Alert)
                .where(Alert.id == alert_id, Alert.status == AlertStatus.ACTIVE)
                .values(status=AlertStatus.CANCELED, finished_at=now)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                await s.rollback()  # it completed meanwhile: its deliveries are all final already
                raise AlertFinished(AlertStatus.COMPLETED)
            await s.commit()
        return len(waiting), [(int(i), str(sid)) for i, sid in live if sid]

    # --- the dispatcher --------------------------------------------------------------------------

    async def next_due(self) -> datetime | None:
        """When the earliest waiting delivery falls due (None: nothing waits)."""
        async with self.sessions() as s:
            return (
                await s.execute(
                    select(func.min(Delivery.next_attempt_at)).where(
                        Delivery.state.in_([DeliveryState.PENDING, DeliveryState.QUEUED])
                    )
                )
            ).scalar_one_or_none()

    async def claim(self, *, limit: int, lease: timedelta, from_number: str) -> list[Claim]:
        """Claim up to `limit` due deliveries for dialing (state `dialing`, a lease, a call row, a token)."""
        now = utcnow()
        async with self.sessions() as s:
            query = (
                select(Delivery, Alert.options)
                .join(Alert, Alert.id == Delivery.alert_id)
                .where(
                    Delivery.state.in_([DeliveryState.PENDING, DeliveryState.QUEUED]),
                    Delivery.next_attempt_at <= now,
                    Alert.status == AlertStatus.ACTIVE,
                )
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
                .with_for_update(of=Delivery, skip_locked=self._skip_locked)
            )
            rows = (await s.execute(query)).all()
            opted = await _opted_out(s, [d.phone for d, _ in rows])
            events: list[dict[str, Any]] = []
            taken: list[tuple[Delivery, dict[str, Any]]] = []
            for delivery, options in rows:
                if delivery.phone in opted:  # opted out after the alert was accepted
                    _finish(delivery, DeliveryState.OPTED_OUT, now, reason="this number opted out")
                    events.append(_event(delivery.id, "state", now, state="opted_out"))
                    continue
                resume = _quiet_until(delivery, options, now)
                if resume is not None:  # inside the recipient's quiet hours: due again at their end
                    delivery.next_attempt_at = resume
                    delivery.updated_at = now
                    events.append(
                        _event(delivery.id, "deferred", now, reason="quiet hours", until=resume.isoformat())
                    )
                    continue
                taken.append((delivery, options))
            await s.flush()  # the opted-out ones; the claimed ones are written in bulk below
            # Bulk statements, not the unit of work: one INSERT ... RETURNING for every call row of the
            # batch instead of a flush (a round trip) per claimed delivery.
            call_ids = (
                (
                    await s.execute(
                        insert(Call).returning(Call.id, sort_by_parameter_order=True),
                        [
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
                        ],
                    )
                )
                .scalars()
                .all()
                if taken
                else []
            )
            claims: list[Claim] = []
            tokens: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            for (delivery, options), call_id in zip(taken, call_ids, strict=True):
                attempt = delivery.attempt + 1
                token = secrets.token_urlsafe(24)
                tokens.append(
                    {"token_hash": hash_token(token), "call_id": call_id, "expires_at": now + TOKEN_TTL}
                )
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
                events.append(_event(delivery.id, "state", now, state="dialing", attempt=attempt))
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
                    )
                )
            if taken:
                await s.execute(insert(StreamToken), tokens)
                await s.execute(
                    insert(CallEvent),
                    [
                        {"call_id": c.call_id, "kind": "stream_token_issued", "detail": {}, "at": now}
                        for c in claims
                    ],
                )
                # Expunged first: the bulk UPDATE by primary key must not race the loaded objects' state.
                for delivery, _ in taken:
                    s.expunge(delivery)
                await s.execute(update(Delivery), updates)
            if events:
                await s.execute(insert(_EVENTS), events)
            await s.commit()
        return claims

    async def dialed(self, claim: Claim, call_sid: str) -> bool:
        """Twilio accepted the call: its SID belongs to this attempt. False when the alert was canceled
        while the request was on its way (the caller then cancels the call). Through the journal: at
        50 calls a second these share transactions."""
        return await self._journal.submit(partial(_dialed, claim, call_sid, utcnow()))

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
                _requeue(delivery, retry_at, now)
                s.add(
                    DeliveryEvent(
                        delivery_id=delivery.id,
                        kind="dial_retry",
                        at=now,
                        detail={"code": code, "reason": reason[:300], "retry_at": retry_at.isoformat()},
                    )
                )
                await s.commit()
                return None
            _finish(delivery, DeliveryState.FAILED, now, code=code, reason=reason)
            s.add(
                DeliveryEvent(
                    delivery_id=delivery.id, kind="state", at=now, detail={"state": "failed", "code": code}
                )
            )
            move = await _after_final(s, delivery, now)
            await s.commit()
            return move

    # --- transitions from the call -----------------------------------------------------------------

    async def on_call_state(
        self,
        call_id: int,
        new: DeliveryState,
        *,
        code: int | None = None,
        reason: str | None = None,
        source: str,
    ) -> Move | None:
        """Move the delivery whose attempt `call_id` carries to `new`, if that is forward (see states.py).

        A final state that the alert's options retry (busy, no answer, failed) becomes `pending` for the
        next attempt instead, while attempts remain."""
        return await self._journal.submit(partial(self._on_call_state, call_id, new, code, reason, source))

    async def _on_call_state(
        self, call_id: int, new: DeliveryState, code: int | None, reason: str | None, source: str, b: Batch
    ) -> Move | None:
        """`on_call_state` as an operation of a journal batch: several calls' moves share a transaction."""
        now = utcnow()
        s = b.session
        # Core for the common moves (ringing, answered, a late callback): several per call.
        row = (await s.execute(_DELIVERY_OF_CALL, {"call_id": call_id})).first()
        if row is None or row[4] is None:
            return None
        delivery_id, state, attempt, alert_id = row[0], row[1], row[2], row[3]
        call_attempt: int = row[4]
        detail: dict[str, Any] = {"state": new.value, "attempt": call_attempt, "source": source}
        if not moves_forward(DeliveryState(state), attempt, new, call_attempt):
            b.insert(_EVENTS, _event(delivery_id, "ignored", now, **detail))
            return None
        if code is not None:
            detail["code"] = code
        if reason:
            detail["reason"] = reason[:300]
        b.insert(_EVENTS, _event(delivery_id, "state", now, **detail))
        if not is_final(new):
            values: dict[str, Any] = {"d_id": delivery_id, "state": new, "updated_at": now}
            if new == DeliveryState.IN_PROGRESS:
                values["lease_expires_at"] = None
            await s.execute(_UPDATE_DELIVERY, values)
            return Move(delivery_id, alert_id, new, attempt, final=False)
        delivery = await s.get(Delivery, delivery_id)
        assert delivery is not None
        alert = await s.get(Alert, delivery.alert_id)
        options = alert.options if alert is not None else {}
        retry_on = set(options.get("retry_on", []))
        if (
            new.value in retry_on
            and delivery.attempt < delivery.max_attempts
            and alert is not None
            and alert.status == AlertStatus.ACTIVE
        ):
            backoff = float(options.get("retry_backoff_s", 60)) * 2 ** (delivery.attempt - 1)
            retry_at = now + timedelta(seconds=backoff)
            _requeue(delivery, retry_at, now)
            b.insert(
                _EVENTS,
                {
                    **_event(delivery.id, "retry_scheduled", now),
                    "detail": {
                        "after": new.value,
                        "next_attempt": delivery.attempt + 1,
                        "at": retry_at.isoformat(),
                    },
                },
            )
            return Move(delivery.id, delivery.alert_id, new, delivery.attempt, final=False, retry_at=retry_at)
        _finish(delivery, new, now, code=code, reason=reason)
        if new == DeliveryState.SNOOZED:
            # "Call me again later": a new delivery of the same message to the same person.
            again = Delivery(
                alert_id=delivery.alert_id,
                position=delivery.position,
                phone=delivery.phone,
                name=delivery.name,
                timezone=delivery.timezone,
                variables=delivery.variables,
                text=delivery.text,
                state=DeliveryState.PENDING,
                attempt=0,
                max_attempts=delivery.max_attempts,
                next_attempt_at=now + timedelta(seconds=float(options.get("snooze_s", 900))),
                created_at=now,
                updated_at=now,
            )
            s.add(again)
            await s.flush()
            b.insert(
                _EVENTS,
                {
                    **_event(again.id, "state", now),
                    "detail": {
                        "state": "pending",
                        "snoozed_from": delivery.id,
                        "due": again.next_attempt_at.isoformat(),
                    },
                },
            )
        if new == DeliveryState.OPTED_OUT:
            await _opt_out(s, delivery.phone, delivery.id, now)
        move = await _after_final(s, delivery, now)
        return move

    async def expired_claims(self) -> list[ExpiredClaim]:
        """Claims whose lease ran out before their Call SID was recorded (a crash, a lost answer)."""
        now = utcnow()
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(
                        Delivery.id,
                        Delivery.attempt,
                        Delivery.call_id,
                        Delivery.phone,
                        Delivery.updated_at,
                        Call.call_sid,
                    )
                    .join(Call, Call.id == Delivery.call_id)
                    .where(
                        Delivery.state.in_(
                            [DeliveryState.DIALING, DeliveryState.RINGING, DeliveryState.IN_PROGRESS]
                        ),
                        Delivery.call_sid.is_(None),
                        Delivery.lease_expires_at < now,
                    )
                )
            ).all()
        return [ExpiredClaim(int(a), int(b), int(c or 0), str(d), e, f) for a, b, c, d, e, f in rows]

    async def stale_calls(self, quiet_for: timedelta) -> list[tuple[int, str, bool]]:
        """Announcement calls still open here that nobody has heard about for `quiet_for` (the process
        that carried them died, or a callback was lost): (call id, call sid, answered)."""
        since = utcnow() - quiet_for
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(Call.id, Call.call_sid, Call.answered_at).where(
                        Call.delivery_id.is_not(None),
                        Call.call_sid.is_not(None),
                        Call.status.in_(_OPEN_CALL),
                        Call.updated_at < since,
                    )
                )
            ).all()
        return [(int(i), str(sid), answered is not None) for i, sid, answered in rows]

    async def touch(self, call_id: int) -> None:
        """The call is still live at Twilio: check again after another quiet spell."""
        async with self.sessions() as s:
            await s.execute(update(Call).where(Call.id == call_id).values(updated_at=utcnow()))
            await s.commit()

    async def settle_call(self, call_id: int, status: CallStatus) -> None:
        """Twilio says the call is over: close the call row (its slot is free)."""
        now = utcnow()
        async with self.sessions() as s:
            await s.execute(
                update(Call)
                .where(Call.id == call_id, Call.status.in_(_OPEN_CALL))
                .values(status=status, ended_at=now, updated_at=now)
            )
            await s.execute(
                insert(CallEvent),
                [
                    {
                        "call_id": call_id,
                        "kind": "status",
                        "at": now,
                        "detail": {"status": status.value, "source": "reconciled with Twilio"},
                    }
                ],
            )
            await s.commit()

    async def adopt_sid(self, claim: ExpiredClaim, call_sid: str) -> None:
        """The claim's call exists after all (a callback or Twilio's call list showed it): keep it."""
        now = utcnow()
        async with self.sessions() as s:
            await s.execute(
                update(Call)
                .where(Call.id == claim.call_id, Call.call_sid.is_(None))
                .values(call_sid=call_sid)
            )
            await s.execute(
                update(Delivery)
                .where(Delivery.id == claim.delivery_id, Delivery.attempt == claim.attempt)
                .values(call_sid=call_sid, lease_expires_at=None, updated_at=now)
            )
            await s.execute(
                insert(_EVENTS),
                [_event(claim.delivery_id, "reconciled", now, attempt=claim.attempt, call_sid=call_sid)],
            )
            await s.commit()

    async def release(self, claim: ExpiredClaim) -> None:
        """No call was placed for the claim: the attempt did not happen; the delivery is due again."""
        now = utcnow()
        async with self.sessions() as s:
            result = await s.execute(
                update(Delivery)
                .where(
                    Delivery.id == claim.delivery_id,
                    Delivery.attempt == claim.attempt,
                    Delivery.call_sid.is_(None),
                    Delivery.state == DeliveryState.DIALING,
                )
                .values(
                    state=DeliveryState.PENDING,
                    attempt=claim.attempt - 1,
                    next_attempt_at=now,
                    lease_expires_at=None,
                    call_id=None,
                    updated_at=now,
                )
            )
            if result.rowcount:  # type: ignore[attr-defined]
                await s.execute(
                    update(Call).where(Call.id == claim.call_id).values(status=CallStatus.CANCELED)
                )
                await s.execute(
                    insert(_EVENTS),
                    [
                        _event(
                            claim.delivery_id,
                            "claim_released",
                            now,
                            attempt=claim.attempt,
                            reason="no call placed",
                        )
                    ],
                )
            await s.commit()

    async def in_flight(self) -> int:
        """Announcement calls alive at Twilio (claimed and not yet reported over): the slots in use.

        Counted on calls rather than deliveries: a delivery is final when its message was heard, a moment
        before its call is hung up. A call silent for `_SLOT_LEASE` no longer holds a slot (its final
        callback was lost; the reconciler settles the delivery)."""
        since = utcnow() - _SLOT_LEASE
        async with self.sessions() as s:
            return int(
                (
                    await s.execute(
                        select(func.count()).where(
                            Call.delivery_id.is_not(None),
                            Call.status.in_(
                                [
                                    CallStatus.QUEUED,
                                    CallStatus.INITIATED,
                                    CallStatus.RINGING,
                                    CallStatus.IN_PROGRESS,
                                ]
                            ),
                            Call.updated_at > since,
                        )
                    )
                ).scalar_one()
            )

    async def call_options(self, call_id: int) -> dict[str, Any] | None:
        """The alert options of the delivery that call `call_id` carries (None: not an announcement)."""
        async with self.sessions() as s:
            return (
                await s.execute(
                    select(Alert.options)
                    .join(Delivery, Delivery.alert_id == Alert.id)
                    .join(Call, Call.delivery_id == Delivery.id)
                    .where(Call.id == call_id)
                )
            ).scalar_one_or_none()

    async def call_context(self, call_id: int) -> dict[str, Any]:
        """What an agent is told about the person on call `call_id`: the variables their message was
        rendered with (the alert's shared ones, then the recipient's own, as in `plan_deliveries`)."""
        async with self.sessions() as s:
            row = (
                await s.execute(
                    select(Delivery.name, Delivery.variables, Alert.variables)
                    .join(Alert, Alert.id == Delivery.alert_id)
                    .join(Call, Call.delivery_id == Delivery.id)
                    .where(Call.id == call_id)
                )
            ).first()
        if row is None:
            return {}
        context: dict[str, Any] = {"name": row[0]} if row[0] else {}
        context.update(row[2] or {})
        context.update(row[1] or {})
        return context

    async def delivery_call(self, delivery_id: int) -> tuple[int | None, str | None] | None:
        """(call row id, call SID) of a delivery's latest attempt; None when there is no such delivery."""
        async with self.sessions() as s:
            row = (
                await s.execute(select(Delivery.call_id, Delivery.call_sid).where(Delivery.id == delivery_id))
            ).first()
        return None if row is None else (row[0], row[1])

    # --- opt-outs --------------------------------------------------------------------------------

    async def remove_opt_out(self, phone: str) -> bool:
        async with self.sessions() as s:
            row = await s.get(OptOut, phone)
            if row is None:
                return False
            await s.delete(row)
            await s.commit()
            return True

    async def opted_out(self, phone: str) -> bool:
        async with self.sessions() as s:
            return await s.get(OptOut, phone) is not None


async def _dialed(claim: Claim, call_sid: str, now: datetime, b: Batch) -> bool:
    s = b.session
    await s.execute(_UPDATE_CALL, {"call_id": claim.call_id, "call_sid": call_sid, "updated_at": now})
    await s.execute(
        _DIALED,
        {"d_id": claim.delivery_id, "d_attempt": claim.attempt, "call_sid": call_sid, "updated_at": now},
    )
    b.insert(_EVENTS, _event(claim.delivery_id, "dialed", now, attempt=claim.attempt, call_sid=call_sid))
    status = (await s.execute(_ALERT_STATUS, {"alert_id": claim.alert_id})).scalar_one()
    return bool(status == AlertStatus.ACTIVE)


async def _opted_out(s: AsyncSession, phones: Sequence[str]) -> set[str]:
    out: set[str] = set()
    unique = list(dict.fromkeys(phones))
    for start in range(0, len(unique), _CHUNK):
        rows = await s.execute(select(OptOut.phone).where(OptOut.phone.in_(unique[start : start + _CHUNK])))
        out.update(rows.scalars())
    return out


async def _opt_out(s: AsyncSession, phone: str, delivery_id: int, now: datetime) -> None:
    if await s.get(OptOut, phone) is None:
        s.add(OptOut(phone=phone, delivery_id=delivery_id, created_at=now))


def _requeue(delivery: Delivery, at: datetime, now: datetime) -> None:
    """Back to waiting: dialed again (by whoever claims it) from `at`."""
    delivery.state = DeliveryState.PENDING
    delivery.next_attempt_at = at
    delivery.lease_expires_at = None
    delivery.updated_at = now


def _quiet_until(delivery: Delivery, options: dict[str, Any], now: datetime) -> datetime | None:
    """When the quiet hours `now` falls in end for this recipient (their zone, else the alert's), or
    None when they may be called now."""
    raw = options.get("quiet_hours")
    if not raw:
        return None
    try:
        quiet = parse_quiet_hours(raw)
        zone = ZoneInfo(delivery.timezone or options.get("timezone") or "UTC")
    except (QuietHoursError, ZoneInfoNotFoundError, ValueError):
        return None  # checked when it was accepted; an unreadable leftover does not stop a call
    if quiet is None:
        return None
    local = now.astimezone(zone)
    if not quiet.contains(local.time()):
        return None
    return quiet.window_end(local).astimezone(UTC)


def _finish(
    delivery: Delivery,
    state: DeliveryState,
    now: datetime,
    *,
    code: int | None = None,
    reason: str | None = None,
) -> None:
    delivery.state = state
    delivery.outcome = state
    delivery.outcome_code = code
    delivery.outcome_reason = reason[:400] if reason else None
    delivery.lease_expires_at = None
    delivery.updated_at = now
    delivery.finished_at = now


async def _after_final(s: AsyncSession, delivery: Delivery, now: datetime) -> Move:
    """The delivery just reached its outcome: complete the alert when it was the last one."""
    await s.flush()
    alert = await s.get(Alert, delivery.alert_id)
    # "Is any delivery still open?": an index probe on (alert_id, state), not a count of the whole alert
    # (counting at every outcome made a 10,000-recipient alert quadratic).
    open_one = (
        await s.execute(
            select(Delivery.id)
            .where(Delivery.alert_id == delivery.alert_id, Delivery.state.in_(_OPEN_DELIVERY))
            .limit(1)
        )
    ).first()
    alert_done = open_one is None and alert is not None and alert.status == AlertStatus.ACTIVE
    if alert_done:
        await _complete(s, delivery.alert_id, now)
    return Move(
        delivery.id,
        delivery.alert_id,
        DeliveryState(delivery.state),
        delivery.attempt,
        final=True,
        callback_url=alert.callback_url if alert is not None else None,
        detail={"alert_completed": alert_done},
        position=delivery.position,
        phone=delivery.phone,
        outcome_code=delivery.outcome_code,
        outcome_reason=delivery.outcome_reason,
    )


async def _complete(s: AsyncSession, alert_id: str, now: datetime) -> None:
    await s.execute(
        update(Alert)
        .where(Alert.id == alert_id, Alert.status == AlertStatus.ACTIVE)
        .values(status=AlertStatus.COMPLETED, finished_at=now)
    )
