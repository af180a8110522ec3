"""Speaker: streaming frames, cache, single flight, cancellation and the never-silent fallbacks, with the
real `elevenlabs` SDK against SandboxElevenLabs and the real local voice."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path

import numpy as np
import pytest

from announcer.audio import FRAME_BYTES, FRAME_MS, SAMPLE_RATE, cut_frames, rms
from announcer.sandbox.elevenlabs import SandboxElevenLabs, TtsRequest
from announcer.sandbox.voice_activity import VOICED_RMS, window_rms
from announcer.speech.cache import AudioCache
from announcer.speech.elevenlabs import ElevenLabsSynthesizer
from announcer.speech.engine import SpeechError
from announcer.speech.local import LocalSynthesizer
from announcer.speech.pauses import PROBE, SentencePauses
from announcer.speech.speaker import Speaker, SpeechEvent, SpeechUnavailable, split_sentences

API_KEY = "sk-sandbox-test-key"
VOICE = "VOICE123"
MODEL = "eleven_flash_v2_5"
LOCAL = LocalSynthesizer()
TEXT = "This is a test announcement from the sandbox."  # one sentence, about 2.7 s of audio
THREE = "The first sentence is right here. The second one comes after it. And the third one closes it."

MakeSpeaker = Callable[..., Speaker]


class Events:
    def __init__(self) -> None:
        self.seen: list[SpeechEvent] = []

    def __call__(self, event: SpeechEvent) -> None:
        self.seen.append(event)

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.seen]


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxElevenLabs]:
    server = SandboxElevenLabs(API_KEY, LOCAL.synthesize)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def cache(tmp_path: Path) -> AudioCache:
    return AudioCache(tmp_path / "audio")


@pytest.fixture
async def twin(sandbox: SandboxElevenLabs) -> AsyncIterator[ElevenLabsSynthesizer]:
    """An engine with the voice and model of the speakers' primary: pauses are measured per voice."""
    assert sandbox.base_url is not None
    engine = ElevenLabsSynthesizer(API_KEY, sandbox.base_url, VOICE, MODEL, 5.0)
    yield engine
    await engine.aclose()


@pytest.fixture
async def make_speaker(sandbox: SandboxElevenLabs, cache: AudioCache) -> AsyncIterator[MakeSpeaker]:
    made: list[tuple[Speaker, ElevenLabsSynthesizer]] = []

    def make(
        *,
        timeout_s: float = 5.0,
        fallback: bool = True,
        cache_: AudioCache | None = None,
        pauses: SentencePauses | None = None,
    ) -> Speaker:
        assert sandbox.base_url is not None
        primary = ElevenLabsSynthesizer(API_KEY, sandbox.base_url, VOICE, MODEL, timeout_s)
        speaker = Speaker(primary, LOCAL if fallback else None, cache_ or cache, pauses)
        made.append((speaker, primary))
        return speaker

    yield make
    for speaker, primary in made:
        await speaker.aclose()
        await primary.aclose()


async def consume(speaker: Speaker, text: str, on_event: Events | None = None) -> list[str]:
    async with aclosing(speaker.frames(text, on_event)) as frames:
        return [payload async for payload in frames]


def decode(payloads: list[str]) -> list[bytes]:
    frames = [base64.b64decode(p) for p in payloads]
    assert all(len(f) == FRAME_BYTES for f in frames)
    return frames


# --- streaming and the cache ------------------------------------------------------------------------


async def test_first_frame_leaves_before_the_server_has_finished(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker, cache: AudioCache
) -> None:
    sandbox.first_byte_delay_s = 0.05
    sandbox.bytes_per_second = 24000  # 3x real time: about 0.9 s to stream the clip
    speaker = make_speaker()
    events = Events()
    payloads: list[str] = []
    first_at = None
    async with aclosing(speaker.frames(TEXT, events)) as frames:
        async for payload in frames:
            first_at = first_at or time.monotonic()
            payloads.append(payload)

    [req] = sandbox.requests
    assert first_at is not None and req.finished_at is not None
    assert first_at < req.finished_at - 0.3  # well before the server's last byte
    frames = decode(payloads)
    assert len(frames) == -(-req.bytes_sent // FRAME_BYTES)
    if req.bytes_sent % FRAME_BYTES:
        assert frames[-1].endswith(b"\xff" * (FRAME_BYTES - req.bytes_sent % FRAME_BYTES))
    assert events.kinds == ["cache_store"]
    assert cache.contains(speaker.key(TEXT))


async def test_cache_hit_makes_no_request(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker, tmp_path: Path
) -> None:
    speaker = make_speaker()
    first = await consume(speaker, TEXT)
    events = Events()
    assert await consume(speaker, f"  {TEXT}\n", events) == first  # the same text, laid out differently
    assert events.kinds == ["cache_hit"]
    assert speaker.cached(TEXT) == tuple(first)
    assert len(sandbox.requests) == 1

    # A new process: the frames come back from disk, still without a request.
    fresh = make_speaker(cache_=AudioCache(tmp_path / "audio"))
    events = Events()
    assert await consume(fresh, TEXT, events) == first
    assert events.kinds == ["cache_hit"] and len(sandbox.requests) == 1


async def test_the_cache_counts_its_hits_and_gives_audio_only_from_the_cache(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker
) -> None:
    speaker = make_speaker()
    assert await speaker.cached_audio(TEXT) is None  # not cached: no synthesis for a page that asks
    assert len(message_requests(sandbox)) == 0
    first = await consume(speaker, TEXT)
    await consume(speaker, TEXT)
    await speaker.presynthesize(TEXT)
    assert (speaker.cache_hits, speaker.cache_misses) == (2, 1)
    assert await speaker.cached_audio(TEXT) == b"".join(decode(first))
    assert (speaker.cache_hits, speaker.cache_misses) == (2, 1)  # reading it back is not an ask
    assert len(message_requests(sandbox)) == 1


def message_requests(sandbox: SandboxElevenLabs) -> list[TtsRequest]:
    """The requests for messages, without the probe that measures the voice's pause (once per voice)."""
    return [r for r in sandbox.requests if r.text != PROBE]


async def test_sentences_go_one_request_each_with_their_neighbours(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker
) -> None:
    payloads = await consume(make_speaker(), THREE)
    first, second, third = split_sentences(THREE)
    requests = message_requests(sandbox)
    assert [r.text for r in requests] == [first, second, third]
    assert [(r.previous_text, r.next_text) for r in requests] == [
        (None, f"{second} {third}"),
        (first, third),
        (f"{first} {second}", None),
    ]
    # the sentences' audio, with a pause of about 0.3 s (the sandbox voice's) at each of the two joins
    sentences_s = sum(r.bytes_sent for r in requests) / SAMPLE_RATE
    assert sentences_s + 2 * 0.2 < len(payloads) * FRAME_MS / 1000 < sentences_s + 2 * 0.4


# Texts of sentences that are each requested alone (none shorter than 20 characters) and have no comma,
# so that a whole synthesis pauses longest at its sentence ends.
JOINED = [
    THREE,
    "Good morning and thank you for calling the Acme office. We see you are calling from one two three "
    "four. Our team will call you back as soon as possible.",
    "Your server is down since two o'clock! Can you check it today please? The ticket number is four two "
    "one seven. That is all for now from the operations team.",
]


def pauses(audio: bytes, n: int) -> list[float]:
    """Seconds of the `n` longest quiet stretches between sounds of `audio`, in the order they come:
    in a text without commas, the pauses at its sentence ends."""
    voiced = np.flatnonzero(window_rms(audio) > VOICED_RMS)
    gaps = [(int(a), int(b - a - 1)) for a, b in itertools.pairwise(voiced) if b - a > 1]
    longest = sorted(gaps, key=lambda gap: gap[1], reverse=True)[:n]
    return [windows * FRAME_MS / 1000 for _, windows in sorted(longest)]


@pytest.mark.parametrize("text", JOINED)
async def test_sentences_requested_one_by_one_pause_as_the_voice_does_in_one_request(
    sandbox: SandboxElevenLabs,
    make_speaker: MakeSpeaker,
    twin: ElevenLabsSynthesizer,
    cache: AudioCache,
    tmp_path: Path,
    text: str,
) -> None:
    # As for every message after a voice's first, the voice's pauses are measured (the first takes a
    # default meanwhile: test_speech_seams)
    voice = SentencePauses(cache)
    assert await voice.measured(twin)
    speaker = make_speaker(pauses=voice)
    piped = await speaker.synthesize(text)
    sentences = split_sentences(text)
    assert [r.text for r in message_requests(sandbox)] == sentences  # one request per sentence
    # The same text in one request to the same voice (the sandbox's ElevenLabs speaks with the local one)
    whole = LOCAL.synthesize(text)
    joins = len(sentences) - 1
    expected = pauses(whole, joins)
    assert min(expected) >= 0.2  # the voice pauses at each sentence end: the reference is sound
    got = pauses(piped, joins)
    assert all(abs(g - e) <= 0.1 for g, e in zip(got, expected, strict=True)), (got, expected)

    # The cache holds the message as it was spoken, pauses and all: from memory, and from disk
    assert await speaker.synthesize(text) == piped
    fresh = make_speaker(cache_=AudioCache(tmp_path / "audio"))
    events = Events()
    assert b"".join(base64.b64decode(p) for p in await consume(fresh, text, events)) == piped
    assert events.kinds == ["cache_hit"]


async def test_the_voice_pause_is_measured_once_per_voice(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker, twin: ElevenLabsSynthesizer, cache: AudioCache
) -> None:
    voice = SentencePauses(cache)
    speaker = make_speaker(pauses=voice)
    await speaker.synthesize(JOINED[1])  # measured once its second request answers
    await speaker.synthesize(JOINED[2])
    assert await voice.measured(twin)
    await speaker.synthesize(THREE)
    assert [r.text for r in sandbox.requests].count(PROBE) == 1
    assert len(message_requests(sandbox)) == sum(len(split_sentences(t)) for t in (*JOINED[1:], THREE))


async def test_synthesize_returns_the_whole_clip(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker
) -> None:
    speaker = make_speaker()
    clip = await speaker.synthesize(TEXT)
    assert len(clip) % FRAME_BYTES == 0 and rms(clip) > 500
    assert await speaker.synthesize(TEXT) == clip and len(sandbox.requests) == 1


async def test_nothing_to_say(make_speaker: MakeSpeaker) -> None:
    with pytest.raises(ValueError):
        await consume(make_speaker(), " \n ")


# --- single flight ----------------------------------------------------------------------------------


async def test_concurrent_callers_share_one_request(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker
) -> None:
    sandbox.bytes_per_second = 24000
    speaker = make_speaker()
    first_frame = asyncio.Event()

    async def early() -> list[str]:
        out = []
        async with aclosing(speaker.frames(TEXT)) as frames:
            async for payload in frames:
                out.append(payload)
                first_frame.set()
        return out

    async def late() -> list[str]:
        await first_frame.wait()
        assert speaker.in_flight == 1  # it joins a running synthesis, from its first frame
        return await consume(speaker, TEXT)

    a, b, c = await asyncio.gather(early(), consume(speaker, TEXT), late())
    assert a == b == c and len(a) > 100
    assert len(sandbox.requests) == 1


async def test_presynthesize_fills_the_cache(sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker) -> None:
    sandbox.bytes_per_second = 24000
    speaker = make_speaker()
    events = Events()
    # A caller answering while the phone still rings tails the pre-synthesis: still one request.
    _, payloads = await asyncio.gather(speaker.presynthesize(TEXT, events), consume(speaker, TEXT))
    assert events.kinds == ["cache_store"]
    await speaker.presynthesize(TEXT)
    hit = Events()
    assert await consume(speaker, TEXT, hit) == payloads
    assert hit.kinds == ["cache_hit"] and len(sandbox.requests) == 1


async def test_presynthesize_reports_a_failure(sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker) -> None:
    speaker = make_speaker()
    sandbox.fail_next("quota")
    with pytest.raises(SpeechUnavailable) as caught:
        await speaker.presynthesize(TEXT)
    assert caught.value.reason == "http 401 quota_exceeded"
    sandbox.fail_next("cut", after_bytes=4000)
    with pytest.raises(SpeechError) as mixed:  # audio was made, but not by the primary: not cached
        await speaker.presynthesize(TEXT)
    assert mixed.value.reason == "stream cut" and speaker.cached(TEXT) is None


# --- never silent -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("unauthorized", "http 401 invalid_api_key"),
        ("quota", "http 401 quota_exceeded"),
        ("rate_limited", "http 429 too_many_concurrent_requests"),
        ("server_error", "http 500"),
        ("timeout", "timeout"),
        ("cut", "stream cut"),  # after 100 bytes: less than one frame
    ],
)
async def test_failure_before_the_first_frame_is_speech_unavailable(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker, kind: str, reason: str
) -> None:
    speaker = make_speaker(timeout_s=0.3)
    sandbox.fail_next(kind, after_bytes=100)
    events = Events()
    with pytest.raises(SpeechUnavailable) as caught:
        await consume(speaker, TEXT, events)
    assert caught.value.reason == reason
    assert events.kinds == ["tts_failed"] and events.seen[0].reason == reason
    assert speaker.cached(TEXT) is None and speaker.in_flight == 0
    # Nothing was cached, so the next call asks again, and now succeeds.
    assert await consume(speaker, TEXT)
    assert len(sandbox.requests) == 2


async def test_cut_mid_way_goes_on_with_the_local_voice(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker, cache: AudioCache
) -> None:
    speaker = make_speaker()
    sandbox.fail_next("cut", after_bytes=4000)  # 25 frames, then the connection drops
    events = Events()
    frames = decode(await consume(speaker, TEXT, events))

    assert events.kinds == ["tts_failed_midway", "fallback_used"]
    assert events.seen[0].reason == "stream cut" and events.seen[1].reason == "local"
    # 25 frames from ElevenLabs, then the whole sentence again from the local voice (it restarts the
    # sentence that broke: half a word is worse than a repeat).
    local_frames = len(cut_frames(LOCAL.synthesize(TEXT)))
    assert abs(len(frames) - (25 + local_frames)) <= 1
    assert rms(b"".join(frames[25:])) > 500
    assert not cache.contains(speaker.key(TEXT))  # mixed audio is not cached

    again = Events()
    await consume(speaker, TEXT, again)
    assert again.kinds == ["cache_store"] and len(sandbox.requests) == 2


async def test_a_later_sentence_failing_falls_back_from_that_sentence(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker
) -> None:
    sandbox.bytes_per_second = 40000  # the first sentence is still streaming when we arm the failure
    speaker = make_speaker()
    events = Events()
    payloads = []
    async with aclosing(speaker.frames(THREE, events)) as frames:
        async for payload in frames:
            if not payloads:
                sandbox.fail_next("rate_limited")  # for the second sentence's request
            payloads.append(payload)

    _, second, third = split_sentences(THREE)
    requests = message_requests(sandbox)
    assert [r.status for r in requests] == [200, 429]
    assert events.kinds == ["tts_failed_midway", "fallback_used"]
    assert events.seen[0].reason == "http 429 too_many_concurrent_requests"
    assert events.seen[0].detail == {"sentence": 1}
    # the first sentence from ElevenLabs, the second and third from the local voice, a pause at each join
    spoken_s = (requests[0].bytes_sent + sum(len(LOCAL.synthesize(s)) for s in (second, third))) / SAMPLE_RATE
    assert spoken_s + 2 * 0.2 < len(payloads) * FRAME_MS / 1000 < spoken_s + 2 * 0.4
    assert (
        len(pauses(b"".join(decode(payloads)), 2)) == 2 and min(pauses(b"".join(decode(payloads)), 2)) > 0.2
    )


async def test_mid_way_without_a_fallback_raises(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker
) -> None:
    speaker = make_speaker(fallback=False)
    sandbox.fail_next("cut", after_bytes=4000)
    events = Events()
    got: list[str] = []
    with pytest.raises(SpeechError) as caught:
        async with aclosing(speaker.frames(TEXT, events)) as frames:
            async for payload in frames:
                got.append(payload)
    assert not isinstance(caught.value, SpeechUnavailable)  # audio had started: no <Say> redirect
    assert caught.value.reason == "stream cut" and len(got) == 25
    assert events.kinds == ["tts_failed_midway"]


# --- cancellation -----------------------------------------------------------------------------------


async def test_the_last_caller_leaving_cancels_the_request(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker, cache: AudioCache
) -> None:
    sandbox.bytes_per_second = 8000  # real time: the server has seconds of audio still to send
    speaker = make_speaker()
    async with aclosing(speaker.frames(TEXT)) as frames:
        async for _ in frames:
            break  # the caller hung up after the first frame
    await sandbox.wait_until(lambda: sandbox.requests[0].outcome == "client_gone", timeout=5)
    assert sandbox.requests[0].bytes_sent < 8000
    assert not cache.contains(speaker.key(TEXT)) and len(sandbox.requests) == 1


async def test_one_caller_leaving_does_not_cancel_the_others(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker
) -> None:
    sandbox.bytes_per_second = 24000
    speaker = make_speaker()

    async def leaver() -> None:
        async with aclosing(speaker.frames(TEXT)) as frames:
            async for _ in frames:
                return

    events = Events()
    _, stayed = await asyncio.gather(leaver(), consume(speaker, TEXT, events))
    assert events.kinds == ["cache_store"] and len(stayed) > 100
    assert [r.outcome for r in sandbox.requests] == ["completed"]


async def test_asking_again_right_after_leaving_starts_afresh(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker, cache: AudioCache
) -> None:
    """A repeat key: the caller leaves a synthesis mid-way and asks for the same text at once, before the
    cancellation has landed. It gets the whole text from a new synthesis, not the cancelled one's
    "cancelled" after the frames it had (the call went silent, its end mark never sent)."""
    sandbox.bytes_per_second = 8000  # real time: the first synthesis is far from done when it is left
    speaker = make_speaker()
    async with aclosing(speaker.frames(TEXT)) as frames:
        async for _ in frames:
            break
    again = await consume(speaker, TEXT)  # no await in between: the first flight's task not yet ended
    assert len(again) > 100 and cache.contains(speaker.key(TEXT))
    assert [r.outcome for r in sandbox.requests[:1]] == ["client_gone"]


async def test_a_cancelled_caller_task_cancels_the_request(
    sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker
) -> None:
    sandbox.bytes_per_second = 8000
    speaker = make_speaker()
    task = asyncio.create_task(consume(speaker, TEXT))
    await sandbox.wait_until(
        lambda: bool(sandbox.requests) and sandbox.requests[0].first_byte_at is not None, 5
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sandbox.wait_until(lambda: sandbox.requests[0].outcome == "client_gone", timeout=5)


async def test_aclose_cancels_every_flight(sandbox: SandboxElevenLabs, make_speaker: MakeSpeaker) -> None:
    sandbox.bytes_per_second = 8000
    speaker = make_speaker()
    task = asyncio.create_task(consume(speaker, TEXT))
    await sandbox.wait_until(
        lambda: bool(sandbox.requests) and sandbox.requests[0].first_byte_at is not None, 5
    )
    await speaker.aclose()
    assert speaker.in_flight == 0
    with pytest.raises(SpeechError) as caught:
        await task
    assert caught.value.reason == "cancelled"
    await sandbox.wait_until(lambda: sandbox.requests[0].outcome == "client_gone", timeout=5)
    with pytest.raises(SpeechUnavailable):
        await consume(speaker, "Something not in the cache.")


# --- sentences --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No punctuation at all in this one", ["No punctuation at all in this one"]),
        ("  Spread over\n  two lines.  ", ["Spread over two lines."]),
        (
            "Your server is down. It has been down since two o'clock! Can you check it today?",
            ["Your server is down.", "It has been down since two o'clock!", "Can you check it today?"],
        ),
        (
            "Hi. Dr. Smith will see you at nine a.m. tomorrow.",
            ["Hi. Dr. Smith will see you at nine a.m. tomorrow."],
        ),
        (
            'He said "stop." Then he left the room quietly.',
            ['He said "stop." Then he left the room quietly.'],
        ),
        ("The first point is this one. Ok.", ["The first point is this one. Ok."]),
        ("", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected
