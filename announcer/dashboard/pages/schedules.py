"""Schedules: the list with each one's next run, a new schedule (once or by cron, in a time zone, with
quiet hours; the same fields as POST /v1/schedules), one schedule's page with its next runs and past
occurrences (what GET /v1/schedules/{id} shows), and pause, resume, delete. Created, changed and
deleted by the functions the /v1 handlers run (api/schedules.py), validated by the same body models."""

from __future__ import annotations

import contextlib
import csv
import io
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from announcer.api.http import STRING_ID
from announcer.api.schedules import SchedulesDeps, change, create, remove, view_of
from announcer.api.schemas import ScheduleBody, SchedulePatch, problems_of
from announcer.dashboard.message_form import (
    PASTED,
    SHOWN_ROWS,
    FormData,
    FormError,
    MessageForm,
    Placed,
    columns_of,
    has_timezones,
    recipient_columns,
    template_names,
    template_variables,
)
from announcer.dashboard.options_form import OptionsError, OptionsForm
from announcer.dashboard.routes import Page, Routes
from announcer.deliveries.plan import PlanError, Problem
from announcer.messages.workers import RenderBusy
from announcer.options import ScheduleOptions
from announcer.recipients import Recipient
from announcer.scheduling.when import when_from_json, zone_info
from announcer.store.models import ScheduleStatus, utcnow
from announcer.store.schedules import ScheduleRow

routes = Routes()

SCHEDULES_PAGE = 50  # a page of the list (1,000 rows are no page to read on a phone, nor fast to make)
MAX_START = 10**9
NEXT_TIMES = 5  # as GET /v1/schedules/{id}'s next_run_times
BUSY = "The service is busy rendering other messages; try again shortly."
# The form's own fields besides the message (dashboard/message_form.py), kept as typed.
WHEN_FIELDS = (
    "name",
    "repeat",
    "at",
    "cron",
    "timezone",
    "start",
    "end",
    "quiet_start",
    "quiet_end",
    "misfire",
)
# The edit form (PATCH /v1/schedules/{id}'s fields): the when fields above, variables and recipients.
WHEN_PART = ("repeat", "at", "cron", "timezone", "start", "end")
REMINDER_PART = ("quiet_start", "quiet_end", "misfire")
EDIT_FIELDS = ("name", "template", "template_text", *WHEN_PART, *REMINDER_PART, "variables", "recipients")


def _deps(page: Page) -> SchedulesDeps:
    return page.services.schedules


@routes.get("/schedules", name="schedules")
async def schedules_page(request: web.Request, page: Page) -> web.StreamResponse:
    fresh = dict.fromkeys(WHEN_FIELDS, "") | {"repeat": "once", "timezone": "UTC", "misfire": "run"}
    return await _listing(page, MessageForm(), fresh)


@routes.post("/schedules", name="schedule_create")
async def schedule_create(request: web.Request, page: Page) -> web.StreamResponse:
    data = await page.form()
    values = {name: _text(data, name).strip() for name in WHEN_FIELDS}
    form = MessageForm.read(data)
    try:
        message, recipients = form.body(schedule=True)
    except FormError as err:
        return await _listing(page, form, values, err.recipients, err.problems, status=422)
    try:
        body = ScheduleBody.model_validate({**message, **_schedule_part(values, message)})
    except ValidationError as err:
        return await _listing(page, form, values, recipients, problems_of(err), status=422)
    try:
        row, _ = await create(body, _deps(page))
    except PlanError as err:
        return await _listing(page, form, values, recipients, err.problems, status=422)
    except RenderBusy:
        raise page.fail(503, BUSY) from None
    return page.redirect(page.url("schedule", schedule_id=row.id))


@routes.get("/schedules/{schedule_id}", name="schedule")
async def schedule_page(request: web.Request, page: Page) -> web.StreamResponse:
    row = await _existing(page)
    upcoming: list[datetime] = []
    if row.status == ScheduleStatus.ACTIVE:
        upcoming = when_from_json(row.when).next_times(utcnow(), NEXT_TIMES)
    recipients = [
        Recipient(r["phone"], dict(r.get("variables") or {}), r.get("name"), r.get("timezone"))
        for r in row.recipients
    ]
    return page.render(
        "schedule.html",
        s=row,
        view=view_of(row),
        upcoming=upcoming,
        occurrences=await _deps(page).store.occurrences(row.id),
        recipients=recipients,
        variable_columns=columns_of(recipients),
        timezones=has_timezones(recipients),
        options=row.options.model_dump(mode="json", exclude_defaults=True),
        placed=Placed(),
    )


@routes.post("/schedules/{schedule_id}/pause", name="schedule_pause")
async def schedule_pause(request: web.Request, page: Page) -> web.StreamResponse:
    return await _set_status(page, SchedulePatch(status="paused"))


@routes.post("/schedules/{schedule_id}/resume", name="schedule_resume")
async def schedule_resume(request: web.Request, page: Page) -> web.StreamResponse:
    return await _set_status(page, SchedulePatch(status="active"))


@routes.get("/schedules/{schedule_id}/delete", name="schedule_delete_ask")
async def schedule_delete_ask(request: web.Request, page: Page) -> web.StreamResponse:
    """A delete is asked once more: on a phone, Delete sits a thumb's width from Pause."""
    return page.render("schedule_delete.html", s=await _existing(page))


@routes.post("/schedules/{schedule_id}/delete", name="schedule_delete")
async def schedule_delete(request: web.Request, page: Page) -> web.StreamResponse:
    row = await _existing(page)
    await remove(row, _deps(page))
    return page.redirect(page.url("schedules", {"deleted": row.name or row.id}))


@routes.get("/schedules/{schedule_id}/edit", name="schedule_edit")
async def schedule_edit(request: web.Request, page: Page) -> web.StreamResponse:
    row = await _existing(page)
    return _edit_form(page, row, _edit_values(row))


@routes.post("/schedules/{schedule_id}/edit", name="schedule_change")
async def schedule_change(request: web.Request, page: Page) -> web.StreamResponse:
    """What PATCH /v1/schedules/{id} does, for the fields the person changed: each field is compared with
    what the form was filled with, and only a changed one goes into the patch (a schedule changed
    meanwhile elsewhere keeps what this form did not touch; a field not posted is not changed)."""
    row = await _existing(page)
    data = await page.form()
    before = _edit_values(row)
    # a browser sends a textarea's lines ending in CRLF: an untouched field must compare equal
    # a field not posted at all is one not edited, as in a PATCH
    values = {
        name: _text(data, name).replace("\r\n", "\n").strip() if name in data else before[name]
        for name in EDIT_FIELDS
    }
    form = MessageForm.read(data)
    opts = form.options if "options_shown" in data else None  # None: shown as stored
    form.variables = values["variables"]
    if not form.unread and form.source == PASTED:
        form.recipients = values["recipients"]
    patch: dict[str, Any] = {}
    if values["name"] != before["name"]:
        patch["name"] = values["name"]
    if any(values[name] != before[name] for name in WHEN_PART):
        patch["when"] = _when_part(values)
    recipients: list[Recipient] = []
    problems: list[Problem] = list(form.unread)
    message = (values["template"], values["template_text"])
    if message != (before["template"], before["template_text"]):
        if all(message) or not any(message):
            problems.append(Problem("template", "pick a template or write one (only one)"))
        else:
            patch["template" if values["template"] else "template_text"] = values["template"] or message[1]
    if "options_shown" in data or any(values[n] != before[n] for n in REMINDER_PART):
        try:
            # without the options' fields (a post made by hand) the stored options are kept
            given = (
                form.options.options(schedule=True)
                if "options_shown" in data
                else row.options.model_dump(mode="json", exclude={"quiet_hours", "misfire"})
            )
            options = _reminder_options(given, values)
            if _other_options(options, row.options):
                patch["options"] = options
        except OptionsError as err:
            problems += err.problems
    if values["variables"] != before["variables"]:
        try:
            patch["variables"] = form.shared_variables()
        except FormError as err:
            problems += err.problems
    if not form.unread and (form.source != PASTED or values["recipients"] != before["recipients"]):
        try:
            recipients = form.recipient_list()
            patch["recipients"] = [r.as_json() for r in recipients]
        except FormError as err:
            problems += err.problems
    if problems:
        return _edit_form(page, row, values, opts, recipients, problems, status=422)
    if not patch:
        return page.redirect(page.url("schedule", schedule_id=row.id))
    try:
        body = SchedulePatch.model_validate(patch)
    except ValidationError as err:
        return _edit_form(page, row, values, opts, recipients, problems_of(err), status=422)
    try:
        await change(row, body, _deps(page))
    except PlanError as err:
        return _edit_form(page, row, values, opts, recipients, err.problems, status=422)
    except LookupError:
        raise page.fail(404, "No such schedule.") from None
    except RenderBusy:
        raise page.fail(503, BUSY) from None
    return page.redirect(page.url("schedule", schedule_id=row.id))


def _edit_values(row: ScheduleRow) -> dict[str, str]:
    """The edit form filled from the stored schedule: times as wall-clock times in its own zone (what
    the form's fields mean), variables one `name=value` a line, recipients as numbers or a CSV."""
    when = row.when
    zone = str(when.get("timezone") or "UTC")
    quiet = row.options.quiet_hours
    values = dict.fromkeys(EDIT_FIELDS, "")
    values |= {
        "name": row.name or "",
        "template": row.template or "",
        "template_text": row.template_text or "",
        "quiet_start": quiet.start if quiet else "",
        "quiet_end": quiet.end if quiet else "",
        "misfire": row.options.misfire,
        "repeat": "cron" if when.get("cron") else "once",
        "cron": str(when.get("cron") or ""),
        "timezone": zone,
        "variables": "\n".join(f"{k}={v}" for k, v in row.variables.items()),
        "recipients": _recipients_text(row.recipients),
    }
    for name in ("at", "start", "end"):
        if when.get(name):
            values[name] = _wall_clock(str(when[name]), zone)
    return values


def _wall_clock(moment: str, zone: str) -> str:
    local = datetime.fromisoformat(moment)
    with contextlib.suppress(KeyError, ValueError):  # an unknown zone: shown as stored
        local = local.astimezone(zone_info(zone))
    return local.strftime("%Y-%m-%dT%H:%M:%S" if local.second else "%Y-%m-%dT%H:%M")


def _recipients_text(recipients: list[dict[str, Any]]) -> str:
    """Plain numbers when that is all there is; else a CSV as `send --file` reads it."""
    columns: dict[str, None] = {}
    for r in recipients:
        columns.update(dict.fromkeys(r.get("variables") or {}))
    if not columns and not any(r.get("name") or r.get("timezone") for r in recipients):
        return "\n".join(str(r["phone"]) for r in recipients)
    fixed = ["phone"] + [c for c in ("name", "timezone") if any(r.get(c) for r in recipients)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*fixed, *columns])
    for r in recipients:
        variables = r.get("variables") or {}
        writer.writerow([r.get(c) or "" for c in fixed] + [variables.get(c, "") for c in columns])
    return out.getvalue().rstrip("\n")


def _edit_form(
    page: Page,
    row: ScheduleRow,
    values: dict[str, str],
    opts: OptionsForm | None = None,
    recipients: list[Recipient] | None = None,
    problems: list[Problem] | None = None,
    status: int = 200,
) -> web.Response:
    recipients = recipients or []
    return page.render(
        "schedule_edit.html",
        status=status,
        s=row,
        values=values,
        templates=template_names(page.services.settings.announcer_templates_dir),
        opts=opts or OptionsForm.of(row.options),
        recipients=recipients[:SHOWN_ROWS],
        more=max(0, len(recipients) - SHOWN_ROWS),
        variable_columns=columns_of(recipients),
        timezones=has_timezones(recipients),
        shown_columns=recipient_columns(recipients),
        placed=Placed.of(problems or []),
    )


async def _set_status(page: Page, patch: SchedulePatch) -> web.StreamResponse:
    row = await _existing(page)
    try:
        await change(row, patch, _deps(page))
    except PlanError as err:
        raise page.fail(409, "; ".join(p.reason for p in err.problems)) from None
    except LookupError:
        raise page.fail(404, "No such schedule.") from None
    except RenderBusy:
        raise page.fail(503, BUSY) from None
    back = _text(await page.form(), "back")
    if back == "schedule":
        return page.redirect(page.url("schedule", schedule_id=row.id))
    return page.redirect(page.url("schedules"))


async def _existing(page: Page) -> ScheduleRow:
    schedule_id = page.request.match_info["schedule_id"]
    row = await _deps(page).store.get(schedule_id) if STRING_ID.match(schedule_id) else None
    if row is None or row.status == ScheduleStatus.DELETED:
        raise page.fail(404, "No such schedule.")
    return row


def _start(page: Page) -> int:
    """The list's page: `?start=` the index of its first schedule (a form's answer shows the first)."""
    value = page.request.query.get("start", "0") if page.request.method == "GET" else "0"
    if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > MAX_START:
        raise page.fail(400, "start must be a schedule's index (a whole number).")
    return int(value)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _schedule_part(values: dict[str, str], message: dict[str, Any]) -> dict[str, Any]:
    """The form's `when`, name and reminder options as POST /v1/schedules takes them; an empty field is
    one not given (the API then names what is missing)."""
    options = _reminder_options(dict(message.get("options", {})), values)
    return {"name": values["name"] or None, "when": _when_part(values), "options": options}


def _reminder_options(options: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """`options` with the form's quiet hours and misfire (fields of their own on the form)."""
    options = dict(options)
    if values["quiet_start"] or values["quiet_end"]:
        quiet = {"start": values["quiet_start"], "end": values["quiet_end"]}
        options["quiet_hours"] = {k: v for k, v in quiet.items() if v}
    if values["misfire"]:
        options["misfire"] = values["misfire"]
    return options


def _other_options(options: dict[str, Any], stored: ScheduleOptions) -> bool:
    """Whether the form's options differ from the stored ones (options that do not read differ: the
    patch's validation then names what is wrong)."""
    try:
        return ScheduleOptions.model_validate(options) != stored
    except ValidationError:
        return True


def _when_part(values: dict[str, str]) -> dict[str, Any]:
    """The form's `when` as the API takes it (create and edit)."""
    when: dict[str, Any] = {}
    if values["repeat"] == "cron":
        when["cron"] = values["cron"] or None
        when["start"] = values["start"] or None
        when["end"] = values["end"] or None
    else:
        when["at"] = values["at"] or None
    when["timezone"] = values["timezone"] or None
    return {k: v for k, v in when.items() if v is not None}


async def _listing(
    page: Page,
    form: MessageForm,
    values: dict[str, str],
    recipients: list[Recipient] | None = None,
    problems: list[Problem] | None = None,
    status: int = 200,
) -> web.Response:
    start = _start(page)
    rows = await _deps(page).store.listing(offset=start, limit=SCHEDULES_PAGE + 1)
    recipients = recipients or []
    return page.render(
        "schedules.html",
        status=status,
        schedules=[(row, view_of(row)) for row in rows[:SCHEDULES_PAGE]],
        start=start,
        following=start + SCHEDULES_PAGE if len(rows) > SCHEDULES_PAGE else None,
        previous=max(0, start - SCHEDULES_PAGE) if start else None,
        deleted=page.request.query.get("deleted"),
        form=form,
        values=values,
        templates=template_names(page.services.settings.announcer_templates_dir),
        recipients=recipients[:SHOWN_ROWS],
        more=max(0, len(recipients) - SHOWN_ROWS),
        variable_columns=columns_of(recipients),
        timezones=has_timezones(recipients),
        shown_columns=recipient_columns(recipients),
        placed=Placed.of(problems or []),
        variables=template_variables(
            page.services.settings.announcer_templates_dir, form.template, form.template_text
        ),
    )
