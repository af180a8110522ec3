"""One simulated call of the sandbox Twilio: its Twilio-visible state and what the phone observed.

`SandboxCall` is both the record the REST API renders (status, times, answered_by...) and the handle
tests drive as "the phone" (`press`, `hang_up`, `wait_for_mark`...).  The moving parts (TwiML runner,
media stream, playback clock) live elsewhere and write their observations here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import pathlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, Protocol

from announcer.audio import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from announcer.sandbox.amd import AmdRequest, AnsweredBy
from announcer.sandbox.voice_activity import VOICED_RMS, window_rms

if TYPE_CHECKING:
    from announcer.sandbox.media_stream import MediaStream
    from announcer.sandbox.phone import Phone
    from announcer.sandbox.twiml_runner import TwimlSource

DTMF_DIGITS = frozenset("0123456789*#ABCD")


class CallStatus(StrEnum):
    """Twilio's CallStatus values (Calls resource and status callbacks)."""

    QUEUED = "queued"
    INITIATED = "initiated"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {CallStatus.COMPLETED, CallStatus.BUSY, CallStatus.NO_ANSWER, CallStatus.FAILED, CallStatus.CANCELED}
)


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND_API = "outbound-api"


class CallbackEvent(StrEnum):
    """Values of StatusCallbackEvent on the create-call request."""

    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    COMPLETED = "completed"


def new_sid(prefix: str) -> str:
    """A Twilio SID: two-letter prefix and 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class BargeIn:
    """A line the phone says while the far end is talking (to exercise interruption)."""

    line: str
    turn: int = 1  # during the far end's `turn`th turn (1: its first, e.g. an agent's first message)
    after_s: float = 0.5  # sandbox seconds after that turn started playing


class Callee(StrEnum):
    """Who or what picks up an outbound call, as answering machine detection hears it.

    Every kind but LISTENER makes its sounds from the moment it answers, whether or not a media
    stream is open, and the sandbox's machine detection runs on exactly that audio (`amd`)."""

    # Today's default: a person who answers and listens without a word.  Machine detection is not
    # run on it: Twilio's verdict is `human` at the answer (MachineDetectionDuration 0), so every
    # test written before detection existed still sees a person.
    LISTENER = "listener"
    HELLO = "hello"  # says `hello` after `hello_after_s`, then listens
    SILENT = "silent"  # a person who says nothing: detection hears only silence (`unknown`)
    TALKS_OVER = "talks_over"  # says hello, then `talk_over` while the message plays
    MACHINE = "machine"  # greeting, beep, then records until the call ends
    MACHINE_NO_BEEP = "machine_no_beep"  # greeting, then records (no beep)
    MAILBOX_FULL = "mailbox_full"  # greeting, then hangs up
    FAX = "fax"  # CNG tones, never speaks

    @property
    def records(self) -> bool:
        return self in (Callee.MACHINE, Callee.MACHINE_NO_BEEP)


DEFAULT_GREETINGS = {
    Callee.MACHINE: (
        "Hi, you have reached Sam. I can't take your call right now. Please leave a message after the tone."
    ),
    Callee.MACHINE_NO_BEEP: "Hi, this is Sam. Leave me a message and I will call you back.",
    Callee.MAILBOX_FULL: "The mailbox is full and cannot accept any new messages. Goodbye.",
}


class LineKind(StrEnum):
    """What a `SpokenLine` is: a scripted line, or one of the callee's own sounds."""

    LINE = "line"  # `lines`, `barge_in`, `SandboxCall.say`
    HELLO = "hello"
    TALK_OVER = "talk_over"
    GREETING = "greeting"
    BEEP = "beep"
    FAX_TONE = "fax_tone"


@dataclass
class PhoneBehavior:
    """How the simulated callee of an outbound call reacts (default: answers after a short ring and
    listens).  `callee` says who picks up; what it did is on the call: `hello`, `lines(kind)`, `amd`,
    `beep_ended_at`, `voicemail`, `overlap_ms()`..."""

    answer: Literal["answer", "busy", "no-answer", "fail"] = "answer"
    ring_s: float = 0.05  # sandbox seconds of ringing before answer / no-answer
    sip_code: int | None = None  # reported as SipResponseCode with "fail" (e.g. 480)
    hang_up_after_s: float | None = None  # sandbox seconds after answering
    # Twilio refuses to place the call: its error code (21215 geo permissions, 20429 too many requests,
    # ...) with `refuse_status`, `refuse_times` times (None: always), before any call exists.
    refuse_code: int | None = None
    refuse_status: int = 400
    refuse_times: int | None = None
    # A scripted conversation on the media stream: each line is said once the far end has been quiet
    # for `reply_after_quiet_s` (sandbox seconds) after playing something (a reply to each of its
    # turns); `barge_in` is said while it talks.  The lines are registered in the sandbox's SpeechBook.
    lines: tuple[str, ...] = ()
    reply_after_quiet_s: float = 0.6
    barge_in: BargeIn | None = None
    # Who answers (see `Callee`); the rest tunes each kind.  Times are sandbox seconds, fixed per
    # behaviour so that a test knows exactly when each sound starts.
    callee: Callee = Callee.LISTENER
    hello: str = "Hello?"
    hello_after_s: float = 0.6  # after the answer; people take 0.3-1.2 s
    talk_over: str = "Sorry, who is calling?"
    talk_over_after_s: float = 1.0  # after the service's audio started playing
    greeting: str | None = None  # a machine's greeting (None: DEFAULT_GREETINGS for its kind)
    greeting_after_s: float = 0.3  # after the answer
    beep_after_s: float = 0.3  # after the greeting's last word
    beep_s: float = 0.5
    hang_up_after_greeting_s: float = 1.0  # the full mailbox
    record_max_s: float = 120.0  # a machine stops recording and hangs up after this
    fax_after_s: float = 0.5  # first CNG tone, after the answer

    @property
    def greeting_text(self) -> str:
        return self.greeting if self.greeting is not None else DEFAULT_GREETINGS.get(self.callee, "")


@dataclass
class SpokenLine:
    """A line the phone said (or began to) on its microphone; times are monotonic."""

    text: str
    queued_at: float
    audio: bytes = field(default=b"", repr=False)
    kind: LineKind = LineKind.LINE
    started_at: float | None = None  # start of the 20 ms slot of its first frame
    frames_sent: int = 0
    finished_at: float | None = None  # its last frame was sent
    ended_at: float | None = None  # end of the 20 ms slot of its last frame (on the audio clock)
    # start of the first and end of the last frame that was not silence (speech or tone)
    sound_started_at: float | None = None
    sound_ended_at: float | None = None
    cut: bool = False  # the stream (or, for a callee's own sound, the call) ended before it was all sent


@dataclass
class AmdResult:
    """The verdict of the call's machine detection, and its delivery (times monotonic)."""

    answered_by: AnsweredBy
    duration_ms: int  # MachineDetectionDuration, sandbox ms from the answer
    decided_at: float
    posted_at: float | None = None  # the AsyncAmdStatusCallback was sent
    post_status: int | None = None  # the service's HTTP answer to it


@dataclass
class StatusCallbackConfig:
    url: str
    method: str = "POST"
    events: frozenset[CallbackEvent] = frozenset({CallbackEvent.COMPLETED})


class CallControl(Protocol):
    """What a call handle needs from the sandbox that owns it."""

    def end_call(self, call: SandboxCall) -> None: ...


@dataclass(eq=False)
class SandboxCall:
    sid: str
    account_sid: str
    direction: Direction
    from_: str
    to: str
    _control: CallControl = field(repr=False)
    caller_name: str | None = None
    status: CallStatus = CallStatus.QUEUED
    answered_by: str | None = None
    amd_request: AmdRequest | None = None  # MachineDetection and its tuning, as created
    amd: AmdResult | None = None
    status_callback: StatusCallbackConfig | None = None
    behavior: PhoneBehavior = field(default_factory=PhoneBehavior)
    ring_timeout_s: float = 60.0
    time_limit_s: float | None = None
    # Twilio-visible times: wall clock for the resource, monotonic for durations on the phone clock
    date_created: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    date_updated: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    duration_s: int | None = None
    answered_at: float | None = None
    placed_at: float = field(default_factory=time.monotonic)  # created (monotonic)
    finished_at: float | None = None  # reached its final status (monotonic)
    # what the phone observed
    stream_sid: str | None = None
    start_sent_at: float | None = None
    stop_sent_at: float | None = None  # the caller's `stop` written to the media socket
    first_media_at: float | None = None
    # any message from the service, valid or not (the benchmark times a one-giant-message sender by it)
    first_message_at: float | None = None
    frames_received: int = 0
    underrun_frames: int = 0
    # The longest real time between two frames played within one stretch of stream audio (frame to
    # frame, up to a mark or clear): what the caller hears as a pause. On a free event loop about one slot
    # (20 ms at speed 1) plus one tick of the phone's clock; a stalled loop or a dry buffer shows here.
    max_play_gap_s: float = 0.0
    marks_echoed: list[str] = field(default_factory=list)
    said: list[str] = field(default_factory=list)  # <Say> texts the phone heard
    documents: list[str] = field(default_factory=list)  # every TwiML document the call ran, in order
    clears: int = 0  # `clear` messages from the service
    spoke: list[SpokenLine] = field(default_factory=list)  # lines the phone said into its microphone
    protocol_errors: list[str] = field(default_factory=list)
    application_errors: list[str] = field(default_factory=list)
    custom_parameters: dict[str, str] = field(default_factory=dict)
    wav_path: pathlib.Path | None = None
    warnings: list[str] = field(default_factory=list)  # Twilio debugger warnings (e.g. 21262)
    speed: float = 1.0  # sandbox seconds per real second: converts the monotonic times to call time
    # what the callee's own sounds did (Callee), and what reached it
    first_played_at: float | None = None  # start of the slot in which the first frame to it played
    voiced_spans: list[tuple[float, float]] = field(default_factory=list)  # its microphone's non-silence
    beep_ended_at: float | None = None
    recording_started_at: float | None = None  # a machine started recording (beep end / greeting end)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _heard: bytearray = field(default_factory=bytearray, repr=False)
    # (monotonic play time, offset in _heard) wherever playback resumed after a gap: with `spoke`,
    # enough to lay both sides of a conversation on one timeline (`recording.conversation_audio`)
    _heard_segments: list[tuple[float, int]] = field(default_factory=list, repr=False)
    # what a machine callee recorded: the audio played to it from `recording_started_at`, one frame per
    # 20 ms slot (silence where nothing played), up to the end of the call
    _voicemail: bytearray = field(default_factory=bytearray, repr=False)
    # set whenever an observation changes, then replaced: waiters re-check their condition
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _callback_seq: int = 0
    _callback_task: asyncio.Task[None] | None = field(default=None, repr=False)  # last status callback
    _stream: MediaStream | None = field(default=None, repr=False)
    _phone: Phone | None = field(default=None, repr=False)
    _script_task: asyncio.Task[object] | None = field(default=None, repr=False)
    _redirect_to: TwimlSource | None = field(default=None, repr=False)
    _ending: bool = False
    _end_hooks: list[Callable[[], None]] = field(default_factory=list, repr=False)

    # -- observations -------------------------------------------------------------------------
    @property
    def heard(self) -> bytes:
        """mu-law audio the phone played (stream audio and <Say> audio, in play order)."""
        return bytes(self._heard)

    @property
    def heard_seconds(self) -> float:
        return len(self._heard) / SAMPLE_RATE

    def lines(self, kind: LineKind) -> list[SpokenLine]:
        return [line for line in self.spoke if line.kind is kind]

    @property
    def hello(self) -> SpokenLine | None:
        """The callee's hello, once it has begun."""
        return next(iter(self.lines(LineKind.HELLO)), None)

    @property
    def voicemail(self) -> bytes:
        """What a machine callee recorded (mu-law, real-time: one 20 ms frame per sandbox 20 ms)."""
        return bytes(self._voicemail)

    @property
    def voicemail_speech_s(self) -> float:
        """Sandbox seconds of the voicemail that are not silence (the message's speech)."""
        return int((window_rms(bytes(self._voicemail)) > VOICED_RMS).sum()) * FRAME_MS / 1000

    def played_spans(self) -> list[tuple[float, float]]:
        """(start, end) monotonic spans during which audio played to the phone (stream or <Say>)."""
        slot = FRAME_MS / 1000 / self.speed
        segments = self._heard_segments
        ends = [offset for _, offset in segments[1:]] + [len(self._heard)] if segments else []
        return [
            (at, at + (end - offset) // FRAME_BYTES * slot)
            for (at, offset), end in zip(segments, ends, strict=True)
        ]

    def played_after(self, at: float) -> float | None:
        """Start of the first frame that played to the phone at or after `at` (monotonic), if any: e.g.
        the first frame of a voicemail message after the beep ended."""
        slot = FRAME_MS / 1000 / self.speed
        for start, end in self.played_spans():
            if end > at:
                # frames of a span play back to back: the first one starting at or after `at`
                skipped = max(0, math.ceil((at - start) / slot - 1e-6))
                first = start + skipped * slot
                if first < end:
                    return first
        return None

    def overlap_ms(self, window_s: float = 0.5, start: float | None = None) -> float:
        """Sandbox ms during which audio played to the callee while it made its own sound (speech or
        tone), within `window_s` sandbox seconds from `start` (default: the first frame played)."""
        start = self.first_played_at if start is None else start
        if start is None:
            return 0.0
        end = start + window_s / self.speed
        overlap = 0.0
        for a, b in self.played_spans():
            a, b = max(a, start), min(b, end)
            if a < b:
                overlap += sum(max(0.0, min(b, d) - max(a, c)) for c, d in self.voiced_spans)
        return overlap * self.speed * 1000

    def is_ending(self) -> bool:
        """True once the call was asked to end (hang-up, REST update, close), even before `ended`."""
        return self._ending or self.status.terminal

    def notify(self) -> None:
        """Wake everything waiting on an observation (marks, media, status)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def next_callback_seq(self) -> int:
        seq = self._callback_seq
        self._callback_seq += 1
        return seq

    def set_status(self, status: CallStatus) -> None:
        self.status = status
        self.date_updated = dt.datetime.now(dt.UTC)
        self.notify()

    # -- the phone, driven by tests and the control API -----------------------------------------
    async def press(self, digits: str) -> None:
        """The caller presses keys: one `dtmf` message per digit over the open media stream."""
        bad = set(digits) - DTMF_DIGITS
        if not digits or bad:
            raise ValueError(f"not DTMF digits: {digits!r}")
        stream = self._stream
        if stream is None:
            raise RuntimeError(f"call {self.sid} has no open media stream to send digits on")
        await stream.send_dtmf(digits)

    async def say(self, text: str) -> None:
        """The caller says `text` into the open media stream (the sandbox voice, registered in the
        SpeechBook first); returns once its last frame has been sent."""
        phone = self._phone
        if phone is None or self._stream is None:
            raise RuntimeError(f"call {self.sid} has no open media stream to speak on")
        await phone.say(text)

    async def wait_for_spoken(self, n: int, timeout: float) -> SpokenLine:
        """Wait until the phone has finished saying its `n`th line (1-based)."""
        await self._wait_until(
            lambda: len(self.spoke) >= n and self.spoke[n - 1].finished_at is not None,
            timeout,
            f"line {n} said",
        )
        return self.spoke[n - 1]

    async def hang_up(self) -> None:
        """The caller hangs up: `stop` on the stream, socket closed, call completed.

        Returns when the call has ended (final status callback delivered, WAV written)."""
        self._control.end_call(self)
        await self.ended.wait()

    async def wait_ended(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self.ended.wait()

    async def _wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not check():
                    if self.ended.is_set():
                        # fail at once instead of sleeping out the timeout on a call that is over
                        raise TimeoutError(f"call {self.sid} ended before {what}")
                    await self._changed.wait()
        except TimeoutError as err:
            if err.args:
                raise
            raise TimeoutError(f"call {self.sid}: no {what} within {timeout} s") from None

    async def wait_for_mark(self, name_prefix: str, timeout: float) -> str:
        """Wait until a mark whose name starts with `name_prefix` was echoed; return its name."""
        found: list[str] = []

        def check() -> bool:
            found[:] = [m for m in self.marks_echoed if m.startswith(name_prefix)]
            return bool(found)

        await self._wait_until(check, timeout, f"mark {name_prefix!r}")
        return found[0]

    async def wait_for_media(self, timeout: float) -> None:
        await self._wait_until(lambda: self.first_media_at is not None, timeout, "media frame")

    async def wait_for_message(self, timeout: float) -> None:
        await self._wait_until(lambda: self.first_message_at is not None, timeout, "message")

    async def wait_for_amd(self, timeout: float, *, answered: bool = False) -> AmdResult:
        """Wait for the machine detection's verdict (`answered`: and the service's answer to its
        AsyncAmdStatusCallback)."""

        def check() -> bool:
            return self.amd is not None and (not answered or self.amd.post_status is not None)

        await self._wait_until(check, timeout, "machine detection verdict")
        assert self.amd is not None
        return self.amd

    async def wait_for_status(self, status: CallStatus | str, timeout: float) -> None:
        """Wait until the call reaches `status` (not in the contract; handy for ringing/in-progress)."""
        await self._wait_until(lambda: self.status == status, timeout, f"status {status}")
