"""What the delivery stores (alerts.py, claims.py, reconcile.py, transitions.py, opt_outs.py) share: the
tables as Core handles, the event row, and the base holding the session factory, the journal and the rules.

Every method of those stores is one transaction (or one operation of a journal batch). A delivery only
moves forward (store/delivery_states.py decides what forward means), and every move, and every refused
one, is a `delivery_events` row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from announcer.store.journal import Journal
from announcer.store.models import (
    FINAL_DELIVERY_STATES,
    Alert,
    Call,
    CallStatus,
    Delivery,
    DeliveryEvent,
    DeliveryState,
)
from announcer.store.rules import Rules

DELIVERIES = cast(Table, Delivery.__table__)
EVENTS = cast(Table, DeliveryEvent.__table__)
CALLS = cast(Table, Call.__table__)
ALERTS = cast(Table, Alert.__table__)
CHUNK = 500  # parameters per IN (...) list
SLOT_LEASE = timedelta(minutes=15)
OPEN_DELIVERY = [s for s in DeliveryState if s not in FINAL_DELIVERY_STATES]
WAITING = [DeliveryState.PENDING, DeliveryState.QUEUED]
OPEN_CALL = [CallStatus.QUEUED, CallStatus.INITIATED, CallStatus.RINGING, CallStatus.IN_PROGRESS]
CANCELED_UNPLACED = "the alert was canceled before this call was placed"
# What a call came to (migration 0008), as every view of a delivery shows its latest attempt's.
CALL_FACTS = (Call.answered_by, Call.amd_ms, Call.played_ms, Call.message_ms, Call.keys)
FACT_NAMES = ("answered_by", "amd_ms", "played_ms", "message_ms", "keys")


def event(delivery_id: int, kind: str, at: datetime, **detail: Any) -> dict[str, Any]:
    """A `delivery_events` row, for a bulk insert or the journal's `Batch.insert`."""
    return {"delivery_id": delivery_id, "kind": kind, "at": at, "detail": detail}


def call_facts(values: Sequence[Any]) -> dict[str, Any]:
    """CALL_FACTS' values by name (all None: no call yet, or a row from before)."""
    return dict(zip(FACT_NAMES, values, strict=True))


class DeliveryRecords:
    """The base of the delivery stores: where they write, how, and whom they ask (`rules`: the delivery
    policy, for what follows an outcome and whether a due delivery waits out quiet hours)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        postgres: bool,
        rules: Rules,
        journal: Journal | None = None,
    ) -> None:
        self.sessions = sessions
        self._rules = rules
        # Moves driven by calls (several per call, many calls at once) go through the group-commit journal.
        self._journal = journal or Journal(sessions)
        self._skip_locked = postgres  # FOR UPDATE SKIP LOCKED lets several dispatchers share the table
