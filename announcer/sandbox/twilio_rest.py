"""HTTP face of the sandbox Twilio: the 2010-04-01 Calls API and the `/_sandbox` control API.

The Calls API answers exactly what the real `twilio` SDK parses (resource JSON, paging envelope,
error bodies `{code, message, more_info, status}` that become `TwilioRestException`), so the service
under test cannot tell it from api.twilio.com.  Both APIs sit behind HTTP Basic `AccountSid:AuthToken`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from announcer.sandbox.amd import TUNING, AmdMode, AmdRequest, AmdSettings
from announcer.sandbox.twilio_call import (
    DTMF_DIGITS,
    CallbackEvent,
    CallStatus,
    PhoneBehavior,
    SandboxCall,
    StatusCallbackConfig,
)
from announcer.sandbox.twilio_webhooks import API_VERSION, rfc2822
from announcer.sandbox.twiml_runner import FetchTwiml, InlineTwiml, TwimlSource

if TYPE_CHECKING:
    from announcer.sandbox.twilio import SandboxTwilio

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
DEFAULT_RING_TIMEOUT_S = 60
MAX_RING_TIMEOUT_S = 600
DEFAULT_TIME_LIMIT_S = 4 * 3600
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_UNANSWERED = frozenset({CallStatus.QUEUED, CallStatus.INITIATED, CallStatus.RINGING})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class RestRequest:
    """One request to the sandbox's HTTP API (appended on arrival, `status` filled on answer)."""

    method: str
    path: str
    form: list[tuple[str, str]]
    at: float  # time.monotonic() on arrival
    status: int = 0
    query: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class OutboundRequest:
    """A validated create-call request."""

    to: str
    from_: str
    source: TwimlSource
    status_callback: StatusCallbackConfig | None
    ring_timeout_s: float
    time_limit_s: float
    amd: AmdRequest | None  # None: no MachineDetection (or ignored, as with SendDigits)


class RestError(Exception):
    """A Twilio error answer: HTTP status and Twilio error code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return web.json_response(
            {
                "code": self.code,
                "message": self.message,
                "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
                "status": self.status,
            },
            status=self.status,
        )


def not_found(path: str) -> RestError:
    return RestError(404, 20404, f"The requested resource {path} was not found")


def call_uri(call: SandboxCall) -> str:
    return f"/{API_VERSION}/Accounts/{call.account_sid}/Calls/{call.sid}.json"


def call_resource(call: SandboxCall) -> dict[str, Any]:
    """The Call resource as api.twilio.com renders it (fields the SDK's CallInstance reads)."""
    base = call_uri(call).removesuffix(".json")
    return {
        "account_sid": call.account_sid,
        "annotation": None,
        "answered_by": call.answered_by,
        "api_version": API_VERSION,
        "caller_name": call.caller_name,
        "date_created": rfc2822(call.date_created),
        "date_updated": rfc2822(call.date_updated),
        "direction": str(call.direction),
        "duration": None if call.duration_s is None else str(call.duration_s),
        "end_time": None if call.end_time is None else rfc2822(call.end_time),
        "forwarded_from": None,
        "from": call.from_,
        "from_formatted": call.from_,
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": call.sid,
        "start_time": None if call.start_time is None else rfc2822(call.start_time),
        "status": str(call.status),
        "stir_verstat": None,
        "subresource_uris": {
            "notifications": f"{base}/Notifications.json",
            "recordings": f"{base}/Recordings.json",
            "payments": f"{base}/Payments.json",
            "events": f"{base}/Events.json",
            "siprec": f"{base}/Siprec.json",
            "streams": f"{base}/Streams.json",
            "user_defined_message_subscriptions": f"{base}/UserDefinedMessageSubscriptions.json",
            "user_defined_messages": f"{base}/UserDefinedMessages.json",
        },
        "to": call.to,
        "to_formatted": call.to,
        "trunk_sid": None,
        "uri": call_uri(call),
    }


def call_summary(call: SandboxCall) -> dict[str, Any]:
    """What `GET /_sandbox/calls/{sid}` shows: the phone's observations."""
    return {
        "sid": call.sid,
        "direction": str(call.direction),
        "from": call.from_,
        "to": call.to,
        "status": str(call.status),
        "ended": call.ended.is_set(),
        "wav_path": None if call.wav_path is None else str(call.wav_path),
        "said": call.said,
        "heard_seconds": call.heard_seconds,
        "frames_received": call.frames_received,
        "underrun_frames": call.underrun_frames,
        "marks_echoed": call.marks_echoed,
        "answered_by": call.answered_by,
        "machine_detection_duration_ms": None if call.amd is None else call.amd.duration_ms,
        "protocol_errors": call.protocol_errors,
        "application_errors": call.application_errors,
    }


# -- request parsing ---------------------------------------------------------------------------
def _http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _bounded_int(raw: str | None, default: int, low: int, high: int) -> int:
    # Twilio clamps out-of-range Timeout/TimeLimit values rather than rejecting the call
    try:
        return min(max(int(raw), low), high) if raw else default
    except ValueError:
        return default


INVALID_AMD = 21234  # "Invalid Machine Detection configuration value"


def _amd_error(message: str) -> RestError:
    return RestError(400, INVALID_AMD, f"Invalid Machine Detection configuration value: {message}")


def parse_amd(values: dict[str, str]) -> AmdRequest | None:
    """MachineDetection, AsyncAmd* and the tuning parameters, checked as Twilio does (error 21234:
    a mode other than Enable / DetectMessageEnd, or a tuning value outside its range)."""
    tuning: dict[str, int] = {}
    for name, default, low, high in TUNING:
        raw = values.get(name, "").strip()
        if not raw:
            tuning[name] = default
            continue
        try:
            value = int(raw)
        except ValueError:
            raise _amd_error(f"{name} must be a whole number from {low} to {high}, got {raw!r}") from None
        if not low <= value <= high:
            raise _amd_error(f"{name} must be from {low} to {high}, got {value}")
        tuning[name] = value
    mode_raw = values.get("MachineDetection", "").strip()
    if not mode_raw:
        return None
    try:
        mode = AmdMode(mode_raw)
    except ValueError:
        raise _amd_error(f"MachineDetection must be Enable or DetectMessageEnd, got {mode_raw!r}") from None
    async_raw = values.get("AsyncAmd", "false").strip().lower() or "false"
    if async_raw not in ("true", "false"):
        raise _amd_error(f"AsyncAmd must be true or false, got {async_raw!r}")
    callback = values.get("AsyncAmdStatusCallback", "").strip() or None
    if callback is not None and not _http_url(callback):
        raise _amd_error(f"AsyncAmdStatusCallback is not a valid URL: {callback}")
    method = values.get("AsyncAmdStatusCallbackMethod", "POST").strip().upper() or "POST"
    if method not in ("GET", "POST"):
        raise _amd_error(f"AsyncAmdStatusCallbackMethod must be GET or POST, got {method!r}")
    if values.get("SendDigits"):
        return None  # Twilio ignores MachineDetection when SendDigits is given
    timeout, speech, speech_end, silence = (tuning[t[0]] for t in TUNING)
    return AmdRequest(
        AmdSettings(mode, timeout, speech, speech_end, silence),
        async_amd=async_raw == "true",
        callback_url=callback,
        callback_method=method,
    )


def parse_create(form: list[tuple[str, str]]) -> OutboundRequest:
    """Validate a create-call form in the order Twilio reports problems."""
    values = dict(form)
    to, from_ = values.get("To", "").strip(), values.get("From", "").strip()
    url, twiml = values.get("Url", "").strip(), values.get("Twiml", "")
    if not to:
        raise RestError(400, 21201, "No 'To' number is specified")
    if not from_:
        raise RestError(400, 21603, "A 'From' phone number is required.")
    if not url and not twiml:
        raise RestError(400, 21205, "Url parameter is required.")
    if not E164.match(to):
        raise RestError(400, 21211, f"Invalid 'To' Phone Number: {to}")
    if not E164.match(from_):
        raise RestError(400, 21212, f"Invalid 'From' Phone Number: {from_}")
    source: TwimlSource
    if twiml:
        source = InlineTwiml(twiml)
    elif _http_url(url):
        source = FetchTwiml(url, values.get("Method", "POST").upper() or "POST", "voice")
    else:
        raise RestError(400, 21205, f"Url is not a valid URL: {url}")
    callback: StatusCallbackConfig | None = None
    if status_url := values.get("StatusCallback", "").strip():
        if not _http_url(status_url):
            raise RestError(400, 21609, f"StatusCallback is not a valid URL: {status_url}")
        names = [v.strip() for k, v in form if k == "StatusCallbackEvent"]
        # StatusCallbackEvent may also come as one space-separated value (TwiML style)
        names = [n for v in names for n in v.split()]
        try:
            events = frozenset(CallbackEvent(n) for n in names) or frozenset({CallbackEvent.COMPLETED})
        except ValueError:
            raise RestError(400, 21626, f"Invalid 'StatusCallbackEvent': {' '.join(names)}") from None
        method = values.get("StatusCallbackMethod", "POST").upper() or "POST"
        callback = StatusCallbackConfig(status_url, method, events)
    return OutboundRequest(
        to=to,
        from_=from_,
        source=source,
        status_callback=callback,
        ring_timeout_s=_bounded_int(values.get("Timeout"), DEFAULT_RING_TIMEOUT_S, 1, MAX_RING_TIMEOUT_S),
        time_limit_s=_bounded_int(values.get("TimeLimit"), DEFAULT_TIME_LIMIT_S, 1, DEFAULT_TIME_LIMIT_S * 6),
        amd=parse_amd(values),
    )


_TIME_FILTER = re.compile(r"^(Start|End)Time(>=|<=|>|<)?$")


def _parse_when(key: str, raw: str) -> dt.date | dt.datetime:
    try:
        if len(raw) == 10:
            return dt.date.fromisoformat(raw)
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(dt.UTC)
    except ValueError:
        raise RestError(400, 20001, f"Invalid {key}: {raw!r} (expected YYYY-MM-DD)") from None


def _time_matches(when: dt.datetime | None, op: str, bound: dt.date | dt.datetime) -> bool:
    if when is None:
        return False
    value: dt.date = when
    if not isinstance(bound, dt.datetime):
        value = when.date()  # a date-only filter compares calendar days (UTC)
    elif op == "":
        value, bound = when.date(), bound.date()
    # The SDK sends `StartTime>` for start_time_after, which Twilio documents as "on or after".
    if op in (">", ">="):
        return value >= bound
    if op == "<":
        return value < bound
    if op == "<=":
        return value <= bound
    return value == bound


def filter_calls(calls: list[SandboxCall], query: list[tuple[str, str]]) -> list[SandboxCall]:
    selected = calls
    for key, raw in query:
        if key in ("To", "From", "Status", "ParentCallSid"):
            pick: Callable[[SandboxCall], str | None] = {
                "To": lambda c: c.to,
                "From": lambda c: c.from_,
                "Status": lambda c: str(c.status),
                "ParentCallSid": lambda c: None,
            }[key]
            selected = [c for c in selected if pick(c) == raw]
        elif m := _TIME_FILTER.match(key):
            bound, op, start = _parse_when(key, raw), m.group(2) or "", m.group(1) == "Start"
            selected = [
                c
                for c in selected
                # a call not dialled yet has no start_time: fall back to its creation time
                if _time_matches((c.start_time or c.date_created) if start else c.end_time, op, bound)
            ]
    return selected


def _newest_first(item: tuple[int, SandboxCall]) -> tuple[float, int]:
    index, call = item
    return (-call.date_created.timestamp(), -index)


# -- the application ---------------------------------------------------------------------------
class RestApi:
    def __init__(self, sandbox: SandboxTwilio) -> None:
        self._sandbox = sandbox
        self._prefix = f"/{API_VERSION}/Accounts/{sandbox.account_sid}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        calls = f"/{API_VERSION}/Accounts/{{account}}/Calls"
        app.router.add_post(f"{calls}.json", self.create_call)
        app.router.add_get(f"{calls}.json", self.list_calls)
        app.router.add_get(f"{calls}/{{sid}}.json", self.fetch_call)
        app.router.add_post(f"{calls}/{{sid}}.json", self.update_call)
        app.router.add_post("/_sandbox/calls", self.control_call_in)
        app.router.add_get("/_sandbox/calls/{sid}", self.control_get)
        app.router.add_post("/_sandbox/calls/{sid}/digits", self.control_digits)
        app.router.add_post("/_sandbox/calls/{sid}/hangup", self.control_hangup)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = RestRequest(
            request.method, request.path, [], time.monotonic(), query=list(request.query.items())
        )
        self._sandbox.rest_log.append(entry)
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            entry.form = [(k, str(v)) for k, v in (await request.post()).items()]
        try:
            self._authenticate(request)
            response = await handler(request)
        except RestError as err:
            response = err.response()
        except web.HTTPNotFound:
            response = not_found(request.path).response()
        except web.HTTPMethodNotAllowed:
            response = RestError(
                405, 20004, f"Method {request.method} not allowed on {request.path}"
            ).response()
        entry.status = response.status
        return response

    def _authenticate(self, request: web.Request) -> None:
        unauthorized = RestError(401, 20003, "Authenticate")
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise unauthorized
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized from None
        sandbox = self._sandbox
        ok_user = hmac.compare_digest(user.encode(), sandbox.account_sid.encode())
        ok_password = hmac.compare_digest(password.encode(), sandbox.auth_token.encode())
        if not (ok_user and ok_password):
            raise unauthorized
        account = request.match_info.get("account")
        if account is not None and account != sandbox.account_sid:
            raise not_found(request.path)

    def _call(self, request: web.Request) -> SandboxCall:
        call = self._sandbox.calls.get(request.match_info["sid"])
        if call is None:
            raise not_found(request.path)
        return call

    @staticmethod
    async def _form(request: web.Request) -> list[tuple[str, str]]:
        return [(k, str(v)) for k, v in (await request.post()).items()]

    # -- Calls API ---------------------------------------------------------------------------
    async def create_call(self, request: web.Request) -> web.Response:
        outbound = parse_create(await self._form(request))
        behavior = self._sandbox.behavior(outbound.to)
        if behavior.refuse_code is not None and behavior.refuse_times != 0:
            if behavior.refuse_times is not None:
                behavior.refuse_times -= 1
            raise RestError(
                behavior.refuse_status, behavior.refuse_code, f"refused by the sandbox: {outbound.to}"
            )
        call = self._sandbox.create_outbound(outbound)
        return web.json_response(call_resource(call), status=201)

    async def fetch_call(self, request: web.Request) -> web.Response:
        return web.json_response(call_resource(self._call(request)))

    async def update_call(self, request: web.Request) -> web.Response:
        call = self._call(request)
        values = dict(await self._form(request))
        status = values.get("Status")
        if status is not None:
            if status not in (CallStatus.COMPLETED, CallStatus.CANCELED):
                raise RestError(400, 20001, f"Invalid Status {status!r}: must be 'completed' or 'canceled'")
            # `completed` hangs up whatever the state; `canceled` only touches a call not yet answered.
            # Either is a no-op on a call that is already over (Twilio answers 200).
            if status == CallStatus.COMPLETED or call.status in _UNANSWERED:
                self._sandbox.end_call(call)
            return web.json_response(call_resource(call))
        twiml, url = values.get("Twiml"), values.get("Url", "").strip()
        if twiml or url:
            if call.status is not CallStatus.IN_PROGRESS or call.is_ending():
                raise RestError(400, 21220, "Call is not in-progress. Cannot redirect.")
            source: TwimlSource
            if twiml:
                source = InlineTwiml(twiml)
            elif _http_url(url):
                source = FetchTwiml(url, values.get("Method", "POST").upper() or "POST", "redirect")
            else:
                raise RestError(400, 21205, f"Url is not a valid URL: {url}")
            self._sandbox.redirect(call, source)
        return web.json_response(call_resource(call))

    async def list_calls(self, request: web.Request) -> web.Response:
        query = [(k, v) for k, v in request.query.items() if k not in ("Page", "PageSize", "PageToken")]
        page_size = _bounded_int(request.query.get("PageSize"), DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        page = _bounded_int(request.query.get("Page"), 0, 0, 1_000_000)
        # newest first, as Twilio lists them; creation order breaks ties of equal timestamps
        calls = [c for _, c in sorted(enumerate(self._sandbox.calls.values()), key=_newest_first)]
        selected = filter_calls(calls, query)
        start = page * page_size
        records = selected[start : start + page_size]
        path = f"{self._prefix}/Calls.json"

        def page_uri(number: int) -> str:
            return f"{path}?{urlencode([*query, ('PageSize', str(page_size)), ('Page', str(number))])}"

        return web.json_response(
            {
                "calls": [call_resource(c) for c in records],
                "end": start + max(len(records) - 1, 0),
                "first_page_uri": page_uri(0),
                "next_page_uri": page_uri(page + 1) if start + page_size < len(selected) else None,
                "page": page,
                "page_size": page_size,
                "previous_page_uri": page_uri(page - 1) if page > 0 else None,
                "start": start,
                "uri": page_uri(page),
            }
        )

    # -- control API (the CLI's `announcer sandbox call-in`) ---------------------------------------
    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RestError(400, 20001, "body must be a JSON object") from None
        if not isinstance(body, dict):
            raise RestError(400, 20001, "body must be a JSON object")
        return body

    async def control_call_in(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        from_, to, name = body.get("from"), body.get("to"), body.get("caller_name")
        if not isinstance(from_, str) or not from_:
            raise RestError(400, 21603, "'from' is required")
        if to is not None and not isinstance(to, str):
            raise RestError(400, 21211, "'to' must be a string")
        if name is not None and not isinstance(name, str):
            raise RestError(400, 20001, "'caller_name' must be a string")
        lines = body.get("lines", [])
        if not isinstance(lines, list) or not all(isinstance(x, str) and 0 < len(x) <= 500 for x in lines):
            raise RestError(400, 20001, "'lines' must be a list of strings (1 to 500 characters)")
        behavior = PhoneBehavior(lines=tuple(lines))  # what the caller says, one line per reply
        call = await self._sandbox.call_in(from_, to=to, caller_name=name, behavior=behavior)
        return web.json_response({"sid": call.sid}, status=201)

    async def control_get(self, request: web.Request) -> web.Response:
        return web.json_response(call_summary(self._call(request)))

    async def control_digits(self, request: web.Request) -> web.Response:
        call = self._call(request)
        digits = (await self._json(request)).get("digits")
        if not isinstance(digits, str) or not digits or set(digits) - DTMF_DIGITS:
            raise RestError(400, 20001, "'digits' must be a string of 0-9, *, #, A-D")
        try:
            await call.press(digits)
        except RuntimeError as err:
            raise RestError(409, 20001, str(err)) from None
        return web.json_response({"sid": call.sid, "digits": digits})

    async def control_hangup(self, request: web.Request) -> web.Response:
        call = self._call(request)
        self._sandbox.end_call(call)
        return web.json_response(call_summary(call))
