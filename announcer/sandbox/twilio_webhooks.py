"""Requests the sandbox Twilio makes to the service: signed, logged, bounded by Twilio's timeout.

Every request carries `X-Twilio-Signature` = base64(HMAC-SHA1(auth token, URL + sorted k+v of the
POST form)); a GET is signed over the full URL alone (protocols.md, "Authentication of Twilio -> us").
The signature is computed with the SDK's own `RequestValidator`, so a service that validates with it
accepts exactly what real Twilio would send.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp
from twilio.request_validator import RequestValidator

from announcer.sandbox.twilio_call import CallStatus, SandboxCall

API_VERSION = "2010-04-01"
WEBHOOK_TIMEOUT_S = 15.0  # Twilio's default for voice webhooks
USER_AGENT = "TwilioProxy/1.1"

# Twilio debugger codes for webhook failures
HTTP_RETRIEVAL_FAILURE = 11200
HTTP_CONNECTION_FAILURE = 11205

Form = list[tuple[str, str]]


@dataclass
class WebhookRequest:
    """One request the sandbox sent to the service (appended when sent, `status` filled on answer)."""

    kind: str  # "voice", "redirect", "action", "status", "amd"
    call_sid: str
    method: str
    url: str
    form: Form
    signature: str
    at: float  # time.monotonic() when sent
    status: int | None = None  # None while waiting, or when there was no answer
    answered_at: float | None = None  # time.monotonic() when the whole answer had arrived
    error: str | None = None


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    content_type: str
    body: str


class WebhookFailure(Exception):
    """No HTTP answer at all (connection refused, timeout): Twilio's 11205."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code


def rfc2822(when: dt.datetime) -> str:
    """Twilio's date format, e.g. 'Tue, 10 Aug 2010 08:02:17 +0000'."""
    return email.utils.format_datetime(when.astimezone(dt.UTC))


def call_params(call: SandboxCall) -> Form:
    """The parameters Twilio sends with every voice request about a call (protocols.md, "Voice webhook")."""
    form: Form = [
        ("CallSid", call.sid),
        ("AccountSid", call.account_sid),
        ("From", call.from_),
        ("To", call.to),
        ("CallStatus", str(call.status)),
        ("Direction", str(call.direction)),
        ("ApiVersion", API_VERSION),
    ]
    if call.caller_name:
        form.append(("CallerName", call.caller_name))
    if call.answered_by:
        form.append(("AnsweredBy", call.answered_by))
    return form


def status_callback_params(call: SandboxCall, status: CallStatus, *, sip_code: int | None) -> Form:
    """A status callback (protocols.md, "Status callback"); `SequenceNumber` counts per call from 0."""
    form = [p for p in call_params(call) if p[0] != "CallStatus"]
    form += [
        ("CallStatus", str(status)),
        ("CallbackSource", "call-progress-events"),
        ("SequenceNumber", str(call.next_callback_seq())),
        ("Timestamp", rfc2822(dt.datetime.now(dt.UTC))),
    ]
    if status.terminal:
        duration = str(call.duration_s or 0)
        form += [("CallDuration", duration), ("Duration", duration)]
    if sip_code is not None:
        form.append(("SipResponseCode", str(sip_code)))
    return form


def amd_callback_params(call: SandboxCall, answered_by: str, duration_ms: int) -> Form:
    """The AsyncAmdStatusCallback form (protocols.md, "Answering machine detection")."""
    return [
        ("AccountSid", call.account_sid),
        ("CallSid", call.sid),
        ("AnsweredBy", answered_by),
        ("MachineDetectionDuration", str(duration_ms)),
    ]


class WebhookClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        auth_token: str,
        log: list[WebhookRequest],
        timeout_s: float = WEBHOOK_TIMEOUT_S,
    ) -> None:
        self._session = session
        self._validator = RequestValidator(auth_token)
        self._log = log
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s

    def sign(self, url: str, params: Form | None = None) -> str:
        signature: str = self._validator.compute_signature(url, dict(params or []))
        return signature

    async def send(self, *, kind: str, call_sid: str, url: str, method: str, form: Form) -> WebhookAnswer:
        """Send one webhook; any HTTP answer is returned, no answer raises `WebhookFailure`."""
        method = method.upper()
        if method == "GET":
            # a GET carries the parameters in the query string and is signed over the URL alone
            target = url + ("&" if "?" in url else "?") + urlencode(form)
            signature = self.sign(target)
            body: Form | None = None
        else:
            target, signature, body = url, self.sign(url, form), form
        record = WebhookRequest(kind, call_sid, method, target, form, signature, time.monotonic())
        self._log.append(record)
        headers = {
            "X-Twilio-Signature": signature,
            "User-Agent": USER_AGENT,
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        }
        try:
            async with self._session.request(
                method, target, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                text = await resp.text()
                record.answered_at = time.monotonic()
                record.status = resp.status
                return WebhookAnswer(resp.status, resp.content_type, text)
        except TimeoutError as err:
            record.error = f"timed out after {self._timeout_s:g} s"
            raise WebhookFailure(HTTP_CONNECTION_FAILURE, f"{method} {target} {record.error}") from err
        except (aiohttp.ClientError, ValueError) as err:
            record.error = repr(err)
            raise WebhookFailure(HTTP_CONNECTION_FAILURE, f"{method} {target} failed: {err!r}") from err
