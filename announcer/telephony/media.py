"""One Twilio media-stream session: the socket side of a call's flow.

Lifecycle (protocols.md, "Media Streams websocket"): `connected` -> `start` (carries our single-use
token) -> we stream 160-byte frames paced by the playout clock, then a `mark` -> Twilio echoes the mark
when the audio has played -> outcome "heard" -> hang up via REST. A `stop` first means the caller hung
up. If speech fails before the first frame the call is redirected to TwiML `<Say>` of the same text.

The session admits a stream (account, format, token), reads the socket (exactly one reader, `run`), feeds
what it reads into the call's flow (`callflow.step`, which decides everything that follows) and carries the
flow's actions out: frames on the shared playout clock, marks and `clear`, the deadline, the agent, REST
calls and the store. Nothing here decides what a mark, a key or a hang-up means.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, assert_never

from aiohttp import WSCloseCode, WSMsgType, web
from sqlalchemy.exc import SQLAlchemyError

from announcer import logs
from announcer.audio import FRAME_MS
from announcer.speech.speaker import Speaker, SpeechEvent, SpeechUnavailable
from announcer.store.calls import CallStore, StreamGrant
from announcer.store.models import CallKind, CallOutcome
from announcer.telephony import callflow as flow
from announcer.telephony import codec, twiml
from announcer.telephony.callflow import CallScript
from announcer.telephony.calls import MachineDetection, TwilioCalls, TwilioError
from announcer.telephony.handoff import (
    After,
    AgentEnd,
    AgentOffer,
    Conversation,
    EndKind,
    Handoff,
    StartAgent,
)
from announcer.telephony.hello import HelloEar
from announcer.telephony.live import LiveCalls
from announcer.telephony.playout import PlayoutClock
from announcer.telephony.sender import Sender
from announcer.telephony.signature import HEADER as SIGNATURE_HEADER
from announcer.telephony.signature import SignatureChecker
from announcer.telephony.tokens import TokenBook

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
_SOCKET_ENDED = frozenset((WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED))
SILENT_S = 20.0  # no message at all for this long: the peer is gone (Twilio sends media every 20 ms)
MAX_BAD_MESSAGES = 20
# Listening for a hello ends on the callee's audio (telephony/hello.py); this much more is the backstop
# should their audio not come at all.
LISTEN_BACKSTOP_MS = 1500
VERDICT_POLL_S = 0.2  # real seconds between looks for a verdict posted to another process
HOLD_MARGIN_S = 5.0  # after Twilio's detection timeout, the verdict is not coming: speak the message


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
    agent_apology: str = flow.APOLOGY
    agent_time_limit: str = flow.TIME_LIMIT
    # Who answered: machine detection's tuning (its speech threshold and timeout shape the wait for a
    # hello), and where its verdicts reach the live sessions.
    amd: MachineDetection | None = None
    live: LiveCalls | None = None
    first_audio: Callable[[float], None] | None = None  # seconds from the stream's start (the metrics)


class MediaSession:
    def __init__(self, ws: web.WebSocketResponse, out: Sender, deps: MediaDeps) -> None:
        self.ws = ws
        self._out = out  # every message to Twilio goes through it, in order (telephony/sender.py)
        self.deps = deps
        self.start: codec.Start | None = None
        self.grant: StreamGrant | None = None
        self.media_in = 0
        self._heard = 0  # messages read, of any kind: what the liveness check looks at
        self._heard_checked = -1
        self._liveness: asyncio.TimerHandle | None = None
        self.bad = 0
        self.recorded_problems = 0
        self._connected = False  # Twilio's first message; one is expected before `start`
        self.first_frame_at: float | None = None
        self.started_at: float | None = None
        self.call = flow.CallState()  # the call's flow: phase, round of marks, script, deadline
        self._playout = deps.clock.stream()
        self._agent: Conversation | None = None
        # What carries the flow's actions out, over time:
        self._speaking: asyncio.Task[None] | None = None
        self._deadline: asyncio.Task[None] | None = None
        self._script: asyncio.Task[CallScript | None] | None = None
        self._confirming: asyncio.Task[None] | None = None
        self._verdicts: asyncio.Task[None] | None = None  # machine detection's, fed as they come
        self._polling: asyncio.Task[None] | None = None  # ... or found in the store while holding
        self._ear: HelloEar | None = None  # while the message waits for the callee's hello
        self._keys = ""  # every key pressed, in order (a call fact)
        self.played_ms: int | None = None  # of the message (or the voicemail message), from its marks
        self.message_ms: int | None = None
        self._facts_recorded: dict[str, Any] | None = None  # what `_record_facts` wrote last
        self._measured: str | None = None  # the text whose played_ms / message_ms these are

    # --- reader ---------------------------------------------------------------------------------

    async def run(self) -> None:
        self._check_alive()
        try:
            async with asyncio.timeout(START_TIMEOUT_S) as deadline:
                # receive() itself rather than `async for`: one coroutine less per message, 50 a second
                # per call; the end of the socket is what ends the iteration.
                receive = self.ws.receive
                while True:
                    msg = await receive()
                    if msg.type in _SOCKET_ENDED:
                        break
                    self._heard += 1
                    if msg.type is WSMsgType.TEXT:
                        raw: str = msg.data
                        if codec.is_media(raw):
                            # Hot path: an announcement does not listen to the caller's audio; an agent
                            # gets it passed on untouched.
                            if self.start is not None:
                                self.media_in += 1
                                if self._agent is not None:
                                    await self._agent.user_audio(raw)
                                elif self._ear is not None:
                                    await self._listen(raw)
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
            if self._liveness is not None:
                self._liveness.cancel()
                self._liveness = None
            await self._finish(reason="socket closed")

    def _check_alive(self) -> None:
        """Twilio sends a `media` message every 20 ms for as long as the call lasts, so a stream that has
        sent nothing for SILENT_S is gone (a peer that vanished without closing its TCP connection): the
        connection is dropped and the reader ends the call (20-40 s into the silence: the check looks at
        whole intervals). One timer per stream every SILENT_S, rather than aiohttp's heartbeat, which re-arms
        a timer for every message received."""
        if self._heard == self._heard_checked:
            log.warning("media stream silent for %.0f s; dropping the connection", SILENT_S)
            self._liveness = None
            self._out.abort()
            return
        self._heard_checked = self._heard
        self._liveness = asyncio.get_running_loop().call_later(SILENT_S, self._check_alive)

    def _protocol_problem(self, what: str) -> None:
        self.bad += 1
        if self.bad <= 3 or self.bad % 100 == 0:
            log.warning("media stream: ignored malformed message: %s", what)
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
            await self._feed(flow.MarkEchoed(event.name))
        elif isinstance(event, codec.Dtmf):
            self._keys += event.digit
            self._record("dtmf", digit=event.digit)  # every key is on the trail, whatever it does
            await self._feed(flow.KeyPressed(event.digit))
        elif isinstance(event, codec.Stop):
            await self._feed(flow.StreamStopped())
        elif isinstance(event, codec.Media):  # only when the fast path did not recognise it
            self.media_in += 1

    async def _on_start(self, start: codec.Start) -> None:
        if self.start is not None:
            self._protocol_problem("a second start on the same stream")
            return
        logs.bind(call_sid=start.call_sid)  # every record of this session (and its tasks) names the call
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
            log.warning("media stream rejected: unknown, expired or used token")
            await self._close(WSCloseCode.POLICY_VIOLATION, "unknown, expired or already used stream token")
            return
        self.start, self.grant = start, grant
        self.started_at = time.monotonic()
        announcement = grant.kind == CallKind.ANNOUNCEMENT
        load = self.deps.script if announcement else None
        setup = self._setup(grant, load is not None)
        if setup.listen:
            threshold = self.deps.amd.speech_threshold_ms if self.deps.amd is not None else 2400
            assert grant.options is not None  # listening is an announcement's option
            self._ear = HelloEar(grant.options.hello_timeout_ms, threshold)
        early = self.deps.live.join(start.call_sid, self._verdict) if self.deps.live is not None else None
        # Speaking is scheduled before the database writes, so its first step (a cache hit's first
        # frames, or the TTS request) runs ahead of theirs.
        await self._feed(flow.StreamStarted(setup))
        if early is not None:
            await self._feed(early)
        if load is not None:
            self._script = asyncio.create_task(load(grant))
        if confirm:
            self._confirming = asyncio.create_task(self._confirm_token(token, start.call_sid))
        self.deps.store.record_in_progress(grant.call_id)
        self._record("stream_started", stream_sid=start.stream_sid)

    def _setup(self, grant: StreamGrant, script: bool) -> flow.Setup:
        """What the grant (an announcement's options) and the configuration say about this call."""
        deps = self.deps
        options = grant.options if grant.kind == CallKind.ANNOUNCEMENT else None
        offer = AgentOffer.from_options(options) if options is not None else None
        listen = options is not None and options.start == "after_hello"
        amd = deps.amd is not None and options is not None and options.machine_detection
        return flow.Setup(
            call_id=grant.call_id,
            kind=grant.kind,
            text=grant.text,
            offer=offer,
            line_offer=deps.greeting_agent if grant.kind == CallKind.GREETING else None,
            agent=deps.start_agent is not None,
            script=script,
            apology=deps.agent_apology,
            time_limit=deps.agent_time_limit,
            listen=listen and not (offer is not None and offer.after == After.START),
            listen_s=(options.hello_timeout_ms + LISTEN_BACKSTOP_MS) / 1000 if options is not None else 0.0,
            amd=amd,
            hold_s=(deps.amd.timeout_s if deps.amd is not None else 30) + HOLD_MARGIN_S,
            voicemail=grant.voicemail_text,
            hang_up_on_machine=options is not None and options.on_machine == "hang_up",
        )

    async def _listen(self, raw: str) -> None:
        """One inbound frame while the message waits for the callee's hello."""
        assert self._ear is not None
        payload = codec.media_payload(raw)
        heard = self._ear.hear(payload) if payload is not None else None
        if heard is not None:
            self._record("callee_heard", hearing=heard.hearing.value, speech_ms=heard.speech_ms)
            await self._feed(heard)
        if self.call.phase != flow.Phase.LISTENING_FOR_HELLO:
            # The message started, or it holds for the verdict (which the ear cannot change), or the call
            # moved on: back to the hot path.
            self._ear = None

    def _verdict(self, verdict: flow.MachineVerdict) -> None:
        """Machine detection's verdict, from the webhook's task: fed from a task of the session's own, so
        the webhook is answered at once whatever the flow then does (a REST hang-up, say)."""
        previous = self._verdicts

        async def feed() -> None:
            if previous is not None:
                await asyncio.wait([previous])  # in the order they came
            await self._feed(verdict)

        self._verdicts = asyncio.create_task(feed())

    async def _poll_verdict(self, call_id: int) -> None:
        """While the call holds, the verdict may reach another process (any process serves any webhook):
        it is in the store then. Looked for a few times a second, only for the seconds a hold lasts."""
        found: tuple[str, int | None] | None = None
        while found is None and self.call.phase == flow.Phase.HOLDING_FOR_AMD:
            await asyncio.sleep(VERDICT_POLL_S)
            try:
                found = await self.deps.store.machine_verdict(call_id)
            except SQLAlchemyError as err:
                log.warning("could not look for the machine detection verdict: %r", err)
        # From here on an ordinary feed, which the session's finish lets complete (a hang-up under way).
        self._polling = None
        if found is not None:
            await self._feed(flow.MachineVerdict(*found))

    async def _confirm_token(self, token: str, call_sid: str) -> None:
        try:
            grant = await self.deps.store.consume_token(token, call_sid)
        except SQLAlchemyError as err:
            # This process issued the token and admitted the stream; the caller keeps their message.
            log.error("could not confirm the stream token: %r", err)
            return
        if grant is None:
            log.warning("stream token refused (used elsewhere, or the call ended); cutting the stream")
            await self._feed(flow.TokenRefused())

    # --- the call's flow: events in, actions out ----------------------------------------------------

    async def _feed(self, event: flow.Event) -> None:
        """One event through the flow; its actions are carried out in order (the state has moved on
        already, so an event fed meanwhile by another task sees where the call is)."""
        self.call, actions = flow.step(self.call, event)
        for action in actions:
            await self._do(action)

    async def _do(self, action: flow.Action) -> None:
        assert self.start is not None and self.grant is not None
        match action:
            case flow.Speak(text, mark):
                self._say(text, mark)
            case flow.StopSpeaking():
                await self._stop_speaking()
            case flow.Clear():
                await self._out.send(codec.clear_message(self.start.stream_sid))
                self._playout.cleared()
            case flow.SendMark(name):
                await self._out.send(codec.mark_message(self.start.stream_sid, name))
            case flow.StartDeadline(timer, seconds):
                self._cancel_deadline()
                self._deadline = asyncio.create_task(
                    self._deadline_after(timer, seconds / self.deps.clock.speed)
                )
            case flow.CancelDeadline():
                self._cancel_deadline()
            case flow.HandOver(offer, heard_text):
                self._hand_over(offer, heard_text)
            case flow.CloseAgent(reason):
                await self._close_agent(reason)
            case flow.ForwardMark(name):
                if self._agent is not None:
                    self._agent.mark_played(name)
            case flow.AwaitVerdict():
                if self._polling is None:
                    self._polling = asyncio.create_task(self._poll_verdict(self.grant.call_id))
            case flow.AwaitScript():
                await self._feed(flow.ScriptLoaded(await self._get_script()))
            case flow.RedirectToSay(text, reason):
                await self._redirect(text, reason)
            case flow.Record(kind, detail):
                self._record(kind, **detail)
            case flow.Played(ms):
                self.played_ms = self.message_ms if ms is None else ms
            case flow.ReportOutcome(outcome, why, told):
                # The facts first, through the same journal: the delivery's outcome (and its webhook) is
                # written with them.
                self._record_facts()
                self.deps.store.record_outcome(self.grant.call_id, outcome, reason=why)
                await self._report(outcome, why if told is None else told)
            case flow.HangUp():
                await self._hang_up()
            case flow.CloseSocket(reason, refused):
                await self._close(WSCloseCode.POLICY_VIOLATION if refused else WSCloseCode.OK, reason)
            case _:
                assert_never(action)

    # --- speaking -------------------------------------------------------------------------------

    def _say(self, text: str, mark: str) -> None:
        """Speak `text`, then send `mark` (its echo says it played to the end)."""
        self._speaking = asyncio.create_task(self._speak(text, mark), name=f"speak-{self._sid_for_log()}")
        self._speaking.add_done_callback(self._speaking_done)

    async def _speak(self, text: str, mark: str) -> None:
        assert self.start is not None and self.grant is not None and self.started_at is not None
        sid = self.start.stream_sid
        playout = self._playout
        send, queue = self._out.send, self._out.queue
        media_message = codec.media_message
        t0 = self.started_at
        # The message and the voicemail message tell how much of them has played (played_ms).
        prefix, _, rest = mark.partition(":")
        measured = f"{prefix}:" in (flow.END_MARK_PREFIX, flow.VOICEMAIL_MARK_PREFIX)
        every = flow.PLAYED_EVERY_FRAMES if measured else 0
        if measured:
            self._measured = text
            clip = self.deps.speaker.cached(text)  # known at once when cached (a repeat, a prefetch)
            self.message_ms = len(clip) * FRAME_MS if clip is not None else None
        sent = 0
        try:
            async with aclosing(self.deps.speaker.frames(text, self._on_speech_event)) as frames:
                async for payload in frames:
                    # Awaited only when there is something to wait for: most frames cost no coroutine.
                    if not playout.has_room():
                        await playout.room()
                    if queue(media_message(sid, payload)):
                        await self._out.drain()
                    playout.sent()
                    sent += 1
                    if every and sent % every == 0:
                        await send(
                            codec.mark_message(sid, f"{flow.PLAYED_MARK_PREFIX}{sent * FRAME_MS}:{rest}")
                        )
                    if self.first_frame_at is None:
                        self.first_frame_at = time.monotonic()
                        # `start` -> first frame on the socket, as the service saw it
                        self._record(
                            "speech_started", first_frame_ms=round((self.first_frame_at - t0) * 1000, 3)
                        )
                        if self.deps.first_audio is not None:
                            self.deps.first_audio(self.first_frame_at - t0)
            if measured:
                self.message_ms = sent * FRAME_MS
            await send(codec.mark_message(sid, mark))
            self._record("speech_sent", frames=playout.frames_sent, mark=prefix)
        except SpeechUnavailable as err:
            await self._feed(flow.SpeechFailed(err.reason))
        except ConnectionResetError:
            pass  # the socket went away mid-message; the reader's finish handles the call

    async def _stop_speaking(self) -> None:
        """Once this returns nothing more of what was being said goes out (`clear` drops what Twilio has)."""
        task = self._speaking
        # Not from within itself (its own speech failed, and the flow is answering that).
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])

    def _speaking_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("speaking failed", exc_info=task.exception())

    def _on_speech_event(self, event: SpeechEvent) -> None:
        if event.kind in ("tts_failed", "tts_failed_midway", "fallback_used"):
            log.warning("speech: %s %s", event.kind, event.reason)
        self._record(f"speech_{event.kind}", reason=event.reason)

    async def _redirect(self, text: str, reason: str) -> None:
        """Let Twilio speak the text itself (REST update to <Say>): never a silent call."""
        assert self.start is not None
        try:
            redirected = await self.deps.twilio.redirect(self.start.call_sid, twiml.say_then_hangup(text))
        except TwilioError as err:
            log.error("redirect to <Say> failed: %s", err)
            self._record("redirect_failed", code=err.code, message=err.message)
            return
        if redirected:
            await self._feed(flow.SaidByTwilio(reason))

    # --- the deadline and the script ------------------------------------------------------------------

    async def _deadline_after(self, timer: int, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._feed(flow.DeadlinePassed(timer))

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline is not asyncio.current_task():
            self._deadline.cancel()
        self._deadline = None

    async def _get_script(self) -> CallScript | None:
        if self._script is None:
            return None
        try:
            return await self._script
        except Exception:  # without its script the call still ends as a heard message
            log.exception("could not load the call's script")
            return None

    # --- agent mode -----------------------------------------------------------------------------

    def _hand_over(self, offer: AgentOffer, heard_text: str) -> None:
        assert self.start is not None and self.grant is not None and self.deps.start_agent is not None
        # Said if the agent cannot be reached: made now, while the agent is being reached, so it comes
        # at once when needed (a no-op once it is in the cache).
        self.deps.speaker.prefetch(self.deps.agent_apology)
        self._agent = self.deps.start_agent(
            Handoff(
                call_id=self.grant.call_id,
                call_kind=self.grant.kind,
                heard_text=heard_text,
                offer=offer,
                stream_sid=self.start.stream_sid,
                send=self._out.send,
                record=self._record,
                on_connected=self._agent_connected,
                on_end=self._agent_ended,
            )
        )
        self._agent.start()

    async def _agent_connected(self, conversation_id: str) -> None:
        await self._feed(flow.AgentConnected(conversation_id))

    async def _agent_ended(self, end: AgentEnd) -> None:
        if self.ws.closed:
            return  # nothing more can be said on it: the reader's finish ends the call
        if end.kind != EndKind.AGENT_ENDED and self.call.phase == flow.Phase.WITH_AGENT:
            log.warning("agent conversation ended: %s", end.reason)
        await self._feed(flow.AgentEnded(end))

    async def _close_agent(self, reason: str) -> None:
        if self._agent is not None:
            agent, self._agent = self._agent, None
            await agent.close(reason)

    # --- ending ---------------------------------------------------------------------------------

    async def _hang_up(self) -> None:
        assert self.start is not None
        try:
            hung_up = await self.deps.twilio.hang_up(self.start.call_sid)
        except TwilioError as err:
            log.error("hang-up failed: %s", err)
            self._record("hangup_failed", code=err.code, message=err.message)
        else:
            self._record("hangup", already_ended=not hung_up)

    async def _finish(self, *, reason: str) -> None:
        # The flow's ending (the agent, our speech, <Say> if the message went unheard), then whatever is
        # still running in any phase (a stream cut for a reused token, say).
        await self._feed(flow.SocketClosed(reason))
        await self._close_agent(reason)
        await self._stop_speaking()
        # The finished task holds its exception, whose traceback holds our frames: drop it so the
        # session is freed by reference counting, not by a (long, stop-the-world) full GC pass.
        self._speaking = None
        self._cancel_deadline()
        if self._script is not None:
            if not self._script.done():
                self._script.cancel()
            elif not self._script.cancelled() and self._script.exception() is not None:
                log.error("loading the call's script failed", exc_info=self._script.exception())
        self._script = None
        self._ear = None
        if self._polling is not None:
            self._polling.cancel()
            self._polling = None
        # A verdict being fed completes (the flow has ended: one fed now changes nothing).
        self._verdicts = None
        if self.start is not None and self.deps.live is not None:
            self.deps.live.leave(self.start.call_sid, self._verdict)
        if self.grant is not None:
            self._record("stream_closed", media_frames_in=self.media_in, malformed=self.bad)
            self._record_facts()
        if self._confirming is not None:
            await asyncio.wait([self._confirming])
            self._confirming = None
        # The trail is written by the store's journal, in order; the session ends once it is committed.
        await self.deps.store.flush()

    async def _close(self, code: int, reason: str) -> None:
        if not self.ws.closed:
            self._out.flush()  # what was said before the close frame goes out before it
            await self.ws.close(code=code, message=reason.encode()[:120])

    # --- bookkeeping ----------------------------------------------------------------------------

    async def _report(self, outcome: CallOutcome, why: str) -> None:
        if self.grant is None or self.deps.on_outcome is None or self.grant.kind != CallKind.ANNOUNCEMENT:
            return
        try:
            await self.deps.on_outcome(self.grant.call_id, outcome, why)
        except Exception:  # the call itself must still end cleanly
            log.exception("recording the outcome of call %s failed", self.grant.call_id)

    def _record_facts(self) -> None:
        """How much of the message played, of how long it is, and the keys, as known now."""
        assert self.grant is not None
        if self.message_ms is None and self._measured is not None:
            # Cut off before its last frame was sent: the length from the cache, once the clip is whole.
            clip = self.deps.speaker.cached(self._measured)
            if clip is not None:
                self.message_ms = len(clip) * FRAME_MS
        facts: dict[str, Any] = {"played_ms": self.played_ms, "message_ms": self.message_ms}
        facts = {k: v for k, v in facts.items() if v is not None}
        if self._keys:
            facts["keys"] = self._keys
        # Recorded with the outcome and again when the stream closes: mostly nothing changed in between,
        # and an UPDATE per call is saved.
        if facts and facts != self._facts_recorded:
            self._facts_recorded = facts
            self.deps.store.record_facts(self.grant.call_id, **facts)

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
    # base64 mu-law barely compresses), and Twilio does not ask for it anyway. No aiohttp heartbeat: the
    # session checks the stream is alive itself, for less (MediaSession._check_alive).
    ws = web.WebSocketResponse(max_msg_size=256 * 1024, compress=False)
    writer = await ws.prepare(request)
    open_sockets.add(ws)
    try:
        await MediaSession(ws, Sender(ws, request, writer), deps).run()
    finally:
        open_sockets.discard(ws)
    return ws
