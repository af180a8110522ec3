"""After a crash or a lost callback: claims whose lease ran out before their Call SID was recorded, and
calls nobody has heard about for a while. The dispatcher asks Twilio about each (dispatcher.py,
`_reconcile` and `_check_call`) and records here what it found: the call exists after all (`adopt_sid`),
it was never placed (`release`: due again, the attempt did not happen), it is still live (`touch`) or it
ended (`settle_call`). Never call a person twice for one attempt (design.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update

from announcer.store.delivery_rows import EVENTS, OPEN_CALL, DeliveryRecords, event
from announcer.store.models import Call, CallEvent, CallStatus, Delivery, DeliveryState, utcnow


@dataclass(frozen=True)
class ExpiredClaim:
    delivery_id: int
    attempt: int
    call_id: int
    phone: str
    claimed_at: datetime
    call_sid: str | None  # set when a status callback revealed it (the callback URL names the call)


class ReconcileRecords(DeliveryRecords):
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
                        Call.status.in_(OPEN_CALL),
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
                .where(Call.id == call_id, Call.status.in_(OPEN_CALL))
                .values(status=status, ended_at=now, updated_at=now)
            )
            detail = {"status": status.value, "source": "reconciled with Twilio"}
            await s.execute(
                insert(CallEvent), [{"call_id": call_id, "kind": "status", "at": now, "detail": detail}]
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
                insert(EVENTS),
                [event(claim.delivery_id, "reconciled", now, attempt=claim.attempt, call_sid=call_sid)],
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
                    # This claim's own call row: once released and claimed again the attempt number is the
                    # same, and a late release must not take the new claim from the process holding it.
                    Delivery.call_id == claim.call_id,
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
                released = event(
                    claim.delivery_id, "claim_released", now, attempt=claim.attempt, reason="no call placed"
                )
                await s.execute(insert(EVENTS), [released])
            await s.commit()
