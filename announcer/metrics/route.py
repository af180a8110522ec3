"""`GET /metrics`: the Prometheus exposition of this process's registry.

Open by default, like `/healthz` (a scraper on the private network); with ANNOUNCER_METRICS_AUTH=1 it
asks for the API's bearer token (Prometheus' `authorization` scrape setting sends it).
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from announcer.api.http import error
from announcer.metrics.registry import Metrics
from announcer.store.models import IncidentState

INCIDENT_STATES = [s.value for s in IncidentState]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scrape:
    metrics: Metrics
    queue_depth: Callable[[], Awaitable[int]]  # one count query
    token: str | None  # the bearer token a scrape must send; None: open
    incidents: Callable[[], Awaitable[Mapping[str, int]]] | None = None  # by state: one grouped count query


async def metrics_handler(request: web.Request, scrape: Scrape) -> web.Response:
    if scrape.token is not None:
        # Any bytes may come; aiohttp decodes them with surrogateescape, which strict UTF-8 cannot encode.
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, f"Bearer {scrape.token}".encode()):
            raise error(401, "unauthorized", "send Authorization: Bearer <ANNOUNCER_API_TOKEN>")
    try:
        depth: float = await scrape.queue_depth()
    except Exception as err:  # the database is away: the rest of the page still says what is going on
        log.warning("metrics: the dial queue depth could not be read: %s", type(err).__name__)
        depth = math.nan
    scrape.metrics.queue_depth.set(depth)
    if scrape.incidents is not None:
        counts: Mapping[str, float]
        try:
            counts = await scrape.incidents()
        except Exception as err:  # as the depth: the rest of the page still comes
            log.warning("metrics: the incidents could not be counted: %s", type(err).__name__)
            counts = {state: math.nan for state in INCIDENT_STATES}
        scrape.metrics.incidents_counted(counts)
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = web.Response(body=encode(scrape.metrics.registry))
    response.headers["Content-Type"] = content_type  # with its version= parameter, as Prometheus sends it
    return response
