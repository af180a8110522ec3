"""`GET /v1/calls/{call_sid}` (a call's events and its agent transcript), `GET /v1/deliveries/{id}/call`,
and `POST /outbound-call`: the reference example's agent call (ElevenLabs' Twilio outbound guide), with
the auth, validation and escaping it lacks.

The reference put the prompt and first message into the TwiML URL's query and the TwiML itself. Here
they never leave the database: the call is an alert of one delivery whose options hold them, placed by
the dispatcher like any other (rate limit, exactly once, status callbacks), and the media session reads
them with the single-use stream token's grant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from announcer.api.http import error, idempotency_conflict, idempotency_key, invalid, path_id, read_model
from announcer.api.schemas import OutboundCallBody
from announcer.deliveries.alerts import AgentUnavailable, AlertService
from announcer.deliveries.plan import PlanError
from announcer.store import transcripts
from announcer.store.calls import CallStore
from announcer.store.deliveries import DeliveryStore, IdempotencyConflict
from announcer.telephony.voice import CALL_SID


@dataclass
class CallsDeps:
    store: CallStore
    deliveries: DeliveryStore
    alerts: AlertService


async def get_call(request: web.Request, deps: CallsDeps) -> web.Response:
    call_sid = request.match_info["call_sid"]
    if not CALL_SID.match(call_sid):
        raise error(404, "not_found", "no such call (a Call SID is CA and 32 hex digits)", field="call_sid")
    call_id = await deps.store.find_by_sid(call_sid)
    if call_id is None:
        raise error(404, "not_found", "no such call", field="call_sid")
    return web.json_response(await _call_view(deps, call_id))


async def get_delivery_call(request: web.Request, deps: CallsDeps) -> web.Response:
    delivery_id = path_id(request, "delivery_id")
    found = await deps.deliveries.delivery_call(delivery_id)
    if found is None:
        raise error(404, "not_found", "no such delivery", field="delivery_id")
    if found[0] is None:
        raise error(404, "not_found", "this delivery has not been called yet", field="delivery_id")
    return web.json_response(await _call_view(deps, found[0]))


async def _call_view(deps: CallsDeps, call_id: int) -> dict[str, Any]:
    call = await deps.store.get(call_id)
    assert call is not None
    events = await deps.store.events(call_id)
    turns = await transcripts.turns(deps.store.sessions, call_id)
    return {
        "call_sid": call.call_sid,
        "direction": call.direction,
        "kind": call.kind,
        "to": call.to_number,
        "from": call.from_number,
        "status": call.status,
        "outcome": call.outcome,
        "answered_by": call.answered_by,
        "amd_ms": call.amd_ms,
        "played_ms": call.played_ms,
        "message_ms": call.message_ms,
        "keys": call.keys,
        "delivery_id": call.delivery_id,
        "created_at": call.created_at.isoformat(),
        "answered_at": call.answered_at.isoformat() if call.answered_at else None,
        "ended_at": call.ended_at.isoformat() if call.ended_at else None,
        "events": [{"at": e.at.isoformat(), "kind": e.kind, **e.detail} for e in events],
        "transcript": [
            {
                "seq": t.seq,
                "at": t.at.isoformat(),
                "role": t.role,
                "text": t.text,
                "interrupted": t.interrupted,
                **({"original_text": t.original_text} if t.original_text is not None else {}),
                **({"played_ms": t.played_ms, "sent_ms": t.sent_ms} if t.interrupted else {}),
            }
            for t in turns
        ],
    }


async def outbound_call(request: web.Request, deps: CallsDeps) -> web.Response:
    body = await read_model(request, OutboundCallBody)
    try:
        outbound = deps.alerts.outbound(body.number, body.prompt, body.first_message)
    except AgentUnavailable:
        raise error(
            503, "agent_unavailable", "agent mode needs ELEVENLABS_AGENT_ID (an ElevenLabs agent to talk to)"
        ) from None
    except PlanError as err:
        raise invalid(err.problems) from None
    key = idempotency_key(request)
    try:
        placed = await deps.alerts.call_out(outbound, key)
    except IdempotencyConflict:
        raise idempotency_conflict() from None
    # The reference answered {success, message, callSid}; the rest says where to follow the call.
    return web.json_response(
        {
            "success": True,
            "message": "Call initiated" if placed.call_sid else "Call queued",
            "callSid": placed.call_sid,
            "alert_id": placed.alert_id,
            "delivery_id": placed.delivery_id,
        }
    )
