"""`/v1/people`, `/v1/rotations` (with their overrides), `/v1/escalation-policies` and `GET /v1/oncall`:
who can be paged, in what order, and who is on call now and next (the math: shifts.py)."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from pydantic import ConfigDict, Field

from announcer.api.http import STRING_ID, error, invalid, path_id, path_key, read_model
from announcer.api.schemas import PHONE_EXAMPLE, PHONE_PATTERN
from announcer.deliveries.plan import Problem
from announcer.messages.destinations import DestinationPolicy
from announcer.messages.phones import BadNumber
from announcer.options import TIME_OF_DAY, Strict, WholeNumber
from announcer.shifts import Stretch
from announcer.store.models import utcnow
from announcer.store.oncall import (
    InUse,
    MissingReferences,
    OnCall,
    OncallStore,
    OverrideRow,
    PersonRow,
    PolicyRow,
    RotationRow,
)

# Years 1900 to 2999: far enough for any rotation, near enough that no shift arithmetic leaves datetime's
# range (a rotation's hand-offs are computed years ahead of its start).
_YEAR = r"(19|2[0-9])[0-9]{2}"
_DAY = rf"{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
DATE = rf"^{_DAY}$"
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
MOMENT = rf"^{_DAY}T{_CLOCK}(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"  # with its offset: an instant
ID = STRING_ID.pattern
MAX_MEMBERS = 100
MAX_STEPS = 20
MAX_TARGETS = 10
MAX_REPEAT = 10
MAX_DELAY_S = 86_400
MAX_SHIFT_LENGTH = 1000
_ZONE_DESCRIPTION = "IANA time zone, e.g. Europe/Berlin"


class PersonBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Ada", "phone": PHONE_EXAMPLE, "timezone": "Europe/Berlin"}]}
    )

    name: str = Field(min_length=1, max_length=200)
    phone: str = Field(max_length=40, pattern=PHONE_PATTERN, description="E.164, or national with a region")
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description=_ZONE_DESCRIPTION)


class PersonPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    phone: str | None = Field(default=None, max_length=40, pattern=PHONE_PATTERN)
    timezone: str | None = Field(default=None, min_length=1, max_length=64, description=_ZONE_DESCRIPTION)


class RotationBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "primary",
                    "timezone": "Europe/Berlin",
                    "shift_length": 1,
                    "shift_unit": "weeks",
                    "handoff_time": "09:00",
                    "start_date": "2026-12-07",
                    "members": ["pe_0123456789abcdef01234567"],
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=200)
    timezone: str = Field(min_length=1, max_length=64, description=_ZONE_DESCRIPTION)
    shift_length: WholeNumber = Field(default=1, ge=1, le=MAX_SHIFT_LENGTH)
    shift_unit: Literal["hours", "days", "weeks"] = Field(
        default="weeks",
        description="hours: elapsed time; days and weeks: wall clock (hand-off at the time, DST or not)",
    )
    handoff_time: str = Field(default="09:00", pattern=TIME_OF_DAY, description="HH:MM in `timezone`")
    start_date: str = Field(pattern=DATE, description="the first shift (members[0]) starts this day")
    members: list[Annotated[str, Field(pattern=ID)]] = Field(
        min_length=1, max_length=MAX_MEMBERS, description="person ids, in order (may repeat)"
    )


class RotationPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    timezone: str | None = Field(default=None, min_length=1, max_length=64, description=_ZONE_DESCRIPTION)
    shift_length: WholeNumber | None = Field(default=None, ge=1, le=MAX_SHIFT_LENGTH)
    shift_unit: Literal["hours", "days", "weeks"] | None = None
    handoff_time: str | None = Field(default=None, pattern=TIME_OF_DAY)
    start_date: str | None = Field(default=None, pattern=DATE)
    members: list[Annotated[str, Field(pattern=ID)]] | None = Field(
        default=None, min_length=1, max_length=MAX_MEMBERS
    )


class OverrideBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "person_id": "pe_0123456789abcdef01234567",
                    "starts_at": "2026-12-24T18:00:00+01:00",
                    "ends_at": "2026-12-26T09:00:00+01:00",
                }
            ]
        }
    )

    person_id: str = Field(pattern=ID)
    starts_at: str = Field(pattern=MOMENT, description="ISO-8601 with its offset")
    ends_at: str = Field(pattern=MOMENT, description="ISO-8601 with its offset; after starts_at")


class TargetBody(Strict):
    type: Literal["person", "rotation"]
    id: str = Field(pattern=ID)


class StepBody(Strict):
    delay_s: WholeNumber = Field(ge=1, le=MAX_DELAY_S, description="wait this long for an acknowledgement")
    targets: list[TargetBody] = Field(min_length=1, max_length=MAX_TARGETS)


class PolicyBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "ops",
                    "repeat": 1,
                    "steps": [
                        {
                            "delay_s": 300,
                            "targets": [{"type": "rotation", "id": "ro_0123456789abcdef01234567"}],
                        }
                    ],
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=200)
    steps: list[StepBody] = Field(min_length=1, max_length=MAX_STEPS)
    repeat: WholeNumber = Field(
        default=0, ge=0, le=MAX_REPEAT, description="start again after the last step, this often"
    )


class PolicyPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    steps: list[StepBody] | None = Field(default=None, min_length=1, max_length=MAX_STEPS)
    repeat: WholeNumber | None = Field(default=None, ge=0, le=MAX_REPEAT)


R = TypeVar("R")
MODELS = (PersonBody, PersonPatch, RotationBody, RotationPatch, OverrideBody, PolicyBody, PolicyPatch)


@dataclass(frozen=True)
class OncallDeps:
    store: OncallStore
    destinations: DestinationPolicy  # the same gate alert recipients pass (messages/destinations.py)


# --- checks only the service can make ---------------------------------------------------------------------


def _zone_problems(name: str | None, field: str) -> list[Problem]:
    if name is None:
        return []
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return [Problem(field, f"unknown time zone {name!r}")]
    return []


def _phone(number: str | None, deps: OncallDeps, problems: list[Problem]) -> str | None:
    if number is None:
        return None
    try:
        return deps.destinations.check(number)
    except BadNumber as err:
        problems.append(Problem("phone", str(err)))
        return None


def _date(value: str | None, field: str, problems: list[Problem]) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        problems.append(Problem(field, f"no such day {value!r}"))
        return None


def _moment(value: str, field: str, problems: list[Problem]) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        problems.append(Problem(field, f"no such date and time {value!r}"))
        return None


def _missing(err: MissingReferences) -> web.HTTPException:
    return invalid([Problem(field, reason) for field, reason in err.problems])


def _not_found(what: str, field: str) -> web.HTTPException:
    return error(404, "not_found", f"no such {what}", field=field)


def _found(row: R | None, what: str, field: str) -> R:
    if row is None:
        raise _not_found(what, field)
    return row


async def _deleted(deleting: Awaitable[bool], what: str, field: str) -> web.Response:
    """204 once `deleting` (a store's delete) did; 404 when there was nothing; 409 while it is in use."""
    try:
        done = await deleting
    except InUse as err:
        raise error(409, "in_use", f"this {what} cannot be deleted: it is {err}") from None
    if not done:
        raise _not_found(what, field)
    return web.Response(status=204)


# --- views ------------------------------------------------------------------------------------------------


def _iso(at: datetime | None, zone: ZoneInfo | None = None) -> str | None:
    if at is None:
        return None
    return (at.astimezone(zone) if zone is not None else at).isoformat()


def person_view(p: PersonRow) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "phone": p.phone,
        "timezone": p.timezone,
        "created_at": _iso(p.created_at),
        "updated_at": _iso(p.updated_at),
    }


def rotation_view(r: RotationRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "timezone": r.timezone,
        "shift_length": r.shift_length,
        "shift_unit": r.shift_unit,
        "handoff_time": r.handoff_time,
        "start_date": r.start_date.isoformat(),
        "members": r.members,
        "created_at": _iso(r.created_at),
        "updated_at": _iso(r.updated_at),
    }


def override_view(o: OverrideRow) -> dict[str, Any]:
    return {
        "id": o.id,
        "rotation_id": o.rotation_id,
        "person_id": o.person_id,
        "starts_at": _iso(o.starts_at),
        "ends_at": _iso(o.ends_at),
        "created_at": _iso(o.created_at),
    }


def policy_view(p: PolicyRow) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "repeat": p.repeat,
        "steps": p.steps,
        "created_at": _iso(p.created_at),
        "updated_at": _iso(p.updated_at),
    }


def stretch_view(st: Stretch | None, people: dict[str, PersonRow], zone: ZoneInfo) -> dict[str, Any] | None:
    """Who (id and name; null: nobody), since and until when (null: always, for good), in the rotation's
    zone, and whether an override put them there."""
    if st is None:
        return None
    person = None
    if st.person_id is not None:
        known = people.get(st.person_id)
        person = {"id": st.person_id, "name": known.name if known else None}
    return {
        "person": person,
        "since": _iso(st.since, zone),
        "until": _iso(st.until, zone),
        "override": st.override,
    }


def oncall_view(o: OnCall) -> dict[str, Any]:
    zone = ZoneInfo(o.rotation.timezone)
    return {
        "id": o.rotation.id,
        "name": o.rotation.name,
        "timezone": o.rotation.timezone,
        "now": stretch_view(o.now, o.people, zone),
        "next": stretch_view(o.next, o.people, zone),
    }


# --- people -----------------------------------------------------------------------------------------------


async def create_person(request: web.Request, deps: OncallDeps) -> web.Response:
    body = await read_model(request, PersonBody)
    problems = _zone_problems(body.timezone, "timezone")
    phone = _phone(body.phone, deps, problems)
    if problems or phone is None:
        raise invalid(problems)
    row = await deps.store.create_person(name=body.name, phone=phone, timezone=body.timezone)
    return web.json_response(person_view(row), status=201)


async def list_people(request: web.Request, deps: OncallDeps) -> web.Response:
    return web.json_response({"people": [person_view(p) for p in await deps.store.people()]})


async def _person(request: web.Request, deps: OncallDeps) -> PersonRow:
    return _found(await deps.store.person(path_key(request, "person_id")), "person", "person_id")


async def get_person(request: web.Request, deps: OncallDeps) -> web.Response:
    return web.json_response(person_view(await _person(request, deps)))


async def patch_person(request: web.Request, deps: OncallDeps) -> web.Response:
    row = await _person(request, deps)
    body = await read_model(request, PersonPatch)
    problems = _zone_problems(body.timezone, "timezone")
    phone = _phone(body.phone, deps, problems)
    if problems:
        raise invalid(problems)
    changes = {
        k: v
        for k, v in {"name": body.name, "phone": phone, "timezone": body.timezone}.items()
        if v is not None
    }
    updated = await deps.store.update_person(row.id, **changes)
    return web.json_response(person_view(_found(updated, "person", "person_id")))


async def delete_person(request: web.Request, deps: OncallDeps) -> web.Response:
    deleting = deps.store.delete_person(path_key(request, "person_id"))
    return await _deleted(deleting, "person", "person_id")


# --- rotations --------------------------------------------------------------------------------------------


def _rotation_changes(body: RotationBody | RotationPatch) -> dict[str, Any]:
    """The fields given, checked beyond the schema (zone, day); 422 naming each problem."""
    problems = _zone_problems(body.timezone, "timezone")
    start = _date(body.start_date, "start_date", problems)
    if problems:
        raise invalid(problems)
    given = body.model_dump(exclude_none=True)
    if start is not None:
        given["start_date"] = start
    return given


async def create_rotation(request: web.Request, deps: OncallDeps) -> web.Response:
    body = await read_model(request, RotationBody)
    try:
        row = await deps.store.create_rotation(**_rotation_changes(body))
    except MissingReferences as err:
        raise _missing(err) from None
    return web.json_response(rotation_view(row), status=201)


async def list_rotations(request: web.Request, deps: OncallDeps) -> web.Response:
    return web.json_response({"rotations": [rotation_view(r) for r in await deps.store.rotations()]})


async def _rotation(request: web.Request, deps: OncallDeps) -> RotationRow:
    return _found(await deps.store.rotation(path_key(request, "rotation_id")), "rotation", "rotation_id")


async def get_rotation(request: web.Request, deps: OncallDeps) -> web.Response:
    row = await _rotation(request, deps)
    view = rotation_view(row)
    found = await deps.store.oncall(utcnow(), row.id)
    if not found:
        raise _not_found("rotation", "rotation_id")
    zone = ZoneInfo(row.timezone)
    view["now"] = stretch_view(found[0].now, found[0].people, zone)
    view["next"] = stretch_view(found[0].next, found[0].people, zone)
    return web.json_response(view)


async def patch_rotation(request: web.Request, deps: OncallDeps) -> web.Response:
    row = await _rotation(request, deps)
    body = await read_model(request, RotationPatch)
    try:
        updated = await deps.store.update_rotation(row.id, **_rotation_changes(body))
    except MissingReferences as err:
        raise _missing(err) from None
    return web.json_response(rotation_view(_found(updated, "rotation", "rotation_id")))


async def delete_rotation(request: web.Request, deps: OncallDeps) -> web.Response:
    deleting = deps.store.delete_rotation(path_key(request, "rotation_id"))
    return await _deleted(deleting, "rotation", "rotation_id")


# --- overrides --------------------------------------------------------------------------------------------


async def create_override(request: web.Request, deps: OncallDeps) -> web.Response:
    rotation_id = path_key(request, "rotation_id")
    body = await read_model(request, OverrideBody)
    problems: list[Problem] = []
    starts_at = _moment(body.starts_at, "starts_at", problems)
    ends_at = _moment(body.ends_at, "ends_at", problems)
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        problems.append(Problem("ends_at", "must be after starts_at"))
    if problems or starts_at is None or ends_at is None:
        raise invalid(problems)
    try:
        row = await deps.store.add_override(
            rotation_id, person_id=body.person_id, starts_at=starts_at, ends_at=ends_at
        )
    except MissingReferences as err:
        raise _missing(err) from None
    if row is None:
        raise _not_found("rotation", "rotation_id")
    return web.json_response(override_view(row), status=201)


async def list_overrides(request: web.Request, deps: OncallDeps) -> web.Response:
    row = await _rotation(request, deps)
    return web.json_response({"overrides": [override_view(o) for o in await deps.store.overrides(row.id)]})


async def delete_override(request: web.Request, deps: OncallDeps) -> web.Response:
    rotation_id = path_key(request, "rotation_id")
    deleting = deps.store.delete_override(rotation_id, path_id(request, "override_id"))
    return await _deleted(deleting, "override", "override_id")


# --- escalation policies ----------------------------------------------------------------------------------


async def create_policy(request: web.Request, deps: OncallDeps) -> web.Response:
    body = await read_model(request, PolicyBody)
    steps = [s.model_dump() for s in body.steps]
    try:
        row = await deps.store.create_policy(name=body.name, steps=steps, repeat=body.repeat)
    except MissingReferences as err:
        raise _missing(err) from None
    return web.json_response(policy_view(row), status=201)


async def list_policies(request: web.Request, deps: OncallDeps) -> web.Response:
    return web.json_response({"escalation_policies": [policy_view(p) for p in await deps.store.policies()]})


async def _policy(request: web.Request, deps: OncallDeps) -> PolicyRow:
    return _found(await deps.store.policy(path_key(request, "policy_id")), "escalation policy", "policy_id")


async def get_policy(request: web.Request, deps: OncallDeps) -> web.Response:
    return web.json_response(policy_view(await _policy(request, deps)))


async def patch_policy(request: web.Request, deps: OncallDeps) -> web.Response:
    row = await _policy(request, deps)
    body = await read_model(request, PolicyPatch)
    changes: dict[str, Any] = body.model_dump(exclude_none=True)
    try:
        updated = await deps.store.update_policy(row.id, **changes)
    except MissingReferences as err:
        raise _missing(err) from None
    return web.json_response(policy_view(_found(updated, "escalation policy", "policy_id")))


async def delete_policy(request: web.Request, deps: OncallDeps) -> web.Response:
    deleting = deps.store.delete_policy(path_key(request, "policy_id"))
    return await _deleted(deleting, "escalation policy", "policy_id")


# --- who is on call ---------------------------------------------------------------------------------------


async def get_oncall(request: web.Request, deps: OncallDeps) -> web.Response:
    """Every rotation at `?at=` (ISO-8601 with its offset; default now): who is on call and who is next.
    Not in that form: 400, as the document's pattern says; in it, but no such day (30 February): 422."""
    at = utcnow()
    given = request.query.get("at")
    if given is not None:
        if not re.match(MOMENT, given):
            raise error(
                400,
                "invalid_query",
                "at must be ISO-8601 with an offset, e.g. 2026-12-07T09:00:00+01:00 (years 1900 to 2999)",
                field="at",
            )
        problems: list[Problem] = []
        parsed = _moment(given, "at", problems)
        if parsed is None:
            raise invalid(problems)
        at = parsed
    found = await deps.store.oncall(at)
    return web.json_response({"at": at.isoformat(), "rotations": [oncall_view(o) for o in found]})


ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/people", create_person),
    ("GET", "/v1/people", list_people),
    ("GET", "/v1/people/{person_id}", get_person),
    ("PATCH", "/v1/people/{person_id}", patch_person),
    ("DELETE", "/v1/people/{person_id}", delete_person),
    ("POST", "/v1/rotations", create_rotation),
    ("GET", "/v1/rotations", list_rotations),
    ("GET", "/v1/rotations/{rotation_id}", get_rotation),
    ("PATCH", "/v1/rotations/{rotation_id}", patch_rotation),
    ("DELETE", "/v1/rotations/{rotation_id}", delete_rotation),
    ("POST", "/v1/rotations/{rotation_id}/overrides", create_override),
    ("GET", "/v1/rotations/{rotation_id}/overrides", list_overrides),
    ("DELETE", "/v1/rotations/{rotation_id}/overrides/{override_id}", delete_override),
    ("POST", "/v1/escalation-policies", create_policy),
    ("GET", "/v1/escalation-policies", list_policies),
    ("GET", "/v1/escalation-policies/{policy_id}", get_policy),
    ("PATCH", "/v1/escalation-policies/{policy_id}", patch_policy),
    ("DELETE", "/v1/escalation-policies/{policy_id}", delete_policy),
    ("GET", "/v1/oncall", get_oncall),
]


def add_routes(app: web.Application, deps: web.AppKey[OncallDeps]) -> None:
    """Register every on-call route, each handed the deps the app holds under `deps`."""
    for method, path, handler in ROUTES:

        async def handle(request: web.Request, handler: Any = handler) -> web.StreamResponse:
            response: web.StreamResponse = await handler(request, request.app[deps])
            return response

        app.router.add_route(method, path, handle)
