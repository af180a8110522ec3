"""Outcome webhooks for alerts, sent from the outbox: each delivery's final outcome, then the alert's
completion, written to the database with the outcome itself (store/outbox.py, from store/transitions.py)
and POSTed signed to the alert's `callback_url` from there by the WebhookSender (callbacks.py), never
holding up the dispatcher.

One attempt per claim: a row is claimed (leased), attempted once, and written back sent, failed (refused
for good, or its `max_attempts` spent: with the last error) or due again after the sender's backoff (or the
receiver's Retry-After). The waits live in the rows, not in memory: a stop ends the attempts in flight (their
rows come back after the lease, at once on SQLite), a crash the same; every event is sent at least once with
its one event id, and several processes on one PostgreSQL share the rows without sending one twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from announcer.deliveries.callbacks import WebhookSender, host_of
from announcer.store.models import utcnow
from announcer.store.outbox import Notice, OutboxStore
from announcer.store.transitions import Move

log = logging.getLogger(__name__)

# How often the outbox is looked at with nothing announced: for rows another process gave back (its
# lease ran out) and ones written by a process that stopped before sending them. This process's own
# outcomes wake it at once.
POLL_S = 5.0
PRUNE_EVERY_S = 3600.0
# A claim outlives its attempt (the sender's timeout bounds the request) by this much: the write-back
# and a loaded machine's delays. Until then nobody else sends the row.
LEASE_MARGIN_S = 10.0


class OutcomeNotifier:
    """The outbox's sender in this process: started and closed by the app's lifecycle.

    `single_process`: the database is SQLite, which one process uses; claims found at start belong to the
    process that stopped, and are given back at once instead of after their lease.
    """

    def __init__(
        self,
        sender: WebhookSender,
        outbox: OutboxStore,
        *,
        timeout_s: float,
        retention: timedelta,
        single_process: bool = False,
        poll_s: float = POLL_S,
    ) -> None:
        self._sender = sender
        self._outbox = outbox
        self._lease = timedelta(seconds=timeout_s + LEASE_MARGIN_S)
        self._retention = retention
        self._single_process = single_process
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._pruned_at: float | None = None
        self.claimed = 0  # attempts claimed (a gauge for tests)
        # Read by /metrics: events delivered, given up (refused for good or out of attempts), retried.
        self.webhooks_sent = self.webhooks_failed = self.webhook_retries = 0

    def moved(self, move: Move) -> None:
        """A delivery moved (the dispatcher's hook): a final one of an alert with a callback URL has its
        webhooks in the outbox now, committed with it."""
        if move.final and move.callback_url:
            self.wake()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-outbox")

    async def close(self, drain_timeout_s: float = 5) -> None:
        """Claim nothing more; give the attempts in flight up to `drain_timeout_s` to be written back.
        What is left stays in the outbox for the next start (or another process)."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        if self._sending:
            _, late = await asyncio.wait(self._sending, timeout=drain_timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
                log.warning("webhook outbox: %d attempts cut short by the stop, sent again later", len(late))

    async def _run(self) -> None:
        if self._single_process:
            try:
                given = await self._outbox.release_claims()
            except Exception:
                log.exception("webhook outbox: cannot give back the claims of the process before")
            else:
                if given:
                    log.info("webhook outbox: %d events the process before was sending are due again", given)
        while not self._stopping.is_set():
            self._wake.clear()
            timeout = self._poll_s
            try:
                await self._prune()
                free = self._sender.concurrency - len(self._sending)
                # Claimed in batches: with attempts in flight, wait until half the slots are free (each
                # finished attempt wakes us) rather than a claim transaction per freed slot.
                if free > 0 and (not self._sending or free * 2 >= self._sender.concurrency):
                    # No more than can be attempted at once: a claimed row must not wait for a slot while
                    # its lease runs.
                    claimed = await self._outbox.claim(limit=free, lease=self._lease)
                    for notice in claimed:
                        self._spawn(notice)
                    # Every slot taken: more may be due, and a finished attempt wakes us. Fewer than
                    # asked: sleep until the next row falls due (a retry's time, a lease's end).
                    if len(claimed) < free:
                        due = await self._outbox.next_due()
                        if due is not None:
                            # Due already yet not claimed: another process's claim holds it this
                            # instant (SKIP LOCKED); look again shortly rather than spin.
                            timeout = min(self._poll_s, max(0.05, (due - utcnow()).total_seconds()))
            except Exception:
                # The database is away: try again after a poll; the rows wait in it.
                log.exception("webhook outbox: cannot read the outbox")
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()

    def _spawn(self, notice: Notice) -> None:
        self.claimed += 1
        task = asyncio.create_task(self._send(notice), name=f"webhook {notice.event_id}")
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("webhook outbox: an attempt failed unexpectedly", exc_info=exc)
        self._wake.set()  # a slot came free

    async def _send(self, notice: Notice) -> None:
        outcome = await self._sender.attempt(notice.url, notice.event_id, notice.body)
        error = outcome.error or "not delivered"
        if outcome.delivered:
            self.webhooks_sent += 1
            mine = await self._outbox.sent(notice)
        elif outcome.done:
            self.webhooks_failed += 1
            mine = await self._outbox.failed(notice, error)
        elif notice.attempt >= self._sender.max_attempts:
            self.webhooks_failed += 1
            self._sender.gave_up(notice.event_id, notice.url, notice.attempt)
            mine = await self._outbox.failed(notice, error)
        else:
            self.webhook_retries += 1
            delay = self._sender.retry_delay_s(notice.attempt, outcome)
            log.info(
                "webhook %s to %s: retry %d in %.2f s",
                notice.event_id,
                host_of(notice.url),
                notice.attempt,
                delay,
            )
            mine = await self._outbox.retry(notice, utcnow() + timedelta(seconds=delay), error)
        if not mine:
            # The lease ran out during the attempt and the row was claimed again (or finished) since.
            log.warning("webhook %s: the outbox row was taken over during its attempt", notice.event_id)

    async def _prune(self) -> None:
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        gone = await self._outbox.prune(utcnow() - self._retention)
        if gone:
            log.info("webhook outbox: %d sent or failed events older than the retention deleted", gone)
