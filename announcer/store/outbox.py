"""The outcome webhooks' outbox: each webhook is a row written in the transaction of the outcome it reports
(a delivery's final transition, its alert's completion: store/transitions.py), and sent from there by the
outbox sender (deliveries/notify.py) with its retries. A crash or a stop between the outcome and the POST
loses nothing: the row is there, and the next sender to look sends it, with the same event id and body.

Rows hold the exact body (the JSON as it goes out, so every attempt carries the same bytes) and the target
URL; never the signing secret, which stays in the sender's memory and signs each attempt afresh.

Claims: a sender takes due rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several processes never take
the same row) and moves them `lease` into the future in the same transaction. Until its attempt is written
back (sent, failed, or due again after a backoff) nobody else takes the row; a sender that dies mid-attempt
gives it back when the lease runs out, and the next attempt repeats the event id (at-least-once). Each
write-back names the claim's attempt number: a sender whose lease ran out and whose row was taken since
changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from announcer.store.journal import Batch, Journal
from announcer.store.models import OutboxEvent, OutboxState, utcnow

OUTBOX = cast(Table, OutboxEvent.__table__)
LAST_ERROR_CHARS = 300


def encode(payload: dict[str, Any]) -> bytes:
    """A webhook's body: compact, keys sorted, ASCII (the receivers' contract, deliveries/callbacks.py).
    allow_nan=False: NaN/Infinity are not JSON, and a receiver's parser would reject the body."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, allow_nan=False).encode("utf-8")


def delivery_event_id(alert_id: str, delivery_id: int) -> str:
    return f"{alert_id}.delivery.{delivery_id}"


def completed_event_id(alert_id: str) -> str:
    return f"{alert_id}.completed"


def row(event_id: str, url: str, payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """An outbox row for `Batch.insert` or a bulk insert: due at once."""
    return {
        "event_id": event_id,
        "url": url,
        "body": encode(payload).decode("ascii"),
        "state": OutboxState.PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_expires_at": None,
        "last_error": None,
        "created_at": now,
        "finished_at": None,
    }


async def write(s: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Write outbox rows in the caller's transaction (the outcome's)."""
    if rows:
        await s.execute(insert(OUTBOX), rows)


@dataclass(frozen=True)
class Notice:
    """A claimed row: one attempt to make now. `attempt` is this attempt's number (1 for the first)."""

    id: int
    event_id: str
    url: str
    body: bytes
    attempt: int


_MINE = (OUTBOX.c.id == bindparam("n_id")) & (OUTBOX.c.attempts == bindparam("n_attempt"))


class OutboxStore:
    """Claims and write-backs, each short (never a transaction held across an HTTP request). With a
    `journal` (the service's group commit, store/journal.py) the write-backs share the transactions of
    the calls' bookkeeping instead of one each: SQLite has one connection for all of it."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, postgres: bool, journal: Journal | None = None
    ) -> None:
        self.sessions = sessions
        self._skip_locked = postgres
        self._journal = journal

    async def claim(self, *, limit: int, lease: timedelta) -> list[Notice]:
        """Take up to `limit` due rows for one attempt each, oldest first; each is due again after `lease`
        unless its attempt is written back first."""
        now = utcnow()
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(OUTBOX.c.id, OUTBOX.c.event_id, OUTBOX.c.url, OUTBOX.c.body, OUTBOX.c.attempts)
                    .where(OUTBOX.c.state == OutboxState.PENDING, OUTBOX.c.next_attempt_at <= now)
                    .order_by(OUTBOX.c.next_attempt_at, OUTBOX.c.id)
                    .limit(limit)
                    .with_for_update(skip_locked=self._skip_locked)
                )
            ).all()
            if not rows:
                return []
            await s.execute(
                update(OUTBOX)
                .where(OUTBOX.c.id.in_([r.id for r in rows]))
                .values(
                    attempts=OUTBOX.c.attempts + 1,
                    next_attempt_at=now + lease,
                    lease_expires_at=now + lease,
                )
            )
            await s.commit()
        return [
            Notice(
                id=r.id, event_id=r.event_id, url=r.url, body=r.body.encode("utf-8"), attempt=r.attempts + 1
            )
            for r in rows
        ]

    async def sent(self, notice: Notice) -> bool:
        """The receiver took it. False when the claim was no longer this sender's."""
        return await self._finish(notice, OutboxState.SENT, None)

    async def failed(self, notice: Notice, error: str) -> bool:
        """Refused for good, or out of attempts: kept with `error` (never sent again)."""
        return await self._finish(notice, OutboxState.FAILED, error)

    async def retry(self, notice: Notice, at: datetime, error: str) -> bool:
        """Not taken this time (`error`): due again at `at`."""
        values = {"next_attempt_at": at, "lease_expires_at": None, "last_error": error[:LAST_ERROR_CHARS]}
        return await self._write_back(notice, values)

    async def _finish(self, notice: Notice, state: OutboxState, error: str | None) -> bool:
        values: dict[str, Any] = {"state": state, "lease_expires_at": None, "finished_at": utcnow()}
        if error is not None:
            values["last_error"] = error[:LAST_ERROR_CHARS]
        return await self._write_back(notice, values)

    async def _write_back(self, notice: Notice, values: dict[str, Any]) -> bool:
        statement = update(OUTBOX).where(_MINE, OUTBOX.c.state == OutboxState.PENDING).values(**values)

        async def write_back(b: Batch) -> bool:
            done = await b.session.execute(statement, {"n_id": notice.id, "n_attempt": notice.attempt})
            return bool(done.rowcount)  # type: ignore[attr-defined]

        return await self._run(write_back)

    async def _run(self, op: Callable[[Batch], Awaitable[bool]]) -> bool:
        if self._journal is not None:
            return await self._journal.submit(op)
        async with self.sessions() as s:
            result = await op(Batch(s))
            await s.commit()
        return result

    async def next_due(self) -> datetime | None:
        """When the earliest pending row falls due (a retry's time, or a lease's end); None: none pending."""
        async with self.sessions() as s:
            due: datetime | None = (
                await s.execute(
                    select(func.min(OUTBOX.c.next_attempt_at)).where(OUTBOX.c.state == OutboxState.PENDING)
                )
            ).scalar_one_or_none()
        return due

    async def release_claims(self) -> int:
        """Give back every claimed row at once: only for a database one process uses (SQLite), where a
        claim found at start belongs to the process that died, not to a live one."""
        now = utcnow()
        async with self.sessions() as s:
            done = await s.execute(
                update(OUTBOX)
                .where(OUTBOX.c.state == OutboxState.PENDING, OUTBOX.c.lease_expires_at.is_not(None))
                .values(next_attempt_at=now, lease_expires_at=None)
            )
            await s.commit()
        return int(done.rowcount)  # type: ignore[attr-defined]

    async def prune(self, before: datetime) -> int:
        """Delete the rows sent or failed before `before` (the retention); pending ones always stay."""
        async with self.sessions() as s:
            done = await s.execute(
                delete(OUTBOX).where(
                    OUTBOX.c.state.in_([OutboxState.SENT, OutboxState.FAILED]),
                    OUTBOX.c.finished_at < before,
                )
            )
            await s.commit()
        return int(done.rowcount)  # type: ignore[attr-defined]

    async def counts(self) -> dict[str, int]:
        """Rows by state (pending, sent, failed): for /healthz and the tests."""
        async with self.sessions() as s:
            found = (await s.execute(select(OUTBOX.c.state, func.count()).group_by(OUTBOX.c.state))).all()
        return {str(state): int(n) for state, n in found}
