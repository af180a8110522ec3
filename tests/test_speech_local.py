"""The local voice: real espeak-ng from the wheel, 8 kHz mu-law out."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from announcer import audio
from announcer.speech.local import LocalSynthesizer

SENTENCE = "This is a test announcement"


def test_synthesize_makes_real_speech_of_plausible_length() -> None:
    clip = LocalSynthesizer().synthesize(SENTENCE)
    # espeak speaks this in about 1.4 s (sdk-notes.md section 5); the exact length varies by a few samples.
    assert 1.0 < audio.duration_s(clip) < 2.5
    assert audio.rms(clip) > 500  # speech, not silence (mu-law silence decodes to 0)
    # And not noise either: speech has pauses and loud parts, so 20 ms levels vary widely.
    levels = [audio.rms(frame) for frame in audio.cut_frames(clip)]
    assert min(levels) < 0.1 * max(levels)


def test_longer_text_gives_longer_audio() -> None:
    voice = LocalSynthesizer()
    short = voice.synthesize("Hello.")
    long = voice.synthesize("Hello. Your appointment is tomorrow at nine in the morning, in room four.")
    assert audio.duration_s(long) > 2 * audio.duration_s(short) > 0


def test_blank_text_is_no_audio() -> None:
    assert LocalSynthesizer().synthesize("  \n ") == b""


def test_threads_are_serialised_and_get_their_own_audio() -> None:
    voice = LocalSynthesizer()
    texts = [SENTENCE, "Your server is down.", "Please call the office."] * 4
    alone = {text: len(voice.synthesize(text)) for text in set(texts)}
    with ThreadPoolExecutor(max_workers=6) as pool:
        clips = list(pool.map(voice.synthesize, texts))
    for text, clip in zip(texts, clips, strict=True):
        # One global lock around libespeak-ng: no clip is truncated or mixed with another.
        assert abs(len(clip) - alone[text]) < 80, text


async def test_stream_yields_the_whole_clip_once() -> None:
    voice = LocalSynthesizer()
    chunks = [chunk async for chunk in voice.stream(SENTENCE, previous_text="Hi.", next_text="Bye.")]
    assert len(chunks) == 1
    assert abs(len(chunks[0]) - len(voice.synthesize(SENTENCE))) < 80
    assert [chunk async for chunk in voice.stream(" ")] == []
    assert voice.identity()["provider"] == "espeak-ng"
    await voice.aclose()
