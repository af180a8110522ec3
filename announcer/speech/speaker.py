"""The facade a media session speaks through: text in, base64 160-byte frames out, as soon as they exist.

What it adds to the engines (design.md, "Streaming speech", "Audio cache", "Degrade, don't go silent"):

- **Cache first.** A hit yields stored payloads: no TTS request and no encoding.
- **Streaming.** On a miss the text is spoken sentence by sentence from the primary engine (each request
  carries its neighbours as `previous_text` / `next_text`, so prosody runs on across requests) and every
  chunk is re-framed and handed on at once: the first frame leaves long before synthesis ends. At each
  join the quiet the engine left at the clips' edges is cut and the voice's own pause between sentences
  goes in (`seams`, measured once per voice by `pauses`), so the message pauses where and as long as the
  same text spoken in one request would; the cache keeps it so joined.
- **Never silent.** A primary failure before the first frame raises `SpeechUnavailable` (the media session
  then has Twilio `<Say>` the text). A failure mid-way cannot be unsaid, so the fallback engine speaks the
  rest, from the start of the sentence that broke. Only audio wholly from the primary is cached.
- **Single flight.** One synthesis per key at a time: it runs as its own task ("flight") appending frames
  to a list, and every caller asking for the same text tails that list. A flight nobody listens to any
  more (the call hung up) is cancelled, which closes its HTTP stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from announcer.audio import Framer
from announcer.speech.cache import AudioCache, Payloads, normalise_text
from announcer.speech.engine import SpeechError, Synthesizer
from announcer.speech.pauses import SentencePauses
from announcer.speech.seams import Seams

log = logging.getLogger(__name__)

# A break after ., !, ? or an ellipsis, optionally behind a closing quote or bracket (fixed-width
# look-behinds, so two of them).
_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?\u2026])|(?<=[.!?\u2026][\"'\u201d\u2019)\]]))\s+")
# Shorter pieces ride along with the next sentence: "Dr. Smith" or "Hello." alone would cost a request
# each and break prosody for nothing.
_MIN_SENTENCE_CHARS = 20
# How long a finished prefetch waits for its stream (Twilio connects it within seconds of the answer).
_PREFETCH_HOLD_S = 60.0


class SpeechUnavailable(SpeechError):
    """No audio at all could be made for the text: speak it some other way (TwiML `<Say>`)."""


class SpeechEventKind(StrEnum):
    CACHE_HIT = "cache_hit"  # served from the cache, no TTS request
    CACHE_STORE = "cache_store"  # the whole message came from the primary and is now cached
    TTS_FAILED = "tts_failed"  # the primary failed before the first frame; SpeechUnavailable follows
    TTS_FAILED_MIDWAY = "tts_failed_midway"  # the primary failed after audio had started
    FALLBACK_USED = "fallback_used"  # the fallback engine speaks the rest
    FALLBACK_FAILED = "fallback_failed"  # and it failed too; SpeechError follows


@dataclass(frozen=True, slots=True)
class SpeechEvent:
    kind: SpeechEventKind
    reason: str = ""
    detail: dict[str, object] = field(default_factory=dict)


OnEvent = Callable[[SpeechEvent], None]


def split_sentences(text: str) -> list[str]:
    """Sentences of the normalised text; a text without sentence punctuation is one sentence."""
    text = normalise_text(text)
    sentences: list[str] = []
    pending = ""
    for part in _SENTENCE_BREAK.split(text) if text else []:
        pending = f"{pending} {part}" if pending else part
        if len(pending) >= _MIN_SENTENCE_CHARS:
            sentences.append(pending)
            pending = ""
    if pending:
        if sentences:
            sentences[-1] = f"{sentences[-1]} {pending}"
        else:
            sentences.append(pending)
    return sentences


class _Flight:
    """One running synthesis: frames so far, events so far, and a pulse for the callers tailing it."""

    __slots__ = (
        "_changed",
        "consumers",
        "done",
        "error",
        "events",
        "frames",
        "held",
        "key",
        "payloads",
        "primary_failure",
        "task",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.frames: list[bytes] = []  # for the disk tier
        self.payloads: list[str] = []  # what callers yield
        self.events: list[SpeechEvent] = []
        self.done = False
        self.error: SpeechError | None = None
        self.primary_failure: str | None = None  # set when the fallback took over
        self.consumers = 0
        self.held = False  # started by `prefetch`: kept running with no listener until one joins
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def _pulse(self) -> None:
        # set() resolves every current waiter; clear() at once readies the event for the next round.
        self._changed.set()
        self._changed.clear()

    def add(self, frames: list[bytes]) -> None:
        if frames:
            b64, payloads = base64.b64encode, self.payloads
            for frame in frames:  # usually one: the SDK hands over 160-byte pieces
                payloads.append(b64(frame).decode("ascii"))
            self.frames.extend(frames)
            self._pulse()

    def event(self, kind: SpeechEventKind, reason: str = "", **detail: object) -> None:
        self.events.append(SpeechEvent(kind, reason, detail))
        self._pulse()

    def finish(self, error: SpeechError | None) -> None:
        self.error = error
        self.done = True
        self._pulse()

    async def changed(self) -> None:
        await self._changed.wait()


def _fresh(err: SpeechError) -> SpeechError:
    """A new exception per caller: several callers may re-raise one flight's failure."""
    return type(err)(err.reason)


class _Ahead:
    """One sentence's audio, requested now and read later: the chunks wait in a queue (a sentence is a few
    kilobytes). A failure is raised when the chunks are read, at that sentence's turn."""

    def __init__(
        self,
        engine: Synthesizer,
        sentences: list[str],
        index: int,
        on_audio: Callable[[], None] | None = None,
    ) -> None:
        self._queue: asyncio.Queue[bytes | SpeechError | None] = asyncio.Queue()
        self._on_audio = on_audio  # called at the first chunk: the engine has answered
        self._task = asyncio.create_task(self._fetch(engine, sentences, index))

    async def _fetch(self, engine: Synthesizer, sentences: list[str], index: int) -> None:
        audio = engine.stream(
            sentences[index],
            previous_text=" ".join(sentences[:index]) or None,
            next_text=" ".join(sentences[index + 1 :]) or None,
        )
        try:
            async for chunk in audio:
                if self._on_audio is not None:
                    self._on_audio()
                    self._on_audio = None
                self._queue.put_nowait(chunk)
            self._queue.put_nowait(None)
        except SpeechError as err:
            self._queue.put_nowait(err)
        except Exception as err:  # a bug: the reader still gets an answer it handles
            log.exception("speech stream failed")
            self._queue.put_nowait(SpeechError(f"internal error: {type(err).__name__}"))
        finally:
            # Close the engine's stream now (its HTTP response), also when this task is cancelled.
            if isinstance(audio, AsyncGenerator):
                await audio.aclose()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, SpeechError):
                raise item
            yield item

    async def cancel(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])


class Speaker:
    """Owns the flights; does not own the engines or the cache (the app's lifecycle closes those).
    `pauses`: the voices' pauses between sentences, its own unless given (e.g. measured ahead)."""

    def __init__(
        self,
        primary: Synthesizer,
        fallback: Synthesizer | None,
        cache: AudioCache,
        pauses: SentencePauses | None = None,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._cache = cache
        self._identity = primary.identity()
        self._pauses = pauses if pauses is not None else SentencePauses(cache)
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # Read by /metrics: audio asked for (`frames`, `presynthesize`) and found in the cache, and
        # syntheses started (a `prefetch` counts when it starts one; `cached` is a peek, not counted).
        self.cache_hits = 0
        self.cache_misses = 0

    def key(self, text: str) -> str:
        """The cache key of `text` spoken by the primary engine."""
        return self._cache.key(self._identity, text)

    @property
    def in_flight(self) -> int:
        """Syntheses running now (a gauge for metrics)."""
        return len(self._flights)

    def cached(self, text: str) -> Payloads | None:
        """The payloads when they are in memory, without awaiting (for callers that can skip a generator)."""
        return self._cache.peek(self.key(text))

    async def frames(self, text: str, on_event: OnEvent | None = None) -> AsyncGenerator[str, None]:
        """Base64 payloads of 160-byte mu-law frames, the last padded with silence, each as soon as it exists.

        Raises `SpeechUnavailable` when no audio could be made at all, `SpeechError` when audio started but
        the rest could not be spoken, ValueError for a text with nothing to say. Close it early with
        `contextlib.aclosing`; a synthesis no other caller waits for is then cancelled.
        """
        if not normalise_text(text):
            raise ValueError("nothing to say: the text is empty")
        key = self.key(text)
        payloads = await self._lookup(key)
        if payloads is not None:
            self.cache_hits += 1
            if on_event is not None:
                on_event(SpeechEvent(SpeechEventKind.CACHE_HIT, detail={"frames": len(payloads)}))
            for payload in payloads:
                yield payload
            return
        flight = self._join(key, text)
        try:
            sent = seen = 0
            while True:
                if seen < len(flight.events):
                    if on_event is not None:
                        for event in flight.events[seen:]:
                            on_event(event)
                    seen = len(flight.events)
                if sent < len(flight.payloads):
                    payload = flight.payloads[sent]
                    sent += 1
                    yield payload
                elif flight.done:
                    break
                else:
                    await flight.changed()
            if flight.error is not None:
                raise _fresh(flight.error) from flight.error
        finally:
            self._leave(flight)

    def prefetch(self, text: str) -> None:
        """Start synthesizing `text` now, in the background (a call is being answered): the stream that asks
        for it a moment later tails this synthesis, so its first frame no longer waits for a whole TTS
        round trip. Until a stream joins, the synthesis runs to the end (and fills the cache); once one has
        joined it is that stream's, cancelled when it leaves. A failure is left for the stream to meet."""
        if self._closed or not normalise_text(text):
            return
        key = self.key(text)
        if key in self._flights or self._cache.peek(key) is not None:
            return
        task = asyncio.create_task(self._prefetch(key, text), name=f"prefetch-{key[:12]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prefetch(self, key: str, text: str) -> None:
        if await self._lookup(key) is not None or key in self._flights or self._closed:
            return
        self._join(key, text, listener=False)

    async def presynthesize(self, text: str, on_event: OnEvent | None = None) -> None:
        """Fill the cache (while a phone rings), or raise `SpeechError` saying why it could not be.

        A caller of `frames()` for the same text meanwhile tails this synthesis. Cancelling this call
        abandons the synthesis unless a `frames()` caller still listens. `on_event` hears the synthesis'
        events once it has ended. Audio finished by the fallback is not cached: that raises too.
        """
        key = self.key(text)
        if await self._lookup(key) is not None:
            self.cache_hits += 1
            return
        flight = self._join(key, text)
        try:
            while not flight.done:
                await flight.changed()
        finally:
            self._leave(flight)
        if on_event is not None:
            for event in flight.events:
                on_event(event)
        if flight.error is not None:
            raise _fresh(flight.error) from flight.error
        if flight.primary_failure is not None:
            raise SpeechError(flight.primary_failure)

    async def synthesize(self, text: str) -> bytes:
        """The whole clip as mu-law (previews): cached, or made and cached like `frames()`."""
        async with contextlib.aclosing(self.frames(text)) as frames:
            return b"".join([base64.b64decode(payload) async for payload in frames])

    async def cached_audio(self, text: str) -> bytes | None:
        """The clip of `text` as mu-law if the cache has it, else None: never a TTS request (a page
        showing what a call said must not wait on the provider). Not counted as a hit or a miss."""
        if not normalise_text(text):
            return None
        payloads = await self._cache.load(self.key(text))
        return None if payloads is None else b"".join(base64.b64decode(p) for p in payloads)

    async def aclose(self) -> None:
        """Cancel every running synthesis and wait for it (shutdown)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pauses.aclose()

    # --- flights ----------------------------------------------------------------------------------

    async def _lookup(self, key: str) -> Payloads | None:
        payloads = self._cache.peek(key)
        if payloads is not None or key in self._flights:
            return payloads
        payloads = await self._cache.load(key)
        # A flight may have finished while the disk was read: it fills memory before it leaves.
        return payloads if payloads is not None else self._cache.peek(key)

    def _join(self, key: str, text: str, *, listener: bool = True) -> _Flight:
        """The flight for `key`, started if needed. A listener must `_leave` it; a non-listener (prefetch)
        only holds a new flight running until the first listener joins."""
        flight = self._flights.get(key)
        if flight is None:
            if self._closed:
                raise SpeechUnavailable("shutting down")
            flight = _Flight(key)
            self.cache_misses += 1
            self._flights[key] = flight
            task = asyncio.create_task(self._fly(flight, text), name=f"speech-{key[:12]}")
            flight.task = task
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._flight_done, flight))
        if listener:
            flight.consumers += 1
            flight.held = False
        else:
            flight.held = flight.consumers == 0
        return flight

    def _leave(self, flight: _Flight) -> None:
        flight.consumers -= 1
        if flight.done and flight.consumers == 0 and self._flights.get(flight.key) is flight:
            del self._flights[flight.key]  # a finished prefetch, now heard
        if flight.consumers == 0 and not flight.held and not flight.done and flight.task is not None:
            flight.task.cancel()  # nobody listens: stop paying for the synthesis
            # ... and forget it now, not when the cancellation lands: a caller asking for the same text
            # in between (a repeat key's restart) would tail a flight bound to fail with "cancelled".
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]

    def _flight_done(self, flight: _Flight, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # A cancelled or failed task holds its exception, whose traceback holds the flight: cut the loop
        # so reference counting frees it (a full GC pass stops every call's audio while it runs).
        flight.task = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("speech synthesis crashed (%s)", task.get_name(), exc_info=exc)

    async def _fly(self, flight: _Flight, text: str) -> None:
        try:
            await self._synthesize(flight, text)
        except asyncio.CancelledError:
            flight.finish(SpeechUnavailable("cancelled") if not flight.payloads else SpeechError("cancelled"))
            raise
        except SpeechError as err:
            if not flight.payloads:
                flight.event(SpeechEventKind.TTS_FAILED, err.reason)
                log.warning(
                    "speech %s: %s failed before any audio: %s",
                    flight.key[:12],
                    self._primary.name,
                    err.reason,
                )
                err = err if isinstance(err, SpeechUnavailable) else SpeechUnavailable(err.reason)
            else:
                log.warning("speech %s: stopped mid-way: %s", flight.key[:12], err.reason)
            flight.finish(err)
        except Exception:
            # A bug, not a provider failure: the callers still get an answer they handle; the done
            # callback logs the traceback.
            reason = "internal error"
            flight.finish(SpeechUnavailable(reason) if not flight.payloads else SpeechError(reason))
            raise
        else:
            flight.finish(None)
        finally:
            if flight.held and (flight.error is not None or flight.primary_failure is not None):
                # Prefetched, failed, and nobody has asked yet: keep it, so the stream that asks meets
                # this failure (and falls back) as if it had met it itself, instead of silently starting
                # over. A success needs no keeping: the stream finds it in the cache. (Holding successes
                # kept every unanswered call's audio alive for the hold time: megabytes at 50 calls/s.)
                asyncio.get_running_loop().call_later(_PREFETCH_HOLD_S, self._release, flight)
            elif self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
            flight.frames = []  # on disk and in the cache by now; listeners read the payloads

    def _release(self, flight: _Flight) -> None:
        if flight.held and self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    async def _synthesize(self, flight: _Flight, text: str) -> None:
        sentences = split_sentences(text)
        out = _Out(flight)
        ahead: _Ahead | None = None  # the next sentence, already requested
        current: _Ahead | None = None
        try:
            for index in range(len(sentences)):
                current = ahead if ahead is not None else _Ahead(self._primary, sentences, index)
                ahead = None
                try:
                    received = 0
                    async for chunk in current.chunks():
                        if ahead is None and index + 1 < len(sentences):
                            # The next request goes out as this one's audio arrives, so its first byte is
                            # there when this sentence ends: no silence at the join while it is made. Once
                            # it answers, the engine's pause between sentences is measured (pauses.py).
                            ahead = _Ahead(
                                self._primary,
                                sentences,
                                index + 1,
                                on_audio=functools.partial(self._pauses.measure, self._primary),
                            )
                        received += len(chunk)
                        out.feed(chunk)
                    if not received:
                        raise SpeechError(f"{self._primary.name}: no audio")
                    if index + 1 < len(sentences):
                        out.join(self._pauses.after(self._primary, sentences[index]))
                except SpeechError as err:
                    if ahead is not None:
                        await ahead.cancel()
                        ahead = None
                    if not flight.payloads:
                        raise  # nothing said yet: the caller speaks the text another way
                    out.end()  # what was said stays as it was said
                    flight.primary_failure = err.reason
                    flight.event(SpeechEventKind.TTS_FAILED_MIDWAY, err.reason, sentence=index)
                    if self._fallback is None:
                        raise
                    await self._fall_back(flight, out, sentences, index, err.reason)
                    return  # mixed audio is not cached: the next call tries the primary again
        finally:
            # Cancelled (nobody listens) or done: no request of this flight may go on downloading.
            for stream in (current, ahead):
                if stream is not None:
                    await stream.cancel()
        out.finish()
        try:
            await self._cache.store(flight.key, flight.frames, tuple(flight.payloads))
        except OSError as err:  # the cache is an optimisation: the call has its audio anyway
            log.warning("speech %s: not written to the disk cache: %s", flight.key[:12], err)
            return
        flight.event(SpeechEventKind.CACHE_STORE, frames=len(flight.payloads))

    async def _fall_back(
        self, flight: _Flight, out: _Out, sentences: list[str], index: int, reason: str
    ) -> None:
        assert self._fallback is not None
        log.warning(
            "speech %s: %s failed mid-way (%s); %s speaks the rest from sentence %d",
            *(flight.key[:12], self._primary.name, reason, self._fallback.name, index),
        )
        flight.event(SpeechEventKind.FALLBACK_USED, self._fallback.name, sentence=index)
        self._pauses.measure(self._fallback)
        try:
            for rest in range(index, len(sentences)):
                await self._speak(self._fallback, out, sentences, rest)
                if rest + 1 < len(sentences):
                    out.join(self._pauses.after(self._fallback, sentences[rest]))
        except SpeechError as err:
            flight.event(SpeechEventKind.FALLBACK_FAILED, err.reason)
            raise SpeechError(f"{reason}; fallback: {err.reason}") from err
        out.finish()

    @staticmethod
    async def _speak(engine: Synthesizer, out: _Out, sentences: list[str], index: int) -> None:
        """One sentence from `engine` into the flight, re-framed as it arrives."""
        received = 0
        audio = engine.stream(
            sentences[index],
            previous_text=" ".join(sentences[:index]) or None,
            next_text=" ".join(sentences[index + 1 :]) or None,
        )
        try:
            async for chunk in audio:
                received += len(chunk)
                out.feed(chunk)
        finally:
            # Close the engine's stream now (its HTTP response), also when this task is cancelled.
            if isinstance(audio, AsyncGenerator):
                await audio.aclose()
        if not received:
            raise SpeechError(f"{engine.name}: no audio")


class _Out:
    """A flight's audio on its way out: sentences joined at their seams, cut into frames."""

    __slots__ = ("_flight", "_framer", "_seams")

    def __init__(self, flight: _Flight) -> None:
        self._flight = flight
        self._framer = Framer()
        self._seams = Seams()

    def feed(self, chunk: bytes) -> None:
        self._flight.add(self._framer.feed(self._seams.feed(chunk)))

    def join(self, pause_s: float) -> None:
        self._flight.add(self._framer.feed(self._seams.join(pause_s)))

    def end(self) -> None:
        self._flight.add(self._framer.feed(self._seams.end()))

    def finish(self) -> None:
        """The message has ended: its last sentence's own ending, the last frame padded with silence."""
        self.end()
        self._flight.add(self._framer.flush())
