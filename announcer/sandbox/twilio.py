"""A loopback Twilio: the real REST, webhook and Media Streams protocols, with a simulated phone.

The service (pointed at `base_url` through the real `twilio` SDK) and its tests cannot tell it from
Twilio: calls are created, updated, fetched and listed over the 2010-04-01 API; the voice webhook and
status callbacks are POSTed and signed; `<Connect><Stream>` opens a websocket to the service and
speaks the Media Streams messages, while the sandbox phone plays what it receives on a 20 ms clock,
echoes marks and records everything (`SandboxCall`).  Wire formats: protocols.md (shared project notes).

Module map: `twilio_rest` (HTTP APIs), `twilio_webhooks` (signed requests to the service),
`twiml_runner` (TwiML), `media_stream` + `media_messages` (websocket), `phone` (playback clock),
`twilio_call` (call state), `callee` + `tones` (what a callee sounds like), `amd` (machine detection).
This module owns the lifecycle: start/close and each call's progress, and delivers the verdict of
machine detection (AnsweredBy on the call, the signed AsyncAmdStatusCallback).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import pathlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from announcer.audio import FRAME_BYTES, FRAME_MS, SILENCE_FRAME, write_wav
from announcer.sandbox.amd import AmdRequest, AnsweredBy, MachineDetector, Verdict
from announcer.sandbox.phone import Phone, PhoneClock
from announcer.sandbox.phone_voice import PhoneVoice
from announcer.sandbox.recording import conversation_audio
from announcer.sandbox.speech_book import SpeechBook
from announcer.sandbox.twilio_call import (
    AmdResult,
    BargeIn,
    CallbackEvent,
    Callee,
    CallStatus,
    Direction,
    PhoneBehavior,
    SandboxCall,
    StatusCallbackConfig,
    new_sid,
)
from announcer.sandbox.twilio_rest import OutboundRequest, RestApi, RestRequest
from announcer.sandbox.twilio_webhooks import (
    WebhookClient,
    WebhookFailure,
    WebhookRequest,
    amd_callback_params,
    status_callback_params,
)
from announcer.sandbox.twiml_runner import FetchTwiml, TwimlRunner, TwimlSource

__all__ = [
    "AnsweredBy",
    "BargeIn",
    "Callee",
    "PhoneBehavior",
    "RestRequest",
    "SandboxCall",
    "SandboxTwilio",
    "WebhookRequest",
]

log = logging.getLogger(__name__)

CLOSE_GRACE_S = 5.0
PREPARE_TIMEOUT_S = 10.0  # the callee's voice, synthesized while it rings
AMD_NO_CALLBACK = 21262  # Twilio's warning: AsyncAmd without AsyncAmdStatusCallback
# SIP final responses Twilio reports in SipResponseCode for each outcome
SIP_CODES = {
    CallStatus.COMPLETED: 200,
    CallStatus.BUSY: 486,
    CallStatus.NO_ANSWER: 487,
    CallStatus.CANCELED: 487,
}


class SandboxTwilio:
    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        phone_number: str,
        voice_url: str,
        status_callback_url: str | None,
        recordings_dir: pathlib.Path,
        say_synthesize: Callable[[str], bytes],
        speed: float = 1.0,
        speech_book: SpeechBook | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.phone_number = phone_number
        self.voice_url = voice_url
        self.status_callback_url = status_callback_url
        self.recordings_dir = recordings_dir
        self.speed = speed
        self._synthesize = say_synthesize
        # The phone speaks with the same local voice; what it says is registered in `speech_book`,
        # shared with the sandbox agent, which recognises the lines from their audio.
        self.speech_book = speech_book if speech_book is not None else SpeechBook()
        self.voice = PhoneVoice(say_synthesize, self.speech_book)
        self.base_url = ""
        self.calls: dict[str, SandboxCall] = {}
        self.rest_log: list[RestRequest] = []
        self.webhook_log: list[WebhookRequest] = []
        self._behaviors: dict[str, PhoneBehavior] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._clock: PhoneClock | None = None
        self._webhooks: WebhookClient | None = None
        self._twiml: TwimlRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start the HTTP server and the phone clock; return the base URL for the SDK."""
        # Unlimited connector: every live media stream holds a connection for the whole call, and
        # aiohttp's default cap of 100 would silently hold call 101 back until another call ends.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._clock = PhoneClock(self.speed)
        self._clock.start()
        self._webhooks = WebhookClient(self._session, self.auth_token, self.webhook_log)
        self._twiml = TwimlRunner(
            webhooks=self._webhooks,
            session=self._session,
            clock=self._clock,
            synthesize=self._synthesize,
            on_answered=self._answer,
        )
        self._runner = web.AppRunner(RestApi(self).app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_port = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def close(self) -> None:
        """End every call (streams get `stop`), give them a moment to finish, then stop everything."""
        for call in list(self.calls.values()):
            self.end_call(call)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=CLOSE_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._clock is not None:
            await self._clock.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- public driving API --------------------------------------------------------------------
    def set_behavior(self, number: str, behavior: PhoneBehavior) -> None:
        """How the callee at `number` reacts to outbound calls made from now on."""
        self._behaviors[number] = behavior

    async def call_in(
        self,
        from_number: str,
        *,
        to: str | None = None,
        caller_name: str | None = None,
        behavior: PhoneBehavior | None = None,
    ) -> SandboxCall:
        """Someone calls the sandbox number; the call proceeds in the background.  `behavior` gives
        the caller a script (`lines`, `barge_in`); its answering fields do not apply to an inbound call."""
        call = SandboxCall(
            sid=new_sid("CA"),
            account_sid=self.account_sid,
            direction=Direction.INBOUND,
            from_=from_number,
            to=to or self.phone_number,
            _control=self,
            caller_name=caller_name,
            status=CallStatus.RINGING,
            start_time=dt.datetime.now(dt.UTC),
            behavior=behavior or PhoneBehavior(),
            speed=self.speed,
        )
        if self.status_callback_url:
            call.status_callback = StatusCallbackConfig(self.status_callback_url)
        self.calls[call.sid] = call
        self._spawn(self._run_inbound(call), call)
        return call

    # -- used by the REST API and the call handles -----------------------------------------------
    def behavior(self, number: str) -> PhoneBehavior:
        return self._behaviors.get(number, PhoneBehavior())

    def create_outbound(self, request: OutboundRequest) -> SandboxCall:
        call = SandboxCall(
            sid=new_sid("CA"),
            account_sid=self.account_sid,
            direction=Direction.OUTBOUND_API,
            from_=request.from_,
            to=request.to,
            _control=self,
            amd_request=request.amd,
            status_callback=request.status_callback,
            behavior=self._behaviors.get(request.to, PhoneBehavior()),
            ring_timeout_s=request.ring_timeout_s,
            time_limit_s=request.time_limit_s,
            speed=self.speed,
        )
        if request.amd is not None and request.amd.async_amd and request.amd.callback_url is None:
            call.warnings.append(
                f"{AMD_NO_CALLBACK} AsyncAmd is true but no AsyncAmdStatusCallback was given: "
                "the verdict is only on the Call resource"
            )
        self.calls[call.sid] = call
        self._spawn(self._run_outbound(call, request.source), call)
        return call

    def end_call(self, call: SandboxCall) -> None:
        """Hang up (caller, callee, REST update, timer): idempotent.  An answered call ends
        `completed`, one not yet answered `canceled`; the running TwiML is interrupted at once."""
        if call.is_ending():
            return
        call._ending = True
        if call._phone is not None:
            call._phone.conclude_detection(time.monotonic())  # what detection knew when the call ended
        self._set_final(call, CallStatus.COMPLETED if call.answered_at is not None else CallStatus.CANCELED)
        if call._script_task is not None:
            call._script_task.cancel()

    def redirect(self, call: SandboxCall, source: TwimlSource) -> None:
        """Replace the TwiML of a live call (REST update with Twiml/Url)."""
        call._redirect_to = source
        if call._script_task is not None:
            call._script_task.cancel()

    # -- call progress ---------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], call: SandboxCall) -> None:
        task = asyncio.create_task(coro, name=f"sandbox-call-{call.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox task %s crashed", task.get_name(), exc_info=task.exception())

    async def _run_inbound(self, call: SandboxCall) -> None:
        assert self._twiml is not None
        phone = self._new_phone(call)
        try:
            await self._twiml.converse(call, phone, FetchTwiml(self.voice_url, "POST", "voice"))
        except Exception as err:
            self._internal_error(call, err)
        finally:
            self._close_phone(call, phone)
            await self._finish(call, CallStatus.COMPLETED)

    async def _run_outbound(self, call: SandboxCall, source: TwimlSource) -> None:
        assert self._twiml is not None
        outcome = CallStatus.COMPLETED
        sip_code: int | None = None
        phone = self._new_phone(call)
        try:
            outcome, sip_code = await self._dial(call, phone)
            if outcome is CallStatus.IN_PROGRESS:
                outcome = CallStatus.COMPLETED
                amd = call.amd_request
                if amd is not None and not amd.async_amd:
                    # synchronous detection: the TwiML (and its AnsweredBy) waits for the verdict
                    await call._wait_until(lambda: call.amd is not None or call.is_ending(), 3600, "verdict")
                if not call.is_ending():
                    await self._twiml.converse(call, phone, source)
        except Exception as err:
            self._internal_error(call, err)
        finally:
            self._close_phone(call, phone)
            await self._finish(call, outcome, sip_code)

    def _new_phone(self, call: SandboxCall) -> Phone:
        assert self._clock is not None
        phone = Phone(call, self._clock, self.voice)
        call._phone = phone
        return phone

    def _close_phone(self, call: SandboxCall, phone: Phone) -> None:
        """The call is over: a detection still running gives its verdict now, the phone stops."""
        phone.conclude_detection(time.monotonic())
        call._phone = None
        phone.stop_local()
        phone.close()
        assert self._clock is not None
        self._clock.deactivate(phone)

    async def _dial(self, call: SandboxCall, phone: Phone) -> tuple[CallStatus, int | None]:
        """initiated -> ringing -> answered | busy | no-answer | failed, per the callee's behaviour.
        Returns IN_PROGRESS when answered, else the final status and its SIP code."""
        behavior = call.behavior
        await asyncio.sleep(0)  # let the 201 of the create request go out before any callback
        if call.is_ending():
            return call.status, None
        call.start_time = dt.datetime.now(dt.UTC)
        call.set_status(CallStatus.INITIATED)
        self._report(call, CallbackEvent.INITIATED, CallStatus.INITIATED)
        if behavior.answer == "fail":
            return CallStatus.FAILED, behavior.sip_code
        if behavior.answer == "busy":
            return CallStatus.BUSY, SIP_CODES[CallStatus.BUSY]
        call.set_status(CallStatus.RINGING)
        self._report(call, CallbackEvent.RINGING, CallStatus.RINGING)
        answers = behavior.answer == "answer" and behavior.ring_s <= call.ring_timeout_s
        ring_s = behavior.ring_s if answers else min(behavior.ring_s, call.ring_timeout_s)
        preparing = asyncio.create_task(phone.prepare_callee()) if answers else None
        try:
            await self._sleep_unless_ended(call, ring_s / self.speed)
            if preparing is not None:
                # a callee whose voice is not ready yet picks up when it is (a few real ms)
                async with asyncio.timeout(PREPARE_TIMEOUT_S):
                    await asyncio.shield(preparing)
        finally:
            if preparing is not None and not preparing.done():
                preparing.cancel()
        if call.is_ending():
            return call.status, None
        if not answers:
            return CallStatus.NO_ANSWER, SIP_CODES[CallStatus.NO_ANSWER]
        self._answer(call)
        self._report(call, CallbackEvent.ANSWERED, CallStatus.IN_PROGRESS)
        if call.amd_request is not None and not phone.has_callee:
            self._listener_verdict(call)  # AsyncAmd: posted after the `answered` callback, as detected
        return CallStatus.IN_PROGRESS, None

    @staticmethod
    async def _sleep_unless_ended(call: SandboxCall, delay: float) -> None:
        try:
            async with asyncio.timeout(delay):
                while not call.is_ending():
                    await call._changed.wait()
        except TimeoutError:
            pass

    def _answer(self, call: SandboxCall) -> None:
        """The call is answered (outbound: the callee picked up; inbound: TwiML arrived)."""
        now = call.answered_at = time.monotonic()
        if call.start_time is None:
            call.start_time = dt.datetime.now(dt.UTC)
        phone = call._phone
        if phone is not None and phone.has_callee:
            amd = call.amd_request
            detector = MachineDetector(amd.settings) if amd is not None else None
            phone.answer(now, detector, lambda verdict: self._verdict(call, verdict))
        elif call.amd_request is not None and not call.amd_request.async_amd:
            self._listener_verdict(call)  # before the TwiML is asked for, and the `answered` callback
        call.set_status(CallStatus.IN_PROGRESS)
        loop = asyncio.get_running_loop()
        limits = [call.time_limit_s]
        if call.direction is Direction.OUTBOUND_API:
            limits.append(call.behavior.hang_up_after_s)
        for limit in limits:
            if limit is not None:
                handle = loop.call_later(limit / self.speed, self.end_call, call)
                call._end_hooks.append(handle.cancel)

    def _set_final(self, call: SandboxCall, status: CallStatus) -> None:
        """Record the final status once (the first reason to end wins) with end time and duration."""
        if call.status.terminal:
            return
        call.end_time = dt.datetime.now(dt.UTC)
        if status is CallStatus.COMPLETED and call.answered_at is not None:
            # durations run on the phone clock, like everything the service can observe
            call.duration_s = round((time.monotonic() - call.answered_at) * self.speed)
        elif status is CallStatus.COMPLETED:
            call.duration_s = 0
        call.set_status(status)

    async def _finish(self, call: SandboxCall, outcome: CallStatus, sip_code: int | None = None) -> None:
        """Conclude a call: final status, WAV, `completed` callback delivered, then `ended`."""
        try:
            for cancel in call._end_hooks:
                cancel()
            call._end_hooks.clear()
            call._ending = True
            self._set_final(call, outcome)
            call.finished_at = time.monotonic()
            if call.answered_at is not None or call.heard:
                path = self.recordings_dir / f"{call.sid}.wav"
                if call.behavior.callee.records and call.direction is Direction.OUTBOUND_API:
                    audio = self._voicemail(call)  # what the machine recorded, nothing else
                else:
                    audio = conversation_audio(call, self.speed) if call.spoke else call.heard
                # synchronous on purpose: it must happen even when close() cancels this task, and a
                # call's audio is at most a few hundred KB
                write_wav(path, audio)
                call.wav_path = path
            if sip_code is None:
                sip_code = SIP_CODES.get(call.status)
            self._report(call, CallbackEvent.COMPLETED, call.status, sip_code)
            if call._callback_task is not None:
                await asyncio.wait({call._callback_task})
        finally:
            call.ended.set()
            call.notify()

    # -- machine detection -----------------------------------------------------------------------
    def _listener_verdict(self, call: SandboxCall) -> None:
        """A LISTENER (see Callee) is a person, known at once, without running the detector."""
        self._verdict(call, Verdict(AnsweredBy.HUMAN, 0))

    def _verdict(self, call: SandboxCall, verdict: Verdict) -> None:
        """Record the verdict (AnsweredBy from now on) and, with AsyncAmd, POST it to the callback."""
        if call.amd is not None:
            return
        call.answered_by = str(verdict.answered_by)
        result = call.amd = AmdResult(verdict.answered_by, verdict.duration_ms, time.monotonic())
        call.notify()
        request = call.amd_request
        if request is not None and request.async_amd and request.callback_url is not None:
            self._chain_callback(call, self._deliver_amd(call, request, result))

    async def _deliver_amd(self, call: SandboxCall, request: AmdRequest, result: AmdResult) -> None:
        assert self._webhooks is not None and request.callback_url is not None
        result.posted_at = time.monotonic()
        try:
            answer = await self._webhooks.send(
                kind="amd",
                call_sid=call.sid,
                url=request.callback_url,
                method=request.callback_method,
                form=amd_callback_params(call, result.answered_by, result.duration_ms),
            )
        except WebhookFailure as err:
            call.application_errors.append(f"{err} (AsyncAmdStatusCallback)")
            return
        finally:
            call.notify()
        result.post_status = answer.status
        if not 200 <= answer.status < 300:
            call.application_errors.append(
                f"11200 HTTP retrieval failure: AsyncAmdStatusCallback {request.callback_url} "
                f"answered {answer.status}"
            )

    def _voicemail(self, call: SandboxCall) -> bytes:
        """The machine's recording, silence-padded to the end of the call (a machine records time)."""
        start, end = call.recording_started_at, call.finished_at
        if start is not None and end is not None:
            frames = round((end - start) * self.speed * 1000 / FRAME_MS)
            missing = frames * FRAME_BYTES - len(call._voicemail)
            if missing > 0:
                call._voicemail += SILENCE_FRAME * (missing // FRAME_BYTES)
        return call.voicemail

    # -- status callbacks ------------------------------------------------------------------------
    def _report(
        self, call: SandboxCall, event: CallbackEvent, status: CallStatus, sip_code: int | None = None
    ) -> None:
        """Queue a status callback if the call asked for this event.  Callbacks of one call are
        delivered one after the other, in SequenceNumber order, without holding up the call."""
        config = call.status_callback
        if config is None or event not in config.events:
            return
        terminal_sip = sip_code if status.terminal else None
        form = status_callback_params(call, status, sip_code=terminal_sip)
        self._chain_callback(call, self._deliver(call, config, form))

    def _chain_callback(self, call: SandboxCall, delivery: Coroutine[Any, Any, None]) -> None:
        """Deliver after the call's previous callback (status or AMD): one at a time, in order, so a
        call's `completed` never overtakes its verdict."""
        previous = call._callback_task

        async def run() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            await delivery

        task = asyncio.create_task(run(), name=f"sandbox-callback-{call.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        call._callback_task = task

    async def _deliver(
        self, call: SandboxCall, config: StatusCallbackConfig, form: list[tuple[str, str]]
    ) -> None:
        assert self._webhooks is not None
        try:
            answer = await self._webhooks.send(
                kind="status", call_sid=call.sid, url=config.url, method=config.method, form=form
            )
        except WebhookFailure as err:
            call.application_errors.append(f"{err} (status callback)")
            return
        if not 200 <= answer.status < 300:
            call.application_errors.append(
                f"11200 HTTP retrieval failure: status callback {config.url} answered {answer.status}"
            )

    @staticmethod
    def _internal_error(call: SandboxCall, err: Exception) -> None:
        log.error("sandbox call %s failed", call.sid, exc_info=err)
        call.application_errors.append(f"sandbox internal error: {err!r}")
