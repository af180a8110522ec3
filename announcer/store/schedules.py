"""Schedules and their occurrences: the truth the scheduler is rebuilt from at every start."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from announcer.options import ScheduleOptions
from announcer.store.models import Delivery, Occurrence, OccurrenceStatus, Schedule, ScheduleStatus, utcnow


@dataclass(frozen=True)
class ScheduleRow:
    id: str
    name: str | None
    template: str | None
    template_text: str | None
    variables: dict[str, Any]
    recipients: list[dict[str, Any]]
    when: dict[str, Any]
    options: ScheduleOptions
    status: str
    last_planned_at: datetime | None
    created_at: datetime
    next_run_at: datetime | None  # None: not active, or not computed yet (a row from before 0006)


@dataclass(frozen=True)
class ArmInfo:
    """What arming a schedule takes (its time and options), without its recipients and variables."""

    id: str
    when: dict[str, Any]
    options: ScheduleOptions
    status: str
    last_planned_at: datetime | None
    created_at: datetime
    next_run_at: datetime | None


def arm_time(next_run_at: datetime | None, options: ScheduleOptions) -> datetime | None:
    """When the scheduler must hold a schedule: its next run less the time its speech is made ahead."""
    if next_run_at is None:
        return None
    return next_run_at - timedelta(seconds=max(0.0, options.presynthesize_s))


def _row(s: Schedule) -> ScheduleRow:
    return ScheduleRow(
        s.id,
        s.name,
        s.template,
        s.template_text,
        dict(s.variables),
        list(s.recipients.get("items", [])),
        dict(s.when),
        s.options,
        s.status,
        s.last_planned_at,
        s.created_at,
        s.next_run_at,
    )


def _table() -> Table:
    return cast(Table, Schedule.__table__)


def _arm_query(t: Table) -> Any:
    return select(
        t.c.id, t.c.when, t.c.options, t.c.status, t.c.last_planned_at, t.c.created_at, t.c.next_run_at
    ).where(t.c.status == ScheduleStatus.ACTIVE)


class ScheduleStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def create(
        self,
        *,
        name: str | None,
        template: str | None,
        template_text: str | None,
        variables: dict[str, Any],
        recipients: list[dict[str, Any]],
        when: dict[str, Any],
        options: ScheduleOptions,
        next_run_at: datetime | None,
    ) -> ScheduleRow:
        now = utcnow()
        schedule = Schedule(
            id="sc_" + secrets.token_hex(12),
            name=name,
            template=template,
            template_text=template_text,
            variables=variables,
            recipients={"items": recipients},
            when=when,
            options=options,
            status=ScheduleStatus.ACTIVE,
            # Nothing before its creation is owed: a restart's catch-up starts here.
            last_planned_at=now,
            next_run_at=next_run_at,
            arm_at=arm_time(next_run_at, options),
            created_at=now,
            updated_at=now,
        )
        async with self.sessions() as s:
            s.add(schedule)
            await s.commit()
        return _row(schedule)

    async def get(self, schedule_id: str) -> ScheduleRow | None:
        async with self.sessions() as s:
            found = await s.get(Schedule, schedule_id)
            return None if found is None or found.status == ScheduleStatus.DELETED else _row(found)

    async def listing(
        self, *, include_deleted: bool = False, offset: int = 0, limit: int | None = None
    ) -> list[ScheduleRow]:
        """The schedules, oldest first; `offset` and `limit` take a page of them (the dashboard's list)."""
        async with self.sessions() as s:
            query = select(Schedule).order_by(Schedule.created_at, Schedule.id)
            if not include_deleted:
                query = query.where(Schedule.status != ScheduleStatus.DELETED)
            if offset:
                query = query.offset(offset)
            if limit is not None:
                query = query.limit(limit)
            return [_row(x) for x in (await s.execute(query)).scalars()]

    async def next_runs(self, limit: int) -> list[tuple[str, str | None, datetime]]:
        """(id, name, next run) of the active schedules that run soonest (the dashboard's overview)."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(Schedule.id, Schedule.name, Schedule.next_run_at)
                .where(Schedule.status == ScheduleStatus.ACTIVE, Schedule.next_run_at.is_not(None))
                .order_by(Schedule.next_run_at)
                .limit(limit)
            )
            return [(str(r[0]), r[1], r[2]) for r in rows.all() if r[2] is not None]

    async def due_by(self, until: datetime) -> list[ArmInfo]:
        """The active schedules to hold from now to `until` (arm_at up to it, or unknown): a start arms
        these, not the thousands further away, and needs no recipients."""
        t = _table()
        query = _arm_query(t).where(t.c.arm_at.is_(None) | (t.c.arm_at <= until))
        async with self.sessions() as s:
            return [ArmInfo(*row) for row in await s.execute(query)]

    async def coming_near(self, after: datetime, until: datetime) -> list[ArmInfo]:
        """The active schedules whose arm_at is in (after, until]: the next slice of the horizon."""
        t = _table()
        query = _arm_query(t).where(t.c.arm_at > after, t.c.arm_at <= until)
        async with self.sessions() as s:
            return [ArmInfo(*row) for row in await s.execute(query)]

    async def set_next_runs(self, runs: Iterable[tuple[str, datetime | None, ScheduleOptions]]) -> None:
        """Write (schedule id, next run, options) computed at a start, in one statement."""
        t = _table()
        params = [{"b_id": sid, "b_next": at, "b_arm": arm_time(at, options)} for sid, at, options in runs]
        if not params:
            return
        query = (
            update(t)
            .where(t.c.id == bindparam("b_id"), t.c.status == ScheduleStatus.ACTIVE)
            .values(next_run_at=bindparam("b_next"), arm_at=bindparam("b_arm"))
        )
        async with self.sessions() as s:
            await s.execute(query, params)
            await s.commit()

    async def advance(
        self, schedule_id: str, planned_at: datetime, following: datetime | None, options: ScheduleOptions
    ) -> None:
        """After the fire planned at `planned_at`: the next run is `following` (None: the schedule has
        ended). Only over that fire: a change (PATCH) that set another time since is kept."""
        values: dict[str, Any] = {"next_run_at": following, "arm_at": arm_time(following, options)}
        if following is None:
            values["status"] = ScheduleStatus.ENDED
        async with self.sessions() as s:
            await s.execute(
                update(Schedule)
                .where(
                    Schedule.id == schedule_id,
                    Schedule.status == ScheduleStatus.ACTIVE,
                    Schedule.next_run_at.is_(None) | (Schedule.next_run_at <= planned_at),
                )
                .values(**values)
            )
            await s.commit()

    async def changed_since(self, since: datetime) -> list[ScheduleRow]:
        """Schedules created or changed after `since` (deleted and paused ones included)."""
        async with self.sessions() as s:
            rows = await s.execute(select(Schedule).where(Schedule.updated_at > since))
            return [_row(x) for x in rows.scalars()]

    async def change(self, schedule_id: str, **values: Any) -> ScheduleRow | None:
        """Update the given fields of a schedule that is not deleted; None when there is none. Only an
        active schedule has a next run: any other status clears it."""
        if "recipients" in values:
            values["recipients"] = {"items": values["recipients"]}
        if values.get("status", ScheduleStatus.ACTIVE) != ScheduleStatus.ACTIVE:
            values["next_run_at"] = None
        async with self.sessions() as s:
            if "next_run_at" in values:
                options = (
                    values.get("options")
                    or (
                        await s.execute(select(Schedule.options).where(Schedule.id == schedule_id))
                    ).scalar_one_or_none()
                )
                values["arm_at"] = arm_time(
                    values["next_run_at"], ScheduleOptions() if options is None else options
                )
            result = await s.execute(
                update(Schedule)
                .where(Schedule.id == schedule_id, Schedule.status != ScheduleStatus.DELETED)
                .values(**values, updated_at=utcnow())
            )
            await s.commit()
            if not result.rowcount:  # type: ignore[attr-defined]
                return None
        return await self.get(schedule_id)

    async def record_occurrence(
        self,
        schedule_id: str,
        planned_at: datetime,
        status: OccurrenceStatus,
        *,
        alert_id: str | None = None,
        **detail: Any,
    ) -> bool:
        """Record what one planned fire became; False when that was recorded already (a double fire).
        An `upcoming` row (made by pre-synthesis) becomes this, keeping its detail."""
        async with self.sessions() as s:
            try:
                await s.execute(
                    insert(Occurrence).values(
                        schedule_id=schedule_id,
                        planned_at=planned_at,
                        status=status,
                        alert_id=alert_id,
                        detail=detail,
                        created_at=utcnow(),
                    )
                )
            except IntegrityError:
                await s.rollback()
                found = (
                    await s.execute(
                        select(Occurrence).where(
                            Occurrence.schedule_id == schedule_id,
                            Occurrence.planned_at == planned_at,
                            Occurrence.status == OccurrenceStatus.UPCOMING,
                        )
                    )
                ).scalar_one_or_none()
                if found is None:
                    return False
                taken = await s.execute(
                    update(Occurrence)
                    .where(Occurrence.id == found.id, Occurrence.status == OccurrenceStatus.UPCOMING)
                    .values(status=status, alert_id=alert_id, detail={**found.detail, **detail})
                )
                if not taken.rowcount:  # type: ignore[attr-defined]
                    await s.rollback()
                    return False  # another fire took it between the two statements
            await s.execute(
                update(Schedule)
                .where(
                    Schedule.id == schedule_id,
                    (Schedule.last_planned_at.is_(None)) | (Schedule.last_planned_at < planned_at),
                )
                .values(last_planned_at=planned_at)
            )
            await s.commit()
        return True

    async def note_upcoming(self, schedule_id: str, planned_at: datetime, **detail: Any) -> None:
        """Note something about a fire that is not due yet (its pre-synthesis), on its occurrence."""
        async with self.sessions() as s:
            found = (
                await s.execute(
                    select(Occurrence).where(
                        Occurrence.schedule_id == schedule_id, Occurrence.planned_at == planned_at
                    )
                )
            ).scalar_one_or_none()
            if found is None:
                s.add(
                    Occurrence(
                        schedule_id=schedule_id,
                        planned_at=planned_at,
                        status=OccurrenceStatus.UPCOMING,
                        detail=detail,
                        created_at=utcnow(),
                    )
                )
            elif found.status == OccurrenceStatus.UPCOMING:
                found.detail = {**found.detail, **detail}
            try:
                await s.commit()
            except IntegrityError:
                await s.rollback()  # the fire itself got there first: nothing to note ahead any more

    async def occurrence_done(self, schedule_id: str, planned_at: datetime) -> bool:
        """Whether this planned fire has become something (fired, missed, failed)."""
        async with self.sessions() as s:
            found = await s.execute(
                select(Occurrence.id).where(
                    Occurrence.schedule_id == schedule_id,
                    Occurrence.planned_at == planned_at,
                    Occurrence.status != OccurrenceStatus.UPCOMING,
                )
            )
            return found.first() is not None

    async def occurrences(self, schedule_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The latest occurrences, newest first, each with its alert's outcome counts."""
        async with self.sessions() as s:
            rows = (
                (
                    await s.execute(
                        select(Occurrence)
                        .where(Occurrence.schedule_id == schedule_id)
                        .order_by(Occurrence.planned_at.desc())
                        .limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            # Every occurrence's counts in one grouped query (not one query per occurrence).
            alert_ids = [o.alert_id for o in rows if o.alert_id is not None]
            counts_of: dict[str, dict[str, int]] = {}
            if alert_ids:
                for alert_id, state, n in await s.execute(
                    select(Delivery.alert_id, Delivery.state, func.count())
                    .where(Delivery.alert_id.in_(alert_ids))
                    .group_by(Delivery.alert_id, Delivery.state)
                ):
                    counts_of.setdefault(str(alert_id), {})[str(state)] = int(n)
            out: list[dict[str, Any]] = []
            for o in rows:
                counts = counts_of.get(o.alert_id, {}) if o.alert_id is not None else {}
                out.append(
                    {
                        "planned_at": o.planned_at.isoformat(),
                        "status": o.status,
                        "alert_id": o.alert_id,
                        "counts": counts,
                        "detail": o.detail,
                    }
                )
            return out
