"""`/v1/schedules`: reminders made once or repeated, each fire an alert (see scheduling/; the alert
service, deliveries/alerts.py, makes a fire an alert)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from announcer.api.alerts import render_busy
from announcer.api.http import error, invalid, path_key, read_model
from announcer.api.schemas import ScheduleBody, SchedulePatch
from announcer.deliveries.alerts import AlertService, recipients_of
from announcer.deliveries.plan import PlanError, Problem, RecipientIn
from announcer.messages.workers import RenderBusy
from announcer.scheduling.scheduler import Scheduler
from announcer.scheduling.when import parse_quiet_hours, parse_when, when_from_json
from announcer.store.models import ScheduleStatus, utcnow
from announcer.store.schedules import ScheduleRow, ScheduleStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulesDeps:
    store: ScheduleStore
    scheduler: Scheduler
    alerts: AlertService


def view_of(row: ScheduleRow) -> dict[str, Any]:
    """A schedule as the API lists it. Its next run is the table's: in every process, armed or not (the
    leader arms only what is near), in the schedule's own zone."""
    next_run = None
    if row.status == ScheduleStatus.ACTIVE and row.next_run_at is not None:
        next_run = when_from_json(row.when).local(row.next_run_at)
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "when": row.when,
        "recipients": len(row.recipients),
        "next_run_at": next_run.isoformat() if next_run else None,
        "created_at": row.created_at.isoformat(),
    }


async def create_schedule(request: web.Request, deps: SchedulesDeps) -> web.Response:
    body = await read_model(request, ScheduleBody)
    try:
        row, next_run = await create(body, deps)
    except PlanError as err:
        raise invalid(err.problems) from None
    except RenderBusy:
        raise render_busy() from None
    return web.json_response(
        {"id": row.id, "status": row.status, "next_run_at": next_run.isoformat() if next_run else None},
        status=201,
    )


async def create(body: ScheduleBody, deps: SchedulesDeps) -> tuple[ScheduleRow, datetime | None]:
    """Make the schedule `body` asks for and arm it (its next run); PlanError naming every problem (a
    missing variable, a bad time or zone) before anything is stored. RenderBusy: try again shortly.
    POST /v1/schedules and the dashboard both create through here."""
    problems = deps.alerts.option_problems(body.options, reminder=True)
    when = None
    try:
        when = parse_when(body.when.model_dump(exclude_none=True), utcnow())
    except PlanError as err:
        problems.extend(err.problems)
    try:
        quiet = body.options.quiet_hours
        parse_quiet_hours(quiet.model_dump() if quiet else None)
    except PlanError as err:
        problems.extend(err.problems)
    try:
        # Every recipient rendered now: a missing variable is refused at creation, not found at 8 am.
        recipients = [RecipientIn(r.phone, r.variables, r.name, r.timezone) for r in body.recipients]
        await deps.alerts.plan(body.template, body.template_text, body.variables, recipients)
    except PlanError as err:
        problems.extend(err.problems)
    if problems:
        raise PlanError(problems)
    assert when is not None
    row = await deps.store.create(
        name=body.name,
        template=body.template,
        template_text=body.template_text,
        variables=body.variables,
        recipients=[r.model_dump() for r in body.recipients],
        when=when.as_json(),
        options=body.options,
        next_run_at=when.first_after(utcnow()),
    )
    next_run = deps.scheduler.add(row)
    log.info("schedule %s created: next run %s", row.id, next_run)
    return row, next_run


async def list_schedules(request: web.Request, deps: SchedulesDeps) -> web.Response:
    rows = await deps.store.listing()
    return web.json_response({"schedules": [view_of(r) for r in rows]})


async def _existing(request: web.Request, deps: SchedulesDeps) -> ScheduleRow:
    row = await deps.store.get(path_key(request, "schedule_id"))
    if row is None:
        raise error(404, "not_found", "no such schedule")
    return row


async def get_schedule(request: web.Request, deps: SchedulesDeps) -> web.Response:
    row = await _existing(request, deps)
    view = view_of(row)
    upcoming: list[datetime] = []
    if row.status == ScheduleStatus.ACTIVE:
        upcoming = when_from_json(row.when).next_times(utcnow(), 5)
    view["next_run_times"] = [t.isoformat() for t in upcoming]
    view["variables"] = row.variables
    view["options"] = row.options.model_dump(mode="json")
    view["occurrences"] = await deps.store.occurrences(row.id)
    return web.json_response(view)


async def patch_schedule(request: web.Request, deps: SchedulesDeps) -> web.Response:
    row = await _existing(request, deps)
    body = await read_model(request, SchedulePatch)
    try:
        updated = await change(row, body, deps)
    except PlanError as err:
        raise invalid(err.problems) from None
    except RenderBusy:
        raise render_busy() from None
    except LookupError:
        raise error(404, "not_found", "no such schedule") from None
    return web.json_response(view_of(updated))


async def change(row: ScheduleRow, body: SchedulePatch, deps: SchedulesDeps) -> ScheduleRow:
    """Apply `body` to the schedule (pause, resume, a new time, recipients, message or options) and re-arm
    it; PlanError naming every problem before anything changes, LookupError when it is gone meanwhile.
    PATCH /v1/schedules/{id} and the dashboard's pause, resume and edit all change through here."""
    changes: dict[str, Any] = {}
    problems = []
    if body.when is not None:
        try:
            changes["when"] = parse_when(body.when.model_dump(exclude_none=True), utcnow()).as_json()
        except PlanError as err:
            problems.extend(err.problems)
    if body.name is not None:
        changes["name"] = body.name
    if body.template is not None and body.template_text is not None:
        problems.append(Problem("template", "give one of template and template_text, not both"))
    elif body.template is not None or body.template_text is not None:
        changes["template"], changes["template_text"] = body.template, body.template_text
    if body.options is not None:
        problems.extend(deps.alerts.option_problems(body.options, reminder=True))
        try:
            quiet = body.options.quiet_hours
            parse_quiet_hours(quiet.model_dump() if quiet else None)
        except PlanError as err:
            problems.extend(err.problems)
        changes["options"] = body.options
    if body.variables is not None:
        changes["variables"] = body.variables
    if body.recipients is not None:
        changes["recipients"] = [r.model_dump() for r in body.recipients]
    if body.status is not None:
        if row.status == ScheduleStatus.ENDED and body.status == "active" and "when" not in changes:
            problems.append(_ended())
        changes["status"] = ScheduleStatus(body.status)
    if {"variables", "recipients", "template"} & changes.keys() and not problems:
        variables = changes.get("variables", row.variables)
        recipients = recipients_of(changes.get("recipients", row.recipients))
        template, text = (
            (changes["template"], changes["template_text"])
            if "template" in changes
            else (row.template, row.template_text)
        )
        try:
            await deps.alerts.plan(template, text, variables, recipients)
        except PlanError as err:
            problems.extend(err.problems)
    if problems:
        raise PlanError(problems)
    if "when" in changes and "status" not in changes and row.status == ScheduleStatus.ENDED:
        changes["status"] = ScheduleStatus.ACTIVE  # a new time for a one-shot that already rang
    retimed = "when" in changes or "status" in changes
    if retimed and changes.get("status", row.status) == ScheduleStatus.ACTIVE:
        # A new time, or resumed: the next run from now. What fell before (while paused, or by the old
        # time) is not owed: a restart's catch-up starts here, as for a new schedule.
        now = utcnow()
        changes["next_run_at"] = when_from_json(changes.get("when", row.when)).first_after(now)
        changes["last_planned_at"] = now
    elif "options" in changes:
        changes["next_run_at"] = row.next_run_at  # held again by its new presynthesize_s
    updated = await deps.store.change(row.id, **changes)
    if updated is None:
        raise LookupError(row.id)
    deps.scheduler.add(updated)  # re-armed with its new time, or removed when paused
    return updated


def _ended() -> Problem:
    return Problem("status", "this schedule has ended; give it a new `when` to run it again")


async def delete_schedule(request: web.Request, deps: SchedulesDeps) -> web.Response:
    await remove(await _existing(request, deps), deps)
    return web.Response(status=204)


async def remove(row: ScheduleRow, deps: SchedulesDeps) -> None:
    """Delete the schedule (DELETE /v1/schedules/{id}, the dashboard's Delete)."""
    # Off the clock first: nothing of it fires after this answer.
    deps.scheduler.remove(row.id)
    await deps.store.change(row.id, status=ScheduleStatus.DELETED)
