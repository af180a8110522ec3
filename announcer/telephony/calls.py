"""Twilio's Calls REST resource through the official SDK: create, redirect, hang up, fetch, list.

The SDK's async client has no working timeout (sdk-notes.md, twilio probe 2), so every call is wrapped
in `asyncio.timeout`. Errors become one `TwilioError(status, code, message)`.

The SDK's REST client (with `requests` under it, and its call resources) is a tenth of a second of
imports: loaded by `warm()`, which the app runs in the background once the service listens, not on the
way to listening; else by the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from announcer.preload import Preload

if TYPE_CHECKING:
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    from announcer.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

NOT_FOUND = 20404
TOO_MANY_REQUESTS = 20429


class TwilioError(Exception):
    """A failed Twilio REST request; `code` is Twilio's error code (or the HTTP status, or 0 for network)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"twilio {status} {code}: {message}")

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status == 429 or self.code == TOO_MANY_REQUESTS or self.status >= 500


def _http_client(base_url: str) -> AsyncTwilioHttpClient:
    """The SDK's async HTTP client; for a base URL other than Twilio's (the sandbox and tests:
    TWILIO_API_BASE_URL) one that sends every request there, whatever Twilio domain the SDK picked (every
    domain, not only `api`)."""
    from twilio.http.async_http_client import AsyncTwilioHttpClient

    if base_url.rstrip("/") == "https://api.twilio.com":
        return AsyncTwilioHttpClient()
    base = urlsplit(base_url)

    class BaseUrlHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
        async def request(self, method: str, url: str, **kwargs: Any) -> Any:
            parts = urlsplit(url)
            url = urlunsplit((base.scheme, base.netloc, parts.path, parts.query, parts.fragment))
            return await super().request(method, url, **kwargs)

    return BaseUrlHttpClient()


@dataclass(frozen=True)
class MachineDetection:
    """Twilio's answering machine detection as a create-call request asks for it (protocols.md, "Answering
    machine detection"): asynchronous (the call connects at once, our stream runs while Twilio listens)
    and to the end of a machine's greeting (`DetectMessageEnd`: a machine is reported at its beep, the
    moment a voicemail message can start). The tuning is the deployment's (config.py: Twilio's defaults
    and ranges)."""

    timeout_s: int = 30
    speech_threshold_ms: int = 2400
    speech_end_threshold_ms: int = 1200
    silence_timeout_ms: int = 5000

    @classmethod
    def from_settings(cls, settings: Settings) -> MachineDetection:
        return cls(
            timeout_s=settings.announcer_amd_timeout_s,
            speech_threshold_ms=settings.announcer_amd_speech_threshold_ms,
            speech_end_threshold_ms=settings.announcer_amd_speech_end_threshold_ms,
            silence_timeout_ms=settings.announcer_amd_silence_timeout_ms,
        )

    def params(self, callback_url: str) -> dict[str, Any]:
        """The SDK's `calls.create` keyword arguments; the verdict is POSTed to `callback_url`."""
        return {
            "machine_detection": "DetectMessageEnd",
            "async_amd": "true",
            "async_amd_status_callback": callback_url,
            "async_amd_status_callback_method": "POST",
            "machine_detection_timeout": self.timeout_s,
            "machine_detection_speech_threshold": self.speech_threshold_ms,
            "machine_detection_speech_end_threshold": self.speech_end_threshold_ms,
            "machine_detection_silence_timeout": self.silence_timeout_ms,
        }


@dataclass(frozen=True)
class CallInfo:
    sid: str
    status: str
    to: str
    from_: str
    start_time: datetime | None
    duration_s: int | None = None  # talk time, from the answer; set once the call is over
    answered_by: str | None = None  # machine detection's verdict: given only to an answered call


class TwilioCalls:
    """Owns one SDK client; opened and closed by the app's lifecycle (it needs a running loop)."""

    def __init__(self, account_sid: str, auth_token: str, base_url: str, *, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None
        self._warming: asyncio.Future[None] | None = None
        self._connected = False
        self.placed = 0  # calls created (read by /metrics)
        self.refusals: Counter[int] = Counter()  # creates refused, by Twilio code (read by /metrics)

        def connect() -> Client:  # the credentials live in this closure until then: in no repr
            from twilio.rest import Client

            self._http = _http_client(base_url)
            # environment={}: TWILIO_REGION / TWILIO_EDGE in the environment would rewrite the host.
            client = Client(account_sid, auth_token, http_client=self._http, environment={})
            # The SDK imports its call resources on first use (about 40 ms): paid here, not by the first
            # call placed (which then reached Twilio late, and close behind the second).
            _ = client.calls
            return client

        self._connect: Callable[[], Client] | None = connect
        self._preload = Preload(
            "twilio.rest", "twilio.http.async_http_client", "twilio.rest.api.v2010.account.call"
        )

    async def warm(self) -> None:
        """Load the SDK in a worker thread (the event loop keeps serving meanwhile), make the client, and
        open its connection with one cheap request (a page of one call): the first call placed finds both
        ready. Without the connection, the first create request paid the TCP (and TLS) set-up and reached
        Twilio late, close behind the second: two creates closer than 1/TWILIO_CPS where Twilio counts
        them. Every request waits for this first; it runs once."""
        if self._warming is None:
            self._warming = asyncio.ensure_future(self._warm())
        await asyncio.shield(self._warming)

    async def _warm(self) -> None:
        await self._preload()
        client = self._sdk()
        try:
            async with asyncio.timeout(self._timeout_s):
                await client.calls.list_async(limit=1, page_size=1)
        except Exception as err:  # a warm-up: the first real request reports its own failure
            log.warning("Twilio did not answer the start-up request (%s); calls will still be tried", err)
        self._connected = True

    @property
    def loaded(self) -> bool:
        """Whether the SDK client is made and its connection opened (by `warm()`)."""
        return self._connected

    def _sdk(self) -> Client:
        if self._client is None:
            assert self._connect is not None
            self._client, self._connect = self._connect(), None
        return self._client

    async def aclose(self) -> None:
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
        if self._http is not None:
            await self._http.close()

    async def _call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        if not self._connected:
            await self.warm()  # not inside the timeout: Twilio has not been asked anything yet
        from twilio.base.exceptions import TwilioRestException  # loaded with the client: a lookup

        try:
            async with asyncio.timeout(self._timeout_s):
                return await make()
        except TwilioRestException as err:
            raise TwilioError(int(err.status), int(err.code or err.status), str(err.msg)) from err
        except TimeoutError as err:
            raise TwilioError(0, 0, f"{what}: no answer within {self._timeout_s:g} s") from err
        except OSError as err:
            raise TwilioError(0, 0, f"{what}: {type(err).__name__}: {err}") from err

    async def create(self, **params: Any) -> CallInfo:
        try:
            call = await self._call("create call", lambda: self._sdk().calls.create_async(**params))
        except TwilioError as err:
            self.refusals[err.code] += 1
            raise
        self.placed += 1
        return _info(call)

    async def fetch(self, call_sid: str) -> CallInfo:
        call = await self._call("fetch call", lambda: self._sdk().calls(call_sid).fetch_async())
        return _info(call)

    async def list_to(self, to: str, started_after: datetime) -> list[CallInfo]:
        calls = await self._call(
            "list calls", lambda: self._sdk().calls.list_async(to=to, start_time_after=started_after)
        )
        return [_info(c) for c in calls]

    async def redirect(self, call_sid: str, twiml: str) -> bool:
        """Replace what a live call is doing; False when the call had already ended."""
        try:
            await self._call("redirect call", lambda: self._sdk().calls(call_sid).update_async(twiml=twiml))
        except TwilioError as err:
            if err.code in (NOT_FOUND, 21220):  # gone, or no longer in progress
                return False
            raise
        return True

    async def cancel(self, call_sid: str) -> bool:
        """Stop a call that is queued or ringing (Status=canceled); False when it was no longer ringing."""
        try:
            call = await self._call(
                "cancel call", lambda: self._sdk().calls(call_sid).update_async(status="canceled")
            )
        except TwilioError as err:
            if err.code == NOT_FOUND:
                return False
            raise
        return str(call.status) == "canceled"

    async def hang_up(self, call_sid: str) -> bool:
        """End an answered call (Status=completed); False when it had already ended (20404 is fine)."""
        try:
            await self._call(
                "hang up call", lambda: self._sdk().calls(call_sid).update_async(status="completed")
            )
        except TwilioError as err:
            if err.code == NOT_FOUND:
                return False
            raise
        return True


def _info(call: Any) -> CallInfo:
    return CallInfo(
        sid=str(call.sid),
        status=str(call.status),
        to=str(call.to),
        from_=str(getattr(call, "_from", "") or ""),
        start_time=call.start_time if isinstance(call.start_time, datetime) else None,
        duration_s=_whole(getattr(call, "duration", None)),
        answered_by=str(call.answered_by) if getattr(call, "answered_by", None) else None,
    )


def _whole(value: object) -> int | None:
    """The SDK renders the Call resource's `duration` as Twilio sends it: a string of seconds, or null."""
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None
