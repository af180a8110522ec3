"""What every speech engine offers the rest of the service: raw 8 kHz mu-law, streamed, or a `SpeechError`.

Engines know nothing about frames, caching or fallbacks; `announcer.speech.speaker` adds those.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class SpeechError(Exception):
    """Speech could not be made. `reason` is short and loggable ("http 429 too_many_concurrent_requests",
    "timeout", "stream cut", "connect failed"); it never carries a secret or the message text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Synthesizer(Protocol):
    """A text-to-speech engine producing G.711 mu-law at 8 kHz (what Twilio Media Streams play)."""

    name: str

    def identity(self) -> dict[str, object]:
        """Everything that changes the audio for a given text (provider, voice, model, output format,
        voice settings): the audio cache keys on it, so a new voice never replays stale audio."""
        ...

    def stream(
        self, text: str, *, previous_text: str | None = None, next_text: str | None = None
    ) -> AsyncIterator[bytes]:
        """Raw mu-law chunks of any size as they are made; raises `SpeechError`.

        `previous_text` / `next_text` are the neighbouring sentences, for prosody across requests; an
        engine may ignore them. Consumers close the iterator early (`contextlib.aclosing`) when the call
        ends, which must release the engine's resources (the HTTP stream).
        """
        ...

    async def aclose(self) -> None:
        """Release the engine's resources (connection pool); called once at shutdown."""
        ...
