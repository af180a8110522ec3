"""The caller's handset: a playback buffer and a microphone, driven by one shared clock.

Benchmarks run 100-200 sandbox calls in one process, so no call owns a sleeping task: `PhoneClock`
wakes every few milliseconds and lets each active `Phone` catch up on the 20 ms slots that are due
from `time.monotonic()`.  Catch-up (instead of counting ticks) keeps the audio clock exact under load
and lets `speed` (sandbox seconds per real second) go far above the tick rate.

Playback follows Twilio's documented behaviour (protocols.md, "Media Streams websocket"): media is
played in the order received and buffered when sent ahead; a `mark` is echoed once all audio sent
before it has played; `clear` drops buffered audio and echoes every pending mark at once.

The microphone sends silence, or the frames of a line the phone says (`say`, or the scripted
conversation of `PhoneBehavior`, see `phone_script`): one frame per 20 ms slot either way.  For most
phones it runs while a media stream is open; a simulated callee (`Callee`, see `callee`) has its own
microphone from the answer on, heard by the call's machine detection (`amd`) slot by slot, with or
without a stream.  The phone also records what it observes for tests and benchmarks: when the first
frame played, the spans of its own sound, and a machine callee's recording.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from announcer.audio import FRAME_BYTES, FRAME_MS, SILENCE_FRAME
from announcer.sandbox.amd import MachineDetector, Verdict
from announcer.sandbox.callee import CalleeScript
from announcer.sandbox.phone_script import PhoneScript
from announcer.sandbox.phone_voice import PhoneVoice, Utterance
from announcer.sandbox.tones import Sound, classify
from announcer.sandbox.twilio_call import Callee, Direction, LineKind, SandboxCall, SpokenLine

log = logging.getLogger(__name__)

TICK_S = 0.01
# After a stall of the event loop, send at most this many upstream frames in one tick and skip the
# rest: a real phone does not burst seconds of microphone audio, and a flood would only add to the stall.
MAX_MIC_CATCH_UP = 25


class StreamLink(Protocol):
    """The open media stream of a phone, as the clock sees it (implemented by MediaStream)."""

    def send_mic_frame(self, chunk: int, timestamp_ms: int, payload_b64: str | None) -> None:
        """One upstream media frame; `payload_b64` None means silence."""

    def echo_mark(self, name: str) -> None: ...


@dataclass(slots=True)
class _LineStart:
    """In the microphone queue before a line's first frame."""

    line: SpokenLine


@dataclass(slots=True)
class _LineEnd:
    """In the microphone queue after a line's last frame: runs when that frame has been sent."""

    line: SpokenLine
    done: asyncio.Future[None] | None


@dataclass(slots=True)
class _Marker:
    """A point in the playback queue; `on_played` runs when all audio queued before it has played."""

    on_played: Callable[[], None]
    on_dropped: Callable[[], None]


class PhoneClock:
    """One task that drives every active phone (see module docstring)."""

    def __init__(self, speed: float, tick_s: float = TICK_S) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.slot_s = FRAME_MS / 1000 / speed  # real seconds per 20 ms slot
        self._tick_s = tick_s
        self._phones: set[Phone] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sandbox-phone-clock")
        self._task.add_done_callback(_log_crash)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # unlike `await task`, never swallows our own cancellation
            self._task = None
        self._phones.clear()

    def activate(self, phone: Phone) -> None:
        if phone not in self._phones:
            self._phones.add(phone)
            self._wake.set()

    def deactivate(self, phone: Phone) -> None:
        self._phones.discard(phone)

    async def _run(self) -> None:
        while True:
            if not self._phones:
                # idle: no call is playing or streaming, so do not wake 200 times a second for nothing
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self._tick_s)
            now = time.monotonic()
            for phone in list(self._phones):
                try:
                    active = phone.tick(now)
                except Exception:
                    log.exception("phone clock: tick failed for call %s", phone.call.sid)
                    active = False
                if not active:
                    self._phones.discard(phone)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("sandbox phone clock crashed", exc_info=task.exception())


class Phone:
    """Playback buffer and microphone of one call; every method is synchronous and cheap."""

    def __init__(self, call: SandboxCall, clock: PhoneClock, voice: PhoneVoice | None = None) -> None:
        self.call = call
        self._clock = clock
        self._voice = voice
        self._mic: deque[str | _LineStart | _LineEnd] = deque()  # frames (base64) of what it is saying
        self._line: SpokenLine | None = None  # the line being sent
        self._played_until: float | None = None  # end of the last frame played (monotonic)
        self._last_play_at: float | None = None  # when the stretch of audio playing last played a frame
        behavior = call.behavior
        self._script: PhoneScript | None = None
        if voice is not None and (behavior.lines or behavior.barge_in is not None):
            self._script = PhoneScript(
                behavior.lines, behavior.barge_in, behavior.reply_after_quiet_s, clock.speed
            )
        self._queue: deque[bytes | _Marker] = deque()
        self._frames_queued = 0
        # Real (monotonic) time at which the next frame may start playing.  While the buffer is dry it
        # is where the last frame finished, so a late frame's gap can be measured in whole slots.
        self._next_slot_at: float | None = None
        # True between a stream frame and the next mark/clear: only a dry buffer inside a segment of
        # audio is an underrun; the silence after a mark is the service having nothing more to say.
        self._in_segment = False
        self._stream: StreamLink | None = None
        self._mic_started_at = 0.0  # start of the open stream's first microphone slot
        self._mic_next_at = 0.0  # end of the next microphone slot
        self._mic_chunk = 0  # the open stream's chunk counter
        self._mic_running = False
        self._mic_line: SpokenLine | None = None  # the line (and raw frame) of the last slot's frame
        self._mic_raw = b""
        self._callee: CalleeScript | None = None
        if call.direction is Direction.OUTBOUND_API and behavior.callee is not Callee.LISTENER:
            self._callee = CalleeScript(call, behavior, clock.slot_s, clock.speed)
        self._answered_at = 0.0
        self._detector: MachineDetector | None = None
        self._on_verdict: Callable[[Verdict], None] | None = None

    # -- the callee ---------------------------------------------------------------------------
    @property
    def has_callee(self) -> bool:
        """Whether this phone is a simulated callee with sounds of its own (not a LISTENER)."""
        return self._callee is not None

    async def prepare_callee(self) -> None:
        if self._callee is not None and self._voice is not None:
            await self._callee.prepare(self._voice)

    def answer(
        self, now: float, detector: MachineDetector | None, on_verdict: Callable[[Verdict], None]
    ) -> None:
        """The callee picked up at `now`: its microphone runs from here on (first slot ends one slot
        later), and `detector`, if any, hears every slot of it until it reaches a verdict."""
        self._answered_at = now
        self._detector = detector
        self._on_verdict = on_verdict
        if self._callee is not None:
            self._callee.answer(now)
        if not self._mic_running:
            self._mic_running = True
            self._mic_next_at = now + self._clock.slot_s
        self._clock.activate(self)

    def conclude_detection(self, at: float) -> None:
        """The call ends at `at` with detection still running: its verdict from what it heard so far."""
        detector = self._detector
        if detector is None:
            return
        self._detector = None
        if self._on_verdict is not None:
            self._on_verdict(detector.conclude(self._ms_since_answer(at)))

    def _ms_since_answer(self, at: float) -> int:
        return round((at - self._answered_at) * self._clock.speed * 1000)

    # -- the media stream --------------------------------------------------------------------
    def attach(self, stream: StreamLink, now: float) -> None:
        """A stream opened: start the microphone (its first frame goes out one slot from now) or,
        when it already runs (a callee's), send its frames to the stream from the next slot on."""
        self._stream = stream
        if not self._mic_running:
            self._mic_running = True
            self._mic_next_at = now + self._clock.slot_s
        self._mic_started_at = self._mic_next_at - self._clock.slot_s
        self._mic_chunk = 0
        if self._script is not None and self._voice is not None:
            self._script.prepare(self._voice)
        self._clock.activate(self)

    def detach(self) -> None:
        """The stream is over: stop the microphone and drop unplayed stream audio (its marks are never
        echoed: the socket they would go back on is gone)."""
        self._stream = None
        self._in_segment = False
        self._drop_all()
        if self._callee is None:  # a callee's own microphone goes on: it talks to the room, not the socket
            self._drop_mic()
            self._mic_running = False

    def close(self) -> None:
        """The call is over: stop preparing scripted lines, and the microphone."""
        if self._script is not None:
            self._script.cancel()
        self._detector = None
        if self._mic_running and self._stream is None:
            self._drop_mic()
            self._mic_running = False

    # -- the microphone ------------------------------------------------------------------------
    @property
    def speaking(self) -> bool:
        return bool(self._mic)

    def speak(self, utterance: Utterance) -> asyncio.Future[None]:
        """Queue a line on the microphone (after anything being said); the future resolves once its
        last frame has been sent, and fails if the stream ends first."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue_line(utterance, LineKind.LINE, done)
        return done

    def speak_now(self, utterance: Utterance, kind: LineKind) -> SpokenLine:
        """Queue one of the callee's own sounds (from the clock tick: nobody awaits it)."""
        return self._queue_line(utterance, kind, None)

    def _queue_line(
        self, utterance: Utterance, kind: LineKind, done: asyncio.Future[None] | None
    ) -> SpokenLine:
        line = SpokenLine(utterance.text, queued_at=time.monotonic(), audio=utterance.audio, kind=kind)
        self.call.spoke.append(line)
        self._mic.append(_LineStart(line))
        self._mic.extend(utterance.payloads)
        self._mic.append(_LineEnd(line, done))
        self.call.notify()
        self._clock.activate(self)
        return line

    async def say(self, text: str) -> None:
        """Say `text` over the open media stream; returns when it has all been sent."""
        if self._voice is None:
            raise RuntimeError(f"call {self.call.sid}: this phone has no voice")
        utterance = await self._voice.prepare(text)
        if self._stream is None:
            raise RuntimeError(f"call {self.call.sid} has no open media stream to speak on")
        await self.speak(utterance)

    def receive_frame(self, frame: bytes, now: float) -> None:
        """A valid 160-byte media frame from the service."""
        call = self.call
        if call.first_media_at is None:
            call.first_media_at = now
            call.notify()
        call.frames_received += 1
        if self._frames_queued == 0 and self._next_slot_at is not None and now > self._next_slot_at:
            if self._in_segment:
                call.underrun_frames += int((now - self._next_slot_at) / self._clock.slot_s)
            self._next_slot_at = now
        self._in_segment = True
        self._enqueue_frame(frame, now)

    def receive_mark(self, name: str, now: float) -> None:
        self._in_segment = False
        stream = self._stream
        if stream is None:
            return
        if not self._queue and (self._next_slot_at is None or self._next_slot_at <= now):
            stream.echo_mark(name)  # nothing buffered and nothing playing: all audio before it has played
            return
        self._queue.append(_Marker(lambda: stream.echo_mark(name), _nothing))
        self._clock.activate(self)

    def receive_clear(self, now: float) -> None:
        """`clear`: drop buffered audio, echo every pending mark at once, in order."""
        self._in_segment = False
        self._last_play_at = None
        markers = [item for item in self._queue if isinstance(item, _Marker)]
        self._queue.clear()
        self._frames_queued = 0
        if self._next_slot_at is not None and self._next_slot_at > now:
            self._next_slot_at = now
        for marker in markers:
            marker.on_played()

    # -- local audio (<Say>) -------------------------------------------------------------------
    def play_local(self, frames: list[bytes]) -> asyncio.Future[None]:
        """Queue audio the phone itself speaks; the future resolves when it has all been played."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        if self._frames_queued == 0 and (self._next_slot_at is None or self._next_slot_at < now):
            self._next_slot_at = now
        for frame in frames:
            self._enqueue_frame(frame, now)

        def played() -> None:
            if not done.done():
                done.set_result(None)

        def dropped() -> None:
            done.cancel()

        self._queue.append(_Marker(played, dropped))
        self._clock.activate(self)
        return done

    def stop_local(self) -> None:
        """The verb speaking was interrupted (redirect, hang-up): stop talking now."""
        self._drop_all()

    # -- the clock -----------------------------------------------------------------------------
    def tick(self, now: float) -> bool:
        """Play and record every slot due by `now`; return whether the phone still needs the clock."""
        slot = self._clock.slot_s
        queue = self._queue
        next_at = self._next_slot_at
        if queue and next_at is not None:
            heard = self.call._heard
            script = self._script
            played_from, played_len = next_at, len(heard)
            while queue and next_at <= now:
                item = queue[0]
                if isinstance(item, _Marker):
                    queue.popleft()
                    self._last_play_at = None  # the stretch ends: the silence after it is no gap
                    item.on_played()
                    continue
                queue.popleft()
                self._frames_queued -= 1
                heard += item
                if self.call.first_played_at is None:
                    self.call.first_played_at = next_at
                    self.call.notify()
                if self.call.recording_started_at is not None:
                    self._record(item, next_at)
                if self._last_play_at is not None and now - self._last_play_at > self.call.max_play_gap_s:
                    self.call.max_play_gap_s = now - self._last_play_at
                self._last_play_at = now
                if script is not None:
                    script.heard(item, next_at)
                next_at += slot
            self._next_slot_at = next_at
            if len(heard) > played_len:
                if played_from != self._played_until:  # playback resumed after a gap
                    self.call._heard_segments.append((played_from, played_len))
                self._played_until = next_at
        stream = self._stream
        if self._mic_running:
            script = self._script
            if script is not None and stream is not None:
                script.tick(now, self)
            callee = self._callee
            mic = self._mic
            # A callee's microphone never skips a slot: what it says, and what machine detection hears,
            # stays on the 20 ms grid from its answer whatever the event loop did (after a stall its
            # frames leave together, as after a network hiccup).  Other phones skip, as below.
            limit = MAX_MIC_CATCH_UP if callee is None else sys.maxsize
            sent = 0
            while self._mic_next_at <= now and sent < limit:
                slot_end = self._mic_next_at
                if callee is not None:
                    callee.before_slot(slot_end - slot, self)
                # Skipped slots (a stalled loop) delay a line, never cut it: frames leave in order.
                payload = self._next_mic_payload(slot_end - slot) if mic else None
                if payload is not None or self._detector is not None:
                    self._hear(payload, slot_end)
                if stream is not None:
                    self._mic_chunk += 1
                    # the frame sent at the end of slot n holds audio from n-1 to n: timestamp its start
                    elapsed_slots = round((slot_end - self._mic_started_at) / slot)
                    stream.send_mic_frame(self._mic_chunk, (elapsed_slots - 1) * FRAME_MS, payload)
                self._mic_next_at += slot
                sent += 1
            if self._mic_next_at <= now:
                self._mic_next_at = now + slot
        return bool(queue) or stream is not None or self._mic_running

    # -- internals -----------------------------------------------------------------------------
    def _hear(self, payload: str | None, slot_end: float) -> None:
        """What the microphone sent in the slot ending `slot_end`: log its sound, feed the detector."""
        slot = self._clock.slot_s
        sound = Sound.SILENCE if payload is None else classify(self._mic_raw)
        if sound is not Sound.SILENCE:
            spans = self.call.voiced_spans
            slot_start = slot_end - slot
            if spans and abs(spans[-1][1] - slot_start) < slot / 2:
                spans[-1] = (spans[-1][0], slot_end)
            else:
                spans.append((slot_start, slot_end))
            line = self._mic_line
            if line is not None:
                if line.sound_started_at is None:
                    line.sound_started_at = slot_start
                line.sound_ended_at = slot_end
        detector = self._detector
        if detector is not None:
            verdict = detector.feed(sound, self._ms_since_answer(slot_end))
            if verdict is not None:
                self._detector = None
                if self._on_verdict is not None:
                    self._on_verdict(verdict)

    def _record(self, frame: bytes, at: float) -> None:
        """A machine callee records `frame`, played in the slot from `at`, at its place in time."""
        start = self.call.recording_started_at
        assert start is not None
        index = round((at - start) / self._clock.slot_s)
        if index < 0:
            return  # played before the machine started recording (over its greeting or beep)
        buf = self.call._voicemail
        offset = index * FRAME_BYTES
        if len(buf) < offset:
            buf += SILENCE_FRAME * ((offset - len(buf)) // FRAME_BYTES)
        buf[offset : offset + FRAME_BYTES] = frame

    def _enqueue_frame(self, frame: bytes, now: float) -> None:
        if self._next_slot_at is None:
            self._next_slot_at = now
        self._queue.append(frame)
        self._frames_queued += 1
        self._clock.activate(self)

    def _next_mic_payload(self, slot_start: float) -> str | None:
        """The next frame of what the phone is saying (None: silence), for the slot from `slot_start`."""
        mic = self._mic
        item = mic.popleft()
        while not isinstance(item, str):
            if isinstance(item, _LineStart):
                item.line.started_at = slot_start
                self._line = item.line
            else:  # an empty line: nothing to send for it
                self._line_sent(item, slot_start)
            if not mic:
                return None
            item = mic.popleft()
        line = self._mic_line = self._line
        if line is not None:
            line.frames_sent += 1
            self._mic_raw = line.audio[(line.frames_sent - 1) * FRAME_BYTES : line.frames_sent * FRAME_BYTES]
        if mic and isinstance(mic[0], _LineEnd):
            end = mic.popleft()
            assert isinstance(end, _LineEnd)
            self._line_sent(end, slot_start + self._clock.slot_s)
        return item

    def _line_sent(self, end: _LineEnd, slot_end: float | None = None) -> None:
        end.line.finished_at = time.monotonic()
        end.line.ended_at = slot_end
        self._line = None
        if end.done is not None and not end.done.done():
            end.done.set_result(None)
        self.call.notify()

    def _drop_mic(self) -> None:
        ends = [item for item in self._mic if isinstance(item, _LineEnd)]
        self._mic.clear()
        self._line = None
        for end in ends:
            end.line.cut = True
            if end.done is not None and not end.done.done():
                end.done.set_exception(
                    RuntimeError(f"call {self.call.sid}: the stream ended before {end.line.text!r} was said")
                )
                end.done.exception()  # retrieved here: a scripted line's future has no awaiter

    def _drop_all(self) -> None:
        self._last_play_at = None
        markers = [item for item in self._queue if isinstance(item, _Marker)]
        self._queue.clear()
        self._frames_queued = 0
        for marker in markers:
            marker.on_dropped()


def _nothing() -> None:
    return None
