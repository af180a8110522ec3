"""One call's bridge between a Twilio media stream and an ElevenLabs agent (design.md, "Agent mode").

Twilio `media` -> `user_audio_chunk` (the caller's base64 passed on as is: no decode, no JSON parse);
agent `audio` (chunks of any size) -> 160-byte frames -> Twilio `media`, each chunk followed by a mark
whose echo says how much of the agent's turn has actually played; `interruption` -> Twilio `clear`, and
the turn it cut is marked in the transcript with what was heard of it; `ping` -> `pong` with its id;
`agent_response`, `agent_response_correction` and `user_transcript` -> transcript turns.

Agent audio goes to Twilio as soon as it arrives (Twilio buffers and plays in order): pacing it here
would only add latency, and a `clear` drops whatever was sent ahead.

The bridge owns its agent socket, opened and closed in `run`. It never ends the call itself: it tells
the session how the conversation ended (`AgentEnd`) and the session speaks, hangs up, or both.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSMsgType

from announcer.agent import protocol
from announcer.agent.connect import AgentConnector, AgentUnavailable
from announcer.agent.transcript import Transcript
from announcer.audio import FRAME_MS, Framer
from announcer.telephony import codec
from announcer.telephony.handoff import MARK_PREFIX, AgentEnd, EndKind, Handoff

log = logging.getLogger(__name__)

METADATA_TIMEOUT_S = 5.0
PAD_AFTER_S = 0.08  # a chunk's tail shorter than a frame waits this long for more audio, then is padded
EARLY_AUDIO_FRAMES = 250  # 5 s of the caller's audio kept while the agent is reached


@dataclass(frozen=True)
class AgentPlan:
    """What the agent is told at the start: overrides only when given, and the call's context."""

    prompt: str | None = None
    first_message: str | None = None
    dynamic_variables: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass
class _Turn:
    seq: int
    frames_sent: int = 0
    frames_played: int = 0


class AgentBridge:
    def __init__(
        self,
        connector: AgentConnector,
        agent_id: str,
        handoff: Handoff,
        plan: Callable[[], Awaitable[AgentPlan]],
        transcript: Transcript,
        *,
        max_s: float,
    ) -> None:
        self._connector = connector
        self._agent_id = agent_id
        self._plan = plan  # read when the agent is reached, not before (it may need the database)
        self._sid = handoff.stream_sid
        self._send = handoff.send
        self._transcript = transcript
        self._record = handoff.record
        self._on_connected = handoff.on_connected
        self._on_end = handoff.on_end
        self._max_s = max_s
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = False  # the agent's metadata arrived and its formats are ours
        self._closing = False  # we are closing the socket (the caller hung up): no ending to report
        self._framer = Framer()  # a chunk's tail shorter than a frame waits here for the next chunk
        self._round = 0  # bumped by every `clear`: echoes of marks sent before it were not played
        self._turn: _Turn | None = None
        self._deadline: asyncio.Timeout | None = None  # the metadata's, then the conversation's
        self._last_interrupt = -1  # audio events up to this id belong to an interrupted response
        self._early: collections.deque[str] = collections.deque(maxlen=EARLY_AUDIO_FRAMES)
        self.bad = 0
        self.closed = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"agent-{self._sid}")

    async def close(self, reason: str) -> None:
        """The caller is gone: close the agent's socket now (no orphaned agent sessions)."""
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed:
            self._record("agent_closed", reason=reason)
            await ws.close(code=aiohttp.WSCloseCode.OK, message=reason.encode()[:120])
        elif self._task is not None and not self._task.done():
            self._task.cancel()  # still reaching the agent: stop there
        if self._task is not None:
            await asyncio.wait([self._task])

    # --- caller -> agent (hot path) -------------------------------------------------------------

    async def user_audio(self, raw: str) -> None:
        """A Twilio `media` message: its base64 payload goes to the agent untouched."""
        payload = codec.media_payload(raw)
        if payload is None:
            self.bad += 1
            return
        ws = self._ws
        if ws is None or not self._ready:
            # The agent is being reached: what the caller says meanwhile is kept for it (the last
            # EARLY_AUDIO_FRAMES), not lost in the handoff.
            if not self._closing:
                self._early.append(payload)
            return
        if ws.closed:
            return
        try:
            await ws.send_str(protocol.user_audio_message(payload))
        except ConnectionResetError:
            return  # the agent's socket is closing: its reader reports how the conversation ended

    def mark_played(self, name: str) -> None:
        """An echoed `agent:` mark: that much of its turn has played."""
        try:
            round_, seq, frames = (int(x) for x in name[len(MARK_PREFIX) :].split("."))
        except ValueError:
            return
        turn = self._turn
        if round_ == self._round and turn is not None and turn.seq == seq:
            turn.frames_played = max(turn.frames_played, frames)

    # --- the agent's side -----------------------------------------------------------------------

    async def _run(self) -> None:
        end: AgentEnd | None = None
        try:
            end = await self._converse()
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except ConnectionResetError:
            # Twilio's socket went away under a send: the session's finish closes the call and us.
            end = None
        except Exception as err:  # a bug must not leave the caller in silence
            log.exception("agent bridge of %s failed", self._sid)
            end = AgentEnd(EndKind.FAILED, f"bridge error: {type(err).__name__}", self._ready)
        finally:
            ws = self._ws
            if ws is not None and not ws.closed:
                await ws.close()
            self.closed.set()
        if end is not None and not self._closing:
            self._record("agent_end", how=end.kind.value, reason=end.reason)
            await self._on_end(end)

    async def _converse(self) -> AgentEnd:
        p = await self._plan()
        try:
            ws = self._ws = await self._connector.connect(self._agent_id)
        except AgentUnavailable as err:
            log.warning("agent for %s unavailable: %s", self._sid, err.reason)
            return AgentEnd(EndKind.FAILED, err.reason, False)
        if self._closing:
            return AgentEnd(EndKind.FAILED, "the call ended while the agent was reached", False)
        await ws.send_str(
            protocol.initiation_message(
                prompt=p.prompt, first_message=p.first_message, dynamic_variables=p.dynamic_variables
            )
        )
        try:
            async with asyncio.timeout(METADATA_TIMEOUT_S) as self._deadline:
                while True:
                    try:
                        msg = await ws.receive(timeout=PAD_AFTER_S if self._framer.pending else None)
                    except TimeoutError:  # receive's own short wait (the deadline cancels instead)
                        await self.pad_tail()
                        continue
                    if msg.type == WSMsgType.TEXT:
                        problem = await self._handle(msg.data)
                        if problem is not None:
                            return AgentEnd(EndKind.FAILED, problem, self._ready)
                    elif msg.type == WSMsgType.BINARY:
                        self._protocol_problem("binary frame (the agent sends JSON text)")
                    elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                        return self._closed_by_agent(ws)
                    elif msg.type == WSMsgType.ERROR:
                        why = f"agent socket error: {ws.exception()!r}"
                        return AgentEnd(EndKind.FAILED, why, self._ready)
        except TimeoutError:
            if not self._ready:
                return AgentEnd(EndKind.FAILED, "the agent sent no conversation metadata in time", False)
            return AgentEnd(EndKind.TIME_LIMIT, f"the conversation reached {self._max_s:g} s", True)

    def _closed_by_agent(self, ws: aiohttp.ClientWebSocketResponse) -> AgentEnd:
        code = ws.close_code
        if self._ready and code in (aiohttp.WSCloseCode.OK, aiohttp.WSCloseCode.GOING_AWAY):
            return AgentEnd(EndKind.AGENT_ENDED, "the agent ended the conversation", True)
        return AgentEnd(EndKind.FAILED, f"agent socket dropped (close code {code})", self._ready)

    async def _handle(self, raw: str) -> str | None:
        """One agent message; a reason to give up on the agent, or None to go on."""
        try:
            event = protocol.parse(raw)
        except protocol.AgentProtocolError as err:
            self._protocol_problem(str(err))
            return None
        if isinstance(event, protocol.Audio):
            if not self._ready:
                self._protocol_problem("audio before conversation metadata")
            elif event.event_id is None or event.event_id > self._last_interrupt:
                await self._play(event.audio_b64)
        elif isinstance(event, protocol.Ping):
            if self._ws is not None:
                # A reset here means the agent's socket is closing: the next receive says how.
                with contextlib.suppress(ConnectionResetError):
                    await self._ws.send_str(protocol.pong_message(event.event_id))
        elif isinstance(event, protocol.Interruption):
            await self._interrupted(event.event_id)
        elif isinstance(event, protocol.AgentResponse):
            self._turn = _Turn(self._transcript.agent_said(event.text))
        elif isinstance(event, protocol.AgentCorrection):
            self._transcript.agent_corrected(event.original, event.corrected)
        elif isinstance(event, protocol.UserTranscript):
            self._transcript.user_said(event.text)
        elif isinstance(event, protocol.Metadata):
            return await self._metadata(event)
        elif event.type not in protocol.QUIET_TYPES:
            self._protocol_problem(f"unknown type {event.type!r}")
        return None

    async def _metadata(self, meta: protocol.Metadata) -> str | None:
        if self._ready:
            self._protocol_problem("a second conversation metadata")
            return None
        formats = (meta.agent_output_audio_format, meta.user_input_audio_format)
        if formats != (protocol.ULAW_8000, protocol.ULAW_8000):
            log.error(
                "agent %s speaks %s and listens for %s; Twilio needs ulaw_8000 both ways: set it in the "
                "agent's voice and audio settings",
                self._agent_id,
                *formats,
            )
            return f"agent audio format is output={formats[0]} input={formats[1]}, not ulaw_8000"
        self._ready = True
        # From here on only the conversation's length is limited; set before `on_connected` awaits the
        # database: with 200 calls starting, that outlasted the metadata deadline, which then cut the
        # call as if it had reached the time limit (benchmarks/agent_bridge.py).
        if self._deadline is not None:
            self._deadline.reschedule(asyncio.get_running_loop().time() + self._max_s)
        self._record("agent_connected", conversation_id=meta.conversation_id[:100])
        early, self._early = self._early, collections.deque()
        if self._ws is not None:
            for payload in early:
                await self._ws.send_str(protocol.user_audio_message(payload))
        await self._on_connected(meta.conversation_id)
        return None

    async def _play(self, audio_b64: str) -> None:
        try:
            audio = base64.b64decode(audio_b64, validate=True)
        except binascii.Error:
            self._protocol_problem("audio: audio_base_64 is not base64")
            return
        frames = self._framer.feed(audio)
        if not frames:
            return
        send, sid, media = self._send, self._sid, codec.media_message
        b64 = base64.b64encode
        for frame in frames:
            await send(media(sid, b64(frame).decode("ascii")))
        n = len(frames)
        turn = self._turn
        if turn is None:  # audio ahead of its agent_response: count it on a turn of its own
            turn = self._turn = _Turn(-1)
        turn.frames_sent += n
        await send(codec.mark_message(sid, f"{MARK_PREFIX}{self._round}.{turn.seq}.{turn.frames_sent}"))

    async def pad_tail(self) -> None:
        """No more audio came for the tail of the last chunk: send it, padded to a frame with silence."""
        frames = self._framer.flush()
        if not frames:
            return
        await self._send(codec.media_message(self._sid, codec.encode_frame(frames[0])))
        if self._turn is not None:
            self._turn.frames_sent += 1

    async def _interrupted(self, event_id: int | None) -> None:
        # Twilio drops what it buffered; the marks it then echoes belong to the old round.
        await self._send(codec.clear_message(self._sid))
        self._round += 1
        self._framer = Framer()  # the cut turn's tail is dropped with the rest of it
        if event_id is not None:
            self._last_interrupt = max(self._last_interrupt, event_id)
        turn, self._turn = self._turn, None
        if turn is not None and turn.seq >= 0:
            self._transcript.agent_interrupted(
                turn.seq, played_ms=turn.frames_played * FRAME_MS, sent_ms=turn.frames_sent * FRAME_MS
            )
        self._record("agent_interruption", event_id=event_id)

    def _protocol_problem(self, what: str) -> None:
        self.bad += 1
        if self.bad <= 3 or self.bad % 100 == 0:
            log.warning("agent stream of %s: ignored message: %s", self._sid, what)
        if self.bad <= 10:
            self._record("agent_protocol_error", reason=what[:200])
