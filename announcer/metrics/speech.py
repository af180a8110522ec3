"""A speech engine with its requests measured: latency to the first audio, errors by reason, characters.

Wraps the engines the speaker is given (app.py), so the speech package itself knows nothing of metrics.
One measure per TTS request (a sentence), never per chunk beyond a flag test.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, AsyncIterator

from prometheus_client import Counter, Histogram

from announcer.speech.engine import SpeechError, Synthesizer

_HTTP_STATUS = re.compile(r"^http (\d{3})\b")
# SpeechError.reason is free text (speech/engine.py); labels must be few: these, an HTTP status, or "other".
_REASONS = {"timeout": "timeout", "connect failed": "connect_failed", "stream cut": "stream_cut"}


def reason_label(reason: str) -> str:
    """A SpeechError's reason as a label of a small fixed set: "http_429", "timeout", "no_audio"..."""
    status = _HTTP_STATUS.match(reason)
    if status is not None:
        return f"http_{status.group(1)}"
    if reason.startswith("http error"):
        return "http_error"
    return _REASONS.get(reason, "no_audio" if reason.endswith("no audio") else "other")


class MeteredSynthesizer:
    """`engine`, each request counted in `characters`, timed to its first audio in `latency`, and its
    failure counted in `errors` by reason."""

    def __init__(
        self, engine: Synthesizer, *, latency: Histogram, errors: Counter, characters: Counter
    ) -> None:
        self.engine = engine
        self.name = engine.name
        self._latency = latency.labels(engine.name)
        self._errors = errors
        self._characters = characters.labels(engine.name)

    def identity(self) -> dict[str, object]:
        return self.engine.identity()

    async def stream(
        self, text: str, *, previous_text: str | None = None, next_text: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        self._characters.inc(len(text))
        asked = time.perf_counter()
        audio = self.engine.stream(text, previous_text=previous_text, next_text=next_text)
        first = True
        try:
            async for chunk in audio:
                if first:
                    self._latency.observe(time.perf_counter() - asked)
                    first = False
                yield chunk
        except SpeechError as err:
            self._errors.labels(self.name, reason_label(err.reason)).inc()
            raise
        finally:
            await _close(audio)  # the engine's HTTP stream, also when the caller stops early
        if first:
            self._errors.labels(self.name, "no_audio").inc()

    async def aclose(self) -> None:
        await self.engine.aclose()


async def _close(audio: AsyncIterator[bytes]) -> None:
    if isinstance(audio, AsyncGenerator):
        await audio.aclose()
