"""The clock of reminders: APScheduler 3.11 (`AsyncIOScheduler`, jobs in memory) keeps the times; the
`schedules` table is the truth it is rebuilt from at every start (design.md, "Scheduling").

A fire becomes an occurrence keyed (schedule id, planned time) and an alert whose Idempotency-Key is
made of the same two: a double fire, or a catch-up racing a fire, creates one of each, never two.
Fires missed while the service was down are caught up at start by each schedule's misfire policy:
`run` makes the latest missed fire once if it is at most `misfire_grace_s` late, every other one is
recorded as `missed` with its planned time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED, EVENT_JOB_SUBMITTED, JobExecutionEvent, JobSubmissionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from announcer.deliveries.plan import PlanError
from announcer.scheduling.when import When, when_from_json
from announcer.store.models import OccurrenceStatus, ScheduleStatus, utcnow
from announcer.store.schedules import ScheduleRow, ScheduleStore

log = logging.getLogger(__name__)

DEFAULT_MISFIRE_GRACE_S = 300.0

# Turns a schedule's fire into an alert: (schedule, planned time, idempotency key) -> alert id. Raises
# PlanError when the schedule no longer renders (the occurrence is then recorded as failed).
MakeAlert = Callable[[ScheduleRow, datetime, str], Awaitable[str]]


def occurrence_key(schedule_id: str, planned_at: datetime) -> str:
    return f"schedule:{schedule_id}:{planned_at.astimezone(UTC).isoformat()}"


class Scheduler:
    """Started and stopped by the app's lifecycle."""

    def __init__(self, store: ScheduleStore, make_alert: MakeAlert) -> None:
        self._store = store
        self._make_alert = make_alert
        self._aps = AsyncIOScheduler(timezone=UTC)
        # APScheduler 3 does not hand a job its planned time; its submission event does, just before
        # the job's coroutine starts on the loop.
        self._planned: defaultdict[str, deque[datetime]] = defaultdict(deque)
        self._aps.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        self._aps.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self.fired = 0  # occurrences made into alerts (a gauge)
        self.started = asyncio.Event()
        self._starting: asyncio.Task[None] | None = None

    def start(self, ready: Callable[[], Awaitable[None]] | None = None) -> None:
        """Arm every active schedule, after `ready` (the server accepts connections: a fire caught up
        at start places calls whose webhooks must find us listening)."""
        self._starting = asyncio.create_task(self._start(ready), name="scheduler-start")

    async def _start(self, ready: Callable[[], Awaitable[None]] | None) -> None:
        if ready is not None:
            await ready()
        self._aps.start()
        for schedule in await self._store.active():
            try:
                await self._catch_up(schedule)
            except Exception:
                log.exception("catching up schedule %s failed; it is armed for its next time", schedule.id)
            self.add(schedule)
        self.started.set()

    async def close(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.wait([self._starting])
        if self._aps.running:
            self._aps.shutdown(wait=False)

    # --- jobs ------------------------------------------------------------------------------------------

    def add(self, schedule: ScheduleRow) -> datetime | None:
        """(Re)arm a schedule; its next fire time (None: it will not fire again)."""
        self.remove(schedule.id)
        if schedule.status != ScheduleStatus.ACTIVE:
            return None
        when = when_from_json(schedule.when)
        if when.at is not None and when.at <= utcnow():
            return None  # a one-shot whose time has passed: caught up (or ended) already
        grace = float(schedule.options.get("misfire_grace_s", DEFAULT_MISFIRE_GRACE_S))
        job = self._aps.add_job(
            self._fire_job,
            when.trigger(),
            args=[schedule.id],
            id=schedule.id,
            misfire_grace_time=max(1, int(grace)),
            coalesce=False,
            max_instances=100,
        )
        # Added before the scheduler started (its start is waiting for the server): not computed yet.
        next_run: datetime | None = getattr(job, "next_run_time", None)
        if next_run is None and not self._aps.running:
            upcoming = when.next_times(utcnow(), 1)
            next_run = upcoming[0] if upcoming else None
        return next_run

    def remove(self, schedule_id: str) -> None:
        with contextlib.suppress(JobLookupError):
            self._aps.remove_job(schedule_id)
        self._planned.pop(schedule_id, None)

    def next_run_at(self, schedule_id: str) -> datetime | None:
        job = self._aps.get_job(schedule_id)
        return None if job is None else getattr(job, "next_run_time", None)

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        self._planned[event.job_id].extend(event.scheduled_run_times)

    def _on_missed(self, event: JobExecutionEvent) -> None:
        # Late beyond the schedule's grace while running (a stalled loop): recorded, not run.
        self._aps._eventloop.create_task(  # the scheduler's own loop
            self._missed(event.job_id, event.scheduled_run_time)
        )

    async def _missed(self, schedule_id: str, planned: datetime) -> None:
        await self._store.record_occurrence(
            schedule_id, planned, OccurrenceStatus.MISSED, reason="fired too late"
        )

    async def _fire_job(self, schedule_id: str) -> None:
        planned_times = self._planned.pop(schedule_id, deque())
        for planned in planned_times:
            schedule = await self._store.get(schedule_id)
            if schedule is None or schedule.status != ScheduleStatus.ACTIVE:
                return  # deleted or paused between the fire and now
            await self.fire(schedule, planned)
        if schedule_id not in {job.id for job in self._aps.get_jobs()}:
            # A one-shot's job is gone once it fired: the schedule has ended.
            await self._store.change(schedule_id, status=ScheduleStatus.ENDED)

    # --- occurrences -----------------------------------------------------------------------------------

    async def fire(self, schedule: ScheduleRow, planned: datetime, *, late: bool = False) -> bool:
        """Make one planned fire an alert; False when it was made already."""
        if await self._store.occurrence_exists(schedule.id, planned):
            return False
        try:
            alert_id = await self._make_alert(schedule, planned, occurrence_key(schedule.id, planned))
        except PlanError as err:
            reasons = [f"{p.field}: {p.reason}" for p in err.problems][:20]
            log.warning("schedule %s at %s could not be made: %s", schedule.id, planned, reasons)
            return await self._store.record_occurrence(
                schedule.id, planned, OccurrenceStatus.FAILED, problems=reasons
            )
        made = await self._store.record_occurrence(
            schedule.id, planned, OccurrenceStatus.FIRED, alert_id=alert_id, late=late
        )
        if made:
            self.fired += 1
            log.info("schedule %s fired for %s: alert %s", schedule.id, planned.isoformat(), alert_id)
        return made

    async def _catch_up(self, schedule: ScheduleRow) -> None:
        """Fires planned while the service was down, by the schedule's misfire policy."""
        now = utcnow()
        when: When = when_from_json(schedule.when)
        since = schedule.last_planned_at or schedule.created_at
        missed = when.times_between(since, now)
        policy = schedule.options.get("misfire", "run")
        grace = timedelta(seconds=float(schedule.options.get("misfire_grace_s", DEFAULT_MISFIRE_GRACE_S)))
        for planned in missed[:-1]:
            await self._store.record_occurrence(
                schedule.id, planned, OccurrenceStatus.MISSED, reason="the service was down"
            )
        if missed:
            latest = missed[-1]
            if policy == "run" and now - latest <= grace:
                await self.fire(schedule, latest, late=True)
            else:
                reason = "the service was down" + (" (misfire: skip)" if policy == "skip" else "")
                await self._store.record_occurrence(
                    schedule.id, latest, OccurrenceStatus.MISSED, reason=reason
                )
        if when.at is not None and when.at <= now:
            await self._store.change(schedule.id, status=ScheduleStatus.ENDED)


def request_hash(schedule: ScheduleRow) -> str:
    """What an occurrence's alert is made of, for its Idempotency-Key check."""
    body: dict[str, Any] = {
        "template": schedule.template,
        "template_text": schedule.template_text,
        "variables": schedule.variables,
        "recipients": schedule.recipients,
        "options": schedule.options,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
