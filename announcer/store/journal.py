"""Group commit: the small writes of every live call share one transaction per batch.

A call writes a dozen rows (status changes, its event trail, its outcome). One transaction each costs
about a millisecond on SQLite (a worker-thread round trip per statement, BEGIN and COMMIT included), and
SQLite takes one writer at a time, so at 50 calls a second the writes queued behind each other and a
voice webhook waited hundreds of milliseconds. Here every write is an operation queued in order; one
task writes everything queued so far in one transaction, and while it commits the next batch gathers.
Under load a batch holds many operations for about the price of one; when idle nothing runs.

Operations run in the order they were submitted, each call's (its trail keeps its order; see below for
across calls), against the batch
(its session, and `insert` for rows nobody in the batch reads back: the event trail), and must not
commit. Queued rows are written at the end of the batch in one multi-row INSERT per table, in the
order queued: the ORM's unit of work per row cost more than all the rest of a call's bookkeeping.
When a batch fails it is rolled back and its operations are retried one by one, so one bad operation (a
row that vanished) costs only itself.

Several processes on one PostgreSQL write the same calls' rows (a call's callbacks reach one process, its
media stream another), each batch holding its row locks to its commit: two batches that lock two calls in
opposite orders deadlock, and PostgreSQL breaks that only after `deadlock_timeout` (a second), failing one
batch. So an operation names the call whose rows it writes (`key`), and a batch runs its operations in
the order of their keys (stable: one call's operations keep their order; operations without a key, which
lock no call's rows, first): every process then takes different calls' locks in the same order. (Locking
all of a batch's calls up front in one statement would also close the remaining case, two processes
writing one call's call and delivery rows in opposite orders, but then a batch waits for another process's
whole batch on any call they share: behind nginx, streams started 0.5-1.2 s late at p50, from 70 ms.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Table, insert
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")


class Batch:
    """What an operation works with: the batch's session, and rows to insert when the batch ends."""

    __slots__ = ("_rows", "session")

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._rows: list[tuple[Table, dict[str, Any]]] = []

    def insert(self, table: Table, row: dict[str, Any]) -> None:
        self._rows.append((table, row))

    async def write_rows(self) -> None:
        # One multi-row INSERT per table, each table's rows in the order queued. The rows only point at
        # rows that exist before the batch (calls, deliveries), so the order across tables is free.
        # Emptied first: an operation may write the rows queued so far (to update one of them) before
        # the batch ends, and they must not be written twice.
        queued, self._rows = self._rows, []
        by_table: dict[Table, list[dict[str, Any]]] = {}
        for table, row in queued:
            by_table.setdefault(table, []).append(row)
        for table, rows in by_table.items():
            await self.session.execute(_insert_of(table), rows)


_INSERTS: dict[Table, Any] = {}


def _insert_of(table: Table) -> Any:
    """The INSERT statement of a table, built once (its construction and cache key, once per process)."""
    stmt = _INSERTS.get(table)
    if stmt is None:
        stmt = _INSERTS[table] = insert(table)
    return stmt


Operation = Callable[[Batch], Awaitable[Any]]

_MAX_BATCH = 500  # bounds one transaction's length: a webhook behind it waits for at most this many
# ...and so does time: each statement is a round trip through the event loop (aiosqlite's worker thread,
# asyncpg's socket), so when the loop is overloaded a statement takes a loop turn of tens of milliseconds,
# and a batch of 500 operations (over a thousand statements) held SQLite's one connection for longer than
# the pool's 30 s wait: API requests failed and media streams' `start` waited past its timeout behind it.
# A batch stops taking operations once it has held its connection this long; the rest goes back to the
# head of the queue for the next batch, behind whoever waited for the connection meanwhile.
_MAX_HOLD_S = 0.1


_Item = tuple[
    int, Operation, "asyncio.Future[Any] | None"
]  # (the call it is about, the operation, its waiter)
_NO_KEY = -1  # before every call's id


def _key(item: _Item) -> int:
    return item[0]


class JournalClosed(RuntimeError):
    """Submitted after `close()`."""


class Journal:
    """The writer task starts when work arrives and ends when the queue is empty; `close()` drains it."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._queue: list[_Item] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0  # transactions written (a gauge for metrics and tests)
        self.operations = 0

    def submit(self, op: Callable[[Batch], Awaitable[T]], key: int | None = None) -> asyncio.Future[T]:
        """Queue `op` (about call `key`, if any); the future resolves with its result once its batch has
        committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(op, future, key)
        return future

    def post(self, op: Operation, key: int | None = None) -> None:
        """Queue `op` with nobody waiting for it (a call's event trail): a failure is logged here."""
        self._enqueue(op, None, key)

    async def flush(self) -> None:
        """Wait until everything queued before this call is committed (or has failed)."""
        if self._queue or self._task is not None:
            await asyncio.wait([self.submit(_nothing)])

    async def close(self) -> None:
        """Write what is queued, then refuse new work (the app's shutdown, before the engine closes)."""
        self._closed = True
        if self._task is not None:
            await asyncio.wait([self._task])

    def _enqueue(self, op: Operation, future: asyncio.Future[Any] | None, key: int | None) -> None:
        if self._closed:
            raise JournalClosed("the database journal is closed")
        self._queue.append((_NO_KEY if key is None else key, op, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="db-journal")

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:_MAX_BATCH]
                del self._queue[:_MAX_BATCH]
                batch.sort(key=_key)  # stable: each call's operations keep their order
                # Not reached within the batch's time: first in the next one, in the same order.
                self._queue[:0] = await self._write(batch)
        finally:
            self._task = None

    async def _write(self, batch: list[_Item]) -> list[_Item]:
        """Write `batch` (or its head, see _MAX_HOLD_S); the items not reached are returned."""
        while True:
            try:
                return await self._write_once(batch)
            except PoolTimeout:
                # No connection came within the pool's wait: nothing of the batch reached the database
                # (the first statement waits for the connection), so it is written again whole rather
                # than failed: its operations were accepted, and a busy database loses none of them.
                log.warning("the database stayed busy; writing a batch of %d again", len(batch))

    async def _write_once(self, batch: list[_Item]) -> list[_Item]:
        results: list[Any] = []
        try:
            async with self._sessions() as session:
                work = Batch(session)
                for _, op, _ in batch:
                    results.append(await op(work))
                    if len(results) == 1:  # the connection is taken at the first statement
                        deadline = time.monotonic() + _MAX_HOLD_S
                    elif time.monotonic() > deadline:
                        break
                await work.write_rows()
                await session.commit()
        except asyncio.CancelledError:
            for _, _, future in batch:
                if future is not None and not future.done():
                    future.cancel()
            raise
        except PoolTimeout:
            raise
        except Exception as err:
            if len(batch) > 1:
                log.warning(
                    "a batch of %d database writes failed (%r); retrying them one by one", len(batch), err
                )
                for item in batch:
                    await self._write([item])
                return []
            _, op, future = batch[0]
            if future is None:
                log.error(
                    "a database write failed and is lost: %s", getattr(op, "__qualname__", op), exc_info=err
                )
            elif not future.done():
                future.set_exception(err)
            return []
        written = batch[: len(results)]
        self.batches += 1
        self.operations += len(written)
        for (_, _, future), result in zip(written, results, strict=True):
            if future is not None and not future.done():
                future.set_result(result)
        return batch[len(results) :]


async def _nothing(_batch: Batch) -> None:
    return None
