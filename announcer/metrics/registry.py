"""The app's registry and the measures fed by events (once per call or rarer, never per frame)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from announcer.store.incidents import IncidentRow
from announcer.store.models import (
    FINAL_DELIVERY_STATES,
    TERMINAL_STATUSES,
    CallStatus,
    DeliveryState,
    IncidentState,
)
from announcer.store.schedules import ScheduleRow
from announcer.store.transitions import Move

INBOUND = "inbound"  # the greeting line: someone called us
OUTBOUND = "outbound"  # a delivery's call (alerts, reminders, /outbound-call)

# Answer (the media stream's `start`) to the first frame on the socket: a cache hit takes milliseconds,
# a TTS round trip a few hundred; seconds mean the caller heard silence.
FIRST_AUDIO_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
# A TTS request to its first audio: ElevenLabs' flash models answer in ~75-300 ms; the timeout is seconds.
TTS_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
# A schedule's fire after its planned time: milliseconds when armed, up to the misfire grace when caught
# up after a restart.
SCHEDULER_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# An incident's opening to its acknowledgement: a key pressed on the first page call takes a minute or so;
# escalation steps add minutes each; an hour is an escalation that ran out (or was acknowledged by hand late).
ACKNOWLEDGE_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
PAGE_SOURCE = "page"  # an alert made for an escalation step (AlertService.page)

# A schedule's fire: (schedule, planned time, idempotency key) -> alert id (scheduling/scheduler.py).
Fire = Callable[[ScheduleRow, datetime, str], Awaitable[str]]


class Metrics:
    """One per app (`create_app`): its registry, and the hooks the places that count call."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "announcer_calls",
            "Calls ended, by direction (outbound: a delivery's call; inbound: the greeting line) and "
            "Twilio's final status",
            ["direction", "status"],
            registry=r,
        )
        self.deliveries = Counter(
            "announcer_deliveries",
            "Deliveries (one recipient of an alert) that reached a final outcome in this process",
            ["outcome"],
            registry=r,
        )
        self.first_audio = Histogram(
            "announcer_answer_to_first_audio_seconds",
            "From a call's media stream start (the answer) to its first audio frame sent",
            buckets=FIRST_AUDIO_BUCKETS,
            registry=r,
        )
        self.tts_latency = Histogram(
            "announcer_tts_request_seconds",
            "From a TTS request to its first audio, by engine",
            ["engine"],
            buckets=TTS_BUCKETS,
            registry=r,
        )
        self.tts_errors = Counter(
            "announcer_tts_errors",
            "TTS requests that failed, by engine and reason",
            ["engine", "reason"],
            registry=r,
        )
        self.tts_characters = Counter(
            "announcer_tts_characters",
            "Characters sent to a TTS engine for synthesis, by engine (what ElevenLabs bills)",
            ["engine"],
            registry=r,
        )
        self.scheduler_lag = Histogram(
            "announcer_scheduler_lag_seconds",
            "A schedule's fire time minus its planned time",
            buckets=SCHEDULER_LAG_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "announcer_dial_queue_depth",
            "Deliveries due to be dialed now and not yet claimed (all processes: read from the database at "
            "each scrape)",
            registry=r,
        )
        self.incidents = Gauge(
            "announcer_incidents",
            "Incidents by state (all processes: read from the database at each scrape)",
            ["state"],
            registry=r,
        )
        self.time_to_acknowledge = Histogram(
            "announcer_incident_time_to_acknowledge_seconds",
            "From an incident's opening to its acknowledgement (a key, the API or the dashboard), observed "
            "by the process that acknowledged it",
            buckets=ACKNOWLEDGE_BUCKETS,
            registry=r,
        )
        self.pages = Counter(
            "announcer_pages",
            "Page calls (one person of an escalation step) that reached a final outcome in this process",
            ["outcome"],
            registry=r,
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total etc.: each worker is its own process
        # Every known label value at zero from the start: rate() and increase() see the first event.
        for status in sorted(TERMINAL_STATUSES):
            self.calls.labels(OUTBOUND, status.value)
            self.calls.labels(INBOUND, status.value)
        for state in sorted(FINAL_DELIVERY_STATES):
            self.deliveries.labels(state.value)
            self.pages.labels(state.value)
        for incident_state in IncidentState:
            self.incidents.labels(incident_state.value)

    # --- hooks (each is called once per call, delivery or fire) ------------------------------------

    def call_ended(self, outbound: bool, status: CallStatus) -> None:
        """A call reached its final status (telephony/status.py)."""
        self.calls.labels(OUTBOUND if outbound else INBOUND, status.value).inc()

    def delivery_moved(self, move: Move) -> None:
        """A delivery moved (the dispatcher's `on_move`): counted when it is final."""
        if move.final:
            self.deliveries.labels(move.state.value).inc()
            if move.source == PAGE_SOURCE:
                self.pages.labels(move.state.value).inc()

    def deliveries_finished(self, outcome: DeliveryState, count: int) -> None:
        """Deliveries finished without a call (canceled before they were dialed)."""
        if count:
            self.deliveries.labels(outcome.value).inc(count)

    def incident_acknowledged(self, incident: IncidentRow) -> None:
        """An incident was acknowledged (paging/incidents.py's `IncidentService.acknowledge`)."""
        if incident.acknowledged_at is not None:
            waited = (incident.acknowledged_at - incident.created_at).total_seconds()
            self.time_to_acknowledge.observe(max(0.0, waited))

    def pages_canceled(self, count: int) -> None:
        """Page calls canceled before they were dialed (an incident acknowledged or resolved meanwhile)."""
        if count:
            self.pages.labels(DeliveryState.CANCELED.value).inc(count)

    def incidents_counted(self, counts: Mapping[str, float]) -> None:
        """The incidents by state, read at a scrape (NaN each when the database could not say)."""
        for state in IncidentState:
            self.incidents.labels(state.value).set(counts.get(state.value, 0))

    def audio_started(self, seconds: float) -> None:
        """A call's first frame went out `seconds` after its stream started (telephony/media.py)."""
        self.first_audio.observe(seconds)

    def on_move(self, then: Callable[[Move], None]) -> Callable[[Move], None]:
        """The dispatcher's `on_move`: count, then `then` (the webhook outbox's wake-up)."""

        def moved(move: Move) -> None:
            self.delivery_moved(move)
            then(move)

        return moved

    def timed_fire(self, fire: Fire) -> Fire:
        """A schedule's fire, its lag behind the planned time observed as it starts."""

        async def timed(schedule: ScheduleRow, planned: datetime, key: str) -> str:
            self.scheduler_lag.observe(max(0.0, (datetime.now(UTC) - planned).total_seconds()))
            return await fire(schedule, planned, key)

        return timed


METRICS = web.AppKey("metrics", Metrics)
