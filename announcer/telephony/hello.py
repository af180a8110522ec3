"""The session's ear while the message waits: the callee's hello, heard on the inbound frames.

Voice activity is judged on each 20 ms frame by its loudness (mu-law decoded to 16-bit PCM): a phone
line's silence and hiss stay far below `VOICED_RMS`, speech far above (measured on the sandbox voice:
pauses ~3, words 300-4,000; a real line's background is ~30-100). Time is the audio's own: frames are
counted, so a late or bunched delivery of frames does not move an utterance's end.

What ends an utterance depends on how long it is. "Hello?" is over after `SHORT_END_MS` of silence: the
message then starts about as fast as a person would answer. A longer utterance needs `LONG_END_MS`, more
than the pause after a sentence (~300 ms): "Hi, you have reached Sam. I can't..." is not a hello that
ended after its first sentence, and talking into a machine's greeting would be talking over it. An
utterance that reaches Twilio's speech threshold is a greeting in the making (`LONG_SPEECH`): the call
holds for machine detection's verdict. An utterance already under way when the stream opened (its start
unheard) is never taken for a short hello: it may be the last words of a machine's greeting.

A steady tone is not a hello: a fax's calling tone (1,100 Hz) or a machine's beep puts nearly all of a
frame's energy in one frequency (measured: tones 1.00 of it in 5 FFT bins; the sandbox voice's most tonal
vowels 0.92). `TONE_FRAMES` such frames in a row on one frequency are told as `TONE` (a fax or a beep:
machine detection names it) and never start the message.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from announcer.audio import FRAME_BYTES, rms, ulaw2lin
from announcer.telephony.callflow import CalleeHeard, Hearing

VOICED_RMS = 200.0  # 16-bit linear scale
MIN_SPEECH_MS = 60  # a click or a burst of line noise is not an utterance
SHORT_HELLO_MS = 1000  # "Hello?", "Yes?", "Sam speaking" ...
SHORT_END_MS = 200  # silence that ends a short utterance
LONG_END_MS = 600  # silence that ends a longer one (longer than a pause between sentences)
MS_PER_BYTE = 1000 / 8000  # mu-law at 8 kHz: one byte per sample
TONE_SHARE = 0.97  # of a frame's energy within +-2 bins (50 Hz each) of its peak
TONE_FRAMES = 5  # 100 ms of one steady tone
_WINDOW = np.hanning(FRAME_BYTES)


def tone_bin(frame: bytes) -> int | None:
    """The frequency bin of the steady tone `frame` is, or None when it is not one (speech, noise)."""
    if len(frame) != FRAME_BYTES:
        return None
    power = np.abs(np.fft.rfft(ulaw2lin(frame).astype(np.float64) * _WINDOW)) ** 2
    peak = int(power.argmax())
    total = float(power.sum())
    near = float(power[max(0, peak - 2) : peak + 3].sum())
    return peak if total > 0 and near >= TONE_SHARE * total else None


class HelloEar:
    """Fed each inbound frame's base64 payload while the message waits; tells the flow what it heard."""

    def __init__(self, hello_timeout_ms: int, speech_threshold_ms: int) -> None:
        self._timeout_ms = hello_timeout_ms
        self._threshold_ms = speech_threshold_ms
        self.heard_ms = 0  # audio received so far
        self._start: int | None = None  # where the utterance being heard began
        self._voiced_end = 0  # where its last voiced frame ended
        self._long = False  # LONG_SPEECH told for this utterance
        self._spoke = False  # anything was said at all (the silence timeout is for saying nothing)
        self._tone: tuple[int, int] | None = None  # (bin, frames) of the tone being heard
        self._toned = False  # TONE told
        self._joined = False  # the utterance was under way when the stream opened

    def hear(self, payload: str) -> CalleeHeard | None:
        try:
            frame = base64.b64decode(payload, validate=True)
        except binascii.Error:
            return None  # the codec reports malformed media; the ear just skips it
        start = self.heard_ms
        self.heard_ms = now = start + round(len(frame) * MS_PER_BYTE)
        loud = rms(frame) > VOICED_RMS
        pitch = tone_bin(frame) if loud else None
        if pitch is not None:
            run = self._tone[1] + 1 if self._tone is not None and abs(self._tone[0] - pitch) <= 1 else 1
            self._tone = (pitch, run)
            if run >= TONE_FRAMES and not self._toned:
                self._toned = True
                return CalleeHeard(Hearing.TONE, run * round(FRAME_BYTES * MS_PER_BYTE))
            loud = False  # a tone is no speech: neither a hello nor a greeting
        else:
            self._tone = None
        if loud:
            first = not self._spoke and self._start is None
            if self._start is None:
                self._start, self._long = start, False
                # Under way when the stream opened: its start is unknown, so it is no short hello (it may
                # be a greeting's last words); it ends only after the longer silence.
                self._joined = start < SHORT_END_MS
            self._voiced_end = now
            speech = now - self._start
            if not self._long and speech >= self._threshold_ms:
                self._long = self._spoke = True
                return CalleeHeard(Hearing.LONG_SPEECH, speech)
            return CalleeHeard(Hearing.SPEECH_STARTED) if first else None
        if self._start is None:
            if not self._spoke and now >= self._timeout_ms:
                self._spoke = True  # told once
                return CalleeHeard(Hearing.SILENCE)
            return None
        speech = self._voiced_end - self._start
        if speech < MIN_SPEECH_MS:
            self._start = None  # a click: not an utterance, and the silence goes on counting
            return None
        short = speech <= SHORT_HELLO_MS and not self._joined
        if now - self._voiced_end >= (SHORT_END_MS if short else LONG_END_MS):
            self._start, self._spoke = None, True
            return CalleeHeard(Hearing.HELLO_ENDED, speech)
        return None
