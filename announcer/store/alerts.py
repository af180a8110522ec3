"""Alerts as accepted and as read back: acceptance (idempotent), the views the API shows, cancel, the
reads about the person a call is for (opt-outs: opt_outs.py).

Exactly once (design.md): the alert and all its deliveries are committed before the API answers.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from announcer.options import StoredOptions
from announcer.store.claims import Claim
from announcer.store.delivery_rows import (
    CALL_FACTS,
    CANCELED_UNPLACED,
    CHUNK,
    DELIVERIES,
    EVENTS,
    WAITING,
    DeliveryRecords,
    call_facts,
    event,
)
from announcer.store.models import (
    Alert,
    AlertStatus,
    Call,
    CallStatus,
    Delivery,
    DeliveryEvent,
    DeliveryState,
    utcnow,
)
from announcer.store.opt_outs import opted_out_among
from announcer.store.transitions import complete_alert


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
    voicemail_text: str | None = None  # the template's voicemail block, rendered; None: the text itself


@dataclass(frozen=True)
class AlertView:
    id: str
    status: str
    recipients: int
    created_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]
    options: StoredOptions
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
    voicemail_text: str | None = None
    # The facts of its latest attempt's call (store/models.py Call; null when unknown, and for rows from
    # before migration 0008)
    answered_by: str | None = None
    amd_ms: int | None = None
    played_ms: int | None = None
    message_ms: int | None = None
    keys: str | None = None


@dataclass(frozen=True)
class DeliveryBrief:
    """Who a delivery is for and what it says (a call's page shows it beside the call)."""

    id: int
    alert_id: str
    position: int
    phone: str
    name: str | None
    text: str
    voicemail_text: str | None


class AlertRecords(DeliveryRecords):
    async def create_alert(
        self,
        *,
        idempotency_key: str | None,
        request_hash: str,
        source: str,
        template: str | None,
        template_text: str | None,
        variables: dict[str, Any],
        options: StoredOptions,
        deliveries: Sequence[NewDelivery],
    ) -> tuple[str, bool]:
        """Store the alert and its deliveries; (id, True) when created, (id, False) for a replay. Each
        delivery may take `options.max_attempts` attempts; outcomes are posted to `options.callback_url`."""
        if idempotency_key is not None:
            existing = await self._by_key(idempotency_key, request_hash)
            if existing is not None:
                return existing, False
        alert_id = "al_" + secrets.token_hex(12)
        now = utcnow()
        async with self.sessions() as s:
            # A page is never withheld for an opt-out: the person is on call by their own team's policy,
            # and a 9 pressed on some other call must not take them silently out of every escalation.
            opted = (
                set() if options.page is not None else await opted_out_among(s, [d.phone for d in deliveries])
            )
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
                        callback_url=options.callback_url,
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
            rows = [
                _delivery_row(alert_id, d, d.phone in opted, options.max_attempts, now) for d in deliveries
            ]
            # Each delivery's first state is its row (state and created_at): no event row per recipient,
            # which would double the rows written before the answer (`deliveries()` lists it first).
            await s.execute(insert(DELIVERIES), rows)
            if opted and len(opted) >= len(deliveries):
                await complete_alert(s, alert_id, now)
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

    async def recent_alerts(self, *, before: str | None, limit: int) -> list[AlertView]:
        """The newest alerts first, `limit` of them, older than the alert `before` (its id: a page's
        last); each with its counts by state, read in one grouped query for the page."""
        async with self.sessions() as s:
            query = select(Alert).order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit)
            if before is not None:
                anchor = (
                    await s.execute(select(Alert.created_at, Alert.id).where(Alert.id == before))
                ).first()
                if anchor is None:
                    return []
                query = query.where(
                    (Alert.created_at < anchor.created_at)
                    | ((Alert.created_at == anchor.created_at) & (Alert.id < anchor.id))
                )
            alerts = list((await s.execute(query)).scalars())
            counts: dict[str, dict[str, int]] = {a.id: {} for a in alerts}
            if alerts:
                grouped = await s.execute(
                    select(Delivery.alert_id, Delivery.state, func.count())
                    .where(Delivery.alert_id.in_(list(counts)))
                    .group_by(Delivery.alert_id, Delivery.state)
                )
                for alert_id, state, count in grouped.all():
                    counts[alert_id][str(state)] = int(count)
        return [
            AlertView(
                id=a.id,
                status=a.status,
                recipients=a.recipients,
                created_at=a.created_at,
                finished_at=a.finished_at,
                counts=counts[a.id],
                options=a.options,
                template=a.template,
            )
            for a in alerts
        ]

    async def finished_since(self, since: datetime) -> dict[str, int]:
        """How many deliveries came to each final state since `since` (the overview's "today")."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(Delivery.state, func.count())
                .where(Delivery.finished_at >= since)
                .group_by(Delivery.state)
            )
            return {str(state): int(count) for state, count in rows.all()}

    async def delivery_brief(self, delivery_id: int) -> DeliveryBrief | None:
        async with self.sessions() as s:
            d = await s.get(Delivery, delivery_id)
            if d is None:
                return None
            return DeliveryBrief(d.id, d.alert_id, d.position, d.phone, d.name, d.text, d.voicemail_text)

    async def deliveries(self, alert_id: str, *, after: int, limit: int) -> list[DeliveryView]:
        """Page through an alert's deliveries by recipient index (positions after `after`)."""
        async with self.sessions() as s:
            found = (
                await s.execute(
                    select(Delivery, *CALL_FACTS)
                    .outerjoin(Call, Call.id == Delivery.call_id)
                    .where(Delivery.alert_id == alert_id, Delivery.position > after)
                    .order_by(Delivery.position)
                    .limit(limit)
                )
            ).all()
            rows = [row[0] for row in found]
            facts = {row[0].id: call_facts(row[1:]) for row in found}
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
            for start in range(0, len(ids), CHUNK):
                events = await s.execute(
                    select(DeliveryEvent)
                    .where(DeliveryEvent.delivery_id.in_(ids[start : start + CHUNK]))
                    .order_by(DeliveryEvent.id)
                )
                for e in events.scalars():
                    detail = dict(e.detail)
                    if "at" in detail:  # older retry_scheduled rows named their retry time "at"
                        detail["retry_at"] = detail.pop("at")
                    history[e.delivery_id].append({**detail, "at": e.at.isoformat(), "kind": e.kind})
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
                voicemail_text=d.voicemail_text,
                **facts[d.id],
            )
            for d in rows
        ]

    # --- cancel ----------------------------------------------------------------------------------

    async def cancel_alert(
        self, alert_id: str, unplaced: Sequence[Claim] = (), *, answered: bool = False
    ) -> tuple[int, list[tuple[int, str]]]:
        """Cancel what has not been dialed; return (how many, [(delivery id, call sid)] still ringing or
        dialing, for the caller to cancel at Twilio; with `answered`, the calls in progress too, for the
        caller to hang up). `unplaced`: claims of this alert that the dispatcher took back before dialing
        them; they are canceled too. Raises LookupError / AlertFinished."""
        now = utcnow()
        live_states = [DeliveryState.DIALING, DeliveryState.RINGING]
        if answered:
            live_states.append(DeliveryState.IN_PROGRESS)
        # Locks are taken in the order every other writer takes them, deliveries before their alert (a
        # delivery's final outcome completes its alert): the other order deadlocked against the dispatcher.
        async with self.sessions() as s:
            status = (await s.execute(select(Alert.status).where(Alert.id == alert_id))).scalar_one_or_none()
            if status is None:
                raise LookupError(alert_id)
            if status != AlertStatus.ACTIVE:
                raise AlertFinished(status)
            canceled = await self._cancel_waiting(s, alert_id, now)
            canceled += await _cancel_unplaced(s, unplaced, now)
            if canceled:
                await s.execute(
                    insert(EVENTS),
                    [event(i, "state", now, state="canceled", reason="alert canceled") for i in canceled],
                )
            live = (
                await s.execute(
                    select(Delivery.id, func.coalesce(Delivery.call_sid, Call.call_sid))
                    .outerjoin(Call, Call.id == Delivery.call_id)
                    .where(
                        Delivery.alert_id == alert_id,
                        Delivery.state.in_(live_states),
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
        return len(canceled), [(int(i), str(sid)) for i, sid in live if sid]

    async def _cancel_waiting(self, s: AsyncSession, alert_id: str, now: datetime) -> list[int]:
        """Cancel the alert's deliveries waiting to be claimed; their ids. One being claimed right now is
        skipped: its call is canceled once placed (`dialed` tells the dispatcher)."""
        waiting = list(
            (
                await s.execute(
                    select(Delivery.id)
                    .where(Delivery.alert_id == alert_id, Delivery.state.in_(WAITING))
                    .order_by(Delivery.id)
                    .with_for_update(skip_locked=self._skip_locked)
                )
            ).scalars()
        )
        for start in range(0, len(waiting), CHUNK):
            chunk = waiting[start : start + CHUNK]
            await s.execute(
                update(Delivery)
                .where(Delivery.id.in_(chunk))
                .values(
                    state=DeliveryState.CANCELED,
                    outcome=DeliveryState.CANCELED,
                    outcome_reason=CANCELED_UNPLACED,
                    updated_at=now,
                    finished_at=now,
                )
            )
        return waiting

    # --- the person a call is for ------------------------------------------------------------------

    async def call_options(self, call_id: int) -> StoredOptions | None:
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


def _delivery_row(
    alert_id: str, d: NewDelivery, opted_out: bool, max_attempts: int, now: datetime
) -> dict[str, Any]:
    """A new delivery's row: waiting to be dialed, or final at once for a number that opted out earlier."""
    return {
        "alert_id": alert_id,
        "position": d.position,
        "phone": d.phone,
        "name": d.name,
        "timezone": d.timezone,
        "variables": d.variables,
        "text": d.text,
        "voicemail_text": d.voicemail_text,
        "state": DeliveryState.OPTED_OUT if opted_out else DeliveryState.PENDING,
        "attempt": 0,
        "max_attempts": max_attempts,
        "next_attempt_at": now,
        "outcome": DeliveryState.OPTED_OUT if opted_out else None,
        "outcome_reason": "this number opted out earlier" if opted_out else None,
        "created_at": now,
        "updated_at": now,
        "finished_at": now if opted_out else None,
    }


async def _cancel_unplaced(s: AsyncSession, unplaced: Sequence[Claim], now: datetime) -> list[int]:
    """Cancel the claims the dispatcher took back before dialing them; the ids of those still unplaced."""
    canceled = []
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
                outcome_reason=CANCELED_UNPLACED,
                lease_expires_at=None,
                updated_at=now,
                finished_at=now,
            )
        )
        if taken_back.rowcount:  # type: ignore[attr-defined]
            await s.execute(update(Call).where(Call.id == claim.call_id).values(status=CallStatus.CANCELED))
            canceled.append(claim.delivery_id)
    return canceled
