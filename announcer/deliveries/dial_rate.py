"""One call rate for the Twilio account, shared by every process on one PostgreSQL database.

Twilio counts `TWILIO_CPS` per account, not per process: N processes each pacing themselves at the rate
would dial at N times it. Here the processes share one row per account: the account's next free instant
(GCRA with no burst) and the last TWILIO_CPS slots handed out. A process that has a claim ready to dial
reserves the next slot with one atomic statement, sleeps until it and dials. Slots are handed out in the
order they are asked for (the row's lock queues the askers), one at a time per process, so a process with
work waits behind at most one slot of each other process: none starves, none runs ahead.

Chosen over one elected dispatcher handing calls to the others: that is a hop per call between processes
(and a failover of its own), where this is one short statement per call against a row no transaction
holds for longer than that statement. The table is UNLOGGED (a database crash empties it, and the next
reservation makes the row again), so a reservation writes no WAL and its commit waits for no disk flush:
about 0.5 ms per reservation (p50, on the loaded 2-core test machine, as for a bare SELECT 1).

A process that dies holds at most the one slot it reserved: that slot goes by unused (one interval
missed) and the others' next reservations take the whole rate at once. Nothing to expire or hand back.

The database's clock (clock_timestamp(), read once the row is locked) orders the slots, so processes on
machines whose clocks disagree still space their calls right: each turns "the slot is in X seconds" into
its own clock on receiving the answer (never early: the answer's way back only makes it later).

The spacing: slots are 1 / (TWILIO_CPS x (1 - ACCOUNT_MARGIN)) apart on the rate's schedule, so that
TWILIO_CPS of them span 1.015 s: the 1 s + 10 ms the dispatcher keeps its own windows to (RATE_MARGIN,
WINDOW_GUARD_S), and 5 ms for the way from a slot to Twilio, which varies from dial to dial (with a
1 % margin, as the dispatcher's, three processes on one loop kept only 1.003-1.006 s at the sandbox on
a quiet machine; with 1.5 %, 1.005-1.012 s, at 9.85 calls a second for TWILIO_CPS=10). Never two slots
closer than 1 / TWILIO_CPS. A dial that leaves more than LATE_S after its slot (a busy event loop, a
process descheduled) writes when it left in place of its slot among the last ones, and no slot is
handed out within that span of the dial TWILIO_CPS slots before it: a late dial holds back the slot a
window after it, and the ones after that come 1 / TWILIO_CPS apart until back on schedule, rather than
every later slot moving on by its lateness. Under load that costs rate (the test machine at a load of
7 on 2 cores: 9.3-9.8 calls a second over a run), never the account's limit (tests/test_dial_rate.py).

SQLite is one process's file: the dispatcher's own token bucket is the account's rate there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

ACCOUNT_MARGIN = 0.015  # slots this much under the account's rate (see the module's docstring)
LATE_S = 0.002  # a dial later than this after its slot is written down as it left
SLOTS_KEPT = 1024  # the last slots reserved, kept to be looked at (the tests)
RETRY_S = 1.0  # after the database failed a reservation: no dial without a slot, so wait and ask again

# The slot: the account's next free instant on the rate's own schedule (`next_at`; now when that lies
# in the past: no burst is saved up while idle), never closer than `gap` (1 / TWILIO_CPS) to the slot
# before it, and never within `window` of the dial `n` slots back (`recent` holds the last `n`, in the
# order handed out: each a slot, or when a late dial left). The schedule itself moves on by one
# interval from where it was, not from the slot: a slot that a late dial held back is followed by ones
# `gap` apart until they are back on schedule, so that one dial's lateness is not every later one's.
# clock_timestamp(), not now(): read once the row is locked, so a reservation that queued behind others
# is not handed an instant gone by.
_RESERVE = text(
    """
    WITH cur AS (
        SELECT next_at, recent FROM dial_rate WHERE account = :account FOR UPDATE
    ), clock AS (
        SELECT cur.*, extract(epoch FROM clock_timestamp()) AS now FROM cur
    ), slot AS (
        SELECT
            GREATEST(
                clock.next_at,
                clock.now,
                COALESCE(clock.recent[cardinality(clock.recent)] + :gap, 0),
                CASE WHEN cardinality(clock.recent) >= :n
                    THEN clock.recent[cardinality(clock.recent) - :n + 1] + :window ELSE 0 END
            ) AS at,
            GREATEST(clock.next_at, clock.now) + :interval AS next_at,
            clock.now
        FROM clock
    )
    UPDATE dial_rate SET
        next_at = slot.next_at,
        recent = (dial_rate.recent || slot.at)[GREATEST(1, cardinality(dial_rate.recent) + 2 - :n):]
    FROM slot WHERE dial_rate.account = :account
    RETURNING slot.at AS slot, slot.now AS now
    """
)
# The row, when there is none yet (the first reservation of an account, or after a database crash).
_CREATE = text(
    "INSERT INTO dial_rate (account, next_at, recent) VALUES (:account, 0, '{}') ON CONFLICT DO NOTHING"
)
# A late dial's slot replaced by when it left (exact: the slot came from this row as a float8).
_LEFT_LATE = text(
    "UPDATE dial_rate SET recent = array_replace(recent, :slot, :left) WHERE account = :account"
)


@dataclass(frozen=True)
class Slot:
    """A reserved instant to place one call."""

    db_at: float  # on the database's clock (seconds since the epoch): the order every process shares
    at: float  # the same instant on this process's clock (`clock`, monotonic): when to dial


class AccountRate:
    """The account's dial slots, reserved one at a time. One per process (the dispatcher's pacer asks)."""

    def __init__(
        self, engine: AsyncEngine, account: str, cps: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._account = account
        self.interval = 1.0 / (cps * (1 - ACCOUNT_MARGIN))
        self.gap = 1.0 / cps  # the closest two slots ever are
        self._n = max(1, int(cps))  # a window holds this many dials
        self.window = self._n * self.interval  # ... and spans at least this long
        self._clock = clock
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the connection (the pacer, a late note)
        self._notes: set[asyncio.Task[None]] = set()
        self.reserved = 0  # slots reserved (gauges, for the log and the tests)
        self.slots: deque[Slot] = deque(maxlen=SLOTS_KEPT)  # the last ones reserved, oldest first
        self.late = 0  # dials that left later than LATE_S after their slot

    async def reserve(self) -> Slot:
        """Reserve the account's next free slot."""
        params = {
            "account": self._account,
            "n": self._n,
            "window": self.window,
            "interval": self.interval,
            "gap": self.gap,
        }
        async with self._lock:
            row = await self._execute(_RESERVE, params)
            if row is None:
                await self._execute(_CREATE, params)
                row = await self._execute(_RESERVE, params)
        received = self._clock()
        assert row is not None  # made just before, in the same locked sequence
        self.reserved += 1
        slot = Slot(float(row.slot), received + max(0.0, float(row.slot) - float(row.now)))
        self.slots.append(slot)
        return slot

    async def wait_turn(self, stopping: asyncio.Event) -> bool:
        """Reserve a slot and sleep until it. True: dial now. False: stopping, or the database did not
        answer (after RETRY_S): the caller asks again, nothing is dialed without a slot."""
        try:
            slot = await self.reserve()
        except Exception as err:
            log.warning("could not reserve a slot of the account's call rate (%r); trying again", err)
            await _sleep_unless(stopping, RETRY_S)
            return False
        if await _sleep_unless(stopping, slot.at - self._clock()):
            return False
        late = self._clock() - slot.at
        # Written beside the dial, not before it: it must reach the row before TWILIO_CPS more slots do.
        if late > LATE_S:
            self.late += 1
            task = asyncio.create_task(self.left_late(slot, late), name="dial-rate-late")
            self._notes.add(task)
            task.add_done_callback(self._notes.discard)
        return True

    async def left_late(self, slot: Slot, late: float) -> None:
        """The dial of `slot` left `late` seconds after it: the slot a window later keeps its distance."""
        params = {"account": self._account, "slot": slot.db_at, "left": slot.db_at + late}
        try:
            async with self._lock:
                await self._execute(_LEFT_LATE, params)
        except Exception as err:  # the margin still covers some of it
            log.warning("could not note a dial %.1f ms late on the account's rate (%r)", late * 1000, err)

    async def _execute(self, statement: TextClause, params: dict[str, Any]) -> Row[Any] | None:
        conn = await self._connection()
        try:
            result = await conn.execute(statement, params)
            return result.one_or_none() if result.returns_rows else None
        except Exception:
            await self._drop()  # a connection that failed once is not trusted again
            raise

    async def _connection(self) -> AsyncConnection:
        # A connection of its own, in autocommit: one round trip per reservation (no BEGIN / COMMIT), and
        # the pool's pre-ping and the claims' and calls' transactions never queue in front of the rate.
        if self._conn is None:
            conn = await self._engine.connect()
            try:
                self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            except Exception:
                await conn.close()
                raise
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        if self._notes:
            await asyncio.wait(self._notes, timeout=5)
        await self._drop()


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` (0 or less: not at all); True when `stopping` was set meanwhile."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stopping.wait()
    return stopping.is_set()
