"""Outcome webhooks for alerts: each delivery's final outcome, then the alert's completion, POSTed signed
to the alert's `callback_url` by the WebhookSender (callbacks.py), never holding up the dispatcher."""

from __future__ import annotations

import asyncio
import logging

from announcer.deliveries.callbacks import WebhookSender
from announcer.store.deliveries import DeliveryStore, Move
from announcer.store.delivery_rows import FACT_NAMES
from announcer.store.models import utcnow

log = logging.getLogger(__name__)

# Every webhook names every fact, null when unknown (a call never answered, a row from before them).
_FACTS_UNKNOWN = dict.fromkeys(FACT_NAMES)


class OutcomeNotifier:
    def __init__(self, sender: WebhookSender, store: DeliveryStore) -> None:
        self._sender = sender
        self._store = store
        self._tasks: set[asyncio.Task[None]] = set()

    def moved(self, move: Move) -> None:
        if not move.final or not move.callback_url:
            return
        self._sender.send(
            move.callback_url,
            f"{move.alert_id}.delivery.{move.delivery_id}",
            {
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
                "at": utcnow().isoformat(),
            },
        )
        if move.detail.get("alert_completed"):
            task = asyncio.create_task(self._alert_completed(move.alert_id, move.callback_url))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _alert_completed(self, alert_id: str, url: str) -> None:
        view = await self._store.alert(alert_id)
        if view is None:
            return
        self._sender.send(
            url,
            f"{alert_id}.completed",
            {
                "type": "alert.completed",
                "alert_id": alert_id,
                "status": view.status,
                "recipients": view.recipients,
                "counts": view.counts,
                "at": utcnow().isoformat(),
            },
        )

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
