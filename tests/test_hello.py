"""The session's ear (telephony/hello.py) on real audio: the sandbox voice's "Hello?" and a machine's
greeting, Twilio's silence, a beep and a fax's calling tone, fed frame by frame as Twilio sends them."""

from __future__ import annotations

import base64
from collections.abc import Iterable

import numpy as np
import pytest

from announcer.audio import FRAME_BYTES, SILENCE_FRAME, cut_frames, lin2ulaw, rms
from announcer.sandbox import tones
from announcer.sandbox.twilio_call import DEFAULT_GREETINGS, Callee
from announcer.speech.local import LocalSynthesizer
from announcer.telephony.callflow import CalleeHeard, Hearing
from announcer.telephony.hello import LONG_END_MS, SHORT_END_MS, HelloEar, tone_bin

TIMEOUT_MS = 1500
THRESHOLD_MS = 2400


@pytest.fixture(scope="module")
def voice() -> LocalSynthesizer:
    return LocalSynthesizer()


def silence(ms: int) -> list[bytes]:
    return [SILENCE_FRAME] * (ms // 20)


def hear(frames: Iterable[bytes]) -> list[tuple[int, CalleeHeard]]:
    """What the ear tells, with the audio time (ms) of the frame it told it on."""
    ear = HelloEar(TIMEOUT_MS, THRESHOLD_MS)
    told = []
    for frame in frames:
        heard = ear.hear(base64.b64encode(frame).decode())
        if heard is not None:
            told.append((ear.heard_ms, heard))
    return told


def voiced_end(frames: list[bytes], offset_ms: int) -> int:
    """Where the last loud frame of `frames` ends, as audio time from the stream's start."""
    loud = [i for i, f in enumerate(frames) if rms(f) > 200]
    return offset_ms + (loud[-1] + 1) * 20


def test_hello_ends_after_a_short_silence(voice: LocalSynthesizer) -> None:
    hello = cut_frames(voice.synthesize("Hello?"))
    told = hear([*silence(600), *hello, *silence(2000)])
    kinds = [h.hearing for _, h in told]
    assert kinds == [Hearing.SPEECH_STARTED, Hearing.HELLO_ENDED]
    at, ended = told[-1]
    end = voiced_end(hello, 600)
    assert at - end == SHORT_END_MS  # told on the frame that completes the silence
    assert 300 <= ended.speech_ms <= 1000


def test_a_greeting_is_not_a_hello_and_holds_at_the_speech_threshold(voice: LocalSynthesizer) -> None:
    for callee in (Callee.MACHINE, Callee.MACHINE_NO_BEEP, Callee.MAILBOX_FULL):
        greeting = cut_frames(voice.synthesize(DEFAULT_GREETINGS[callee]))
        told = hear([*silence(300), *greeting, *silence(3000)])
        kinds = [h.hearing for _, h in told]
        # its sentences' pauses (~300 ms) do not end it: the first thing told after its start is its length
        assert kinds[:2] == [Hearing.SPEECH_STARTED, Hearing.LONG_SPEECH], (callee, kinds)
        at, long = told[1]
        assert THRESHOLD_MS <= long.speech_ms < THRESHOLD_MS + 20 * 3  # on the frame that reached it
        assert at - long.speech_ms >= 300
        # and when it is over, it ends after the longer silence (what a flow without a verdict waits for)
        assert told[-1][1].hearing == Hearing.HELLO_ENDED
        assert told[-1][0] - voiced_end(greeting, 300) == LONG_END_MS


def test_silence_starts_the_message_at_the_hello_timeout_once() -> None:
    told = hear(silence(5000))
    assert told == [(TIMEOUT_MS, CalleeHeard(Hearing.SILENCE))]


def test_a_click_is_no_utterance_and_the_silence_goes_on_counting() -> None:
    click = lin2ulaw(np.random.default_rng(1).normal(0, 6000, FRAME_BYTES).astype(np.int16))  # 20 ms
    told = hear([*silence(400), click, *silence(3000)])
    # a one-frame burst is loud but no utterance: only SPEECH_STARTED, then the silence timeout
    assert [h.hearing for _, h in told] == [Hearing.SPEECH_STARTED, Hearing.SILENCE]
    assert told[-1][0] == TIMEOUT_MS


@pytest.mark.parametrize(
    "tone", [tones.tone(tones.BEEP_HZ, 0.5), tones.cng_cycle()[: 8000 // 2]], ids=["beep", "fax CNG"]
)
def test_a_steady_tone_is_told_as_a_tone_and_never_a_hello(tone: bytes) -> None:
    told = hear([*silence(500), *cut_frames(tone), *silence(3000)])
    kinds = [h.hearing for _, h in told]
    assert kinds == [Hearing.TONE, Hearing.SILENCE]  # 100 ms into it; no utterance, no hello
    assert told[0][0] == 500 + 100


def test_speech_is_never_a_tone(voice: LocalSynthesizer) -> None:
    texts = ["Hello?", "Hmmmm", "Ooooh no", *DEFAULT_GREETINGS.values()]
    for text in texts:
        frames = [f for f in cut_frames(voice.synthesize(text)) if rms(f) > 200]
        assert all(tone_bin(f) is None for f in frames), text


def test_a_stream_that_opens_mid_greeting_never_takes_its_tail_for_a_hello(voice: LocalSynthesizer) -> None:
    """Twilio may open the stream after a machine's greeting began: whatever part of it is heard first,
    nothing but the beep (a tone: the verdict's to name) or the greeting's length comes before its end."""
    greeting = cut_frames(voice.synthesize(DEFAULT_GREETINGS[Callee.MACHINE]))
    beep = cut_frames(tones.tone(tones.BEEP_HZ, 0.5))
    pause = silence(300)  # the machine's pause before its beep (PhoneBehavior.beep_after_s)
    early = []
    for offset in range(0, len(greeting), 2):
        rest = greeting[offset:]
        told = hear([*rest, *pause, *beep, *silence(2000)])
        first = next(h for _, h in told if h.hearing != Hearing.SPEECH_STARTED)
        if first.hearing == Hearing.HELLO_ENDED:
            early.append(offset * 20)
    assert early == []
