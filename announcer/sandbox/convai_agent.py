"""The scripted agent behind one sandbox ConvAI websocket: it listens, recognises, answers, interrupts.

What it does, as a real ElevenLabs agent does on the wire (protocols.md):
- on the client's first message (normally `conversation_initiation_client_data`) it sends
  `conversation_initiation_metadata`, then speaks its first message (`agent_response`, then `audio`
  events in chunks of odd sizes, never whole 20 ms frames, so the client must re-frame);
- it hears the caller only through `user_audio_chunk`: a turn starts at the first voiced 20 ms and ends
  after `turn_silence_s` of silence (`voice_activity`); the turn's audio is looked up in the shared
  `SpeechBook`, and the agent answers `user_transcript` then its reply;
- caller speech that starts while the agent's turn would still be playing (its audio, played at real
  time from the first chunk, divided by the sandbox speed) is a barge-in: `interruption` with the turn's
  event id, no more audio of that turn, and `agent_response_correction` with the text cut to what played;
- `ping` every `ping_interval_s`; pongs are matched by event id;
- a line with "goodbye"/"bye" gets the goodbye line; once it has played the socket is closed (1000).

One reader (the websocket handler) and two tasks per conversation (the speaking "brain" and the pinger);
every send goes through one lock so an interruption can never land between a turn's audio chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from announcer.audio import FRAME_BYTES, SAMPLE_RATE
from announcer.sandbox import convai_messages as cm
from announcer.sandbox.convai_records import (
    AgentTurn,
    CloseReason,
    Conversation,
    InterruptionRecord,
    PingRecord,
    PongRecord,
    TranscriptLine,
)
from announcer.sandbox.speech_book import SpeechBook, recognise
from announcer.sandbox.voice_activity import SpeechStarted, TurnDetector, TurnEnded

log = logging.getLogger(__name__)

DEFAULT_FIRST_MESSAGE = "Hello, this is the sandbox agent. How can I help you today?"
NOT_UNDERSTOOD = "[inaudible]"  # the transcript of a turn that matches no known line
_GOODBYE = re.compile(r"\b(good)?bye\b", re.IGNORECASE)
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_PREROLL_BYTES = 320  # audio kept before a turn's first voiced window, so its onset is matched too


@dataclass
class AgentBehavior:
    """How the sandbox agent talks, plus failure knobs; read when a conversation opens."""

    first_message: str = DEFAULT_FIRST_MESSAGE  # `{{var}}` filled from dynamic_variables
    replies: Mapping[str, str] = field(default_factory=dict)  # keyword in the caller's line -> reply
    default_reply: str = "You said: {text}."
    not_understood_reply: str = "Sorry, I did not catch that."
    goodbye: str = "Thank you for calling. Goodbye!"
    output_format: str = cm.ULAW_8000  # announced in the metadata (the audio stays mu-law)
    input_format: str = cm.ULAW_8000
    ping_interval_s: float | None = 2.0  # real seconds; None: no pings
    turn_silence_s: float = 0.4  # audio seconds of silence that end a caller's turn
    send_pace: float | None = 4.0  # audio leaves at this multiple of its playing speed; None: at once
    chunk_bytes: tuple[int, int] = (1001, 3999)  # audio chunk sizes are odd numbers in this range
    seed: int = 0
    # failure knobs
    garbage: bool = False  # after the metadata: unknown type, malformed JSON, ping without id, binary
    drop_after_s: float | None = None  # abort the connection (no close frame) after these real seconds
    drop_after_first_message: bool = False  # abort once the first message's audio is sent
    end_after_first_message: bool = False  # close normally once the first message has played
    # the metadata (which starts the conversation) waits for this event: a slow agent, held by a test
    hold_metadata: asyncio.Event | None = None


class _EndRequest:
    """Queued by `SandboxConvAI.end_conversation`: say goodbye and close."""


class AgentSession:
    def __init__(
        self,
        *,
        ws: web.WebSocketResponse,
        request: web.Request,
        record: Conversation,
        behavior: AgentBehavior,
        book: SpeechBook,
        synthesize: Callable[[str], bytes],
        speed: float,
    ) -> None:
        self._ws = ws
        self._request = request
        self.record = record
        self._behavior = behavior
        self._book = book
        self._synthesize = synthesize
        self._speed = speed
        self._rng = random.Random(behavior.seed)
        self._lock = asyncio.Lock()
        self._detector = TurnDetector(behavior.turn_silence_s)
        self._inbox: asyncio.Queue[bytes | _EndRequest] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._event_id = 0
        self._outstanding: dict[int, float] = {}
        self._last_rtt_ms: int | None = None
        self._current: AgentTurn | None = None
        self._started = False
        self._gone = False

    # -- the reader (runs in the websocket handler) -------------------------------------------------
    async def run(self) -> None:
        record = self.record
        try:
            if self._behavior.drop_after_s is not None:
                self._spawn(self._drop_later(self._behavior.drop_after_s), "drop")
            async for msg in self._ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    self._protocol_error(f"binary frame of {len(msg.data)} bytes (messages are JSON text)")
                elif msg.type is WSMsgType.ERROR:
                    log.warning(
                        "conversation %s: socket error %r", record.conversation_id, self._ws.exception()
                    )
                    break
        finally:
            # Recorded before anything is awaited: the client leaving cancels this handler
            # (handler_cancellation), and a second cancellation would skip the rest of this block.
            self._gone = True
            if record.close_reason is None:
                record.close_reason = CloseReason.CLIENT
            record.close_code = self._ws.close_code
            record.closed_at = time.monotonic()
            record.closed.set()
            record.notify()
            await self._stop_tasks()

    def end(self) -> None:
        """Say goodbye and close (after anything already being said)."""
        self._inbox.put_nowait(_EndRequest())

    async def shutdown(self) -> None:
        """The sandbox is closing: 1001 going away."""
        if self.record.close_reason is None:
            self.record.close_reason = CloseReason.SHUTDOWN
        await self._ws.close(code=WSCloseCode.GOING_AWAY, message=b"sandbox shutting down")

    async def _on_text(self, text: str) -> None:
        try:
            msg = cm.parse_client_message(text)
        except cm.ConvAIProtocolError as err:
            self._protocol_error(str(err))
            return
        record = self.record
        if not self._started:
            await self._start(msg if isinstance(msg, cm.InitiationData) else None)
            if isinstance(msg, cm.InitiationData):
                return
        match msg:
            case cm.UserAudio(audio=audio):
                record._user_audio += audio
                record.user_audio_chunks += 1
                for event in self._detector.feed(audio):
                    await self._on_turn_event(event)
            case cm.Pong(event_id=event_id):
                now = time.monotonic()
                sent = self._outstanding.pop(event_id, None)
                rtt = None if sent is None else now - sent
                if rtt is not None:
                    self._last_rtt_ms = round(rtt * 1000)
                record.pongs.append(PongRecord(event_id, now, sent is not None, rtt))
            case cm.ContextualUpdate(text=update):
                record.contextual_updates.append(update)
            case cm.UserActivity(kind=kind, text=said):
                record.user_activity.append(kind if said is None else f"{kind}: {said}")
            case cm.InitiationData():
                self._protocol_error("conversation_initiation_client_data after the conversation started")
        record.notify()

    async def _on_turn_event(self, event: SpeechStarted | TurnEnded) -> None:
        if isinstance(event, SpeechStarted):
            turn = self._current
            if turn is not None and turn.playing(time.monotonic(), self._speed):
                await self._interrupt(turn)
            return
        audio = self.record._user_audio[max(0, event.start - _PREROLL_BYTES) : event.end]
        self._inbox.put_nowait(bytes(audio))

    async def _interrupt(self, turn: AgentTurn) -> None:
        async with self._lock:
            if turn.interrupted:
                return
            turn.interrupted = True
            assert turn.started_at is not None
            played = min(turn.sent, int((time.monotonic() - turn.started_at) * SAMPLE_RATE * self._speed))
            corrected = _truncate(turn.text, played / turn.total if turn.total else 1.0)
            await self._send_locked(cm.interruption(turn.event_id))
            await self._send_locked(cm.agent_response_correction(turn.text, corrected))
            self.record.interruptions.append(
                InterruptionRecord(
                    turn.event_id, time.monotonic(), turn.text, corrected, turn.sent, turn.total
                )
            )
            self.record.corrections.append((turn.text, corrected))
            self.record.notify()

    # -- start, and the tasks ----------------------------------------------------------------------
    async def _start(self, initiation: cm.InitiationData | None) -> None:
        self._started = True
        record, behavior = self.record, self._behavior
        if initiation is None:
            self._protocol_error("first message was not conversation_initiation_client_data")
        else:
            record.initiation = initiation.raw
            record.config_override = initiation.config_override
            record.dynamic_variables = dict(initiation.dynamic_variables)
        record.notify()
        if behavior.hold_metadata is not None:
            await behavior.hold_metadata.wait()
        await self._send(
            cm.initiation_metadata(record.conversation_id, behavior.output_format, behavior.input_format)
        )
        record.metadata_sent_at = time.monotonic()
        if behavior.garbage:
            for text in cm.GARBAGE_TEXT:
                await self._send(text)
            async with self._lock:
                with contextlib.suppress(ConnectionError):
                    await self._ws.send_bytes(cm.GARBAGE_BINARY)
        record.notify()
        self._spawn(self._brain(), "brain")
        if behavior.ping_interval_s is not None:
            self._spawn(self._pinger(behavior.ping_interval_s), "pinger")

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro, name=f"sandbox-convai-{what}-{self.record.conversation_id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox agent task %s crashed", task.get_name(), exc_info=task.exception())

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _brain(self) -> None:
        behavior, record = self._behavior, self.record
        first = _fill(_first_message(behavior, record), record.dynamic_variables)
        record.first_message = first
        turn = await self._speak(first)
        if behavior.drop_after_first_message:
            self._abort()
            return
        if behavior.end_after_first_message:
            await self._close_after(turn)
            return
        while not self._gone:
            item = await self._inbox.get()
            if isinstance(item, _EndRequest):
                await self._close_after(await self._speak(behavior.goodbye))
                return
            found = await asyncio.to_thread(recognise, item, self._book.snapshot())
            heard = found.text if found is not None else NOT_UNDERSTOOD
            record.user_turns += 1
            record.transcript.append(TranscriptLine("user", heard, time.monotonic()))
            await self._send(cm.user_transcript(heard))
            record.notify()
            if found is not None and _GOODBYE.search(found.text):
                await self._close_after(await self._speak(behavior.goodbye))
                return
            await self._speak(_reply(behavior, found.text if found is not None else None))

    async def _speak(self, text: str) -> AgentTurn:
        """One agent turn: agent_response, then its audio in odd-sized chunks, paced, until interrupted."""
        audio = await asyncio.to_thread(self._synthesize, text)
        self._event_id += 1
        turn = AgentTurn(text, self._event_id, len(audio))
        self._current = turn
        self.record.agent_turns.append(turn)
        record, pace = self.record, self._behavior.send_pace
        await self._send(cm.agent_response(text))
        record.transcript.append(TranscriptLine("agent", text, time.monotonic()))
        record.notify()
        while turn.sent < len(audio) and not self._gone:
            size = self._next_chunk_size(len(audio) - turn.sent)
            chunk = audio[turn.sent : turn.sent + size]
            if pace and turn.started_at is not None:
                due = turn.started_at + turn.sent / (SAMPLE_RATE * self._speed * pace)
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            async with self._lock:
                if turn.interrupted:
                    break
                if turn.started_at is None:
                    turn.started_at = time.monotonic()
                await self._send_locked(cm.audio(chunk, turn.event_id))
                turn.sent += len(chunk)
                record.audio_chunk_sizes.append(len(chunk))
                record.agent_audio += chunk
        turn.done_sending = True
        record.notify()
        return turn

    def _next_chunk_size(self, remaining: int) -> int:
        """Odd sizes, and never leaves a remainder that is a whole number of 20 ms frames: a client
        that forwards chunks as they come, without re-framing, is caught."""
        low, high = self._behavior.chunk_bytes
        size = self._rng.randrange(low | 1, high + 1, 2)
        if size >= remaining:
            if remaining % FRAME_BYTES:
                return remaining
            return remaining - 1  # all of it would be whole frames: leave a 1-byte last chunk
        if (remaining - size) % FRAME_BYTES == 0:
            size -= 2  # the rest would be whole frames
        return size

    async def _close_after(self, turn: AgentTurn) -> None:
        """End the conversation once `turn` has played (as the real agent ends after its last line)."""
        if turn.started_at is not None and not turn.interrupted:
            delay = turn.play_end(self._speed) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if self.record.close_reason is None:
            self.record.close_reason = CloseReason.SERVER
        self._gone = True
        await self._ws.close(code=WSCloseCode.OK, message=b"conversation ended")

    async def _pinger(self, interval: float) -> None:
        while not self._gone:
            await asyncio.sleep(interval)
            self._event_id += 1
            now = time.monotonic()
            self._outstanding[self._event_id] = now
            self.record.pings.append(PingRecord(self._event_id, now))
            await self._send(cm.ping(self._event_id, self._last_rtt_ms))
            self.record.notify()

    async def _drop_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._abort()

    def _abort(self) -> None:
        """Drop the TCP connection without a close frame (a crashed or unreachable agent)."""
        if self.record.close_reason is None:
            self.record.close_reason = CloseReason.ABORTED
        self._gone = True
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    # -- sending -----------------------------------------------------------------------------------
    async def _send(self, text: str) -> None:
        async with self._lock:
            await self._send_locked(text)

    async def _send_locked(self, text: str) -> None:
        if self._ws.closed:
            return
        try:
            await self._ws.send_str(text)
        except ConnectionError:
            self._gone = True  # the client left; the reader sees the close and records it

    def _protocol_error(self, what: str) -> None:
        self.record.protocol_errors.append(what)
        self.record.notify()


def _first_message(behavior: AgentBehavior, record: Conversation) -> str:
    agent = (record.config_override or {}).get("agent")
    if isinstance(agent, dict) and isinstance(agent.get("first_message"), str) and agent["first_message"]:
        return str(agent["first_message"])
    return behavior.first_message


def _fill(text: str, variables: Mapping[str, object]) -> str:
    """ElevenLabs dynamic variables: `{{name}}` in the agent's text becomes the variable's value."""
    return _VARIABLE.sub(lambda m: str(variables.get(m.group(1), m.group(0))), text)


def _reply(behavior: AgentBehavior, heard: str | None) -> str:
    if heard is None:
        return behavior.not_understood_reply
    lowered = heard.lower()
    for keyword, reply in behavior.replies.items():
        if keyword.lower() in lowered:
            return reply
    return behavior.default_reply.format(text=heard.rstrip(".!?"))


def _truncate(text: str, fraction: float) -> str:
    """The words of `text` that had played when `fraction` of its audio had (at least one)."""
    words = text.split()
    keep = max(1, min(len(words), round(len(words) * fraction)))
    return " ".join(words[:keep])
