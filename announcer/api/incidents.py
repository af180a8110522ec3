"""`/v1/incidents`: the incidents, newest first (by state), one with its timeline and its pages (each
step, who was called and how each call ended), and acknowledge / resolve by API (how: `api`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import Field

from announcer.api.http import STRING_ID, error, int_query, path_key, read_model
from announcer.options import Strict
from announcer.paging.incidents import IncidentDetail, IncidentService
from announcer.store.incidents import EventRow, IncidentRow, PageRow, WrongState
from announcer.store.models import IncidentState

INCIDENTS_PAGE = 25
MAX_INCIDENTS_PAGE = 200
STATES = tuple(s.value for s in IncidentState)


class IncidentAction(Strict):
    """An acknowledgement or a resolution by API: the body is optional; `by` names who, for the timeline."""

    by: str | None = Field(
        default=None, min_length=1, max_length=200, description="who acted (the timeline's who)"
    )


async def _by(request: web.Request) -> str | None:
    """The optional body's `by` (no body: nobody named; the timeline says how: api)."""
    if not request.can_read_body:
        return None
    return (await read_model(request, IncidentAction)).by


@dataclass
class IncidentsDeps:
    incidents: IncidentService


def _at(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def incident_json(row: IncidentRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "integration_id": row.integration_id,
        "policy_id": row.policy_id,
        "dedup_key": row.dedup_key,
        "state": row.state,
        "title": row.title,
        "summary": row.summary,
        "severity": row.severity,
        "alert_count": row.alert_count,
        "source_url": row.source_url,
        "round": row.round,
        "step": row.step,
        "next_step_at": _at(row.next_step_at),
        "firing_since": _at(row.firing_since),
        "created_at": _at(row.created_at),
        "updated_at": _at(row.updated_at),
        "acknowledged_at": _at(row.acknowledged_at),
        "acknowledged_by": row.acknowledged_by,
        "resolved_at": _at(row.resolved_at),
    }


def event_json(event: EventRow) -> dict[str, Any]:
    return {
        "at": _at(event.at),
        "kind": event.kind,
        "who": event.who,
        "how": event.how,
        "detail": event.detail,
    }


def page_json(page: PageRow) -> dict[str, Any]:
    return {
        "round": page.round,
        "step": page.step,
        "alert_id": page.alert_id,
        "created_at": _at(page.created_at),
        "people": [
            {"name": p.name, "phone": p.phone, "state": p.state, "outcome": p.state if p.final else None}
            for p in page.people
        ]
        or [
            {"name": t.get("name"), "phone": t.get("phone"), "state": None, "outcome": None}
            for t in page.targets
        ],
    }


def detail_json(detail: IncidentDetail) -> dict[str, Any]:
    return {
        **incident_json(detail.incident),
        "details": detail.incident.details,
        "events": [event_json(e) for e in detail.events],
        "pages": [page_json(p) for p in detail.pages],
    }


async def list_incidents(request: web.Request, deps: IncidentsDeps) -> web.Response:
    """Newest first, a page at a time (`before`: the last id of the page before), `state` to filter."""
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise error(400, "invalid_query", f"state must be one of {', '.join(STATES)}", field="state")
    before = request.query.get("before")
    if before is not None and not STRING_ID.match(before):
        raise error(400, "invalid_query", "before must be an incident's id", field="before")
    limit = int_query(request, "limit", INCIDENTS_PAGE, 1, MAX_INCIDENTS_PAGE)
    rows = await deps.incidents.recent(
        state=IncidentState(state) if state else None, before=before, limit=limit
    )
    return web.json_response(
        {
            "incidents": [incident_json(r) for r in rows],
            "next_before": rows[-1].id if len(rows) == limit else None,
        }
    )


async def get_incident(request: web.Request, deps: IncidentsDeps) -> web.Response:
    detail = await deps.incidents.detail(path_key(request, "incident_id"))
    if detail is None:
        raise error(404, "not_found", "no such incident")
    return web.json_response(detail_json(detail))


async def acknowledge_incident(request: web.Request, deps: IncidentsDeps) -> web.Response:
    return await _act(request, deps.incidents.acknowledge)


async def resolve_incident(request: web.Request, deps: IncidentsDeps) -> web.Response:
    return await _act(request, deps.incidents.resolve)


async def _act(request: web.Request, action: Callable[..., Awaitable[IncidentRow]]) -> web.Response:
    """An acknowledgement or a resolution by API (how: api; who: the body's `by`)."""
    incident_id = path_key(request, "incident_id")
    try:
        row = await action(incident_id, who=await _by(request), how="api")
    except LookupError:
        raise error(404, "not_found", "no such incident") from None
    except WrongState as err:
        raise error(409, "incident_state", f"the incident is already {err.state}", state=err.state) from None
    return web.json_response(incident_json(row))
