"""`POST /twilio/status`: call status callbacks (protocols.md, "Status callback").

Callbacks can arrive late, twice or out of order: `CallStore.apply_status` orders them by SequenceNumber
and status rank, so nothing moves a call backwards. A `failed` with SIP 480 is really a no-answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from announcer import logs
from announcer.store.calls import CallStore
from announcer.store.delivery_states import twilio_says_answered
from announcer.store.models import TERMINAL_STATUSES, CallStatus
from announcer.telephony.signature import SignatureChecker
from announcer.telephony.tokens import TokenBook
from announcer.telephony.voice import CALL_SID, bad_request, int_field, named_call, require

log = logging.getLogger(__name__)
# A "failed" call with this SIP code was not answered (protocols.md): recorded as no-answer, once, here.
SIP_TEMPORARILY_UNAVAILABLE = 480


@dataclass(frozen=True)
class StatusReport:
    """A status callback that moved a call, for whoever carries the call (a delivery's dispatcher)."""

    call_id: int
    status: CallStatus
    answered: bool
    sip_code: int | None
    error_code: int | None
    answered_by: str | None = None  # Twilio's AnsweredBy, when the callback carries one


StatusObserver = Callable[[StatusReport], Awaitable[None]]


async def status_webhook(
    request: web.Request,
    signature: SignatureChecker,
    store: CallStore,
    observer: StatusObserver | None = None,
    tokens: TokenBook | None = None,
    on_end: Callable[[bool, CallStatus], None] | None = None,  # (outbound, final status): the metrics
) -> web.Response:
    fields = await signature.verified_form(request)
    form = {k: fields[k] for k in fields}
    call_sid = require(form, "CallSid", CALL_SID)
    logs.bind(call_sid=call_sid)
    try:
        status = CallStatus(require(form, "CallStatus"))
    except ValueError:
        raise bad_request("CallStatus", "unknown status") from None
    sequence = int_field(form, "SequenceNumber")
    duration = int_field(form, "CallDuration")
    sip = int_field(form, "SipResponseCode")
    if status == CallStatus.FAILED and sip == SIP_TEMPORARILY_UNAVAILABLE:
        status = CallStatus.NO_ANSWER
    error_code = int_field(form, "ErrorCode")
    named_sid: str | None = None
    call_id = named_call(request)
    if call_id is not None:
        carries_delivery, named_sid = True, call_sid
    else:
        found = await store.find_call(call_sid)
        call_id, carries_delivery = found if found is not None else (None, False)
    if call_id is None:
        log.info("status %s for a call we do not know (%s); ignored", status, call_sid)
        return web.Response(status=204)
    extra = {k: v for k, v in (("sip_response_code", sip), ("answered_by", form.get("AnsweredBy"))) if v}
    if error_code:
        extra["error_code"] = error_code
    applied = await store.apply_status(
        call_id,
        status,
        sequence=sequence,
        source="callback",
        duration_s=duration,
        extra=extra,
        call_sid=named_sid,
    )
    if applied.moved and status in TERMINAL_STATUSES and tokens is not None:
        tokens.call_ended(call_sid)  # a stream that comes after the end admits nothing
    if applied.moved and status in TERMINAL_STATUSES and on_end is not None:
        on_end(carries_delivery, status)
    if applied.moved and observer is not None and carries_delivery:  # the greeting line: no one to tell
        # Answered as our row knows it, or as Twilio says: the `in-progress` may have gone to a process
        # that died before recording it.
        answered = applied.answered or (
            status == CallStatus.COMPLETED and twilio_says_answered(duration, form.get("AnsweredBy"))
        )
        await observer(StatusReport(call_id, status, answered, sip, error_code, form.get("AnsweredBy")))
    return web.Response(status=204)
