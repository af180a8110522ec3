"""`GET /v1/calls/{call_sid}` (a call's events and its agent transcript), `GET /v1/deliveries/{id}/call`,
and `POST /outbound-call`: the reference example's agent call (ElevenLabs' Twilio outbound guide), with
the auth, validation and escaping it lacks.

The reference put the prompt and first message into the TwiML URL's query and the TwiML itself. Here
they never leave the database: the call is an alert of one delivery whose options hold them, placed by
the dispatcher like any other (rate limit, exactly once, status callbacks), and the media session reads
them with the single-use stream token's grant.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from announcer.api.http import error, idempotency_conflict, idempotency_key, invalid, path_id, read_model
from announcer.api.schemas import OutboundCallBody
from announcer.deliveries.dispatcher import Dispatcher
from announcer.deliveries.plan import Limits, Problem
from announcer.deliveries.policy import NO_JITTER, Backoff
from announcer.messages.phones import BadNumber
from announcer.options import StoredOptions
from announcer.store import transcripts
from announcer.store.calls import CallStore
from announcer.store.deliveries import DeliveryStore, IdempotencyConflict, NewDelivery
from announcer.telephony.voice import CALL_SID

SID_WAIT_S = 10.0  # how long /outbound-call waits for Twilio's Call SID before answering without it
SID_POLL = Backoff(base_s=0.02, cap_s=0.25, jitter=NO_JITTER)


@dataclass
class CallsDeps:
    store: CallStore
    deliveries: DeliveryStore
    dispatcher: Dispatcher
    limits: Limits
    agent_ready: bool


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
    if not deps.agent_ready:
        raise error(
            503, "agent_unavailable", "agent mode needs ELEVENLABS_AGENT_ID (an ElevenLabs agent to talk to)"
        )
    try:
        number = deps.limits.destinations.check(body.number)
    except BadNumber as err:
        raise invalid([Problem("number", str(err))]) from None
    key = idempotency_key(request)
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    try:
        alert_id, created = await deps.deliveries.create_alert(
            idempotency_key=key,
            request_hash=hashlib.sha256(canonical.encode()).hexdigest(),
            source="outbound-call",
            template=None,
            template_text=None,
            variables={},
            options=StoredOptions.outbound(prompt=body.prompt, first_message=body.first_message),
            deliveries=[
                NewDelivery(position=0, phone=number, name=None, timezone=None, variables={}, text="")
            ],
        )
    except IdempotencyConflict:
        raise idempotency_conflict() from None
    if created:
        deps.dispatcher.wake()
    (delivery,) = await deps.deliveries.deliveries(alert_id, after=-1, limit=1)
    call_sid = delivery.call_sid or await _wait_for_sid(deps, delivery.id)
    # The reference answered {success, message, callSid}; the rest says where to follow the call.
    return web.json_response(
        {
            "success": True,
            "message": "Call initiated" if call_sid else "Call queued",
            "callSid": call_sid,
            "alert_id": alert_id,
            "delivery_id": delivery.id,
        }
    )


async def _wait_for_sid(deps: CallsDeps, delivery_id: int) -> str | None:
    """The Call SID once Twilio has answered the create request (the dispatcher places the call within
    its rate limit); None if that takes longer than SID_WAIT_S (the call still goes out)."""
    try:
        async with asyncio.timeout(SID_WAIT_S):
            for poll in itertools.count(1):
                found = await deps.deliveries.delivery_call(delivery_id)
                if found is not None and found[1]:
                    return found[1]
                # The dispatcher has no per-delivery signal: polled, backing off gently (no jitter: one
                # request's own polls, nobody else's to spread).
                await asyncio.sleep(SID_POLL.delay_s(poll))
    except TimeoutError:
        pass
    return None
