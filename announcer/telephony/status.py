"""`POST /twilio/status`: call status callbacks (protocols.md, "Status callback").

Callbacks can arrive late, twice or out of order: `CallStore.apply_status` orders them by SequenceNumber
and status rank, so nothing moves a call backwards. A `failed` with SIP 480 is really a no-answer.
"""

from __future__ import annotations

import logging

from aiohttp import web

from announcer.store.calls import CallStore
from announcer.store.models import CallStatus
from announcer.telephony.signature import SignatureChecker
from announcer.telephony.voice import CALL_SID, bad_request, require

log = logging.getLogger(__name__)


def _int_field(form: dict[str, str], field: str) -> int | None:
    value = form.get(field)
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise bad_request(field, "must be a non-negative integer")
    return int(value)


async def status_webhook(request: web.Request, signature: SignatureChecker, store: CallStore) -> web.Response:
    fields = await signature.verified_form(request)
    form = {k: fields[k] for k in fields}
    call_sid = require(form, "CallSid", CALL_SID)
    try:
        status = CallStatus(require(form, "CallStatus"))
    except ValueError:
        raise bad_request("CallStatus", "unknown status") from None
    sequence = _int_field(form, "SequenceNumber")
    duration = _int_field(form, "CallDuration")
    sip = _int_field(form, "SipResponseCode")
    if status == CallStatus.FAILED and sip == 480:
        status = CallStatus.NO_ANSWER
    call_id = await store.find_by_sid(call_sid)
    if call_id is None:
        log.info("status %s for a call we do not know (%s); ignored", status, call_sid)
        return web.Response(status=204)
    extra = {k: v for k, v in (("sip_response_code", sip), ("answered_by", form.get("AnsweredBy"))) if v}
    await store.apply_status(
        call_id, status, sequence=sequence, source="callback", duration_s=duration, extra=extra
    )
    return web.Response(status=204)
