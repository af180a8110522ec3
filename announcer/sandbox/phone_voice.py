"""The sandbox phone's own voice: lines synthesized once, registered in the shared SpeechBook, framed.

A line is registered *as the exact bytes the microphone will send* (160-byte frames, the last padded with
silence), so whatever hears the call (the sandbox agent) can recognise it from the audio alone.  Lines
are cached by text: the local voice is not bit-exact from one synthesis to the next, and a line said
twice must sound the same both times to be recognised both times.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass

from announcer.audio import cut_frames
from announcer.sandbox.speech_book import SpeechBook


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    audio: bytes  # exactly what the microphone sends: whole frames
    payloads: tuple[str, ...]  # base64 of each 160-byte frame, encoded once, off the clock's hot path


def framed(text: str, audio: bytes) -> Utterance:
    """`audio` ready for the microphone, unregistered (tones: nothing a recogniser should find)."""
    frames = cut_frames(audio)
    return Utterance(text, b"".join(frames), tuple(base64.b64encode(f).decode("ascii") for f in frames))


class PhoneVoice:
    def __init__(self, synthesize: Callable[[str], bytes], book: SpeechBook) -> None:
        self._synthesize = synthesize
        self.book = book
        self._lines: dict[str, Utterance] = {}

    def cached(self, text: str) -> Utterance | None:
        return self._lines.get(text)

    async def prepare(self, text: str) -> Utterance:
        """Synthesize (in a thread) and register `text`, or return it from the cache."""
        known = self._lines.get(text)
        if known is not None:
            return known
        audio = await asyncio.to_thread(self._synthesize, text)
        known = self._lines.get(text)  # prepared meanwhile by another caller: keep the first
        if known is not None:
            return known
        utterance = framed(text, audio)
        self._lines[text] = utterance
        self.book.register(text, utterance.audio)
        return utterance
