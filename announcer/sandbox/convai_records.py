"""What the sandbox agent observed of one conversation: the record tests read and wait on.

Times are `time.monotonic()`.  Every change calls `notify()`, so `wait_until` is event-driven.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from announcer.audio import SAMPLE_RATE


class CloseReason(StrEnum):
    CLIENT = "client"  # the client closed the socket (or went away) first
    SERVER = "server"  # the agent ended the conversation with a close frame (1000)
    ABORTED = "aborted"  # the agent dropped the connection without a close frame (a knob)
    SHUTDOWN = "shutdown"  # the sandbox closed (1001 going away)


@dataclass(frozen=True, slots=True)
class PingRecord:
    event_id: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class PongRecord:
    event_id: int
    received_at: float
    matched: bool  # a ping with this event id was outstanding
    rtt_s: float | None


@dataclass(frozen=True, slots=True)
class InterruptionRecord:
    event_id: int  # the interrupted turn's audio event id
    at: float
    original: str
    corrected: str
    bytes_sent: int  # audio of the turn sent before it was cut
    bytes_total: int


@dataclass(eq=False)
class AgentTurn:
    """One thing the agent said: its audio events all carry `event_id`."""

    text: str
    event_id: int
    total: int  # bytes of audio synthesized
    sent: int = 0  # bytes sent so far
    started_at: float | None = None  # first audio chunk sent
    done_sending: bool = False  # all sent, or cut by an interruption
    interrupted: bool = False

    def play_end(self, speed: float) -> float:
        """When the audio sent so far has played, at `speed` times real time from the first chunk."""
        assert self.started_at is not None
        return self.started_at + self.sent / SAMPLE_RATE / speed

    def playing(self, now: float, speed: float) -> bool:
        if self.started_at is None or self.interrupted:
            return False
        return not self.done_sending or now < self.play_end(speed)


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    role: str  # "agent" | "user"
    text: str
    at: float


@dataclass(eq=False)
class Conversation:
    conversation_id: str
    agent_id: str
    authenticated_by: str  # "signature" | "api_key" | "public"
    opened_at: float
    initiation: dict[str, Any] | None = None  # the raw conversation_initiation_client_data
    config_override: dict[str, Any] | None = None
    dynamic_variables: dict[str, Any] = field(default_factory=dict)
    metadata_sent_at: float | None = None
    first_message: str | None = None
    user_audio_chunks: int = 0
    user_turns: int = 0
    transcript: list[TranscriptLine] = field(default_factory=list)
    corrections: list[tuple[str, str]] = field(default_factory=list)
    pings: list[PingRecord] = field(default_factory=list)
    pongs: list[PongRecord] = field(default_factory=list)
    interruptions: list[InterruptionRecord] = field(default_factory=list)
    contextual_updates: list[str] = field(default_factory=list)
    user_activity: list[str] = field(default_factory=list)
    protocol_errors: list[str] = field(default_factory=list)  # client messages the agent could not use
    agent_turns: list[AgentTurn] = field(default_factory=list)
    audio_chunk_sizes: list[int] = field(default_factory=list)  # every audio event sent, in order
    agent_audio: bytearray = field(default_factory=bytearray, repr=False)  # all agent audio sent
    closed_at: float | None = None
    close_reason: CloseReason | None = None
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _user_audio: bytearray = field(default_factory=bytearray, repr=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def user_audio(self) -> bytes:
        """Every byte of caller audio received (all user_audio_chunk payloads, in order)."""
        return bytes(self._user_audio)

    @property
    def agent_responses(self) -> list[str]:
        return [line.text for line in self.transcript if line.role == "agent"]

    @property
    def user_transcripts(self) -> list[str]:
        return [line.text for line in self.transcript if line.role == "user"]

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, check: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        """Wait until `check()` holds; fails at once (not at the timeout) if the conversation closed."""
        try:
            async with asyncio.timeout(timeout):
                while not check():
                    if self.closed.is_set():
                        raise TimeoutError(f"conversation {self.conversation_id} closed before {what}")
                    await self._changed.wait()
        except TimeoutError as err:
            if err.args:
                raise
            raise TimeoutError(f"conversation {self.conversation_id}: no {what} within {timeout} s") from None

    async def wait_for_user_transcript(self, n: int, timeout: float) -> str:
        """Wait for the caller's `n`th recognised turn (1-based); return its text."""
        await self.wait_until(lambda: len(self.user_transcripts) >= n, timeout, f"user transcript {n}")
        return self.user_transcripts[n - 1]

    async def wait_closed(self, timeout: float) -> CloseReason:
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        assert self.close_reason is not None
        return self.close_reason
