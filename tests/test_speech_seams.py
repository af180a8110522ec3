"""Joining sentences synthesized one by one: the seams (pure) and the voice's pause, measured once per voice,
with the real `elevenlabs` SDK against SandboxElevenLabs speaking with voices of known pauses."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from announcer.audio import MULAW_SILENCE, SAMPLE_RATE, lin2ulaw
from announcer.sandbox.elevenlabs import SandboxElevenLabs
from announcer.speech.cache import AudioCache
from announcer.speech.elevenlabs import ElevenLabsSynthesizer
from announcer.speech.pauses import DEFAULT_PAUSE_S, PROBE, SentencePauses, ending
from announcer.speech.seams import WINDOW_BYTES, Seams, pauses_between, window_rms
from announcer.speech.speaker import Speaker, split_sentences

API_KEY = "sk-sandbox-test-key"


def tone(seconds: float, level: int = 8000) -> bytes:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return lin2ulaw((level * np.sin(2 * np.pi * 440 * t)).astype(np.int16))


def quiet(seconds: float) -> bytes:
    return bytes([MULAW_SILENCE]) * round(seconds * SAMPLE_RATE)


def pieces(audio: bytes, size: int) -> list[bytes]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def run(seams: Seams, sentences: list[bytes], pause_s: float, chunk: int) -> bytes:
    out = b""
    for index, sentence in enumerate(sentences):
        out += b"".join(seams.feed(piece) for piece in pieces(sentence, chunk))
        out += seams.join(pause_s) if index + 1 < len(sentences) else seams.end()
    return out


# --- seams ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 37, 160, 800, 100_000])
def test_a_join_is_the_pause_and_nothing_else(chunk: int) -> None:
    first = quiet(0.01) + tone(0.5) + quiet(0.8)  # an engine that pads its clips
    second = quiet(0.2) + tone(0.3) + quiet(0.005)
    out = run(Seams(), [first, second], 0.3, chunk)
    # the message's own start and end stay; at the join, only the pause
    assert out == quiet(0.01) + tone(0.5) + quiet(0.3) + tone(0.3) + quiet(0.005)


def test_a_pause_inside_a_sentence_plays_as_it_was() -> None:
    sentence = tone(0.2) + quiet(0.15) + tone(0.2)
    seams = Seams()
    assert seams.feed(tone(0.2)) == tone(0.2)
    assert seams.feed(quiet(0.15)) == b""  # held: a pause, or the sentence's tail
    assert seams.feed(tone(0.2)) == quiet(0.15) + tone(0.2)
    assert seams.end() == b""
    assert run(Seams(), [sentence, sentence], 0.25, 160) == sentence + quiet(0.25) + sentence


def test_a_sentence_that_broke_off_keeps_its_audio_and_the_next_starts_afresh() -> None:
    seams = Seams()
    said = seams.feed(tone(0.2) + quiet(0.05))
    assert said + seams.end() == tone(0.2) + quiet(0.05)  # the cut stays as it was
    assert seams.feed(quiet(0.02) + tone(0.1)) == quiet(0.02) + tone(0.1)  # no join: nothing trimmed


def test_soft_sound_is_not_quiet() -> None:
    soft = tone(0.1, level=120)  # RMS ~85: the softest stretches of a word
    assert (window_rms(soft) > 64).all()
    out = run(Seams(), [tone(0.2) + soft + quiet(0.1), tone(0.2)], 0.3, 160)
    assert out == tone(0.2) + soft + quiet(0.3) + tone(0.2)


def test_pauses_between() -> None:
    clip = tone(0.3) + quiet(0.25) + tone(0.1) + quiet(0.05) + tone(0.3) + quiet(0.4) + tone(0.2) + quiet(1.0)
    assert pauses_between(clip, 2) == [pytest.approx(0.25, abs=0.006), pytest.approx(0.4, abs=0.006)]
    assert pauses_between(clip, 3) == pytest.approx([0.25, 0.05, 0.4], abs=0.006)
    assert pauses_between(clip, 4) is None  # four sounds, three pauses
    assert pauses_between(quiet(0.2) + tone(0.5) + quiet(0.5), 1) is None  # one sound: no pause
    assert pauses_between(b"", 1) is None
    assert WINDOW_BYTES * 1000 // SAMPLE_RATE == 5


@pytest.mark.parametrize(
    ("sentence", "mark"),
    [
        ("Stop.", "."),
        ("Stop!", "!"),
        ("Stop?", "?"),
        ('He said "stop?"', "?"),
        ("(Stop!)", "!"),
        ("So\u2026", "."),
    ],
)
def test_ending(sentence: str, mark: str) -> None:
    assert ending(sentence) == mark


# --- the voice's own pause ------------------------------------------------------------------------------


def tone_voice(pauses: dict[str, float], pad_s: float) -> Callable[[str], bytes]:
    """A voice that says each sentence as a tone, pauses after it as `pauses` says for its final mark,
    and pads every clip with `pad_s` of silence (as some engines do)."""

    def speak(text: str) -> bytes:
        audio = quiet(0.02)
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
        for index, sentence in enumerate(sentences):
            audio += tone(0.02 * len(sentence))
            if index + 1 < len(sentences):
                audio += quiet(pauses[sentence[-1]])
        return audio + quiet(pad_s)

    return speak


# Not the default, nor espeak-ng's, and a pause of its own after each mark.
VOICE_PAUSES = {".": 0.6, "?": 0.45, "!": 0.5}
VOICE_PAD_S = 0.8


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxElevenLabs]:
    server = SandboxElevenLabs(API_KEY, tone_voice(VOICE_PAUSES, VOICE_PAD_S))
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def engine(sandbox: SandboxElevenLabs) -> AsyncIterator[ElevenLabsSynthesizer]:
    assert sandbox.base_url is not None
    synthesizer = ElevenLabsSynthesizer(API_KEY, sandbox.base_url, "VOICE123", "eleven_flash_v2_5", 5.0)
    yield synthesizer
    await synthesizer.aclose()


def probes(sandbox: SandboxElevenLabs) -> int:
    return sum(r.text == PROBE for r in sandbox.requests)


async def test_the_pauses_are_the_voice_s_own(
    sandbox: SandboxElevenLabs, engine: ElevenLabsSynthesizer, tmp_path: Path
) -> None:
    pauses = SentencePauses(AudioCache(tmp_path / "audio"))
    assert pauses.after(engine, "One.") == DEFAULT_PAUSE_S  # not measured yet: never waited for
    assert await pauses.measured(engine)
    for sentence, mark in [("One.", "."), ("Two?", "?"), ("Three!", "!"), ("Four", ".")]:
        assert pauses.after(engine, sentence) == pytest.approx(VOICE_PAUSES[mark], abs=0.006)
    assert await pauses.measured(engine)
    assert probes(sandbox) == 1
    await pauses.aclose()
    # A new process on the same cache measures them from the probe's cached audio: no request
    again = SentencePauses(AudioCache(tmp_path / "audio"))
    assert await again.measured(engine)
    assert again.after(engine, "Three!") == pytest.approx(VOICE_PAUSES["!"], abs=0.006)
    assert probes(sandbox) == 1
    await again.aclose()


async def test_a_failed_measurement_takes_the_default_and_does_not_insist(
    sandbox: SandboxElevenLabs, engine: ElevenLabsSynthesizer, tmp_path: Path
) -> None:
    pauses = SentencePauses(AudioCache(tmp_path / "audio"))
    sandbox.fail_next("server_error")
    assert not await pauses.measured(engine)
    assert pauses.after(engine, "One.") == DEFAULT_PAUSE_S
    assert not await pauses.measured(engine)  # tried again later, not at every message
    assert probes(sandbox) == 1
    await pauses.aclose()


async def test_a_message_pauses_as_its_voice_does_whatever_its_clips_end_with(
    sandbox: SandboxElevenLabs, engine: ElevenLabsSynthesizer, tmp_path: Path
) -> None:
    """A voice with pauses of its own after each mark, that pads each clip with 0.8 s of silence:
    requested sentence by sentence, the message pauses at each join as that voice does, and ends as the
    voice ends a clip."""
    cache = AudioCache(tmp_path / "audio")
    pauses = SentencePauses(cache)
    assert await pauses.measured(engine)
    text = "Is the first sentence right here? The second one comes after it! And the third one closes it."
    speaker = Speaker(engine, None, cache, pauses)
    piped = await speaker.synthesize(text)
    await speaker.aclose()
    assert [r.text for r in sandbox.requests if r.text != PROBE] == split_sentences(text)
    whole = tone_voice(VOICE_PAUSES, VOICE_PAD_S)(text)
    assert pauses_between(piped, 2) == pytest.approx([VOICE_PAUSES["?"], VOICE_PAUSES["!"]], abs=0.006)
    assert abs(len(piped) - len(whole)) <= 160  # as long as the text spoken whole


async def test_a_speaker_measures_its_voice_once_without_holding_a_message_up(
    sandbox: SandboxElevenLabs, engine: ElevenLabsSynthesizer, tmp_path: Path
) -> None:
    cache = AudioCache(tmp_path / "audio")
    pauses = SentencePauses(cache)
    speaker = Speaker(engine, None, cache, pauses)
    first = "Is the first sentence right here? The second one comes after it! And the third one closes it."
    # The first message of a voice: measured from its second request's answer on, the default meanwhile
    await speaker.synthesize(first)
    assert await pauses.measured(engine)
    later = "The next message is right here? Its second sentence comes after it! And a third one closes it."
    assert pauses_between(await speaker.synthesize(later), 2) == pytest.approx(
        [VOICE_PAUSES["?"], VOICE_PAUSES["!"]], abs=0.006
    )
    assert probes(sandbox) == 1
    await speaker.aclose()
