"""The aiohttp application: every client and engine is opened and closed here, in `cleanup_ctx`.

Order of the lifecycle (reverse on the way down): database -> sandbox (only without credentials) ->
Twilio REST client -> speech engines -> playout clock -> admission control (reads the clock) -> render
thread -> dispatcher (and the alert service over it) -> scheduler (whose fires the alert service makes
alerts) -> paging (incidents and their escalator, over the alert service) -> handlers -> what /metrics
reads at scrape time (the handlers' live calls among it) -> warm-up (the SDKs, loaded once the server
listens). Routes are registered here and nowhere else. The metrics' registry is the app's own, made with
it: the hooks that count are handed to each piece as it is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import WSCloseCode, web

from announcer import dashboard
from announcer.agent.connect import AgentConnector
from announcer.agent.line import AgentLine
from announcer.api import alerts, calls, incidents, integrations, oncall, schedules
from announcer.api.alerts import AlertsDeps
from announcer.api.http import error, json_errors, make_middleware
from announcer.api.incidents import IncidentsDeps
from announcer.api.integrations import WEBHOOK_PATH, IntegrationsDeps
from announcer.api.oncall import OncallDeps
from announcer.api.openapi import document_json as openapi_document_json
from announcer.api.schedules import SchedulesDeps
from announcer.config import Settings
from announcer.dashboard.auth import token_mark
from announcer.deliveries.admission import Admission
from announcer.deliveries.alerts import AlertService
from announcer.deliveries.callbacks import WebhookSender
from announcer.deliveries.dial_rate import AccountRate
from announcer.deliveries.dispatcher import Dispatcher
from announcer.deliveries.egress import EgressPolicy
from announcer.deliveries.notify import OutcomeNotifier
from announcer.deliveries.plan import Limits
from announcer.deliveries.policy import DeliveryPolicy
from announcer.deliveries.script import CallScripts, check_prompts
from announcer.files import private_dir, tighten_tree, write_private
from announcer.messages.destinations import DestinationPolicy
from announcer.messages.greeting import Greeting
from announcer.messages.render import MessageRenderer
from announcer.messages.workers import RenderPool
from announcer.metrics import (
    METRICS,
    MeteredSynthesizer,
    Metrics,
    Scrape,
    Sources,
    StateCollector,
    metrics_handler,
)
from announcer.paging.escalator import Escalator
from announcer.paging.incidents import IncidentService
from announcer.paging.silence import Silencer
from announcer.scheduling.leader import Leadership
from announcer.scheduling.scheduler import Scheduler
from announcer.speech.cache import AudioCache
from announcer.speech.elevenlabs import ElevenLabsSynthesizer
from announcer.speech.engine import Synthesizer
from announcer.speech.local import LocalSynthesizer
from announcer.speech.speaker import Speaker
from announcer.store.calls import CallStore
from announcer.store.dashboard_sessions import DashboardSessions
from announcer.store.db import Database
from announcer.store.deliveries import DeliveryStore
from announcer.store.incidents import IncidentStore
from announcer.store.oncall import OncallStore
from announcer.store.outbox import OutboxStore
from announcer.store.schedules import ScheduleStore
from announcer.telephony.amd import amd_webhook
from announcer.telephony.calls import MachineDetection, TwilioCalls
from announcer.telephony.handoff import After, AgentOffer
from announcer.telephony.live import LiveCalls
from announcer.telephony.media import MediaDeps, media_websocket
from announcer.telephony.playout import PlayoutClock
from announcer.telephony.signature import SignatureChecker
from announcer.telephony.status import status_webhook
from announcer.telephony.tokens import TokenBook
from announcer.telephony.voice import VoiceDeps, voice_webhook

log = logging.getLogger(__name__)

SANDBOX_NUMBER = "+15550100000"
SANDBOX_AGENT_ID = "sandbox-agent"  # the loopback agent's id when ELEVENLABS_AGENT_ID is not set
WARM_UP_WAIT_S = 2.0  # the longest the SDKs' loading waits for the scheduler to have started


@dataclass(frozen=True)
class Providers:
    """The Twilio and ElevenLabs endpoints and credentials in force (real, or the in-process sandbox)."""

    account_sid: str
    auth_token: str
    phone_number: str
    twilio_base_url: str
    elevenlabs_api_key: str
    elevenlabs_base_url: str


SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
STORE = web.AppKey("store", CallStore)
PROVIDERS = web.AppKey("providers", Providers)
SANDBOX = web.AppKey("sandbox", Any)  # the SandboxTwilio, only in sandbox mode
SANDBOX_TTS = web.AppKey("sandbox_tts", Any)  # the SandboxElevenLabs, only in sandbox mode
SANDBOX_AGENT = web.AppKey("sandbox_agent", Any)  # its SandboxConvAI (same port), only in sandbox mode
TWILIO = web.AppKey("twilio", TwilioCalls)
SPEAKER = web.AppKey("speaker", Speaker)
ELEVENLABS = web.AppKey("elevenlabs", ElevenLabsSynthesizer)
LOCAL_VOICE = web.AppKey("local_voice", LocalSynthesizer)
CLOCK = web.AppKey("clock", PlayoutClock)
ADMISSION = web.AppKey("admission", Admission)
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])
GREETING = web.AppKey("greeting", Greeting)
SIGNATURE = web.AppKey("signature", SignatureChecker)
VOICE = web.AppKey("voice", VoiceDeps)
MEDIA = web.AppKey("media", MediaDeps)
RENDERER = web.AppKey("renderer", MessageRenderer)
RENDERS = web.AppKey("renders", RenderPool)
DELIVERIES = web.AppKey("deliveries", DeliveryStore)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
ALERT_SERVICE = web.AppKey("alert_service", AlertService)
ALERTS = web.AppKey("alerts", AlertsDeps)
SCHEDULES = web.AppKey("schedules", SchedulesDeps)
ONCALL = web.AppKey("oncall", OncallDeps)  # people, rotations, escalation policies
WEBHOOKS = web.AppKey("webhooks", WebhookSender)
OUTBOX = web.AppKey("outbox", OutcomeNotifier)  # the outcome webhooks' outbox, sent from this process
API_TOKEN = web.AppKey("api_token", str)
INCIDENTS = web.AppKey("incidents", IncidentService)  # paging: the incidents (API, dashboard, escalator)
ESCALATOR = web.AppKey("escalator", Escalator)
INCIDENTS_API = web.AppKey("incidents_api", IncidentsDeps)
INTEGRATIONS_API = web.AppKey("integrations_api", IntegrationsDeps)


@dataclass(frozen=True)
class AgentSetup:
    connector: AgentConnector
    agent_id: str


# None: no agent configured (agent mode off)
AGENT: web.AppKey[AgentSetup | None] = web.AppKey("agent")
CALLS = web.AppKey("calls", calls.CallsDeps)


def public_url(settings: Settings) -> str:
    return settings.public_url or f"http://{settings.host}:{settings.port}"


def media_url(settings: Settings) -> str:
    """The media websocket URL for TwiML: PUBLIC_URL with http -> ws and https -> wss."""
    base = public_url(settings)
    scheme, rest = base.split("://", 1)
    return ("wss" if scheme == "https" else "ws") + "://" + rest + "/twilio/media"


def create_app(settings: Settings) -> web.Application:
    """Build the application. Raises `RenderError` when the greeting template cannot be rendered."""
    private_dir(settings.announcer_data_dir)  # before anything is written into it
    token = _api_token(settings)
    app = web.Application(
        client_max_size=settings.announcer_max_body_bytes,
        middlewares=[json_errors, make_middleware(token, own_auth=WEBHOOK_PATH)],
    )
    app[API_TOKEN] = token
    app[SETTINGS] = settings
    renderer = MessageRenderer(settings.announcer_templates_dir)
    greeting = Greeting(
        renderer,
        settings.announcer_greeting_template,
        settings.announcer_org_name,
        settings.zone,
        hands_over=settings.greeting_agent,
    )
    greeting.check()
    check_prompts(renderer)  # a broken prompt template (an alert's, a page's) stops start-up here
    app[GREETING] = greeting
    app[SOCKETS] = set()
    app[RENDERER] = renderer
    app[METRICS] = Metrics()  # this app's own registry (tests run many apps in one process)
    app.cleanup_ctx.extend(
        [
            _database,
            _oncall,
            _sandbox,
            _twilio,
            _speech,
            _agent,
            _clock,
            _admission,
            _renders,
            _dispatcher,
            _scheduler,
            _paging,
            _wiring,
            _metrics,
            _warm_up,
        ]
    )
    app.on_shutdown.append(_close_sockets)
    app.router.add_post("/twilio/voice", _voice)
    app.router.add_post("/twilio/status", _status)
    app.router.add_post("/twilio/amd", _amd)
    app.router.add_get("/twilio/media", _media)
    app.router.add_get("/healthz", _healthz)
    app.router.add_post("/v1/alerts", _with_alerts(alerts.create_alert))
    app.router.add_get("/v1/alerts", _with_alerts(alerts.list_alerts))
    app.router.add_get("/v1/alerts/{alert_id}", _with_alerts(alerts.get_alert))
    app.router.add_get("/v1/alerts/{alert_id}/deliveries", _with_alerts(alerts.list_deliveries))
    app.router.add_post("/v1/alerts/{alert_id}/cancel", _with_alerts(alerts.cancel_alert))
    app.router.add_post("/v1/preview", _with_alerts(alerts.preview))
    app.router.add_get("/v1/opt-outs", _with_alerts(alerts.list_opt_outs))
    app.router.add_delete("/v1/opt-outs/{phone}", _with_alerts(alerts.delete_opt_out))
    app.router.add_post("/v1/schedules", _with_schedules(schedules.create_schedule))
    app.router.add_get("/v1/schedules", _with_schedules(schedules.list_schedules))
    app.router.add_get("/v1/schedules/{schedule_id}", _with_schedules(schedules.get_schedule))
    app.router.add_patch("/v1/schedules/{schedule_id}", _with_schedules(schedules.patch_schedule))
    app.router.add_delete("/v1/schedules/{schedule_id}", _with_schedules(schedules.delete_schedule))
    oncall.add_routes(app, ONCALL)
    app.router.add_get("/v1/calls/{call_sid}", _with_calls(calls.get_call))
    app.router.add_get("/v1/deliveries/{delivery_id}/call", _with_calls(calls.get_delivery_call))
    app.router.add_post("/outbound-call", _with_calls(calls.outbound_call))
    for kind in ("alertmanager", "grafana", "json"):  # before /v1/integrations/{integration_id}/...
        app.router.add_post(
            f"/v1/integrations/{kind}/{{integration_id}}", _with_integrations(integrations.webhook, kind)
        )
    app.router.add_post("/v1/integrations", _with_integrations(integrations.create_integration))
    app.router.add_get("/v1/integrations", _with_integrations(integrations.list_integrations))
    app.router.add_get("/v1/integrations/{integration_id}", _with_integrations(integrations.get_integration))
    app.router.add_patch(
        "/v1/integrations/{integration_id}", _with_integrations(integrations.patch_integration)
    )
    app.router.add_delete(
        "/v1/integrations/{integration_id}", _with_integrations(integrations.delete_integration)
    )
    app.router.add_post(
        "/v1/integrations/{integration_id}/rotate-secret", _with_integrations(integrations.rotate_secret)
    )
    app.router.add_get("/v1/incidents", _with_incidents(incidents.list_incidents))
    app.router.add_get("/v1/incidents/{incident_id}", _with_incidents(incidents.get_incident))
    app.router.add_post("/v1/incidents/{incident_id}/ack", _with_incidents(incidents.acknowledge_incident))
    app.router.add_post("/v1/incidents/{incident_id}/resolve", _with_incidents(incidents.resolve_incident))
    app.router.add_get("/v1/openapi.json", _openapi)
    app.router.add_get("/v1/sandbox", _sandbox_info)
    app.router.add_get("/metrics", _metrics_page)
    dashboard.setup(app)  # the operator's console at `/`
    return app


async def _openapi(request: web.Request) -> web.Response:
    body = openapi_document_json(request.app[SETTINGS].announcer_max_recipients)
    return web.Response(body=body, content_type="application/json")


def _api_token(settings: Settings) -> str:
    """ANNOUNCER_API_TOKEN, or (when unset) a random one for this run, written to a file only its owner
    reads: the API is never open, and the token never reaches a log."""
    if settings.announcer_api_token is not None:
        return settings.announcer_api_token.get_secret_value()
    token = secrets.token_urlsafe(24)
    path = settings.announcer_data_dir / "api-token"
    write_private(path, (token + "\n").encode())
    log.warning("ANNOUNCER_API_TOKEN is not set: this run's API token is in %s", path)
    return token


# --- lifecycle ------------------------------------------------------------------------------------


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    db = Database(
        settings.resolved_database_url,
        setting=settings.database_setting,
        pool_timeout=settings.announcer_db_wait_s,
    )
    await db.upgrade()
    app[DATABASE] = db
    app[STORE] = store = CallStore(db.sessions)
    yield
    await store.aclose()
    await db.dispose()


async def _oncall(app: web.Application) -> AsyncIterator[None]:
    """People, rotations and escalation policies; a person's number passes the destination policy."""
    store = OncallStore(app[DATABASE].sessions)
    app[ONCALL] = OncallDeps(store=store, destinations=DestinationPolicy.from_settings(app[SETTINGS]))
    yield


async def _sandbox(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    local = LocalSynthesizer()
    app[LOCAL_VOICE] = local
    account_sid = settings.twilio_account_sid or ("AC" + secrets.token_hex(16))
    auth_token = (
        settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else secrets.token_hex(16)
    )
    twilio_base = settings.twilio_api_base_url
    el_key = (
        settings.elevenlabs_api_key.get_secret_value()
        if settings.elevenlabs_api_key
        else secrets.token_hex(16)
    )
    el_base = settings.elevenlabs_base_url
    phone_number = settings.twilio_phone_number or SANDBOX_NUMBER
    sandbox: Any = None
    sandbox_tts: Any = None
    sandbox_agent: Any = None
    if settings.tts_sandbox or settings.twilio_sandbox:
        # The service imports the sandbox only here, and only without credentials (design.md).
        from announcer.sandbox.convai import SandboxConvAI
        from announcer.sandbox.elevenlabs import SandboxElevenLabs
        from announcer.sandbox.speech_book import SpeechBook
        from announcer.sandbox.twilio import SandboxTwilio

        book = SpeechBook()  # what the sandbox phone says, so the sandbox agent can recognise it
        if settings.tts_sandbox:
            sandbox_agent = SandboxConvAI(
                api_key=el_key,
                synthesize=local.synthesize,
                speech_book=book,
                agent_ids=(settings.elevenlabs_agent_id or SANDBOX_AGENT_ID,),
                speed=settings.announcer_sandbox_speed if settings.twilio_sandbox else 1.0,
            )
            sandbox_tts = SandboxElevenLabs(
                api_key=el_key, synthesize=local.synthesize, extensions=[sandbox_agent]
            )
            el_base = await sandbox_tts.start()
            log.warning(
                "sandbox mode: no ELEVENLABS_API_KEY; speech comes from the local voice via the "
                "loopback ElevenLabs at %s",
                el_base,
            )
        if settings.twilio_sandbox:
            recordings = (settings.announcer_data_dir / "recordings").resolve()
            sandbox = SandboxTwilio(
                account_sid=account_sid,
                auth_token=auth_token,
                phone_number=phone_number,
                voice_url=public_url(settings) + "/twilio/voice",
                status_callback_url=public_url(settings) + "/twilio/status",
                recordings_dir=recordings,
                say_synthesize=local.synthesize,
                speed=settings.announcer_sandbox_speed,
                speech_book=book,
            )
            twilio_base = await sandbox.start()
            _write_sandbox_file(settings, twilio_base, account_sid, auth_token)
            log.warning(
                "sandbox mode: no Twilio credentials; calls go to the loopback Twilio at %s "
                "(place one with `announcer sandbox call-in`; recordings in %s)",
                twilio_base,
                recordings,
            )
    app[SANDBOX] = sandbox
    app[SANDBOX_TTS] = sandbox_tts
    app[SANDBOX_AGENT] = sandbox_agent
    app[PROVIDERS] = Providers(account_sid, auth_token, phone_number, twilio_base, el_key, el_base)
    yield
    if sandbox is not None:
        await sandbox.close()
        (settings.announcer_data_dir / "sandbox.json").unlink(missing_ok=True)
    if sandbox_tts is not None:
        await sandbox_tts.close()


def _write_sandbox_file(settings: Settings, base_url: str, account_sid: str, auth_token: str) -> None:
    """Where `announcer sandbox call-in` finds the running sandbox (its credentials are throwaway)."""
    write_private(
        settings.announcer_data_dir / "sandbox.json",
        json.dumps(
            {
                "base_url": base_url,
                "account_sid": account_sid,
                "auth_token": auth_token,
                "phone_number": settings.twilio_phone_number or SANDBOX_NUMBER,
                "greeting_agent": settings.greeting_agent,
            }
        ).encode(),
    )


async def _twilio(app: web.Application) -> AsyncIterator[None]:
    p = app[PROVIDERS]
    twilio = TwilioCalls(
        p.account_sid, p.auth_token, p.twilio_base_url, timeout_s=app[SETTINGS].twilio_timeout_s
    )
    app[TWILIO] = twilio
    yield
    await twilio.aclose()


async def _speech(app: web.Application) -> AsyncIterator[None]:
    settings, p = app[SETTINGS], app[PROVIDERS]
    primary = ElevenLabsSynthesizer(
        api_key=p.elevenlabs_api_key,
        base_url=p.elevenlabs_base_url,
        voice_id=settings.elevenlabs_voice_id,
        model_id=settings.elevenlabs_model_id,
        timeout_s=settings.elevenlabs_timeout_s,
    )
    cache = AudioCache(settings.announcer_data_dir / "audio-cache")
    speaker = Speaker(_metered(app, primary), _metered(app, app[LOCAL_VOICE]), cache)
    app[SPEAKER] = speaker
    app[ELEVENLABS] = primary
    yield
    await speaker.aclose()
    await primary.aclose()


async def _agent(app: web.Application) -> AsyncIterator[None]:
    """The ElevenLabs agent line (agent mode): only with an agent to talk to. In sandbox mode that is
    the loopback agent, unless ELEVENLABS_AGENT_ID names another."""
    settings, p = app[SETTINGS], app[PROVIDERS]
    agent_id = settings.elevenlabs_agent_id or (SANDBOX_AGENT_ID if settings.tts_sandbox else None)
    if agent_id is None:
        app[AGENT] = None
        yield
        return
    connector = AgentConnector(p.elevenlabs_api_key, p.elevenlabs_base_url)
    app[AGENT] = AgentSetup(connector, agent_id)
    yield
    await connector.aclose()


async def _clock(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    clock = PlayoutClock(speed=settings.announcer_sandbox_speed if settings.twilio_sandbox else 1.0)
    clock.start()
    app[CLOCK] = clock
    yield
    await clock.stop()


async def _admission(app: web.Application) -> AsyncIterator[None]:
    """Admission control: the dialing rate follows what this process can serve (deliveries/admission.py)."""
    admission = Admission(app[SETTINGS].twilio_cps, app[CLOCK], app[STORE].journal)
    admission.start()
    app[ADMISSION] = admission
    yield
    await admission.close()


async def _renders(app: web.Application) -> AsyncIterator[None]:
    """The render thread: every render of a request or a schedule's fire runs there, off the loop."""
    renders = RenderPool()
    app[RENDERS] = renders
    yield
    await renders.close()


async def _dispatcher(app: web.Application) -> AsyncIterator[None]:
    settings, p = app[SETTINGS], app[PROVIDERS]
    policy = DeliveryPolicy()  # the store asks it about retries, snoozes and quiet hours; the dispatcher too
    store = DeliveryStore(
        app[DATABASE].sessions, postgres=not app[DATABASE].is_sqlite, rules=policy, journal=app[STORE].journal
    )
    destinations = DestinationPolicy.from_settings(settings)  # planning and dialing check the same one
    secret = settings.announcer_webhook_secret or settings.announcer_api_token
    egress = EgressPolicy.from_settings(settings)
    # The secret stays here, in memory: the outbox holds bodies and URLs, signed at each attempt.
    sender = WebhookSender(
        secret.get_secret_value() if secret else app[API_TOKEN],
        egress=egress,
        timeout_s=settings.announcer_webhook_timeout_s,
        max_attempts=settings.announcer_webhook_max_attempts,
        backoff_s=settings.announcer_webhook_backoff_s,
        max_backoff_s=settings.announcer_webhook_max_backoff_s,
    )
    sender.start()
    notifier = OutcomeNotifier(
        sender,
        OutboxStore(app[DATABASE].sessions, postgres=not app[DATABASE].is_sqlite, journal=app[STORE].journal),
        timeout_s=settings.announcer_webhook_timeout_s,
        retention=timedelta(seconds=settings.announcer_webhook_retention_s),
        single_process=app[DATABASE].is_sqlite,
    )
    notifier.start()
    # One rate for the account across the processes sharing the database; SQLite is one process.
    account_rate = None
    if not app[DATABASE].is_sqlite:
        account_rate = AccountRate(app[DATABASE].engine, p.account_sid, settings.twilio_cps)
    dispatcher = Dispatcher(
        store,
        app[TWILIO],
        app[SPEAKER],
        cps=settings.twilio_cps,
        max_concurrent=settings.max_concurrent_calls,
        from_number=p.phone_number,
        media_url=media_url(settings),
        status_url=public_url(settings) + "/twilio/status",
        on_move=app[METRICS].on_move(functools.partial(_moved, app, notifier.moved)),
        # longer than a create request may take, or a slow answer would look like a lost one
        lease=timedelta(seconds=max(settings.announcer_claim_lease_s, 2 * settings.twilio_timeout_s)),
        destinations=destinations,
        policy=policy,
        amd=MachineDetection.from_settings(settings),
        amd_url=public_url(settings) + "/twilio/amd",
        admission=app[ADMISSION],
        account_rate=account_rate,
    )
    app[DELIVERIES] = store
    app[WEBHOOKS] = sender
    app[OUTBOX] = notifier
    app[DISPATCHER] = dispatcher
    app[ALERT_SERVICE] = service = AlertService(
        store=store,
        dispatcher=dispatcher,
        twilio=app[TWILIO],
        speaker=app[SPEAKER],
        renderer=app[RENDERER],
        renders=app[RENDERS],
        limits=Limits(
            max_recipients=settings.announcer_max_recipients,
            max_text_chars=settings.announcer_max_text_chars,
            destinations=destinations,
            agent=app[AGENT] is not None,
            callbacks=egress,
        ),
        finished=app[METRICS].deliveries_finished,
    )
    app[ALERTS] = AlertsDeps(alerts=service, store=store, speaker=app[SPEAKER])
    dispatcher.start()
    yield
    await dispatcher.close()
    if account_rate is not None:
        await account_rate.close()
    await notifier.close()
    await sender.close()


def _moved(app: web.Application, then: Callable[[Any], None], move: Any) -> None:
    """A delivery moved: the outbox's wake-up, then the escalator's (a page call ended with a key)."""
    then(move)
    escalator = app.get(ESCALATOR)
    if escalator is not None:
        escalator.moved(move)


async def _paging(app: web.Application) -> AsyncIterator[None]:
    """Paging: the incident service over the alert service, and the escalator that pages each step (its
    truth is the database: a restart goes on where the rows say)."""
    settings, db = app[SETTINGS], app[DATABASE]
    store = IncidentStore(db.sessions)
    silencer = Silencer(EgressPolicy.from_settings(settings))
    service = IncidentService(store, app[ALERT_SERVICE], silencer)
    escalator = Escalator(store, app[ONCALL].store, app[ALERT_SERVICE], service)
    service.set_wake(escalator.wake)
    service.on_acknowledged = app[METRICS].incident_acknowledged
    service.on_pages_canceled = app[METRICS].pages_canceled
    app[INCIDENTS] = service
    app[ESCALATOR] = escalator
    app[INCIDENTS_API] = IncidentsDeps(incidents=service)
    app[INTEGRATIONS_API] = IntegrationsDeps(incidents=service)
    escalator.start()
    yield
    await escalator.close()
    await service.close()
    await silencer.close()


async def _scheduler(app: web.Application) -> AsyncIterator[None]:
    """The reminders' clock: rebuilt from the schedules table, missed fires caught up, then armed."""
    store = ScheduleStore(app[DATABASE].sessions)
    service = app[ALERT_SERVICE]
    scheduler = Scheduler(
        store,
        app[METRICS].timed_fire(service.fire),
        service.presynthesize,
        horizon_s=app[SETTINGS].announcer_schedule_horizon_s,
    )
    app[SCHEDULES] = SchedulesDeps(store=store, scheduler=scheduler, alerts=service)
    database = app[DATABASE]
    leadership = Leadership(database.engine, postgres=not database.is_sqlite)
    scheduler.start(functools.partial(_listening, app[SETTINGS]), leadership)
    yield
    await scheduler.close()
    await leadership.release()


async def _warm_up(app: web.Application) -> AsyncIterator[None]:
    """The Twilio and ElevenLabs SDKs, kept off the way to listening (a third of a second of imports),
    loaded in the background once the server accepts connections: the first call placed and the first
    speech made find them ready (each loads its SDK itself if it comes first)."""

    async def warm() -> None:
        await _listening(app[SETTINGS])
        # After the scheduler's start (arming thousands shares the interpreter with the imports), or a
        # while after listening in a process that does not lead. A call placed before loads the SDK.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WARM_UP_WAIT_S):
                await app[SCHEDULES].scheduler.started.wait()
        await app[TWILIO].warm()
        await app[ELEVENLABS].warm()
        # What an older version or another umask left readable by others (the cache may hold many files).
        tightened = await asyncio.to_thread(tighten_tree, app[SETTINGS].announcer_data_dir)
        if tightened:
            log.info("made %d files and folders in the data directory private (0600 / 0700)", tightened)

    task = asyncio.create_task(warm(), name="warm-up")
    task.add_done_callback(_log_crash)
    yield
    task.cancel()
    await asyncio.wait([task])


async def _listening(settings: Settings) -> None:
    """Return once the server accepts connections on our own socket (not PUBLIC_URL: a proxy may sit
    there): accepted means webhooks get through."""
    async with asyncio.timeout(30):
        while True:
            try:
                _, writer = await asyncio.open_connection(settings.host, settings.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())


async def _close_sockets(app: web.Application) -> None:
    """On shutdown, before the server waits for its handlers to finish: a media websocket's handler
    lasts as long as its call, so an open one held the shutdown until aiohttp's timeout."""
    sockets: set[web.WebSocketResponse] = app[SOCKETS]
    for ws in list(sockets):  # a copy: closing removes them from the set
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


# --- handlers -------------------------------------------------------------------------------------


async def _wiring(app: web.Application) -> AsyncIterator[None]:
    """Build the handlers' dependencies once, after every resource they use is open."""
    settings, p = app[SETTINGS], app[PROVIDERS]
    checker = SignatureChecker(p.auth_token, public_url(settings))
    tokens = TokenBook()
    app[SIGNATURE] = checker
    app[VOICE] = VoiceDeps(
        signature=checker,
        store=app[STORE],
        greeting=app[GREETING],
        tokens=tokens,
        speaker=app[SPEAKER],
        account_sid=p.account_sid,
        media_url=media_url(settings),
    )
    line: AgentLine | None = None
    agent = app[AGENT]
    if agent is not None:
        line = AgentLine(
            agent.connector,
            agent.agent_id,
            app[STORE].journal,
            app[DELIVERIES].call_context,
            max_s=settings.agent_max_conversation_s,
        )
    app[MEDIA] = MediaDeps(
        store=app[STORE],
        twilio=app[TWILIO],
        speaker=app[SPEAKER],
        clock=app[CLOCK],
        tokens=tokens,
        account_sid=p.account_sid,
        on_outcome=app[DISPATCHER].on_call_outcome,
        script=CallScripts(app[DELIVERIES], app[RENDERER]).for_grant,
        start_agent=line,
        greeting_agent=AgentOffer(After.ANNOUNCEMENT) if settings.greeting_agent else None,
        amd=MachineDetection.from_settings(settings),
        live=LiveCalls(),
        first_audio=app[METRICS].audio_started,
    )
    app[CALLS] = calls.CallsDeps(store=app[STORE], deliveries=app[DELIVERIES], alerts=app[ALERT_SERVICE])
    sandbox = app[SANDBOX]
    app[dashboard.SERVICES] = dashboard.Services(
        settings=settings,
        alerts=app[ALERTS],
        schedules=app[SCHEDULES],
        calls=app[CALLS],
        sessions=DashboardSessions(app[DATABASE].sessions, token_mark(app[API_TOKEN])),
        incidents=app[INCIDENTS],
        oncall=app[ONCALL].store,
        dialing=functools.partial(_dialing_now, app),
        sandbox=sandbox is not None,
        recordings_dir=(settings.announcer_data_dir / "recordings").resolve()
        if sandbox is not None
        else None,
        api_token=app[API_TOKEN],
    )
    yield


async def _metrics(app: web.Application) -> AsyncIterator[None]:
    """What /metrics reads at scrape time, once everything that keeps it is open (metrics/state.py)."""
    media = app[MEDIA]
    assert media.live is not None
    sources = Sources(
        live=media.live,
        clock=app[CLOCK],
        admission=app[ADMISSION],
        speaker=app[SPEAKER],
        twilio=app[TWILIO],
        outbox=app[OUTBOX],
    )
    collector = StateCollector(sources)
    registry = app[METRICS].registry
    registry.register(collector)
    yield
    registry.unregister(collector)


async def _metrics_page(request: web.Request) -> web.Response:
    app = request.app
    token = app[API_TOKEN] if app[SETTINGS].announcer_metrics_auth else None
    scrape = Scrape(app[METRICS], app[DELIVERIES].due, token, app[INCIDENTS].store.counts)
    return await metrics_handler(request, scrape)


def _metered(app: web.Application, engine: Synthesizer) -> MeteredSynthesizer:
    m = app[METRICS]
    return MeteredSynthesizer(engine, latency=m.tts_latency, errors=m.tts_errors, characters=m.tts_characters)


async def _voice(request: web.Request) -> web.Response:
    return await voice_webhook(request, request.app[VOICE])


async def _status(request: web.Request) -> web.Response:
    app = request.app
    return await status_webhook(
        request,
        app[SIGNATURE],
        app[STORE],
        app[DISPATCHER].on_status,
        app[VOICE].tokens,
        app[METRICS].call_ended,
    )


async def _amd(request: web.Request) -> web.Response:
    app = request.app
    live = app[MEDIA].live
    assert live is not None
    return await amd_webhook(request, app[SIGNATURE], app[STORE], live)


def _with_schedules(
    handler: Callable[[web.Request, SchedulesDeps], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request, request.app[SCHEDULES])

    return handle


def _with_calls(
    handler: Callable[[web.Request, calls.CallsDeps], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request, request.app[CALLS])

    return handle


def _with_incidents(
    handler: Callable[[web.Request, IncidentsDeps], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request, request.app[INCIDENTS_API])

    return handle


def _with_integrations(
    handler: Callable[..., Awaitable[web.StreamResponse]], *args: Any
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request, request.app[INTEGRATIONS_API], *args)

    return handle


def _with_alerts(
    handler: Callable[[web.Request, AlertsDeps], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request, request.app[ALERTS])

    return handle


async def _media(request: web.Request) -> web.StreamResponse:
    app = request.app
    return await media_websocket(request, app[MEDIA], app[SIGNATURE], app[VOICE].media_url, app[SOCKETS])


async def _sandbox_info(request: web.Request) -> web.Response:
    """Where this service's loopback Twilio is, as `sandbox.json` says: `announcer sandbox call-in --url`
    finds it through the service, wherever its data directory is. Its credentials are throwaway ones made
    for this run; a service with Twilio credentials has no sandbox and answers 404."""
    app = request.app
    if app[SANDBOX] is None:
        raise error(404, "not_found", "this service calls through Twilio: it runs no sandbox")
    p = app[PROVIDERS]
    return web.json_response(
        {
            "base_url": p.twilio_base_url,
            "account_sid": p.account_sid,
            "auth_token": p.auth_token,
            "phone_number": p.phone_number,
            "greeting_agent": app[SETTINGS].greeting_agent,
        }
    )


async def _healthz(request: web.Request) -> web.Response:
    ok = await request.app[DATABASE].ping()
    body: dict[str, object] = {
        "status": "ok" if ok else "unavailable",
        "database": "ok" if ok else "unreachable",
        "sandbox": request.app[SANDBOX] is not None,
        # "running": this process runs the reminders' clock (caught up and armed); "standby": another
        # process on the same database does (PostgreSQL), or this one has not started it yet.
        "scheduler": "running" if request.app[SCHEDULES].scheduler.started.is_set() else "standby",
        # Which process answered: behind a load balancer, one of several (`serve --workers N`).
        "pid": os.getpid(),
    }
    body["dialing"] = await _dialing(request.app, ok)
    return web.json_response(body, status=200 if ok else 503)


async def _dialing_now(app: web.Application) -> dict[str, object]:
    """The dashboard's: without /healthz's ping first (a page that reads the database fails anyway
    when it does not answer)."""
    return await _dialing(app, True)


async def _dialing(app: web.Application, database_ok: bool) -> dict[str, object]:
    """The rate the dispatcher may dial at now, and which limit holds it: TWILIO_CPS, this process's
    headroom, or MAX_CONCURRENT_CALLS (the calls in flight, counted in the database like the dispatcher)."""
    dialing = app[ADMISSION].status()
    if database_ok:
        in_flight = await app[DELIVERIES].in_flight()
        dialing["in_flight"] = in_flight
        dialing["max_concurrent_calls"] = app[SETTINGS].max_concurrent_calls
        if in_flight >= app[SETTINGS].max_concurrent_calls:
            dialing["limited_by"] = "concurrency"
    return dialing
