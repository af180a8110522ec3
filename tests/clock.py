"""A wall clock that only the test moves: scheduled reminders fire on simulated days, none waited for.

The service reads wall time through `datetime.now` (APScheduler's `_process_jobs`, the stores' `utcnow()`,
the dispatcher's due checks, quiet hours, the sandbox's call times) and waits with asyncio timers, which
count the loop's monotonic clock. time-machine moves the first and leaves the second alone, so everything
else runs for real (HTTP, the database, the sandbox's calls through the twilio SDK) while the calendar
is the test's. Nothing in the database reads the server's own clock (no `now()` in SQL), so PostgreSQL
sees the same calendar as SQLite.

The clock stands still between moves (`tick=False`): a wall-clock time comes only when the test moves
the clock to it, so what falls due at each stop is known before the stop, and nothing falls due on its own
while a stop is being worked off on a loaded machine (with a ticking clock, the service's own timer could
fire the next deadline in the middle of the previous stop's checks).

`advance_to` goes through the running service's deadlines in order (each fire, the pre-synthesis
`presynthesize_s` before it, a delivery deferred to the end of quiet hours) and stops at each: jumping
past a fire would make it a misfire (later than its grace). At each stop it wakes the service's timers
(`Scheduler.wake`, `Dispatcher.wake`), which were set in monotonic seconds from the old time and would see
the new one only at their next tick, or a day later; then it waits until the service has done what fell
due: every fire is an occurrence, every pre-synthesis is noted, no delivery is due and no call is live.
The deadlines are the service's own (the scheduler's armed next run, else the schedule's `when`; the
deliveries' next due time), never computed here: a test's assertion on when things fired checks the
service's arithmetic, and a fire the service makes at a time nobody expected is stopped at too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from aiohttp import web

from announcer.app import DELIVERIES, DISPATCHER, SCHEDULES
from announcer.scheduling.when import when_from_json
from announcer.store.models import ScheduleStatus
from tests.conftest import Service, eventually, make_settings, start_service

# How long one stop may take to work off: a few calls through the sandbox take well under a second; the
# margin is for a loaded 2-core machine (the check polls every 10 ms, so it costs nothing when quick).
SETTLE_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Armed:
    """A schedule's next fire, on the scheduler of `service`."""

    service: Service
    schedule_id: str
    planned: datetime
    ahead: timedelta  # its presynthesize_s


class Clock:
    """The wall clock of the services a test starts on it (`start`), moved by `advance_to`/`advance`."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self._tmp_path = tmp_path
        self._database_url = database_url
        self._travel: time_machine.travel | None = None
        self._traveller: time_machine.Traveller | None = None
        self._running: list[tuple[web.AppRunner, Service]] = []

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def start(self, at: datetime | None = None, **overrides: Any) -> Service:
        """Start the service (sandbox mode, this test's database, `overrides` of its settings) at `at`,
        or at the clock's time (a restart); returns once its scheduler has armed what the database holds."""
        if self._traveller is None:
            if at is None:
                raise ValueError("the first start names the time the clock starts at")
            self._travel = time_machine.travel(at, tick=False)
            self._traveller = self._travel.start()
        elif at is not None:
            self._move(at)
        runner, service = await start_service(make_settings(self._tmp_path, self._database_url, **overrides))
        self._running.append((runner, service))
        await asyncio.wait_for(service.app[SCHEDULES].scheduler.started.wait(), START_TIMEOUT_S)
        return service

    async def stop(self, service: Service) -> None:
        """Stop one service (down across a fire: its restart catches up)."""
        [entry] = [e for e in self._running if e[1] is service]
        self._running.remove(entry)
        await entry[0].cleanup()

    async def close(self) -> None:
        """Stop the services, then the travel (a service never sees the wall clock go back)."""
        try:
            while self._running:
                await self._running.pop()[0].cleanup()
        finally:
            if self._travel is not None:
                self._travel.stop()
                self._travel = self._traveller = None

    async def advance(self, delta: timedelta) -> None:
        await self.advance_to(self.now() + delta)

    async def advance_to(self, until: datetime) -> None:
        """Move the wall clock to `until`, stopping at every deadline of the running service on the way,
        and return once the service has done what fell due there (see the module's docstring)."""
        if until < self.now():
            raise ValueError(f"the clock does not go back ({until} is before {self.now()})")
        await self._settle(*await self._due(self.now()))  # e.g. a pre-synthesis window open at creation
        while True:
            deadline = await self._next_deadline()
            to = until if deadline is None or deadline > until else deadline
            fires, presyntheses = await self._due(to)
            self._move(to)
            for _, service in self._running:
                service.app[SCHEDULES].scheduler.wake()
                service.app[DISPATCHER].wake()
            await self._settle(fires, presyntheses)
            if to == until:
                return

    def _move(self, to: datetime) -> None:
        assert self._traveller is not None, "start a service on the clock first"
        if to < self.now():
            raise ValueError(f"the clock does not go back ({to} is before {self.now()})")
        self._traveller.move_to(to, tick=False)

    async def _armed(self) -> list[Armed]:
        """Each active schedule's next fire, as its scheduler armed it. A time not after now is one being
        armed again this moment (a schedule changed lately is re-armed when the scheduler syncs; the
        repeat is harmless, the fire's occurrence is made once), and a schedule may not be armed yet (a
        scheduler may arm only what is near): for those, the next time its own `when` gives."""
        now = self.now()
        armed = []
        for _, service in self._running:
            deps = service.app[SCHEDULES]
            for row in await deps.store.listing():
                if row.status != ScheduleStatus.ACTIVE:
                    continue
                next_run = row.next_run_at
                if next_run is None or next_run <= now:
                    upcoming = when_from_json(row.when).next_times(now, 1)
                    next_run = upcoming[0] if upcoming else None
                if next_run is None:
                    continue
                ahead = row.options.presynthesize_s
                # In UTC: a time in a DST gap or fold never equals one of another zone (PEP 495), and the
                # stored occurrences' times come back in UTC.
                planned = next_run.astimezone(UTC)
                armed.append(Armed(service, row.id, planned, timedelta(seconds=max(ahead, 0))))
        return armed

    async def _next_deadline(self) -> datetime | None:
        """The earliest time after now at which the running service has something to do."""
        now = self.now()
        times = []
        for a in await self._armed():
            times += [a.planned, a.planned - a.ahead] if a.ahead else [a.planned]
        for _, service in self._running:
            due = await service.app[DELIVERIES].next_due()
            if due is not None:
                times.append(due)
        return min((t for t in times if t > now), default=None)

    async def _due(self, at: datetime) -> tuple[list[Armed], list[Armed]]:
        """The fires due by `at`, and the fires whose pre-synthesis (but not the fire) is due by then."""
        fires, presyntheses = [], []
        for a in await self._armed():
            if a.planned <= at:
                fires.append(a)
            elif a.ahead and a.planned - a.ahead <= at:
                presyntheses.append(a)
        return fires, presyntheses

    async def _settle(self, fires: list[Armed], presyntheses: list[Armed]) -> None:
        waiting: list[str] = []

        async def settled() -> bool:
            waiting[:] = await self._waiting_for(fires, presyntheses)
            return not waiting

        try:
            await eventually(settled, timeout=SETTLE_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError(f"at {self.now().isoformat()} the service still owes: {waiting}") from None

    async def _waiting_for(self, fires: list[Armed], presyntheses: list[Armed]) -> list[str]:
        """What the service has not done yet of what is due now (none: it is idle until its next deadline)."""
        waiting = []
        for a in fires:
            deps = a.service.app[SCHEDULES]
            row = await deps.store.get(a.schedule_id)
            if row is None or row.status == ScheduleStatus.PAUSED:
                continue  # deleted or paused: owes nothing
            if not await deps.store.occurrence_done(a.schedule_id, a.planned):
                waiting.append(f"the fire of {a.schedule_id} at {a.planned.isoformat()}")
            elif row.status == ScheduleStatus.ACTIVE and row.next_run_at is None:
                waiting.append(f"{a.schedule_id} ending after its last fire")
        for a in presyntheses:
            deps = a.service.app[SCHEDULES]
            noted = [
                o
                for o in await deps.store.occurrences(a.schedule_id)
                if datetime.fromisoformat(o["planned_at"]) == a.planned
                and (o["status"] != "upcoming" or "presynthesis" in o["detail"])
            ]
            if not noted:
                waiting.append(f"the pre-synthesis of {a.schedule_id} for {a.planned.isoformat()}")
        now = self.now()
        for _, service in self._running:
            deliveries = service.app[DELIVERIES]
            due = await deliveries.next_due()
            if due is not None and due <= now:
                waiting.append(f"deliveries due since {due.isoformat()}")
            live = await deliveries.in_flight()
            if live:
                waiting.append(f"{live} calls live")
        return waiting


@pytest.fixture
async def clock(tmp_path: Path, own_database_url: str) -> AsyncIterator[Clock]:
    """A wall clock only the test moves, and a database of the test's own: `await clock.start(at)`
    starts the service at `at`."""
    clock = Clock(tmp_path, own_database_url)
    try:
        yield clock
    finally:
        await clock.close()
