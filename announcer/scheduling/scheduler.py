"""The clock of reminders: APScheduler 3.11 (`AsyncIOScheduler`, jobs in memory) keeps the times; the
`schedules` table is the truth it is rebuilt from at every start (design.md, "Scheduling").

Only what is near is armed: each schedule's next run is kept in the table (`next_run_at`, and `arm_at`,
that less its pre-synthesis lead), and APScheduler holds the schedules whose arm_at falls within the
horizon (an hour by default). The leader extends the horizon at every sync, arming what came near; a
fire whose next run is beyond it hands the schedule back to the table. A start with 10,000 schedules
so arms the few due within the hour, not all of them (and keeps a few hundred jobs in memory, not 10,000).

A fire becomes an occurrence keyed (schedule id, planned time) and an alert whose Idempotency-Key is
made of the same two: a double fire, or a catch-up racing a fire, creates one of each, never two.
Fires missed while the service was down are caught up at start by each schedule's misfire policy:
`run` makes the latest missed fire once if it is at most `misfire_grace_s` late, every other one is
recorded as `missed` with its planned time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_MISSED, EVENT_JOB_SUBMITTED, JobExecutionEvent, JobSubmissionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from announcer.deliveries.plan import PlanError
from announcer.options import ScheduleOptions
from announcer.scheduling.leader import Leadership
from announcer.scheduling.when import When, when_from_json
from announcer.speech.engine import SpeechError
from announcer.store.models import OccurrenceStatus, ScheduleStatus, utcnow
from announcer.store.schedules import ArmInfo, ScheduleRow, ScheduleStore, arm_time

log = logging.getLogger(__name__)

# Turns a schedule's fire into an alert: (schedule, planned time, idempotency key) -> alert id. Raises
# PlanError when the schedule no longer renders (the occurrence is then recorded as failed).
MakeAlert = Callable[[ScheduleRow, datetime, str], Awaitable[str]]
# Renders a schedule and synthesizes its texts into the audio cache; raises SpeechError saying why not.
Presynthesize = Callable[[ScheduleRow], Awaitable[int]]

SYNC_S = 2.0  # how soon the leader arms a schedule created or changed through another process
PRESYNTH_TICK_S = 5.0  # how often the coming fires are looked at (and failed syntheses retried)
HORIZON_S = 3600.0  # schedules held within this much of now are armed; the rest wait in the table
_DEFAULT_AHEAD_S = ScheduleOptions().presynthesize_s  # `add` records each job's own; this, should one lack it


def occurrence_key(schedule_id: str, planned_at: datetime) -> str:
    return f"schedule:{schedule_id}:{planned_at.astimezone(UTC).isoformat()}"


class Scheduler:
    """Started and stopped by the app's lifecycle."""

    def __init__(
        self,
        store: ScheduleStore,
        make_alert: MakeAlert,
        presynthesize: Presynthesize | None = None,
        *,
        presynth_tick_s: float = PRESYNTH_TICK_S,
        sync_s: float = SYNC_S,
        horizon_s: float = HORIZON_S,
    ) -> None:
        if horizon_s < 2 * sync_s:
            # A schedule coming near is armed at the first sync that reaches it: up to a sync late.
            raise ValueError(f"the horizon ({horizon_s} s) must span two syncs ({sync_s} s each)")
        self._store = store
        self._make_alert = make_alert
        self._presynthesize = presynthesize
        self._presynth_tick_s = presynth_tick_s
        self._presynthesized: set[tuple[str, datetime]] = set()
        self._ahead: dict[str, float] = {}  # each armed schedule's presynthesize_s
        self._presynth_failures: dict[tuple[str, datetime], int] = {}
        self._presynth_wake = asyncio.Event()
        self._sync_wake = asyncio.Event()
        self._presynth_task: asyncio.Task[None] | None = None
        # APScheduler 3 does not hand a job its planned time; its submission event does, just before
        # the job's coroutine starts on the loop.
        self._planned: defaultdict[str, deque[datetime]] = defaultdict(deque)
        self._aps = self._new_aps()

        async def job(schedule_id: str) -> None:
            await self._fire_job(schedule_id)

        # APScheduler inspects a job's callable at every add_job; a signature computed once answers that
        # at once (inspecting the bound method cost 40 us a job: 0.4 s for a start with 10,000).
        job.__signature__ = inspect.signature(job)  # type: ignore[attr-defined]
        self._job = job
        self._sync_s = sync_s
        self._sync_task: asyncio.Task[None] | None = None
        self._synced_at = utcnow()
        self._horizon = timedelta(seconds=horizon_s)
        # Every active schedule with an arm_at up to this is armed (while leading); later ones are not.
        self._armed_until = utcnow()
        self.fired = 0  # occurrences made into alerts (a gauge)
        self.started = asyncio.Event()
        self._starting: asyncio.Task[None] | None = None

    def start(
        self, ready: Callable[[], Awaitable[None]] | None = None, leadership: Leadership | None = None
    ) -> None:
        """Arm every active schedule once `ready` (the server accepts connections: a fire caught up at
        start places calls whose webhooks must find us listening) and once this process leads (one
        scheduler per database); stand down if leadership is lost, and try to lead again."""
        self._starting = asyncio.create_task(self._run(ready, leadership), name="scheduler")

    @property
    def leading(self) -> bool:
        return bool(self._aps.running)

    async def _run(self, ready: Callable[[], Awaitable[None]] | None, leadership: Leadership | None) -> None:
        if ready is not None:
            await ready()
        while True:
            if leadership is not None:
                await leadership.acquire()
            await self._lead()
            if leadership is None:
                await asyncio.Event().wait()  # leads until closed
                return
            await leadership.lost()
            self._stand_down()

    async def _lead(self) -> None:
        # Paused while arming: every job added to a running APScheduler wakes it (thousands of wake-ups at
        # a start); resumed once, when all are in. Fires missed meanwhile are caught up below, not by it.
        self._aps.start(paused=True)
        self._synced_at = now = utcnow()
        self._armed_until = now + self._horizon  # before the query: see _sync
        computed: list[tuple[str, datetime | None, ScheduleOptions]] = []  # next runs to write back
        firsts: dict[BaseTrigger, tuple[datetime, datetime | None]] = {}  # by identity: shared triggers
        for n, arm in enumerate(await self._store.due_by(self._armed_until)):
            when = when_from_json(arm.when)
            first = arm.next_run_at
            trigger: BaseTrigger
            if first is not None:
                trigger = when.deferred_trigger()  # its next time is known: compiled when that comes
            else:  # not computed yet (a row from before migration 0006): once, here
                trigger = when.trigger()
                # The first time after the last one handled: past it, nothing was missed (the common
                # case) and it is the next run; else the misfire policy handles what was missed first.
                since = (arm.last_planned_at or arm.created_at) + timedelta(microseconds=1)
                # Schedules sharing a trigger share its next time for every `since` before it.
                known = firsts.get(trigger)
                if known is not None and known[0] <= since and (known[1] is None or since < known[1]):
                    first = known[1]
                else:
                    first = trigger.get_next_fire_time(None, since)
                    firsts[trigger] = (since, first)
                if first is not None and first > now:
                    computed.append((arm.id, first, arm.options))
            if first is not None and first > now:
                self.add(arm, trigger, first, when)
            elif first is not None:
                schedule = await self._store.get(arm.id)
                if schedule is not None:
                    try:
                        await self._catch_up(schedule)
                    except Exception:
                        log.exception("catching up schedule %s failed; armed for its next time", arm.id)
                    following = when.first_after(now)
                    computed.append((arm.id, following, arm.options))
                    self.add(schedule, trigger, following, when)
            else:
                await self._store.change(arm.id, status=ScheduleStatus.ENDED)
            if n % 100 == 99:
                await asyncio.sleep(0)  # thousands of schedules: let webhooks and live calls through
        await self._store.set_next_runs(computed)
        self._aps.resume()
        self.started.set()
        if self._presynthesize is not None:
            self._presynth_task = asyncio.create_task(self._presynth_forever(), name="scheduler-presynth")
        self._sync_task = asyncio.create_task(self._sync_forever(), name="scheduler-sync")

    def _stand_down(self) -> None:
        for task in (self._presynth_task, self._sync_task):
            if task is not None:
                task.cancel()
        self._presynth_task = self._sync_task = None
        if self._aps.running:
            self._aps.shutdown(wait=False)
        self._aps = self._new_aps()  # a shut-down APScheduler cannot start again
        self.started.clear()

    async def close(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.wait([self._starting])
        tasks = [t for t in (self._presynth_task, self._sync_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._aps.running:
            self._aps.shutdown(wait=False)

    async def _sync_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # every sync_s, or at once when woken
                async with asyncio.timeout(self._sync_s):
                    await self._sync_wake.wait()
            self._sync_wake.clear()
            try:
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("syncing schedules failed; trying again")

    def wake(self) -> None:
        """Look at the wall clock now, not at the next timer. Every timer here waits monotonic seconds,
        computed from the wall-clock time when it was set: when the wall clock jumps (a test's clock
        moves it to a fire time instead of waiting for it), this does at once what they would have done
        once that time came: arm what came within the horizon, submit the fires due and look at the
        pre-synthesis windows."""
        if self._aps.running:
            self._aps.wakeup()  # runs APScheduler's `_process_jobs` on the loop's next turn
        self._presynth_wake.set()
        self._sync_wake.set()  # arm what the new time brought within the horizon

    async def _sync(self) -> None:
        """Arm what came within the horizon since the last sync, and re-arm what was created or changed
        through another process (any process serves the API)."""
        now = utcnow()
        # Moved before the query, not after: a fire that from now on finds its next run beyond the
        # horizon has written it first (see _advance), so this query or a later one finds it.
        previous, self._armed_until = self._armed_until, now + self._horizon
        try:
            near = await self._store.coming_near(previous, self._armed_until)
            changed = await self._store.changed_since(self._synced_at - timedelta(seconds=1))
        except Exception:
            self._armed_until = previous  # looked up again at the next sync
            raise
        self._synced_at = now
        for arm in near:
            if self._aps.get_job(arm.id) is None:
                self.add(arm, next_run=arm.next_run_at)
        for schedule in changed:
            self.add(schedule, next_run=self._overdue(schedule, now))

    def _overdue(self, schedule: ScheduleRow, now: datetime) -> datetime | None:
        """A stored next run that passed before this sync saw the schedule: made or changed through
        another process a moment before its time (a sync runs every SYNC_S). It fires now, as a fire
        late by the sync's lag, if that is within its grace; a fire's occurrence is made once, so one
        already under way elsewhere is not made twice. None: arm as usual."""
        at = schedule.next_run_at
        if schedule.status != ScheduleStatus.ACTIVE or at is None or at > now:
            return None
        if self._aps.get_job(schedule.id) is not None:
            return None  # armed here: its own job fires it (or a fire of it is under way)
        if (now - at).total_seconds() > schedule.options.misfire_grace_s:
            return None
        return at

    # --- jobs ------------------------------------------------------------------------------------------

    def add(
        self,
        schedule: ScheduleRow | ArmInfo,
        trigger: BaseTrigger | None = None,
        next_run: datetime | None = None,
        when: When | None = None,
    ) -> datetime | None:
        """(Re)arm a schedule whose next run is within the horizon (the rest are armed by a later sync,
        when they come near); its next fire time either way (None: it will not fire again). In a
        process that does not lead, only the time: the leader arms it when it syncs. `next_run` is the
        time to arm for, as the table holds it (or will, once the caller has written it); by default
        the stored one, or the first from now when that has passed. `trigger` and `when`, when the
        caller has them already, spare making them again (a start arms thousands)."""
        if trigger is None:  # else a start arming it: not armed yet (add_job replaces one if it is)
            self.remove(schedule.id)
        if schedule.status != ScheduleStatus.ACTIVE:
            return None
        when = when or when_from_json(schedule.when)
        now = utcnow()
        if when.at is not None and when.at <= now and next_run is None:
            return None  # a one-shot whose time has passed: caught up (or ended) already
        # The table holds the time armed for (given, or stored and still ahead): one far away is left
        # to it. Else (a stored time that has passed: a fire under way) the first from now, armed.
        held = next_run is not None or (schedule.next_run_at is not None and schedule.next_run_at > now)
        if next_run is None:
            next_run = schedule.next_run_at if held else when.first_after(now)
        if next_run is None or not self._aps.running:
            return next_run
        armed_at = arm_time(next_run, schedule.options)
        if held and armed_at is not None and armed_at > self._armed_until:
            return next_run  # a sync arms it when it comes within the horizon
        grace = schedule.options.misfire_grace_s
        self._ahead[schedule.id] = schedule.options.presynthesize_s
        self._aps.add_job(
            self._job,
            trigger or when.deferred_trigger(),  # asked nothing before `next_run`
            args=[schedule.id],
            id=schedule.id,
            misfire_grace_time=max(1, int(grace)),
            coalesce=False,
            max_instances=100,
            replace_existing=True,
            next_run_time=next_run,
        )
        self._presynth_wake.set()  # a new time may fall inside its pre-synthesis window already
        return next_run

    def remove(self, schedule_id: str) -> None:
        if self._aps.running:
            with contextlib.suppress(JobLookupError):
                self._aps.remove_job(schedule_id)
        self._ahead.pop(schedule_id, None)
        # `_planned` is left alone: a fire submitted a moment ago still runs (then finds it inactive).

    def armed_for(self, schedule_id: str) -> datetime | None:
        """The time APScheduler holds `schedule_id` for; None when it is not armed (not near, or this
        process does not lead). What the schedule's next run is, the table says."""
        if not self._aps.running:
            return None
        job = self._aps.get_job(schedule_id)
        return None if job is None else getattr(job, "next_run_time", None)

    def _new_aps(self) -> AsyncIOScheduler:
        aps = AsyncIOScheduler(timezone=UTC)
        aps.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        aps.add_listener(self._on_missed, EVENT_JOB_MISSED)
        return aps

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
        schedule = await self._store.get(schedule_id)
        if schedule is not None and schedule.status == ScheduleStatus.ACTIVE:
            await self._advance(schedule, planned)

    async def _fire_job(self, schedule_id: str) -> None:
        planned_times = self._planned.pop(schedule_id, deque())
        schedule: ScheduleRow | None = None
        for planned in planned_times:
            schedule = await self._store.get(schedule_id)
            if schedule is None or schedule.status != ScheduleStatus.ACTIVE:
                return  # deleted or paused between the fire and now
            await self.fire(schedule, planned)
        if schedule is not None:
            await self._advance(schedule, planned_times[-1])

    async def _advance(self, schedule: ScheduleRow, planned: datetime) -> None:
        """After a fire (or a miss) at `planned`: store the next run APScheduler has moved the job to
        (none: a one-shot, or a cron past its end, has ended), and hand the schedule back to the table
        when that is beyond the horizon."""
        job = self._aps.get_job(schedule.id)
        following: datetime | None = None if job is None else job.next_run_time
        await self._store.advance(schedule.id, planned, following, schedule.options)
        if following is None:
            self._ahead.pop(schedule.id, None)
        # Written first, then compared with the horizon as it is now: a sync moving it from here on
        # finds the new time in the table (see _sync).
        job = self._aps.get_job(schedule.id)
        armed_at = arm_time(following, schedule.options)
        if (
            job is not None
            and job.next_run_time == following  # not re-armed with another time meanwhile (a PATCH)
            and armed_at is not None
            and armed_at > self._armed_until
        ):
            self.remove(schedule.id)

    # --- speech made ahead ------------------------------------------------------------------------------

    async def _presynth_forever(self) -> None:
        while True:
            try:
                await self._presynth_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pre-synthesis sweep failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._presynth_tick_s):
                    await self._presynth_wake.wait()
            self._presynth_wake.clear()

    async def _presynth_due(self) -> None:
        """Every fire due within its schedule's `presynthesize_s`: render it and make its speech now, so a
        TTS problem shows (on the occurrence) before anyone is dialed. Failures are retried each tick."""
        assert self._presynthesize is not None
        now = utcnow()
        self._presynthesized = {k for k in self._presynthesized if k[1] > now}
        longest = timedelta(seconds=max(self._ahead.values(), default=0.0))
        for job in self._aps.get_jobs():  # soonest first
            planned: datetime | None = getattr(job, "next_run_time", None)
            if planned is None:
                continue
            if planned - now > longest:
                break  # every later job is further away than any schedule synthesizes ahead
            ahead = self._ahead.get(job.id, _DEFAULT_AHEAD_S)
            if (
                (job.id, planned) in self._presynthesized
                or ahead <= 0
                or planned - now > timedelta(seconds=ahead)
            ):
                continue
            schedule = await self._store.get(job.id)
            if schedule is None or schedule.status != ScheduleStatus.ACTIVE:
                continue
            key = (job.id, planned)
            try:
                texts = await self._presynthesize(schedule)
            except (PlanError, SpeechError) as err:
                attempts = self._presynth_failures.get(key, 0) + 1
                self._presynth_failures[key] = attempts
                reason = str(err)
                log.warning("pre-synthesis for %s at %s failed (%d): %s", job.id, planned, attempts, reason)
                await self._store.note_upcoming(
                    job.id, planned, presynthesis="failed", reason=reason[:300], attempts=attempts
                )
                continue
            self._presynthesized.add(key)
            self._presynth_failures.pop(key, None)
            await self._store.note_upcoming(job.id, planned, presynthesis="ready", texts=texts)

    # --- occurrences -----------------------------------------------------------------------------------

    async def fire(self, schedule: ScheduleRow, planned: datetime, *, late: bool = False) -> bool:
        """Make one planned fire an alert; False when it was made already."""
        if await self._store.occurrence_done(schedule.id, planned):
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
        policy = schedule.options.misfire
        grace = timedelta(seconds=schedule.options.misfire_grace_s)
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
