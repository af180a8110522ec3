"""`/v1/alerts`, `/v1/preview`, `/v1/opt-outs`: accept an alert (every recipient rendered and validated
first, committed before the answer), report on it, cancel it. The alert service (deliveries/alerts.py)
accepts and cancels; these parse the request and answer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from announcer.api.http import (
    STRING_ID,
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
from announcer.deliveries.alerts import AlertRequest, AlertService
from announcer.deliveries.plan import PlanError, Problem, RecipientIn
from announcer.messages.phones import BadNumber, to_e164
from announcer.messages.workers import RenderBusy
from announcer.speech.engine import SpeechError
from announcer.speech.speaker import Speaker
from announcer.store.deliveries import AlertFinished, AlertView, DeliveryStore, IdempotencyConflict
from announcer.store.models import MAX_INT

PAGE = 100
MAX_PAGE = 1000
ALERTS_PAGE = 25  # GET /v1/alerts
MAX_ALERTS_PAGE = 200
AUDIO_VALUES = ("0", "1", "false", "true")  # POST /v1/preview?audio=
E164_PATTERN = r"^\+[0-9]{1,20}$"  # a stored number (GET /v1/opt-outs?after=)
E164 = re.compile(E164_PATTERN)


@dataclass
class AlertsDeps:
    alerts: AlertService
    store: DeliveryStore  # what the views read
    speaker: Speaker  # a preview's audio


def render_busy() -> web.HTTPException:
    return error(503, "busy", "the service is busy rendering other messages; try again shortly")


def alert_request(body: AlertBody) -> AlertRequest:
    recipients = [RecipientIn(r.phone, r.variables, r.name, r.timezone) for r in body.recipients]
    return AlertRequest(body.template, body.template_text, body.variables, recipients, body.options)


async def create_alert(request: web.Request, deps: AlertsDeps) -> web.Response:
    body = await read_model(request, AlertBody)
    key = idempotency_key(request)
    try:
        accepted = await deps.alerts.accept(alert_request(body), key)
    except PlanError as err:
        raise invalid(err.problems) from None
    except RenderBusy:
        raise render_busy() from None
    except IdempotencyConflict:
        raise idempotency_conflict() from None
    view = accepted.alert
    return web.json_response(
        {
            "id": view.id,
            "status": view.status,
            "recipients": view.recipients,
            "replayed": not accepted.created,
        },
        status=202,
    )


async def get_alert(request: web.Request, deps: AlertsDeps) -> web.Response:
    view = await deps.store.alert(path_key(request, "alert_id"))
    if view is None:
        raise error(404, "not_found", "no such alert")
    return web.json_response(_alert_json(view))


async def list_alerts(request: web.Request, deps: AlertsDeps) -> web.Response:
    """The newest alerts first, a page at a time (`before`: the last id of the page before)."""
    before = request.query.get("before")
    if before is not None and not STRING_ID.match(before):
        raise error(400, "invalid_query", "before must be an alert's id", field="before")
    limit = int_query(request, "limit", ALERTS_PAGE, 1, MAX_ALERTS_PAGE)
    views = await deps.store.recent_alerts(before=before, limit=limit)
    return web.json_response(
        {
            "alerts": [_alert_json(v) for v in views],
            "next_before": views[-1].id if len(views) == limit else None,
        }
    )


def _alert_json(view: AlertView) -> dict[str, Any]:
    return {
        "id": view.id,
        "status": view.status,
        "recipients": view.recipients,
        "counts": view.counts,
        "created_at": view.created_at.isoformat(),
        "finished_at": view.finished_at.isoformat() if view.finished_at else None,
        "options": view.options.model_dump(mode="json"),
    }


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
            "voicemail_text": d.voicemail_text,
            "answered_by": d.answered_by,
            "amd_ms": d.amd_ms,
            "played_ms": d.played_ms,
            "message_ms": d.message_ms,
            "keys": d.keys,
            "updated_at": d.updated_at.isoformat(),
            "history": d.history,
        }
        for d in rows
    ]
    following = items[-1]["index"] if len(items) == limit else None
    return web.json_response({"deliveries": items, "next_after": following})


async def cancel_alert(request: web.Request, deps: AlertsDeps) -> web.Response:
    alert_id = path_key(request, "alert_id")
    try:
        done = await deps.alerts.cancel(alert_id)
    except LookupError:
        raise error(404, "not_found", "no such alert") from None
    except AlertFinished as err:
        raise error(
            409, "alert_finished", f"the alert is already {err}; there is nothing to cancel"
        ) from None
    return web.json_response(
        {
            "id": alert_id,
            "status": done.alert.status,
            "canceled": done.canceled,
            "ringing_canceled": done.ringing_canceled,
            "counts": done.alert.counts,
        }
    )


async def preview(request: web.Request, deps: AlertsDeps) -> web.StreamResponse:
    wants_audio = request.query.get("audio", "0")
    if wants_audio not in AUDIO_VALUES:
        raise error(400, "invalid_query", f"audio must be one of {', '.join(AUDIO_VALUES)}", field="audio")
    body = await read_model(request, PreviewBody)
    r = body.recipient
    try:
        (planned,) = await deps.alerts.plan(
            body.template,
            body.template_text,
            body.variables,
            [RecipientIn(r.phone, r.variables, r.name, r.timezone)],
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
    return web.json_response(
        {
            "text": planned.text,
            "voicemail_text": planned.voicemail_text,
            "phone": planned.phone,
            "characters": len(planned.text),
        }
    )


async def list_opt_outs(request: web.Request, deps: AlertsDeps) -> web.Response:
    after = request.query.get("after")
    if after is not None and not E164.match(after):
        raise error(400, "invalid_query", "after must be a number in E.164 (+ and digits)", field="after")
    limit = int_query(request, "limit", PAGE, 1, MAX_PAGE)
    rows = await deps.store.opt_outs(after=after, limit=limit)
    return web.json_response(
        {
            "opt_outs": [
                {"phone": o.phone, "created_at": o.created_at.isoformat(), "delivery_id": o.delivery_id}
                for o in rows
            ],
            "next_after": rows[-1].phone if len(rows) == limit else None,
        }
    )


async def delete_opt_out(request: web.Request, deps: AlertsDeps) -> web.Response:
    try:
        # Normalised only, not checked against the destination policy: a number stored under an older,
        # wider policy (or an older libphonenumber's metadata) must stay removable, and removing a row
        # calls nobody.
        phone = to_e164(request.match_info["phone"], deps.alerts.limits.destinations.region)
    except BadNumber as err:
        raise invalid([Problem("phone", str(err))]) from None
    if not await deps.store.remove_opt_out(phone):
        raise error(404, "not_found", f"{phone} has not opted out")
    return web.json_response({"phone": phone, "opted_out": False})
