"""A loopback ElevenLabs text-to-speech server that the real `elevenlabs` SDK talks to.

It speaks the wire protocol of `POST /v1/text-to-speech/{voice_id}/stream` (and the non-`/stream`
twin, which streams too) as protocols.md describes it: `xi-api-key` checked, `output_format` in the
query, a JSON body, a chunked `audio/basic` body of raw mu-law, and ElevenLabs' error shapes. The voice
itself is injected (`synthesize(text) -> mu-law bytes`, run in a thread), so this module needs nothing
from the service. Knobs shape the stream (first-byte delay, chunk size, pace) and `fail_next` injects
the provider's failures, so tests can drive every path the service must survive.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from aiohttp import web

log = logging.getLogger(__name__)

SUPPORTED_OUTPUT_FORMAT = "ulaw_8000"
_OPTIONAL_STRINGS = ("model_id", "language_code", "previous_text", "next_text")
_VOICE_NUMBERS = ("stability", "similarity_boost", "style", "speed", "clone_strength")
_VOICE_FLAGS = ("use_speaker_boost",)
_HUNG_FOR_S = 3600.0  # "timeout": how long a hung request stays silent unless the client leaves first


class FailureKind(StrEnum):
    UNAUTHORIZED = "unauthorized"  # 401 invalid_api_key
    RATE_LIMITED = "rate_limited"  # 429 too_many_concurrent_requests
    QUOTA = "quota"  # 401 quota_exceeded
    SERVER_ERROR = "server_error"  # 500, plain-text body (not every failure is ElevenLabs' JSON)
    TIMEOUT = "timeout"  # accept the request, then say nothing
    CUT = "cut"  # 200, `after_bytes` of audio, then the connection is aborted mid-body


_ERROR_ANSWERS: dict[FailureKind, tuple[int, str, str]] = {
    FailureKind.UNAUTHORIZED: (401, "invalid_api_key", "Invalid API key"),
    FailureKind.RATE_LIMITED: (
        429,
        "too_many_concurrent_requests",
        "Too many concurrent requests for your subscription. Please try again later.",
    ),
    FailureKind.QUOTA: (401, "quota_exceeded", "This request exceeds your quota of characters."),
}


@dataclass
class TtsRequest:
    """One request as the sandbox saw it; times are `time.monotonic()`."""

    voice_id: str
    path: str
    output_format: str | None
    received_at: float
    text: str = ""
    model_id: str | None = None
    previous_text: str | None = None
    next_text: str | None = None
    language_code: str | None = None
    voice_settings: dict[str, Any] | None = None
    status: int = 0  # the HTTP status answered (0 until the answer starts)
    injected: FailureKind | None = None
    # "pending" -> "streaming" -> "completed" | "client_gone" | "cut" | "closed" (the sandbox shut down);
    # or "rejected" (an error status), or "hung" (an injected timeout) -> "client_gone" | "closed"
    outcome: str = "pending"
    bytes_sent: int = 0
    first_byte_at: float | None = None
    finished_at: float | None = None


class Extension(Protocol):
    """More of the ElevenLabs API on the same app and port (the agents endpoint, `convai.py`)."""

    def install(self, app: web.Application) -> None:
        """Add routes; called by `start()` before the app is frozen."""

    async def close(self) -> None:
        """Called by `close()` before the server stops, to end long-lived requests (websockets)."""


@dataclass
class _Failure:
    kind: FailureKind
    times: int
    after_bytes: int


class SandboxElevenLabs:
    """Started and closed by its owner; the knobs are plain attributes, read at each use."""

    def __init__(
        self, api_key: str, synthesize: Callable[[str], bytes], extensions: Sequence[Extension] = ()
    ) -> None:
        self._api_key = api_key
        self._synthesize = synthesize
        self._extensions = tuple(extensions)
        self.first_byte_delay_s: float = 0.0
        self.chunk_bytes: int = 800
        self.bytes_per_second: float | None = None  # None: as fast as possible; 16000 = twice real time
        self.requests: list[TtsRequest] = []
        self._failures: collections.deque[_Failure] = collections.deque()
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url: str | None = None  # set by start()

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and return the base URL to give the SDK."""
        app = web.Application()
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._tts)
        app.router.add_post("/v1/text-to-speech/{voice_id}", self._tts)
        for extension in self._extensions:
            extension.install(app)
        # handler_cancellation: a client that hangs up cancels its handler at once, so a request's
        # outcome says "client_gone" even while the handler waits rather than writes.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def close(self) -> None:
        self._closing.set()  # releases "timeout" handlers, so the shutdown does not wait for them
        for extension in self._extensions:
            await extension.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- test controls ----------------------------------------------------------------------------

    def fail_next(self, kind: str, times: int = 1, after_bytes: int = 800) -> None:
        """The next `times` requests fail as `kind` (a FailureKind value); queued after earlier ones."""
        self._failures.append(_Failure(FailureKind(kind), times, after_bytes))

    async def wait_for_requests(self, n: int, timeout: float) -> list[TtsRequest]:
        """Wait until `n` requests have arrived (TimeoutError after `timeout` seconds)."""
        await self.wait_until(lambda: len(self.requests) >= n, timeout)
        return self.requests

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until `predicate()` holds; checked when a request arrives, sends its first byte or ends."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed.clear()

    # --- the endpoint -----------------------------------------------------------------------------

    async def _tts(self, request: web.Request) -> web.StreamResponse:
        record = TtsRequest(
            voice_id=request.match_info["voice_id"],
            path=request.path,
            output_format=request.query.get("output_format"),
            received_at=time.monotonic(),
        )
        self.requests.append(record)
        self._pulse()
        try:
            return await self._answer(request, record)
        except asyncio.CancelledError:
            record.outcome = "closed" if self._closing.is_set() else "client_gone"
            raise
        finally:
            record.finished_at = time.monotonic()
            self._pulse()

    async def _answer(self, request: web.Request, record: TtsRequest) -> web.StreamResponse:
        key = request.headers.get("xi-api-key")
        if key is None or not hmac.compare_digest(key.encode(), self._api_key.encode()):
            return _error(record, FailureKind.UNAUTHORIZED)
        problems = _check_query(request)
        try:
            body = json.loads(await request.read())
        except ValueError as err:
            problems.append(_problem(["body"], f"JSON decode error: {err}", "json_invalid"))
        else:
            problems += _check_body(body, record)
        if problems:
            return _rejected(record, web.json_response({"detail": problems}, status=422))

        failure = self._take_failure()
        record.injected = failure.kind if failure else None
        if failure is not None and failure.kind in _ERROR_ANSWERS:
            return _error(record, failure.kind)
        if failure is not None and failure.kind is FailureKind.SERVER_ERROR:
            return _rejected(record, web.Response(status=500, text="Internal Server Error"))
        if failure is not None and failure.kind is FailureKind.TIMEOUT:
            record.outcome = "hung"
            self._pulse()
            # Until the client gives up (its disconnect cancels this handler) or the sandbox closes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_HUNG_FOR_S):
                    await self._closing.wait()
            released = _rejected(record, web.Response(status=504, text="sandbox: hung request released"))
            record.outcome = "closed"
            return released

        received = time.monotonic()
        audio = await asyncio.to_thread(self._synthesize, record.text)
        # The first byte leaves `first_byte_delay_s` after the request, the local synthesis included.
        wait = received + self.first_byte_delay_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        response = web.StreamResponse(status=200, headers={"Content-Type": "audio/basic"})
        response.enable_chunked_encoding()
        limit = min(failure.after_bytes, len(audio)) if failure is not None else len(audio)
        try:
            await response.prepare(request)
            record.status = 200
            record.outcome = "streaming"
            await self._send(response, record, audio[:limit])
            if failure is not None:  # CUT: no terminating chunk, the connection just ends
                if request.transport is not None:
                    request.transport.close()
                record.outcome = "cut"
                return response
            await response.write_eof()
        except ConnectionResetError:
            # The client hung up mid-stream (a caller leaving early): routine, so answer quietly
            # (aiohttp ignores a ConnectionError while it finishes the response) rather than raise.
            record.outcome = "client_gone"
            return response
        record.outcome = "completed"
        return response

    async def _send(self, response: web.StreamResponse, record: TtsRequest, audio: bytes) -> None:
        started = time.monotonic()
        sent = 0
        while sent < len(audio):
            chunk = audio[sent : sent + max(1, self.chunk_bytes)]
            pace = self.bytes_per_second
            if pace:  # the first chunk leaves at the first byte, the next ones as `pace` makes them
                delay = started + sent / pace - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await response.write(chunk)
            sent += len(chunk)
            record.bytes_sent = sent
            if record.first_byte_at is None:
                record.first_byte_at = time.monotonic()
                self._pulse()

    def _take_failure(self) -> _Failure | None:
        if not self._failures:
            return None
        head = self._failures[0]
        head.times -= 1
        if head.times <= 0:
            self._failures.popleft()
        return head


# --- answers and validation (FastAPI's 422 shape, as ElevenLabs answers) --------------------------


def _rejected(record: TtsRequest, response: web.Response) -> web.Response:
    record.status = response.status
    record.outcome = "rejected"
    return response


def _error(record: TtsRequest, kind: FailureKind) -> web.Response:
    status, code, message = _ERROR_ANSWERS[kind]
    return _rejected(
        record, web.json_response({"detail": {"status": code, "message": message}}, status=status)
    )


def _problem(loc: list[str | int], msg: str, kind: str) -> dict[str, object]:
    return {"loc": loc, "msg": msg, "type": kind}


def _check_query(request: web.Request) -> list[dict[str, object]]:
    fmt = request.query.get("output_format")
    if fmt == SUPPORTED_OUTPUT_FORMAT:
        return []
    # The real default is mp3_44100_128; the sandbox only speaks telephone audio.
    msg = f"the sandbox supports only {SUPPORTED_OUTPUT_FORMAT}, got {fmt!r}"
    return [_problem(["query", "output_format"], msg, "value_error")]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_body(body: object, record: TtsRequest) -> list[dict[str, object]]:
    """Problems with the JSON body (empty when valid); fills `record` with what could be read."""
    if not isinstance(body, dict):
        return [_problem(["body"], "Input should be a valid dictionary", "dict_type")]
    problems: list[dict[str, object]] = []
    text = body.get("text")
    if "text" not in body:
        problems.append(_problem(["body", "text"], "Field required", "missing"))
    elif not isinstance(text, str):
        problems.append(_problem(["body", "text"], "Input should be a valid string", "string_type"))
    elif not text.strip():
        problems.append(
            _problem(["body", "text"], "String should have at least 1 character", "string_too_short")
        )
    else:
        record.text = text
    for name in _OPTIONAL_STRINGS:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(_problem(["body", name], "Input should be a valid string", "string_type"))
        elif value is not None:
            setattr(record, name, value)
    settings = body.get("voice_settings")
    if isinstance(settings, dict):
        record.voice_settings = settings
        for name, value in settings.items():
            loc: list[str | int] = ["body", "voice_settings", name]
            if name in _VOICE_NUMBERS:
                if value is not None and not _is_number(value):
                    problems.append(_problem(loc, "Input should be a valid number", "float_type"))
            elif name in _VOICE_FLAGS:
                if value is not None and not isinstance(value, bool):
                    problems.append(_problem(loc, "Input should be a valid boolean", "bool_type"))
            else:
                problems.append(_problem(loc, "Extra inputs are not permitted", "extra_forbidden"))
    elif settings is not None:
        problems.append(
            _problem(["body", "voice_settings"], "Input should be a valid dictionary", "dict_type")
        )
    known = {"text", "voice_settings", *_OPTIONAL_STRINGS}
    for name in body:
        if name not in known:
            problems.append(_problem(["body", name], "Extra inputs are not permitted", "extra_forbidden"))
    return problems
