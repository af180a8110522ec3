"""`POST /twilio/voice`: answer a call with a bidirectional media stream and a single-use token.

The caller never hears an application error: when anything fails the answer is TwiML `<Say>` of an
apology (style: GoAlert answers with fallback TwiML rather than letting Twilio time out).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from aiohttp import web

from announcer import logs
from announcer.messages.greeting import Greeting
from announcer.messages.phones import mask
from announcer.messages.render import RenderError
from announcer.speech.speaker import Speaker
from announcer.store.calls import CallStore
from announcer.store.models import MAX_INT, CallKind, CallStatus
from announcer.telephony import twiml
from announcer.telephony.signature import SignatureChecker
from announcer.telephony.tokens import TokenBook

log = logging.getLogger(__name__)

CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
WEBHOOK_BUDGET_S = 8.0  # Twilio waits 15 s for a webhook; answer well before that


@dataclass
class VoiceDeps:
    signature: SignatureChecker
    store: CallStore
    greeting: Greeting
    tokens: TokenBook
    speaker: Speaker
    account_sid: str
    media_url: str  # ws(s)://PUBLIC_HOST/twilio/media


def bad_request(field: str, reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=f'{{"error": "invalid_field", "field": "{field}", "reason": "{reason}"}}',
        content_type="application/json",
    )


def int_field(form: dict[str, str], field: str) -> int | None:
    """A webhook's integer field (absent or empty: None)."""
    value = form.get(field)
    if value is None or value == "":
        return None
    # ASCII digits only ("²" is a digit to str.isdigit), and within the database's INTEGER columns.
    if not (value.isascii() and value.isdigit()) or len(value) > 10 or int(value) > MAX_INT:
        raise bad_request(field, f"must be an integer from 0 to {MAX_INT}")
    return int(value)


def named_call(request: web.Request) -> int | None:
    """The call row our callback URL names (`?call=<id>`), if it names one. The URL is signed, so the id
    is ours: no lookup by SID, whose row may not have it yet (the create request's answer may still be
    on its way)."""
    attempt = request.query.get("call", "")
    if not attempt:
        return None
    if not (attempt.isascii() and attempt.isdigit()) or len(attempt) > 10 or int(attempt) > MAX_INT:
        raise bad_request("call", "the callback URL's call id is not one of ours")
    return int(attempt)


def xml(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/xml")


def require(
    form: dict[str, str], field: str, pattern: re.Pattern[str] | None = None, max_len: int = 64
) -> str:
    value = form.get(field, "")
    if not value:
        raise bad_request(field, "required")
    if len(value) > max_len or (pattern is not None and not pattern.match(value)):
        raise bad_request(field, "malformed")
    return value


async def voice_webhook(request: web.Request, deps: VoiceDeps) -> web.Response:
    fields = await deps.signature.verified_form(request)
    form = {k: fields[k] for k in fields}
    call_sid = require(form, "CallSid", CALL_SID)
    logs.bind(call_sid=call_sid, phone=form.get("From"))
    if require(form, "AccountSid") != deps.account_sid:
        raise bad_request("AccountSid", "not this account")
    from_number = require(form, "From")
    to_number = require(form, "To")
    direction = require(form, "Direction")
    status = form.get("CallStatus", "ringing")
    try:
        call_status = CallStatus(status)
    except ValueError:
        raise bad_request("CallStatus", "unknown status") from None
    try:
        async with asyncio.timeout(WEBHOOK_BUDGET_S):
            if direction != "inbound":
                # Outbound calls are announcements: placed and answered by the delivery pipeline.
                log.warning("voice webhook for unknown outbound call %s", call_sid)
                return xml(twiml.say_then_hangup(twiml.SORRY))
            text = deps.greeting.render(from_number, form.get("CallerName"))
            # Synthesis starts now, beside the database write, not when the stream's `start` arrives
            # (Twilio connects the stream only after it has this answer).
            deps.speaker.prefetch(text)
            opened = await deps.store.open_inbound(
                call_sid=call_sid,
                from_number=from_number,
                to_number=to_number,
                kind=CallKind.GREETING,
                text=text,
                status=call_status,
            )
    except RenderError as err:
        log.error("greeting for %s could not be rendered: %s", call_sid, err)
        return xml(twiml.say_then_hangup(twiml.SORRY))
    except (TimeoutError, OSError) as err:
        log.error("voice webhook for %s failed: %r", call_sid, err)
        return xml(twiml.say_then_hangup(twiml.SORRY))
    if opened is None:
        log.warning("voice webhook for %s, which has already ended: hanging up", call_sid)
        return xml(twiml.hangup())
    grant, token = opened
    deps.tokens.issued(token, grant)
    log.info("inbound call from %s: streaming the greeting", mask(from_number))
    return xml(twiml.connect_stream(deps.media_url, {"token": token}))
