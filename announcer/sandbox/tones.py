"""What a callee's 20 ms frame sounds like to a detector, and the tones machines make: pure, no I/O.

Each frame is judged by its loudness (the same threshold as `voice_activity`) and by a Goertzel filter
at the three frequencies answering machine detection listens for: the voicemail beep (1 kHz) and the
fax tones, CNG (1100 Hz, sent by a calling fax) and CED (2100 Hz, answered by a called one; ITU-T T.30).
At 8 kHz a 160-sample frame has 50 Hz bins, so all three fall exactly on a bin: a pure tone puts all its
energy in one bin (share ~1 after mu-law), while speech spreads it over many (the sandbox voice's frames
stay below 0.5 at these bins, measured in tests/test_sandbox_callees.py).
"""

from __future__ import annotations

import functools
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from announcer.audio import FRAME_BYTES, SAMPLE_RATE, SILENCE_FRAME, cut_frames, lin2ulaw, ulaw2lin
from announcer.sandbox.voice_activity import VOICED_RMS

BEEP_HZ = 1000
CNG_HZ = 1100
CED_HZ = 2100
# CNG cadence (T.30): 0.5 s of tone, 3 s of silence, repeated while the fax waits
CNG_ON_S = 0.5
CNG_OFF_S = 3.0
TONE_SHARE = 0.8  # share of a frame's energy in one bin for it to count as that tone
TONE_AMPLITUDE = 8000  # 16-bit linear: about -12 dBFS, a loud but unclipped beep

_FREQS = (BEEP_HZ, CNG_HZ, CED_HZ)
_n = np.arange(FRAME_BYTES)
_COS = np.array([np.cos(2 * np.pi * f * _n / SAMPLE_RATE) for f in _FREQS], dtype=np.float64)
_SIN = np.array([np.sin(2 * np.pi * f * _n / SAMPLE_RATE) for f in _FREQS], dtype=np.float64)
# mu-law byte -> linear sample: one table look-up per frame instead of ulaw2lin's arithmetic
_LINEAR = ulaw2lin(bytes(range(256))).astype(np.float64)


class Sound(StrEnum):
    """What one 20 ms frame of a callee's audio is."""

    SILENCE = "silence"
    VOICE = "voice"  # loud, and no single tone: speech (or noise), as an energy detector hears it
    BEEP = "beep"  # 1 kHz
    FAX = "fax"  # CNG or CED


def classify(frame: bytes) -> Sound:
    """Judge one 160-byte mu-law frame (cheap: mu-law silence returns at once)."""
    if frame == SILENCE_FRAME:
        return Sound.SILENCE
    x = _LINEAR[np.frombuffer(frame, dtype=np.uint8)]
    energy = float(x @ x)
    if energy <= VOICED_RMS * VOICED_RMS * len(x):
        return Sound.SILENCE
    power = (_COS @ x) ** 2 + (_SIN @ x) ** 2
    # a pure tone at a bin frequency has |X|^2 = (N A / 2)^2 and energy N A^2 / 2: share = 1
    share = 2 * power / (len(x) * energy)
    best = int(np.argmax(share))
    if share[best] < TONE_SHARE:
        return Sound.VOICE
    return Sound.BEEP if _FREQS[best] == BEEP_HZ else Sound.FAX


def _tone_pcm(hz: float, seconds: float) -> npt.NDArray[np.int16]:
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    return (TONE_AMPLITUDE * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@functools.lru_cache(maxsize=16)
def tone(hz: float, seconds: float) -> bytes:
    """A pure tone as mu-law, in whole frames (the last padded with silence)."""
    return b"".join(cut_frames(lin2ulaw(_tone_pcm(hz, seconds))))


@functools.lru_cache(maxsize=4)
def cng_cycle(on_s: float = CNG_ON_S, off_s: float = CNG_OFF_S) -> bytes:
    """One CNG cycle: the 1100 Hz tone, then silence, in whole frames."""
    silence = SILENCE_FRAME * round(off_s * 1000 / 20)
    return tone(CNG_HZ, on_s) + silence
