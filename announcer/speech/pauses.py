"""How long each engine pauses after a sentence it speaks in one request, measured once per voice.

The speaker joins sentences requested one by one with this pause (seams.py), so a message sounds as the
same text spoken whole. The pause belongs to the engine and the voice (espeak-ng's depends on its rate;
a neural voice has its own) and to how the sentence ends (espeak-ng: ~335 ms after "!", ~310 ms after
"?", ~300 ms after "."), so it is measured, not assumed: the engine speaks `PROBE`, sentences without
commas that end in each of `ENDINGS`, and the longest quiet stretches of that clip are its pauses. The
clip goes into the audio cache under the engine's identity, like any synthesis, so a restart measures
again without asking the engine.

The probe is asked for only once the engine has shown it answers (at the audio of a message's second
request), never ahead of a message's own first request, and runs in the background: a join never waits
for it, since a caller must not hear a gap while a measurement is made. Until the pauses are known
(the first message of a voice, once per cache), and when they cannot be had (the engine failed),
`DEFAULT_PAUSE_S` stands in; a failed measurement is tried again later.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator

from announcer.audio import cut_frames
from announcer.speech.cache import AudioCache
from announcer.speech.engine import SpeechError, Synthesizer
from announcer.speech.seams import pauses_between

log = logging.getLogger(__name__)

# Sentences ending in each of ENDINGS, in that order, and one more after the last.
PROBE = (
    "This is the first sentence of the test! Is this the second sentence? "
    "This is the third one. And the last."
)
ENDINGS = ("!", "?", ".")
Pauses = dict[str, float]  # sentence ending -> seconds
# Standing in for a pause not measured: espeak-ng's after a full stop at its default rate, and a usual
# pause between read sentences.
DEFAULT_PAUSE_S = 0.3
_LONGEST_PAUSE_S = 1.0  # a longer "pause" in the probe is a stall, not the voice's pause
_RETRY_S = 60.0  # after a failed measurement, the default serves this long before the next try
_CLOSERS = "\"')]\u201d\u2019"  # may follow a sentence's final mark: 'He said "stop."'


def ending(sentence: str) -> str:
    """The mark `sentence` ends with, of `ENDINGS`; "." for any other ending (an ellipsis, none)."""
    mark = sentence.rstrip().rstrip(_CLOSERS)[-1:]
    return mark if mark in ENDINGS else "."


class SentencePauses:
    """The measured pauses of every engine a speaker uses, keyed by the engine's identity."""

    def __init__(self, cache: AudioCache) -> None:
        self._cache = cache
        self._known: dict[str, Pauses] = {}
        self._measuring: dict[str, asyncio.Task[Pauses | None]] = {}
        self._failed_at: dict[str, float] = {}

    def measure(self, engine: Synthesizer) -> None:
        """Start measuring `engine`'s pauses in the background, unless known or under way."""
        self._task(engine)

    def after(self, engine: Synthesizer, sentence: str) -> float:
        """`engine`'s pause after `sentence` when measured, else `DEFAULT_PAUSE_S`. Never waits."""
        known = self._known.get(_key(engine))
        return DEFAULT_PAUSE_S if known is None else known[ending(sentence)]

    async def measured(self, engine: Synthesizer) -> bool:
        """Wait until `engine`'s pauses are measured (started now if need be); whether they could be."""
        task = self._task(engine)
        if task is not None:
            await asyncio.shield(task)  # a waiter cancelled leaves the measurement running
        return _key(engine) in self._known

    async def aclose(self) -> None:
        """Cancel the measurements under way and wait for them (shutdown)."""
        tasks = list(self._measuring.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _task(self, engine: Synthesizer) -> asyncio.Task[Pauses | None] | None:
        key = _key(engine)
        if key in self._known:
            return None
        task = self._measuring.get(key)
        if task is None:
            failed_at = self._failed_at.get(key)
            if failed_at is not None and time.monotonic() - failed_at < _RETRY_S:
                return None
            task = asyncio.create_task(self._measure(engine, key), name=f"pauses-{engine.name}")
            self._measuring[key] = task
        return task

    async def _measure(self, engine: Synthesizer, key: str) -> Pauses | None:
        try:
            audio = await self._probe(engine)
        except SpeechError as err:
            log.warning("%s: the sentence pauses could not be measured: %s", engine.name, err.reason)
            audio = b""
        except OSError as err:  # the cache's disk: measured another time
            log.warning("%s: the sentence pauses could not be measured: %s", engine.name, err)
            audio = b""
        except Exception:  # a bug: the default serves, and the messages go on
            log.exception("%s: measuring the sentence pauses failed", engine.name)
            audio = b""
        finally:
            del self._measuring[key]
        measured = pauses_between(audio, len(ENDINGS))
        if measured is None:
            if audio:
                log.warning("%s: the probe's audio has no pause after each sentence", engine.name)
            self._failed_at[key] = time.monotonic()
            return None
        pauses = {mark: min(pause, _LONGEST_PAUSE_S) for mark, pause in zip(ENDINGS, measured, strict=True)}
        self._known[key] = pauses
        log.info(
            "%s: sentences are joined with the voice's own pauses: %s",
            engine.name,
            ", ".join(f"{pause * 1000:.0f} ms after {mark}" for mark, pause in pauses.items()),
        )
        return pauses

    async def _probe(self, engine: Synthesizer) -> bytes:
        cache_key = self._cache.key(engine.identity(), PROBE)
        payloads = await self._cache.load(cache_key)
        if payloads is not None:
            return b"".join(base64.b64decode(payload) for payload in payloads)
        audio = engine.stream(PROBE)
        try:
            clip = b"".join([chunk async for chunk in audio])
        finally:
            if isinstance(audio, AsyncGenerator):  # close its HTTP stream, also when cancelled
                await audio.aclose()
        if clip:
            with contextlib.suppress(OSError):  # the cache only saves the next process a request
                await self._cache.store(cache_key, cut_frames(clip))
        return clip


def _key(engine: Synthesizer) -> str:
    return json.dumps(engine.identity(), sort_keys=True, default=str)
