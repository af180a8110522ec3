"""What the calls report, written to their deliveries: ringing, answered, a final outcome, and what follows
one (a retry, a snooze, the alert's completion). The policy decides what follows (`Rules`, store/rules.py);
this module writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from announcer.options import StoredOptions
from announcer.store.delivery_rows import (
    CALL_FACTS,
    CALLS,
    DELIVERIES,
    EVENTS,
    FACT_NAMES,
    OPEN_DELIVERY,
    DeliveryRecords,
    call_facts,
    event,
)
from announcer.store.delivery_states import forward_from, is_final, moves_forward
from announcer.store.journal import Batch
from announcer.store.models import Alert, AlertStatus, Call, Delivery, DeliveryState, utcnow
from announcer.store.opt_outs import record_opt_out
from announcer.store.outbox import OUTBOX, completed_event_id, delivery_event_id
from announcer.store.outbox import row as outbox_row
from announcer.store.outbox import write as write_outbox

# The statements every call runs, built once on the tables (see calls.py for why). Parameters named
# after a column set it; `d_*` names avoid the deliveries table's own `call_id` column.
_UPDATE_DELIVERY = update(DELIVERIES).where(DELIVERIES.c.id == bindparam("d_id"))
_DELIVERY_OF_CALL = (
    select(DELIVERIES.c.id, DELIVERIES.c.state, DELIVERIES.c.attempt, DELIVERIES.c.alert_id, CALLS.c.attempt)
    .select_from(DELIVERIES.join(CALLS, CALLS.c.delivery_id == DELIVERIES.c.id))
    .where(CALLS.c.id == bindparam("call_id"))
    .with_for_update(of=DELIVERIES)
)

_FORWARD: dict[DeliveryState, Any] = {}


def _forward(new: DeliveryState) -> Any:
    """`_on_call_state`'s move to a state that is not final, as one UPDATE matching only a delivery on its
    call's attempt that the move takes forward; returns (id, alert_id, attempt). Built once per state."""
    stmt = _FORWARD.get(new)
    if stmt is None:
        d, c = DELIVERIES.c, CALLS.c
        call = bindparam("v_call", type_=c.id.type)  # not "call_id": a column of deliveries
        values: dict[str, Any] = {
            "state": bindparam("v_state", type_=d.state.type),
            "updated_at": bindparam("v_now", type_=d.updated_at.type),
        }
        if new == DeliveryState.IN_PROGRESS:
            values["lease_expires_at"] = None
        stmt = _FORWARD[new] = (
            update(DELIVERIES)
            .where(
                d.id == select(c.delivery_id).where(c.id == call).scalar_subquery(),
                d.attempt == select(c.attempt).where(c.id == call).scalar_subquery(),
                d.state.in_([state.value for state in forward_from(new)]),
            )
            .values(values)
            .returning(d.id, d.alert_id, d.attempt)
        )
    return stmt


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
    # A final move of an alert with a callback URL: its call's facts (CALL_FACTS by name), for the webhook
    facts: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # a final move: its alert's source ("page": an escalation step's page call)


class TransitionRecords(DeliveryRecords):
    async def on_call_state(
        self,
        call_id: int,
        new: DeliveryState,
        *,
        code: int | None = None,
        reason: str | None = None,
        source: str,
    ) -> Move | None:
        """Move the delivery whose attempt `call_id` carries to `new`, if that is forward
        (store/delivery_states.py). A final state is followed by what the policy says: the next attempt
        (the delivery is `pending` again), a new delivery (a snooze), or nothing. Through the journal:
        several calls' moves share a transaction."""
        return await self._journal.submit(
            partial(self._on_call_state, call_id, new, code, reason, source), call_id
        )

    async def _on_call_state(
        self, call_id: int, new: DeliveryState, code: int | None, reason: str | None, source: str, b: Batch
    ) -> Move | None:
        now = utcnow()
        s = b.session
        if not is_final(new):
            # Ringing and answered, in order, on the call's own attempt: one UPDATE whose conditions are
            # `moves_forward`'s. Anything else (a late or repeated report, another attempt's) is read and
            # judged below.
            params = {"v_call": call_id, "v_state": new.value, "v_now": now}
            moved = (await s.execute(_forward(new), params)).first()
            if moved is not None:
                said: dict[str, Any] = {"state": new.value, "attempt": moved[2], "source": source}
                if code is not None:
                    said["code"] = code
                if reason:
                    said["reason"] = reason[:300]
                b.insert(EVENTS, event(moved[0], "state", now, **said))
                return Move(moved[0], moved[1], new, moved[2], final=False)
        # Core for the common moves (ringing, answered, a late callback): several per call.
        row = (await s.execute(_DELIVERY_OF_CALL, {"call_id": call_id})).first()
        if row is None or row[4] is None:
            return None
        delivery_id, state, attempt, alert_id = row[0], row[1], row[2], row[3]
        call_attempt: int = row[4]
        detail: dict[str, Any] = {"state": new.value, "attempt": call_attempt, "source": source}
        if not moves_forward(DeliveryState(state), attempt, new, call_attempt):
            b.insert(EVENTS, event(delivery_id, "ignored", now, **detail))
            return None
        if code is not None:
            detail["code"] = code
        if reason:
            detail["reason"] = reason[:300]
        b.insert(EVENTS, event(delivery_id, "state", now, **detail))
        if not is_final(new):
            values: dict[str, Any] = {"d_id": delivery_id, "state": new, "updated_at": now}
            if new == DeliveryState.IN_PROGRESS:
                values["lease_expires_at"] = None
            await s.execute(_UPDATE_DELIVERY, values)
            return Move(delivery_id, alert_id, new, attempt, final=False)
        return await self._final(s, b, delivery_id, new, code, reason, now)

    async def _final(
        self,
        s: AsyncSession,
        b: Batch,
        delivery_id: int,
        new: DeliveryState,
        code: int | None,
        reason: str | None,
        now: datetime,
    ) -> Move:
        delivery = await s.get(Delivery, delivery_id)
        assert delivery is not None
        alert = await s.get(Alert, delivery.alert_id)
        follow = self._rules.after_final(
            new,
            alert.options if alert is not None else StoredOptions(),
            attempt=delivery.attempt,
            max_attempts=delivery.max_attempts,
            alert_active=alert is not None and alert.status == AlertStatus.ACTIVE,
            now=now,
        )
        if follow.retry_at is not None:
            requeue(delivery, follow.retry_at, now)
            detail = {
                "after": new.value,
                "next_attempt": delivery.attempt + 1,
                "retry_at": follow.retry_at.isoformat(),
            }
            b.insert(EVENTS, {**event(delivery.id, "retry_scheduled", now), "detail": detail})
            return Move(
                delivery.id, delivery.alert_id, new, delivery.attempt, final=False, retry_at=follow.retry_at
            )
        finish(delivery, new, now, code=code, reason=reason)
        if follow.again_at is not None:
            await _again(s, b, delivery, follow.again_at, now)
        if new == DeliveryState.OPTED_OUT:
            await record_opt_out(s, delivery.phone, delivery.id, now)
        return await after_final(s, delivery, now, b)


async def _again(s: AsyncSession, b: Batch, delivery: Delivery, due: datetime, now: datetime) -> None:
    """A snooze ("call me again later"): a new delivery of the same message to the same person."""
    again = Delivery(
        alert_id=delivery.alert_id,
        position=delivery.position,
        phone=delivery.phone,
        name=delivery.name,
        timezone=delivery.timezone,
        variables=delivery.variables,
        text=delivery.text,
        voicemail_text=delivery.voicemail_text,
        state=DeliveryState.PENDING,
        attempt=0,
        max_attempts=delivery.max_attempts,
        next_attempt_at=due,
        created_at=now,
        updated_at=now,
    )
    s.add(again)
    await s.flush()
    detail = {"state": "pending", "snoozed_from": delivery.id, "due": due.isoformat()}
    b.insert(EVENTS, {**event(again.id, "state", now), "detail": detail})


def requeue(delivery: Delivery, at: datetime, now: datetime) -> None:
    """Back to waiting: dialed again (by whoever claims it) from `at`."""
    delivery.state = DeliveryState.PENDING
    delivery.next_attempt_at = at
    delivery.lease_expires_at = None
    delivery.updated_at = now


def finish(
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


async def after_final(s: AsyncSession, delivery: Delivery, now: datetime, b: Batch | None = None) -> Move:
    """The delivery just reached its outcome: complete the alert when it was the last one, and write the
    outcome webhooks (delivery.finished, then alert.completed) to the outbox in this same transaction
    (store/outbox.py): the outcome and its notification commit together or not at all. `b`: the journal
    batch the move is part of (its rows are written with the batch's), else written here."""
    await s.flush()
    alert = await s.get(Alert, delivery.alert_id)
    # "Is any delivery still open?": an index probe on (alert_id, state), not a count of the whole alert
    # (counting at every outcome made a 10,000-recipient alert quadratic).
    open_one = (
        await s.execute(
            select(Delivery.id)
            .where(Delivery.alert_id == delivery.alert_id, Delivery.state.in_(OPEN_DELIVERY))
            .limit(1)
        )
    ).first()
    alert_done = open_one is None and alert is not None and alert.status == AlertStatus.ACTIVE
    if alert_done:
        # The database says whether this transaction completed it (the alert object may be stale within a
        # journal batch): one alert.completed event, ever.
        alert_done = await complete_alert(s, delivery.alert_id, now)
    callback_url = alert.callback_url if alert is not None else None
    facts: dict[str, Any] = {}
    if callback_url is not None:
        # Read only for a webhook. The media session records them before it reports the outcome, through
        # the same journal, so they are written by now.
        found = (await s.execute(select(*CALL_FACTS).where(Call.id == delivery.call_id))).first()
        facts = call_facts(found if found is not None else (None,) * len(CALL_FACTS))
    move = Move(
        delivery.id,
        delivery.alert_id,
        DeliveryState(delivery.state),
        delivery.attempt,
        final=True,
        callback_url=callback_url,
        detail={"alert_completed": alert_done},
        position=delivery.position,
        phone=delivery.phone,
        outcome_code=delivery.outcome_code,
        outcome_reason=delivery.outcome_reason,
        facts=facts,
        source=alert.source if alert is not None else None,
    )
    if callback_url is None:
        return move
    rows = [
        outbox_row(delivery_event_id(move.alert_id, move.delivery_id), callback_url, finished(move, now), now)
    ]
    if alert_done:
        assert alert is not None
        counts = (
            await s.execute(
                select(Delivery.state, func.count())
                .where(Delivery.alert_id == alert.id)
                .group_by(Delivery.state)
            )
        ).all()
        payload = {
            "type": "alert.completed",
            "alert_id": alert.id,
            "status": AlertStatus.COMPLETED.value,
            "recipients": alert.recipients,
            "counts": {str(k): int(v) for k, v in counts},
            "at": now.isoformat(),
        }
        rows.append(outbox_row(completed_event_id(alert.id), callback_url, payload, now))
    if b is not None:
        for r in rows:
            b.insert(OUTBOX, r)
    else:
        await write_outbox(s, rows)
    return move


# Every webhook names every fact, null when unknown (a call never answered, a row from before them).
_FACTS_UNKNOWN = dict.fromkeys(FACT_NAMES)


def finished(move: Move, now: datetime) -> dict[str, Any]:
    """The delivery.finished webhook's payload (README, "Outcome webhooks")."""
    return {
        "type": "delivery.finished",
        "alert_id": move.alert_id,
        "delivery": {
            "id": move.delivery_id,
            "index": move.position,
            "phone": move.phone,
            "outcome": move.state.value,
            "outcome_code": move.outcome_code,
            "outcome_reason": move.outcome_reason,
            "attempts": move.attempt,
            **_FACTS_UNKNOWN,
            **move.facts,  # who answered, how much of the message played: its latest call's
        },
        "at": now.isoformat(),
    }


async def complete_alert(s: AsyncSession, alert_id: str, now: datetime) -> bool:
    """Mark the alert completed if it is still active; whether this call did."""
    done = await s.execute(
        update(Alert)
        .where(Alert.id == alert_id, Alert.status == AlertStatus.ACTIVE)
        .values(status=AlertStatus.COMPLETED, finished_at=now)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]
