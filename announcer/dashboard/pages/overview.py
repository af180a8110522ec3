"""Overview: what the service is doing now. Calls live, today's outcomes, the dial queue and its rate
against TWILIO_CPS (what /healthz's "dialing" says), the speech cache's hit ratio, the scheduler, and
sandbox or live. Read from the database and this process's counters: nothing here waits on a provider."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from announcer.dashboard.routes import Page, Routes

routes = Routes()

# The outcomes the overview names first, in this order (any other final state follows them).
OUTCOMES = (
    ("heard", "Heard"),
    ("confirmed", "Confirmed"),
    ("voicemail_left", "Voicemail"),
    ("no_answer", "No answer"),
    ("busy", "Busy"),
    ("failed", "Failed"),
)
NEXT_FIRES = 5


@routes.get("/", name="overview")
async def overview(request: web.Request, page: Page) -> web.StreamResponse:
    return page.render("overview.html", **await _facts(page))


@routes.get("/overview/live", name="overview_live")
async def overview_live(request: web.Request, page: Page) -> web.StreamResponse:
    """The same facts as a fragment: the overview refreshes itself every few seconds."""
    return page.render("_overview_facts.html", **await _facts(page))


async def _facts(page: Page) -> dict[str, Any]:
    services = page.services
    deliveries = services.alerts.store
    scheduler = services.schedules.scheduler
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    # Independent reads, at once: on PostgreSQL each takes its own pooled connection (on SQLite they
    # queue for the one connection, as they would one after another).
    today, (due, waiting), live, dialing, next_fires = await asyncio.gather(
        deliveries.finished_since(midnight),
        deliveries.waiting(),
        services.calls.store.live(),
        services.dialing(),
        services.schedules.store.next_runs(NEXT_FIRES),
    )
    named = {key for key, _ in OUTCOMES}
    others = sorted((k, v) for k, v in today.items() if k not in named)
    speaker = services.alerts.speaker
    asked = speaker.cache_hits + speaker.cache_misses
    return {
        "sandbox": services.sandbox,
        "live": live,
        "outcomes": [(label, today.get(key, 0), key) for key, label in OUTCOMES],
        "other_outcomes": others,
        "due": due,
        "waiting": waiting,
        "dialing": dialing,
        "cache_hits": speaker.cache_hits,
        "cache_asked": asked,
        "hit_ratio": speaker.cache_hits / asked if asked else None,
        "scheduler": "running" if scheduler.started.is_set() else "standby",
        "next_fires": next_fires,
    }
