"""One simulated call of the sandbox Twilio: its Twilio-visible state and what the phone observed.

`SandboxCall` is both the record the REST API renders (status, times, answered_by...) and the handle
tests drive as "the phone" (`press`, `hang_up`, `wait_for_mark`...).  The moving parts (TwiML runner,
media stream, playback clock) live elsewhere and write their observations here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, Protocol

from announcer.audio import SAMPLE_RATE

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


@dataclass
class PhoneBehavior:
    """How the simulated callee of an outbound call reacts (default: answers after a short ring)."""

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


@dataclass
class SpokenLine:
    """A line the phone said (or began to) on the media stream; times are monotonic."""

    text: str
    queued_at: float
    audio: bytes = field(default=b"", repr=False)
    started_at: float | None = None  # start of the 20 ms slot of its first frame
    frames_sent: int = 0
    finished_at: float | None = None  # its last frame was sent
    cut: bool = False  # the stream ended before it was all sent


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
    machine_detection: bool = False
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
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _heard: bytearray = field(default_factory=bytearray, repr=False)
    # (monotonic play time, offset in _heard) wherever playback resumed after a gap: with `spoke`,
    # enough to lay both sides of a conversation on one timeline (`recording.conversation_audio`)
    _heard_segments: list[tuple[float, int]] = field(default_factory=list, repr=False)
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

    async def wait_for_status(self, status: CallStatus | str, timeout: float) -> None:
        """Wait until the call reaches `status` (not in the contract; handy for ringing/in-progress)."""
        await self._wait_until(lambda: self.status == status, timeout, f"status {status}")
