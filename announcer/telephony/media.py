"""One Twilio media-stream session: authenticate the stream, speak the message, end the call.

Lifecycle (protocols.md, "Media Streams websocket"): `connected` -> `start` (carries our single-use
token) -> we stream 160-byte frames paced by the playout clock, then a `mark` -> Twilio echoes the mark
when the audio has played -> outcome "heard" -> hang up via REST. A `stop` first means the caller hung
up. If speech fails before the first frame the call is redirected to TwiML `<Say>` of the same text.

Exactly one reader per socket (`run`); speaking is one task that waits on the shared playout clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from sqlalchemy.exc import SQLAlchemyError

from announcer.speech.speaker import Speaker, SpeechEvent, SpeechUnavailable
from announcer.store.calls import CallStore, StreamGrant
from announcer.store.models import CallKind, CallOutcome
from announcer.telephony import codec, twiml
from announcer.telephony.calls import TwilioCalls, TwilioError
from announcer.telephony.handoff import (
    MARK_PREFIX as AGENT_MARK_PREFIX,
)
from announcer.telephony.handoff import (
    After,
    AgentEnd,
    AgentOffer,
    Conversation,
    EndKind,
    Handoff,
    StartAgent,
)
from announcer.telephony.playout import PlayoutClock
from announcer.telephony.signature import HEADER as SIGNATURE_HEADER
from announcer.telephony.signature import SignatureChecker
from announcer.telephony.tokens import TokenBook

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
MAX_BAD_MESSAGES = 20
END_MARK_PREFIX = "end:"


@dataclass
class MediaDeps:
    """What every session needs; built once by the app's lifecycle."""

    store: CallStore
    twilio: TwilioCalls
    speaker: Speaker
    clock: PlayoutClock
    tokens: TokenBook
    account_sid: str
    # Told a call's outcome before the call is hung up (so it lands before Twilio's `completed`):
    # the dispatcher turns it into the delivery's outcome. Announcements only.
    on_outcome: Callable[[int, CallOutcome, str], Awaitable[None]] | None = None
    # What an announcement does after its message (confirm prompt, keys); fetched while the message plays.
    script: Callable[[StreamGrant], Coroutine[Any, Any, CallScript | None]] | None = None
    # Agent mode (None: no agent configured). The greeting line's offer is GREETING_AGENT's.
    start_agent: StartAgent | None = None
    greeting_agent: AgentOffer | None = None
    agent_apology: str = "We are sorry, our assistant is not available right now. Goodbye."
    agent_time_limit: str = "We have reached the time limit for this call. Thank you, goodbye."


@dataclass(frozen=True)
class CallScript:
    """After the message: a prompt, and how long to wait for a key once it has played (real seconds)."""

    prompt: str | None  # None: no confirmation asked; the call ends when the message has played
    repeat_keys: frozenset[str] = frozenset({"2"})
    window_s: float = 8.0
    decline_key: str | None = None  # a reminder's "cancel" (2)
    snooze_key: str | None = None  # a reminder's "call me again later" (3)
    agent: AgentOffer | None = None  # hand the call to the agent after the message, or on a key


CONFIRM_KEY = "1"
OPT_OUT_KEY = "9"
PROMPT_MARK_PREFIX = "prompt:"
BYE_MARK_PREFIX = "bye:"  # the last words after an agent conversation (or instead of one)
BYE_GRACE_S = 60.0  # the longest the agent's last words may take to play before the call is hung up


class MediaSession:
    def __init__(self, ws: web.WebSocketResponse, deps: MediaDeps) -> None:
        self.ws = ws
        self.deps = deps
        self.start: codec.Start | None = None
        self.grant: StreamGrant | None = None
        self.media_in = 0
        self.bad = 0
        self.recorded_problems = 0
        self._connected = False  # Twilio's first message; one is expected before `start`
        self.heard = False
        self.ended = False
        self.first_frame_at: float | None = None
        self.started_at: float | None = None
        self._speaking: asyncio.Task[None] | None = None
        self._confirming: asyncio.Task[None] | None = None
        self._script: asyncio.Task[CallScript | None] | None = None
        self._key_window: asyncio.Task[None] | None = None
        self._playout = deps.clock.stream()
        # Marks carry the round they were sent in: after a `clear` Twilio echoes every pending mark at
        # once (protocols.md), and those echoes must not count as "played".
        self._round = 0
        self._finish_lock = asyncio.Lock()
        self._agent: Conversation | None = None
        self._agent_over = False  # the conversation ended; the call is ending
        self._offer: AgentOffer | None = None  # the greeting line's (an announcement's is in its script)
        self._bye: tuple[CallOutcome | None, str] = (None, "")  # how the call ends once its last words play
        self._heard_before_agent = ""  # the message the caller heard before the agent ("" for none)

    # --- reader ---------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT_S) as deadline:
                async for msg in self.ws:
                    if msg.type == WSMsgType.TEXT:
                        raw: str = msg.data
                        if codec.is_media(raw):
                            # Hot path: an announcement does not listen to the caller's audio; an agent
                            # gets it passed on untouched.
                            if self.start is not None:
                                self.media_in += 1
                                if self._agent is not None:
                                    await self._agent.user_audio(raw)
                                continue
                            # Before `start` nothing is admitted: it counts against the limit below.
                            self._protocol_problem("media before start")
                        else:
                            try:
                                event = codec.parse(raw)
                            except codec.ProtocolError as err:
                                self._protocol_problem(str(err))
                            else:
                                await self._handle(event)
                                if self.start is not None:
                                    deadline.reschedule(None)
                    elif msg.type == WSMsgType.BINARY:
                        self._protocol_problem("binary frame (Twilio sends JSON text frames)")
                    elif msg.type == WSMsgType.ERROR:
                        log.warning("media socket error: %s", self.ws.exception())
                        break
                    if self.bad > MAX_BAD_MESSAGES:
                        await self._close(WSCloseCode.POLICY_VIOLATION, "too many malformed messages")
                        break
                    if self.ws.closed:
                        break
        except TimeoutError:
            log.warning("media stream sent no valid start within %.0f s; closing", START_TIMEOUT_S)
            await self._close(WSCloseCode.POLICY_VIOLATION, "no start message")
        finally:
            await self._finish(reason="socket closed")

    def _protocol_problem(self, what: str) -> None:
        self.bad += 1
        if self.bad <= 3 or self.bad % 100 == 0:
            log.warning("media stream %s: ignored malformed message: %s", self._sid_for_log(), what)
        if self.grant is not None and self.recorded_problems < 10:
            self.recorded_problems += 1  # a noisy stream must not flood the audit trail
            self._record("protocol_error", reason=what[:200])

    def _sid_for_log(self) -> str:
        return self.start.call_sid if self.start else "(before start)"

    async def _handle(self, event: codec.Inbound) -> None:
        if isinstance(event, codec.Connected):
            if self._connected or self.start is not None:
                self._protocol_problem("a second connected message")
            self._connected = True
            return
        if isinstance(event, codec.Start):
            await self._on_start(event)
            return
        if self.start is None:
            self._protocol_problem(f"{type(event).__name__.lower()} before start")
            return
        if event.stream_sid != self.start.stream_sid:
            self._protocol_problem(f"streamSid {event.stream_sid} is not this stream's")
            return
        if isinstance(event, codec.Mark):
            await self._on_mark(event.name)
        elif isinstance(event, codec.Dtmf):
            self._record("dtmf", digit=event.digit)
            await self._on_key(event.digit)
        elif isinstance(event, codec.Stop):
            # The caller hung up: the agent's socket first (no orphaned agent sessions), then answer
            # Twilio's close while its side is still open; the REST hang-up comes after.
            await self._close_agent("the caller hung up")
            await self._close(WSCloseCode.OK, "stream stopped")
            if not self.heard:
                await self._end_call(CallOutcome.HUNG_UP_EARLY, "stream stopped before the message ended")
        elif isinstance(event, codec.Media):  # only when the fast path did not recognise it
            self.media_in += 1

    async def _on_start(self, start: codec.Start) -> None:
        if self.start is not None:
            self._protocol_problem("a second start on the same stream")
            return
        if start.account_sid != self.deps.account_sid:
            await self._close(WSCloseCode.POLICY_VIOLATION, "stream for another account")
            return
        if start.encoding != "audio/x-mulaw" or start.sample_rate != 8000:
            await self._close(WSCloseCode.UNSUPPORTED_DATA, "media format must be audio/x-mulaw at 8000 Hz")
            return
        token = start.custom_parameters.get("token")
        if not token:
            await self._close(WSCloseCode.POLICY_VIOLATION, "missing stream token")
            return
        grant = self.deps.tokens.take(token, start.call_sid)
        # Issued here: speak at once; the database confirms the single use beside the audio.
        confirm = grant is not None
        if grant is None and not self.deps.tokens.taken_here(token):
            grant = await self.deps.store.consume_token(token, start.call_sid)
        if grant is None:
            log.warning("media stream for %s rejected: unknown, expired or used token", start.call_sid)
            await self._close(WSCloseCode.POLICY_VIOLATION, "unknown, expired or already used stream token")
            return
        self.start, self.grant = start, grant
        self.started_at = time.monotonic()
        offer = AgentOffer.from_options(grant.options) if grant.kind == CallKind.ANNOUNCEMENT else None
        if grant.kind == CallKind.GREETING:
            self._offer = self.deps.greeting_agent
        if offer is not None and offer.after == After.START:
            self._hand_over(offer, heard="")  # POST /outbound-call: the agent speaks first
        else:
            # Speaking is scheduled before the database writes, so its first step (a cache hit's first
            # frames, or the TTS request) runs ahead of theirs.
            self._say(grant.text, END_MARK_PREFIX)
        if grant.kind == CallKind.ANNOUNCEMENT and self.deps.script is not None:
            self._script = asyncio.create_task(self.deps.script(grant))
        if confirm:
            self._confirming = asyncio.create_task(self._confirm_token(token, start.call_sid))
        self.deps.store.record_in_progress(grant.call_id)
        self._record("stream_started", stream_sid=start.stream_sid)

    async def _confirm_token(self, token: str, call_sid: str) -> None:
        try:
            grant = await self.deps.store.consume_token(token, call_sid)
        except SQLAlchemyError as err:
            # This process issued the token and admitted the stream; the caller keeps their message.
            log.error("could not confirm the stream token of %s: %r", call_sid, err)
            return
        if grant is None:
            log.warning("stream token for %s refused (used elsewhere, or the call ended); cutting", call_sid)
            self._record("stream_token_reused")
            self.ended = True  # not our call to end: the stream that used the token first owns it
            await self._close(WSCloseCode.POLICY_VIOLATION, "stream token already used")

    # --- speaking -------------------------------------------------------------------------------

    def _say(self, text: str, mark_prefix: str) -> None:
        """Speak `text`, then send a mark (its echo says it played to the end)."""
        assert self.grant is not None
        mark = f"{mark_prefix}{self.grant.call_id}.{self._round}"
        self._speaking = asyncio.create_task(self._speak(text, mark), name=f"speak-{self._sid_for_log()}")
        self._speaking.add_done_callback(self._speaking_done)

    async def _speak(self, text: str, mark: str) -> None:
        assert self.start is not None and self.grant is not None and self.started_at is not None
        sid = self.start.stream_sid
        playout = self._playout
        send = self.ws.send_str
        media_message = codec.media_message
        t0 = self.started_at
        try:
            async with aclosing(self.deps.speaker.frames(text, self._on_speech_event)) as frames:
                async for payload in frames:
                    await playout.room()
                    await send(media_message(sid, payload))
                    playout.sent()
                    if self.first_frame_at is None:
                        self.first_frame_at = time.monotonic()
                        # `start` -> first frame on the socket, as the service saw it
                        self._record(
                            "speech_started", first_frame_ms=round((self.first_frame_at - t0) * 1000, 3)
                        )
            await send(codec.mark_message(sid, mark))
            self._record("speech_sent", frames=playout.frames_sent, mark=mark.split(":", 1)[0])
        except SpeechUnavailable as err:
            await self._fall_back_to_say(err.reason)
        except ConnectionResetError:
            pass  # the socket went away mid-message; the reader's finish handles the call

    # --- after the message: the prompt and the keys ------------------------------------------------

    async def _on_mark(self, name: str) -> None:
        if self.ended:
            return
        if name.startswith(AGENT_MARK_PREFIX):
            if self._agent is not None:
                self._agent.mark_played(name)
            return
        if not name.endswith(f".{self._round}"):
            self._record("mark_cleared", mark=name[:64])  # flushed by our `clear`, not played
            return
        if name.startswith(BYE_MARK_PREFIX):
            await self._end_call(*self._bye)
            return
        if name.startswith(END_MARK_PREFIX) and not self.heard:
            self.heard = True
            script = await self._get_script()
            offer = self._agent_offer(script)
            if offer is not None and offer.after == After.ANNOUNCEMENT:
                self._hand_over(offer, heard=self.grant.text if self.grant else "")
                return
            if offer is not None and offer.after == After.KEY and (script is None or script.prompt is None):
                # No prompt: the offer is in the message itself; wait for its key as for a prompt's.
                self._start_key_window(script.window_s if script is not None else 8.0)
                return
            if script is None or script.prompt is None:
                await self._end_call(CallOutcome.HEARD, "end mark echoed: the message played to the end")
                return
            self._say(script.prompt, PROMPT_MARK_PREFIX)
        elif name.startswith(PROMPT_MARK_PREFIX):
            script = await self._get_script()
            self._start_key_window(script.window_s if script is not None else 0.0)

    def _start_key_window(self, window_s: float) -> None:
        why = "the message and the prompt played; no key pressed"
        self._end_after(window_s, CallOutcome.HEARD, why)  # the key window is a span of time by definition

    def _end_after(self, seconds: float, outcome: CallOutcome | None, why: str) -> None:
        """End the call `seconds` (sandbox seconds) from now, unless a key or a mark's echo does first."""
        self._cancel_key_window()
        self._key_window = asyncio.create_task(self._end_later(seconds / self.deps.clock.speed, outcome, why))

    async def _end_later(self, seconds: float, outcome: CallOutcome | None, why: str) -> None:
        await asyncio.sleep(seconds)
        await self._end_call(outcome, why)

    def _cancel_key_window(self) -> None:
        if self._key_window is not None and not self._key_window.done():
            self._key_window.cancel()
        self._key_window = None

    async def _get_script(self) -> CallScript | None:
        if self._script is None:
            return None
        try:
            return await self._script
        except Exception:  # without its script the call still ends as a heard message
            log.exception("could not load the script of call %s", self._sid_for_log())
            return None

    async def _on_key(self, digit: str) -> None:
        if self.ended or self.grant is None or self._agent is not None:
            return  # in a conversation keys are the agent's business (they are on the call's trail)
        script = await self._get_script() if self.grant.kind == CallKind.ANNOUNCEMENT else None
        offer = self._agent_offer(script)
        if offer is not None and offer.after == After.KEY and digit == offer.key:
            self._cancel_key_window()
            await self._stop_speaking()
            self._hand_over(offer, heard=self.grant.text)
            return
        if self.grant.kind != CallKind.ANNOUNCEMENT:
            return
        if digit == CONFIRM_KEY and script is not None and script.prompt is not None:
            self._cancel_key_window()
            self.heard = True
            await self._end_call(CallOutcome.CONFIRMED, "pressed 1 to confirm")
        elif digit == OPT_OUT_KEY:
            self._cancel_key_window()
            self.heard = True
            await self._end_call(CallOutcome.OPTED_OUT, "pressed 9: do not call this number again")
        elif script is not None and script.prompt is not None and digit == script.decline_key:
            self._cancel_key_window()
            self.heard = True
            await self._end_call(CallOutcome.DECLINED, f"pressed {digit} to cancel")
        elif script is not None and script.prompt is not None and digit == script.snooze_key:
            self._cancel_key_window()
            self.heard = True
            await self._end_call(CallOutcome.SNOOZED, f"pressed {digit} to be called again later")
        elif digit in (script.repeat_keys if script is not None else frozenset({"2"})):
            # Stop what is playing (Twilio drops its buffer on `clear`) and start the message over.
            self._cancel_key_window()
            await self._stop_speaking()
            self.heard = False
            self._record("repeat", digit=digit)
            self._say(self.grant.text, END_MARK_PREFIX)

    async def _stop_speaking(self) -> None:
        """Stop what is playing: the task that sends it, and what Twilio has buffered (`clear`)."""
        if self._speaking is not None and not self._speaking.done():
            self._speaking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._speaking
        assert self.start is not None
        await self.ws.send_str(codec.clear_message(self.start.stream_sid))
        self._playout.cleared()
        self._round += 1

    # --- agent mode -----------------------------------------------------------------------------

    def _agent_offer(self, script: CallScript | None) -> AgentOffer | None:
        if self.deps.start_agent is None or self._agent is not None or self._agent_over:
            return None
        return script.agent if script is not None and script.agent is not None else self._offer

    def _hand_over(self, offer: AgentOffer, heard: str) -> None:
        assert self.start is not None and self.grant is not None
        self.heard = True  # from here a broken stream no longer means the message went unheard
        self._heard_before_agent = heard
        if self.deps.start_agent is None:
            self._agent_over = True
            self._bye = (self._outcome_without_agent(), "agent mode is not configured")
            self._say(self.deps.agent_apology, BYE_MARK_PREFIX)
            return
        self._record("agent_handoff", after=offer.after.value)
        # Said if the agent cannot be reached: made now, while the agent is being reached, so it comes
        # at once when needed (a no-op once it is in the cache).
        self.deps.speaker.prefetch(self.deps.agent_apology)
        self._agent = self.deps.start_agent(
            Handoff(
                call_id=self.grant.call_id,
                call_kind=self.grant.kind,
                heard_text=heard,
                offer=offer,
                stream_sid=self.start.stream_sid,
                send=self.ws.send_str,
                record=self._record,
                on_connected=self._agent_connected,
                on_end=self._agent_ended,
            )
        )
        self._agent.start()

    async def _agent_connected(self, conversation_id: str) -> None:
        assert self.grant is not None
        why = f"handed to the agent (conversation {conversation_id[:64]})"
        self.deps.store.record_outcome(self.grant.call_id, CallOutcome.AGENT, reason=why)
        await self._report(CallOutcome.AGENT, why)

    async def _agent_ended(self, end: AgentEnd) -> None:
        assert self.start is not None and self.grant is not None
        self._agent_over = True
        if self.ended or self.ws.closed:
            return
        # None: recorded when the agent took the call. Else the message before it (if any) was heard, and
        # only the conversation failed.
        outcome = None if end.connected else self._outcome_without_agent()
        self._bye = (outcome, end.reason)
        if end.kind == EndKind.AGENT_ENDED:
            # The agent said goodbye: hang up once its last words have played (the mark's echo).
            mark = f"{BYE_MARK_PREFIX}{self.grant.call_id}.{self._round}"
            await self.ws.send_str(codec.mark_message(self.start.stream_sid, mark))
            self._end_after(BYE_GRACE_S, *self._bye)  # should the echo never come: never left open
            return
        log.warning("agent conversation on %s ended: %s", self._sid_for_log(), end.reason)
        if end.connected:
            await self._stop_speaking()  # whatever the agent left in Twilio's buffer
        text = self.deps.agent_time_limit if end.kind == EndKind.TIME_LIMIT else self.deps.agent_apology
        self._say(text, BYE_MARK_PREFIX)

    def _outcome_without_agent(self) -> CallOutcome:
        return CallOutcome.HEARD if self._heard_before_agent else CallOutcome.FAILED

    async def _close_agent(self, reason: str) -> None:
        if self._agent is not None:
            agent, self._agent = self._agent, None
            self._agent_over = True
            await agent.close(reason)

    def _speaking_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("speaking failed on %s", self._sid_for_log(), exc_info=task.exception())

    def _on_speech_event(self, event: SpeechEvent) -> None:
        if event.kind in ("tts_failed", "tts_failed_midway", "fallback_used"):
            log.warning("speech on %s: %s %s", self._sid_for_log(), event.kind, event.reason)
        self._record(f"speech_{event.kind}", reason=event.reason)

    async def _fall_back_to_say(self, reason: str) -> None:
        """TTS failed before any audio: let Twilio speak the text itself (never a silent call)."""
        assert self.start is not None and self.grant is not None
        self._record("speech_redirect_to_say", reason=reason)
        try:
            redirected = await self.deps.twilio.redirect(
                self.start.call_sid, twiml.say_then_hangup(self.grant.text)
            )
        except TwilioError as err:
            log.error("redirect to <Say> failed on %s: %s", self.start.call_sid, err)
            self._record("redirect_failed", code=err.code, message=err.message)
            return
        if redirected:
            self.heard = True  # the rest of the call belongs to Twilio's <Say>
            self.deps.store.record_outcome(self.grant.call_id, CallOutcome.SAID_BY_TWILIO, reason=reason)
            await self._report(CallOutcome.SAID_BY_TWILIO, f"spoken by Twilio <Say>: {reason}")

    # --- ending ---------------------------------------------------------------------------------

    async def _end_call(self, outcome: CallOutcome | None, why: str) -> None:
        """Record `outcome` (None: already recorded), then hang up."""
        assert self.start is not None and self.grant is not None
        if self.ended:
            return
        self.ended = True
        await self._close_agent("the call is ending")
        if self._speaking is not None and not self._speaking.done():
            self._speaking.cancel()
        if self._key_window is not None and self._key_window is not asyncio.current_task():
            self._cancel_key_window()
        if outcome is not None:
            self.deps.store.record_outcome(self.grant.call_id, outcome, reason=why)
            await self._report(outcome, why)
        else:
            self._record("call_ending", reason=why[:200])
        try:
            hung_up = await self.deps.twilio.hang_up(self.start.call_sid)
        except TwilioError as err:
            log.error("hang-up of %s failed: %s", self.start.call_sid, err)
            self._record("hangup_failed", code=err.code, message=err.message)
        else:
            self._record("hangup", already_ended=not hung_up)
        await self._close(WSCloseCode.OK, "call ended")

    async def _finish(self, *, reason: str) -> None:
        async with self._finish_lock:
            await self._close_agent(reason)
            if self._speaking is not None and not self._speaking.done():
                self._speaking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._speaking
            # The finished task holds its exception, whose traceback holds our frames: drop it so the
            # session is freed by reference counting, not by a (long, stop-the-world) full GC pass.
            self._speaking = None
            if self._key_window is not None and self._key_window is not asyncio.current_task():
                self._cancel_key_window()
            if self._script is not None:
                if not self._script.done():
                    self._script.cancel()
                elif not self._script.cancelled() and self._script.exception() is not None:
                    log.error("loading the call's script failed", exc_info=self._script.exception())
            self._script = None
            if self.grant is not None and not self.ended and not self.heard:
                # The socket broke without `stop` (a hang-up sends `stop`) or the end mark: the caller
                # may still be there, so Twilio speaks the message instead (design: never silent).
                self.ended = True
                await self._fall_back_to_say(reason)
            if self.grant is not None:
                self._record("stream_closed", media_frames_in=self.media_in, malformed=self.bad)
            if self._confirming is not None:
                await asyncio.wait([self._confirming])
                self._confirming = None
            # The trail is written by the store's journal, in order; the session ends once it is committed.
            await self.deps.store.flush()

    async def _close(self, code: int, reason: str) -> None:
        if not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode()[:120])

    # --- bookkeeping ----------------------------------------------------------------------------

    async def _report(self, outcome: CallOutcome, why: str) -> None:
        if self.grant is None or self.deps.on_outcome is None or self.grant.kind != CallKind.ANNOUNCEMENT:
            return
        try:
            await self.deps.on_outcome(self.grant.call_id, outcome, why)
        except Exception:  # the call itself must still end cleanly
            log.exception("recording the outcome of call %s failed", self.grant.call_id)

    def _record(self, kind: str, **detail: Any) -> None:
        if self.grant is not None:
            self.deps.store.record(self.grant.call_id, kind, **detail)


async def media_websocket(
    request: web.Request,
    deps: MediaDeps,
    signature: SignatureChecker,
    media_url: str,
    open_sockets: set[web.WebSocketResponse],
) -> web.StreamResponse:
    """`GET /twilio/media`: one session per call. The single-use token in `start` is what admits a
    stream; a signature on the upgrade, when present, must also be valid (signed over the URL alone)."""
    header = request.headers.get(SIGNATURE_HEADER)
    if header is not None:
        query = f"?{request.rel_url.raw_query_string}" if request.rel_url.raw_query_string else ""
        candidates = (media_url + query, signature.url_for(request))
        if not any(signature.valid(url, {}, header) for url in candidates):
            raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
    # No permessage-deflate: 50 small frames a second per call would each be compressed (CPU for nothing:
    # base64 mu-law barely compresses), and Twilio does not ask for it anyway.
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=256 * 1024, compress=False)
    await ws.prepare(request)
    open_sockets.add(ws)
    try:
        await MediaSession(ws, deps).run()
    finally:
        open_sockets.discard(ws)
    return ws
