"""What the dashboard's pages read and act through: the same stores and services the API's handlers use
(no second query layer). Built once in app.py's wiring, after every resource is open."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from announcer.api.alerts import AlertsDeps
from announcer.api.calls import CallsDeps
from announcer.api.schedules import SchedulesDeps
from announcer.config import Settings
from announcer.paging.incidents import IncidentService
from announcer.store.dashboard_sessions import DashboardSessions
from announcer.store.oncall import OncallStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    alerts: AlertsDeps  # .alerts: AlertService (accept, cancel, plan); .store: DeliveryStore; .speaker
    schedules: SchedulesDeps  # .store: ScheduleStore; .scheduler: Scheduler; .alerts: AlertService
    calls: CallsDeps  # .store: CallStore (calls, events); .deliveries: DeliveryStore
    sessions: DashboardSessions
    incidents: (
        IncidentService  # paging: .recent, .detail, .acknowledge, .resolve; .store: integrations, counts
    )
    oncall: OncallStore  # people, rotations and their overrides, escalation policies, who is on call
    # /healthz's "dialing": the rate the dispatcher may dial at now and which limit holds it
    dialing: Callable[[], Awaitable[dict[str, object]]]
    sandbox: bool  # the loopback Twilio answers the calls (no Twilio credentials)
    recordings_dir: Path | None  # the sandbox phone's WAV recordings (sandbox mode only)
    api_token: str = field(repr=False)  # what sign-in compares with (never shown, never logged)


SERVICES = web.AppKey("dashboard_services", Services)
