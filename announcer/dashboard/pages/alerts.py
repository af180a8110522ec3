"""Alerts: the list, newest first, and one alert's page: its progress live while it runs (htmx polls a
fragment until the alert is final), counts by state, and each recipient with state, who answered, how
much of the message played, keys, attempts and full history; cancel. Read through the same store
functions as GET /v1/alerts/{id} and /deliveries; cancelled through the same service as the API's."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from announcer.api.http import STRING_ID
from announcer.dashboard.routes import Page, Routes
from announcer.store.deliveries import AlertFinished, AlertView
from announcer.store.delivery_rows import OPEN_DELIVERY
from announcer.store.models import MAX_INT, AlertStatus

routes = Routes()

ALERTS_PAGE = 25
RECIPIENTS_PAGE = 50
POLL = "every 1s"  # while an alert runs, its page asks for its progress this often
# The final states a recipient can reach, in the order the counts show them (others follow).
COUNT_ORDER = (
    "heard",
    "confirmed",
    "voicemail_left",
    "machine",
    "no_answer",
    "busy",
    "hung_up_early",
    "failed",
    "canceled",
    "opted_out",
    "declined",
    "snoozed",
    "fax",
)


def _alert_id(page: Page) -> str:
    value = page.request.match_info["alert_id"]
    if not STRING_ID.match(value):
        raise page.fail(404, "No such alert.")
    return value


def _start(page: Page) -> int:
    value = page.request.query.get("start", "0")
    if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > MAX_INT:
        raise page.fail(400, "start must be a recipient's index (a whole number).")
    return int(value)


def _counts(view: AlertView) -> list[tuple[str, int]]:
    known = [(state, view.counts[state]) for state in COUNT_ORDER if view.counts.get(state)]
    rest = sorted((s, n) for s, n in view.counts.items() if s not in COUNT_ORDER and n)
    return known + rest


def done_of(view: AlertView) -> int:
    """Recipients in a final state (everything but the waiting and the calls under way)."""
    return sum(n for state, n in view.counts.items() if state not in OPEN_DELIVERY)


@routes.get("/alerts", name="alerts")
async def alerts_list(request: web.Request, page: Page) -> web.StreamResponse:
    before = request.query.get("before")
    if before is not None and not STRING_ID.match(before):
        raise page.fail(400, "before must be an alert's id.")
    views = await page.services.alerts.store.recent_alerts(before=before, limit=ALERTS_PAGE + 1)
    more = len(views) > ALERTS_PAGE
    views = views[:ALERTS_PAGE]
    return page.render(
        "alerts.html",
        alerts=[(v, done_of(v), _counts(v)) for v in views],
        older=views[-1].id if more else None,
        first_page=before is None,
    )


async def _alert_context(page: Page) -> dict[str, Any]:
    alert_id = _alert_id(page)
    store = page.services.alerts.store
    start = _start(page)
    # both at once (PostgreSQL: two pooled connections); no rows for an alert that does not exist
    view, rows = await asyncio.gather(
        store.alert(alert_id), store.deliveries(alert_id, after=start - 1, limit=RECIPIENTS_PAGE)
    )
    if view is None:
        raise page.fail(404, "No such alert.")
    return {
        "alert": view,
        "active": view.status == AlertStatus.ACTIVE,
        "done": done_of(view),
        "counts": _counts(view),
        "rows": rows,
        "start": start,
        "previous": max(0, start - RECIPIENTS_PAGE) if start > 0 else None,
        "next": start + RECIPIENTS_PAGE if start + RECIPIENTS_PAGE < view.recipients else None,
        "poll": POLL,
    }


@routes.get("/alerts/{alert_id}", name="alert")
async def alert_page(request: web.Request, page: Page) -> web.StreamResponse:
    return page.render("alert.html", **await _alert_context(page))


@routes.get("/alerts/{alert_id}/progress", name="alert_progress")
async def alert_progress(request: web.Request, page: Page) -> web.StreamResponse:
    """The live part of the alert page: once the alert is final, the fragment stops asking for more."""
    return page.render("_alert_progress.html", **await _alert_context(page))


@routes.post("/alerts/{alert_id}/cancel", name="alert_cancel")
async def cancel(request: web.Request, page: Page) -> web.StreamResponse:
    alert_id = _alert_id(page)
    try:
        await page.services.alerts.alerts.cancel(alert_id)
    except LookupError:
        raise page.fail(404, "No such alert.") from None
    except AlertFinished as err:
        raise page.fail(409, f"The alert is already {err}: there is nothing to cancel.") from None
    return page.redirect(page.url("alert", alert_id=alert_id))
