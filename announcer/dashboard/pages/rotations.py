"""Rotations: each one with who is on call now (since and until when, an override marked) and who is next;
a rotation's page with its members in order, its next hand-offs (announcer/shifts.py's math), its
overrides, and a form to add one (a person, from, until; read in the rotation's zone) or remove one. Read
and changed through the same on-call store as /v1/rotations and /v1/oncall."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from announcer.api.http import STRING_ID
from announcer.dashboard.routes import Page, Routes
from announcer.deliveries.plan import Problem
from announcer.shifts import local_instant
from announcer.store.models import MAX_INT
from announcer.store.oncall import MissingReferences, PersonRow, RotationRow, rotation_math

routes = Routes()

HANDOFFS = 7  # the upcoming hand-offs a rotation's page lists
MAX_MOMENT_CHARS = 40


@dataclass(frozen=True)
class Handoff:
    at: datetime
    scheduled: str | None  # the person the rotation hands on to (an id)
    on_call: str | None  # who is on call then, an override first (an id)


def _rotation_id(page: Page) -> str:
    value = page.request.match_info["rotation_id"]
    if not STRING_ID.match(value):
        raise page.fail(404, "No such rotation.")
    return value


@routes.get("/rotations", name="rotations")
async def rotations_list(request: web.Request, page: Page) -> web.StreamResponse:
    store = page.services.oncall
    oncall = await store.oncall(datetime.now(UTC))
    people = {p.id: p for p in await store.people()}
    return page.render(
        "rotations.html", oncall=oncall, name_of=functools.partial(person_name, people), local=local
    )


async def _rotation(page: Page) -> RotationRow:
    row = await page.services.oncall.rotation(_rotation_id(page))
    if row is None:
        raise page.fail(404, "No such rotation.")
    return row


async def _rotation_page(
    page: Page,
    row: RotationRow,
    *,
    values: dict[str, str] | None = None,
    problems: list[Problem] | None = None,
    status: int = 200,
) -> web.Response:
    store = page.services.oncall
    now = datetime.now(UTC)
    overrides = await store.overrides(row.id)
    people = {p.id: p for p in await store.people()}
    found = await store.oncall(now, row.id)
    oncall = found[0] if found else None
    shifts = rotation_math(row, overrides)
    first = shifts.shift_index(now) + 1
    handoffs = (
        [
            Handoff(shifts.handoff_at(k), shifts.scheduled(k), shifts.on_call(shifts.handoff_at(k)))
            for k in range(first, first + HANDOFFS)
        ]
        if row.members
        else []
    )
    by_field: dict[str, list[str]] = {}
    for p in problems or []:
        by_field.setdefault(p.field, []).append(p.reason)
    return page.render(
        "rotation.html",
        status=status,
        rotation=row,
        oncall=oncall,
        people=people,
        handoffs=handoffs,
        overrides=[o for o in overrides if o.ends_at > now],
        past=sum(1 for o in overrides if o.ends_at <= now),
        values=values or {},
        problems=problems or [],
        by_field=by_field,
        name_of=functools.partial(person_name, people),
        local=local,
    )


@routes.get("/rotations/{rotation_id}", name="rotation")
async def rotation_page(request: web.Request, page: Page) -> web.StreamResponse:
    return await _rotation_page(page, await _rotation(page))


def _moment(values: dict[str, str], name: str, zone: ZoneInfo, problems: list[Problem]) -> datetime | None:
    """A form's date and time: local to the rotation (a datetime-local input's value), or with an offset."""
    value = values.get(name, "")
    if not value:
        problems.append(Problem(name, "is required"))
        return None
    try:
        if len(value) > MAX_MOMENT_CHARS:
            raise ValueError
        given = datetime.fromisoformat(value)
    except ValueError:
        problems.append(Problem(name, f"no such date and time {value[:MAX_MOMENT_CHARS]!r}"))
        return None
    if given.tzinfo is None:  # the rotation's wall clock (a time the day skips: the jump's moment)
        return local_instant(given.date(), given.time(), zone)
    return given


def _override_form(form: Any) -> dict[str, str]:
    return {
        name: value.strip() if isinstance(value := form.get(name), str) else ""
        for name in ("person_id", "starts_at", "ends_at")
    }


@routes.post("/rotations/{rotation_id}/overrides", name="rotation_override_add")
async def add_override(request: web.Request, page: Page) -> web.StreamResponse:
    row = await _rotation(page)
    values = _override_form(await page.form())
    zone = ZoneInfo(row.timezone)
    problems: list[Problem] = []
    if not values["person_id"]:
        problems.append(Problem("person_id", "pick a person"))
    elif (
        not STRING_ID.match(values["person_id"])
        or await page.services.oncall.person(values["person_id"]) is None
    ):
        problems.append(Problem("person_id", "no such person"))  # checked now too: every problem at once
    starts_at = _moment(values, "starts_at", zone, problems)
    ends_at = _moment(values, "ends_at", zone, problems)
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        problems.append(Problem("ends_at", "must be after starts_at"))
    if not problems:
        assert starts_at is not None and ends_at is not None
        try:
            added = await page.services.oncall.add_override(
                row.id, person_id=values["person_id"], starts_at=starts_at, ends_at=ends_at
            )
        except MissingReferences as err:
            problems = [Problem(field, reason) for field, reason in err.problems]
        else:
            if added is None:  # deleted meanwhile
                raise page.fail(404, "No such rotation.")
            return page.redirect(page.url("rotation", rotation_id=row.id))
    return await _rotation_page(page, row, values=values, problems=problems, status=422)


@routes.post("/rotations/{rotation_id}/overrides/{override_id}/remove", name="rotation_override_remove")
async def remove_override(request: web.Request, page: Page) -> web.StreamResponse:
    rotation_id = _rotation_id(page)
    value = request.match_info["override_id"]
    if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > MAX_INT:
        raise page.fail(404, "No such override.")
    if not await page.services.oncall.delete_override(rotation_id, int(value)):
        raise page.fail(404, "No such override.")
    return page.redirect(page.url("rotation", rotation_id=rotation_id))


def local(at: datetime | None, timezone: str) -> str:
    """An instant on the rotation's wall clock (where its hand-offs are set), with the zone's abbreviation."""
    if at is None:
        return "—"
    return at.astimezone(ZoneInfo(timezone)).strftime("%a %Y-%m-%d %H:%M %Z")


def person_name(people: dict[str, PersonRow], person_id: str | None) -> str:
    """A person id as the pages show it: their name, or what happened to them."""
    if person_id is None:
        return "nobody"
    person = people.get(person_id)
    return person.name if person is not None else f"{person_id} (deleted)"
