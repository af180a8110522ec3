"""`POST /twilio/amd`: machine detection's asynchronous verdict (protocols.md, "Answering machine
detection"): `CallSid`, `AnsweredBy`, `MachineDetectionDuration`, signed like every webhook.

The verdict is stored on the call (`answered_by`, `amd_ms`: the first one is the call's) and handed to the
call's media session when it is live in this process (`LiveCalls`): the session's flow decides what it
means for the call (start the message, leave a voicemail, hang up on a fax).
"""

from __future__ import annotations

import logging

from aiohttp import web

from announcer import logs
from announcer.store.calls import CallStore
from announcer.store.models import AnsweredBy
from announcer.telephony.callflow import MachineVerdict
from announcer.telephony.live import LiveCalls
from announcer.telephony.signature import SignatureChecker
from announcer.telephony.voice import CALL_SID, bad_request, int_field, named_call, require

log = logging.getLogger(__name__)


async def amd_webhook(
    request: web.Request, signature: SignatureChecker, store: CallStore, live: LiveCalls
) -> web.Response:
    fields = await signature.verified_form(request)  # 403 before anything is read
    form = {k: fields[k] for k in fields}
    call_sid = require(form, "CallSid", CALL_SID)
    logs.bind(call_sid=call_sid)
    answered_by = require(form, "AnsweredBy")
    if answered_by not in set(AnsweredBy):
        raise bad_request("AnsweredBy", f"must be one of {', '.join(sorted(AnsweredBy))}")
    amd_ms = int_field(form, "MachineDetectionDuration")
    call_id = named_call(request)
    if call_id is None:
        found = await store.find_call(call_sid)
        call_id = found[0] if found is not None else None
    if call_id is None:
        log.info("machine detection verdict %s for a call we do not know; ignored", answered_by)
        return web.Response(status=204)
    store.record_amd(call_id, answered_by, amd_ms)
    live.verdict(call_sid, MachineVerdict(answered_by, amd_ms))
    log.info("machine detection: %s after %s ms", answered_by, amd_ms)
    return web.Response(status=204)
