"""Incidents: the list, newest first, filtered by state and live (htmx polls it, so a new incident and a
state change show without a reload), and one incident's page: its timeline (who did what, how, when), the
pages of each step (who was called, each call's outcome, a link to the call), the source's labels and
annotations, and Acknowledge / Resolve (how: dashboard). Read and acted on through the same incident
service as /v1/incidents."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from announcer.api.http import STRING_ID
from announcer.dashboard.routes import Page, Routes
from announcer.paging.incidents import IncidentDetail
from announcer.store.alerts import DeliveryView
from announcer.store.incidents import PageRow, WrongState
from announcer.store.models import IncidentState

routes = Routes()

INCIDENTS_PAGE = 25
PEOPLE_PER_PAGE = 50  # a step's page calls shown (a step names a few people)
POLL = "every 1s"  # the list, and an open incident's page, ask for themselves again this often
STATES = ("all", *(s.value for s in IncidentState))
WHO = HOW = "dashboard"  # who and how a button's acknowledgement or resolution is recorded as


@dataclass(frozen=True)
class StepPage:
    """One step's page with its calls as the alert page shows them (state, call link)."""

    page: PageRow
    calls: list[DeliveryView]


def _incident_id(page: Page) -> str:
    value = page.request.match_info["incident_id"]
    if not STRING_ID.match(value):
        raise page.fail(404, "No such incident.")
    return value


def _state(page: Page) -> str:
    value = page.request.query.get("state", "all")
    if value not in STATES:
        raise page.fail(400, f"state must be one of {', '.join(STATES)}.")
    return value


async def _list_context(page: Page) -> dict[str, Any]:
    state = _state(page)
    before = page.request.query.get("before")
    if before is not None and not STRING_ID.match(before):
        raise page.fail(400, "before must be an incident's id.")
    rows = await page.services.incidents.recent(
        state=None if state == "all" else IncidentState(state), before=before, limit=INCIDENTS_PAGE + 1
    )
    more = len(rows) > INCIDENTS_PAGE
    rows = rows[:INCIDENTS_PAGE]
    return {
        "incidents": rows,
        "state": state,
        "states": STATES,
        "before": before,
        "older": rows[-1].id if more else None,
        "poll": POLL,
    }


@routes.get("/incidents", name="incidents")
async def incidents_list(request: web.Request, page: Page) -> web.StreamResponse:
    return page.render("incidents.html", **await _list_context(page))


@routes.get("/incidents/list", name="incidents_live")
async def incidents_live(request: web.Request, page: Page) -> web.StreamResponse:
    """The live part of the list: it asks for itself again (only the first page: older ones do not move)."""
    return page.render("_incidents_list.html", **await _list_context(page))


async def _detail_context(page: Page) -> dict[str, Any]:
    detail: IncidentDetail | None = await page.services.incidents.detail(_incident_id(page))
    if detail is None:
        raise page.fail(404, "No such incident.")
    store = page.services.alerts.store
    calls = await asyncio.gather(
        *(
            store.deliveries(p.alert_id, after=-1, limit=PEOPLE_PER_PAGE)
            for p in detail.pages
            if p.alert_id is not None
        )
    )
    found = iter(calls)
    steps = [StepPage(p, next(found) if p.alert_id is not None else []) for p in detail.pages]
    details = detail.incident.details
    return {
        "incident": detail.incident,
        "events": detail.events,
        "steps": steps,
        "labels": _mapping(details.get("commonLabels") or details.get("labels")),
        "annotations": _mapping(details.get("commonAnnotations") or details.get("annotations")),
        "open": detail.incident.state != IncidentState.RESOLVED,
        "triggered": detail.incident.state == IncidentState.TRIGGERED,
        "poll": POLL,
    }


def _mapping(value: Any) -> list[tuple[str, str]]:
    """A source's labels or annotations as (name, value) pairs to show (anything else: none)."""
    if not isinstance(value, dict):
        return []
    return sorted((str(k), str(v)) for k, v in value.items())


@routes.get("/incidents/{incident_id}", name="incident")
async def incident_page(request: web.Request, page: Page) -> web.StreamResponse:
    return page.render("incident.html", **await _detail_context(page))


@routes.get("/incidents/{incident_id}/live", name="incident_live")
async def incident_live(request: web.Request, page: Page) -> web.StreamResponse:
    """The live part of an incident's page: once it is resolved, the fragment stops asking for more."""
    return page.render("_incident_live.html", **await _detail_context(page))


async def _move(page: Page, action: str) -> web.Response:
    """Acknowledge or resolve through the incident service, as `dashboard`; back to the incident's page."""
    incident_id = _incident_id(page)
    service = page.services.incidents
    move = service.acknowledge if action == "acknowledge" else service.resolve
    try:
        await move(incident_id, who=WHO, how=HOW)
    except LookupError:
        raise page.fail(404, "No such incident.") from None
    except WrongState as err:
        raise page.fail(409, f"The incident is already {err.state}: there is nothing to {action}.") from None
    return page.redirect(page.url("incident", incident_id=incident_id))


@routes.post("/incidents/{incident_id}/acknowledge", name="incident_acknowledge")
async def acknowledge(request: web.Request, page: Page) -> web.StreamResponse:
    return await _move(page, "acknowledge")


@routes.post("/incidents/{incident_id}/resolve", name="incident_resolve")
async def resolve(request: web.Request, page: Page) -> web.StreamResponse:
    return await _move(page, "resolve")
