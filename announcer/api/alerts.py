"""`/v1/alerts`, `/v1/preview`, `/v1/opt-outs`: accept an alert (every recipient rendered and validated
first, committed before the answer), report on it, cancel it."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from announcer.api.http import (
    error,
    idempotency_conflict,
    idempotency_key,
    int_query,
    invalid,
    path_key,
    read_model,
)
from announcer.api.schemas import AlertBody, PreviewBody
from announcer.audio import wav_bytes
from announcer.deliveries.dispatcher import Dispatcher
from announcer.deliveries.plan import (
    Limits,
    PlanError,
    Problem,
    RecipientIn,
    agent_problems,
    callback_problems,
    option_key_problems,
    plan,
)
from announcer.messages.phones import BadNumber, to_e164
from announcer.messages.render import MessageRenderer
from announcer.messages.workers import RenderBusy, RenderPool
from announcer.options import StoredOptions
from announcer.speech.engine import SpeechError
from announcer.speech.speaker import Speaker
from announcer.store.deliveries import AlertFinished, DeliveryStore, IdempotencyConflict
from announcer.store.models import MAX_INT
from announcer.telephony.calls import TwilioCalls, TwilioError

log = logging.getLogger(__name__)
PAGE = 100
MAX_PAGE = 1000
AUDIO_VALUES = ("0", "1", "false", "true")  # POST /v1/preview?audio=


@dataclass
class AlertsDeps:
    store: DeliveryStore
    renderer: MessageRenderer
    limits: Limits
    dispatcher: Dispatcher
    speaker: Speaker
    twilio: TwilioCalls
    renders: RenderPool  # every render of a request runs there, never on the event loop


def render_busy() -> web.HTTPException:
    return error(503, "busy", "the service is busy rendering other messages; try again shortly")


def _recipients(body: AlertBody) -> list[RecipientIn]:
    return [RecipientIn(r.phone, r.variables, r.name, r.timezone) for r in body.recipients]


async def create_alert(request: web.Request, deps: AlertsDeps) -> web.Response:
    body = await read_model(request, AlertBody)
    key = idempotency_key(request)
    problems = agent_problems(body.options.agent is not None, deps.limits)
    problems += option_key_problems(body.options, reminder=False)
    problems += callback_problems(body.options.callback_url, deps.limits)
    if problems:
        raise invalid(problems)
    try:
        # Off the event loop, even for one recipient: a template may be expensive (up to its budget),
        # and thousands of renders take a good fraction of a second; the live calls keep their audio.
        planned = await deps.renders.run(
            plan,
            deps.renderer,
            body.template,
            body.template_text,
            body.variables,
            _recipients(body),
            deps.limits,
        )
    except PlanError as err:
        raise invalid(err.problems) from None
    except RenderBusy:
        raise render_busy() from None
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    try:
        alert_id, created = await deps.store.create_alert(
            idempotency_key=key,
            request_hash=hashlib.sha256(canonical.encode()).hexdigest(),
            source="api",
            template=body.template,
            template_text=body.template_text,
            variables=body.variables,
            options=StoredOptions.accepted(body.options),
            deliveries=planned,
        )
    except IdempotencyConflict:
        raise idempotency_conflict() from None
    if created:
        deps.dispatcher.wake()
        log.info("alert %s accepted: %d recipients", alert_id, len(planned))
    view = await deps.store.alert(alert_id)
    assert view is not None
    return web.json_response(
        {"id": alert_id, "status": view.status, "recipients": view.recipients, "replayed": not created},
        status=202,
    )


async def get_alert(request: web.Request, deps: AlertsDeps) -> web.Response:
    view = await deps.store.alert(path_key(request, "alert_id"))
    if view is None:
        raise error(404, "not_found", "no such alert")
    return web.json_response(
        {
            "id": view.id,
            "status": view.status,
            "recipients": view.recipients,
            "counts": view.counts,
            "created_at": view.created_at.isoformat(),
            "finished_at": view.finished_at.isoformat() if view.finished_at else None,
            "options": view.options.model_dump(mode="json"),
        }
    )


async def list_deliveries(request: web.Request, deps: AlertsDeps) -> web.Response:
    alert_id = path_key(request, "alert_id")
    after = int_query(request, "after", -1, -1, MAX_INT)
    limit = int_query(request, "limit", PAGE, 1, MAX_PAGE)
    if await deps.store.alert(alert_id) is None:
        raise error(404, "not_found", "no such alert")
    rows = await deps.store.deliveries(alert_id, after=after, limit=limit)
    items: list[dict[str, Any]] = [
        {
            "id": d.id,
            "index": d.position,
            "phone": d.phone,
            "name": d.name,
            "state": d.state,
            "attempt": d.attempt,
            "outcome": d.outcome,
            "outcome_code": d.outcome_code,
            "outcome_reason": d.outcome_reason,
            "call_sid": d.call_sid,
            "text": d.text,
            "updated_at": d.updated_at.isoformat(),
            "history": d.history,
        }
        for d in rows
    ]
    following = items[-1]["index"] if len(items) == limit else None
    return web.json_response({"deliveries": items, "next_after": following})


async def cancel_alert(request: web.Request, deps: AlertsDeps) -> web.Response:
    alert_id = path_key(request, "alert_id")
    unplaced = deps.dispatcher.withdraw(alert_id)  # claimed here, not dialed yet: never dialed now
    try:
        canceled, live = await deps.store.cancel_alert(alert_id, unplaced)
    except LookupError:
        deps.dispatcher.give_back(unplaced)
        raise error(404, "not_found", "no such alert") from None
    except AlertFinished as err:
        deps.dispatcher.give_back(unplaced)
        raise error(
            409, "alert_finished", f"the alert is already {err}; there is nothing to cancel"
        ) from None
    stopped = 0
    for _, sid in live:
        try:
            stopped += await deps.twilio.cancel(sid)
        except TwilioError as e:
            log.warning("could not cancel ringing call %s: %s", sid, e)
    view = await deps.store.alert(alert_id)
    assert view is not None
    return web.json_response(
        {
            "id": alert_id,
            "status": view.status,
            "canceled": canceled,
            "ringing_canceled": stopped,
            "counts": view.counts,
        }
    )


async def preview(request: web.Request, deps: AlertsDeps) -> web.StreamResponse:
    wants_audio = request.query.get("audio", "0")
    if wants_audio not in AUDIO_VALUES:
        raise error(400, "invalid_query", f"audio must be one of {', '.join(AUDIO_VALUES)}", field="audio")
    body = await read_model(request, PreviewBody)
    r = body.recipient
    try:
        (planned,) = await deps.renders.run(
            plan,
            deps.renderer,
            body.template,
            body.template_text,
            body.variables,
            [RecipientIn(r.phone, r.variables, r.name, r.timezone)],
            deps.limits,
        )
    except PlanError as err:
        raise invalid(
            [Problem(p.field.replace("recipients[0]", "recipient"), p.reason) for p in err.problems]
        ) from None
    except RenderBusy:
        raise render_busy() from None
    if wants_audio in ("1", "true"):
        try:
            audio = await deps.speaker.synthesize(planned.text)
        except SpeechError as err:
            raise error(502, "speech_failed", f"the text could not be synthesized: {err.reason}") from None
        return web.Response(body=wav_bytes(audio), content_type="audio/wav")
    return web.json_response({"text": planned.text, "phone": planned.phone, "characters": len(planned.text)})


async def delete_opt_out(request: web.Request, deps: AlertsDeps) -> web.Response:
    try:
        # Normalised only, not checked against the destination policy: a number stored under an older,
        # wider policy (or an older libphonenumber's metadata) must stay removable, and removing a row
        # calls nobody.
        phone = to_e164(request.match_info["phone"], deps.limits.destinations.region)
    except BadNumber as err:
        raise invalid([Problem("phone", str(err))]) from None
    if not await deps.store.remove_opt_out(phone):
        raise error(404, "not_found", f"{phone} has not opted out")
    return web.json_response({"phone": phone, "opted_out": False})
