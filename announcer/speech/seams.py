"""Where two sentences synthesized one by one meet: the pause one synthesis would have made there.

The speaker requests a message sentence by sentence (speaker.py), and engines cut each clip to taste:
espeak-ng ends a clip within 5 ms of its last sound and starts the next within 10 ms, so the
sentences of a message ran together with ~14 ms between them where the same text spoken in one request
pauses ~300 ms; other engines pad every clip with silence of their own (some ~800 ms). So at each join
the quiet on both sides is cut away and the engine's own pause after such a sentence goes in its place,
measured once per engine and voice by `pauses_between` on a probe (pauses.py).

Pure: no I/O. Quiet is judged in 5 ms windows by loudness; only near-silence counts, so soft word endings
are never cut.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from announcer.audio import MULAW_SILENCE, SAMPLE_RATE, ulaw2lin

WINDOW_BYTES = 40  # 5 ms of 8 kHz mu-law: fine enough to cut at, long enough to judge loudness
# RMS, 16-bit linear. Measured on espeak-ng: silence 1-6, the softest stretches inside words 90-150.
QUIET_RMS = 64.0


# The square of each mu-law byte's linear value: a window's energy is a lookup and a mean (this runs on
# every chunk of every message synthesized).
_SQUARES = ulaw2lin(bytes(range(256))).astype(np.float64) ** 2


def _energy(audio: bytes) -> npt.NDArray[np.float64]:
    """Mean square of each whole window of `audio` (a trailing partial window is left out)."""
    whole = len(audio) - len(audio) % WINDOW_BYTES
    squares = _SQUARES[np.frombuffer(audio, np.uint8, whole)]
    energy: npt.NDArray[np.float64] = squares.reshape(-1, WINDOW_BYTES).mean(axis=1)
    return energy


def window_rms(audio: bytes) -> npt.NDArray[np.float64]:
    """RMS of each whole window of `audio` (a trailing partial window is left out)."""
    rms: npt.NDArray[np.float64] = np.sqrt(_energy(audio))
    return rms


# The same, for one window in plain Python: numpy costs more per call than 40 lookups.
_SQUARE_OF: list[float] = _SQUARES.tolist()
_LOUD_SUM = QUIET_RMS * QUIET_RMS * WINDOW_BYTES


def _loud_window(audio: bytes, start: int) -> bool:
    """Whether the window of `audio` at `start` is not quiet."""
    return sum(map(_SQUARE_OF.__getitem__, audio[start : start + WINDOW_BYTES])) > _LOUD_SUM


def _loud(audio: bytes) -> npt.NDArray[np.intp]:
    """Indices of the windows of `audio` that are not quiet."""
    return np.flatnonzero(_energy(audio) > QUIET_RMS * QUIET_RMS)


def pauses_between(audio: bytes, n: int) -> list[float] | None:
    """Seconds of the `n` longest quiet stretches between sounds of `audio`, in the order they come: in
    a clip of n + 1 sentences without commas, the pauses between them. None when it has fewer."""
    loud = _loud(audio)
    gaps = np.diff(loud) - 1  # quiet windows between one loud window and the next
    longest = np.sort(np.argsort(gaps, kind="stable")[::-1][:n])
    if len(longest) < n or (n and gaps[longest].min() <= 0):
        return None
    return [int(gaps[i]) * WINDOW_BYTES / SAMPLE_RATE for i in longest]


def silence(seconds: float) -> bytes:
    return bytes([MULAW_SILENCE]) * round(seconds * SAMPLE_RATE)


class Seams:
    """Fed the audio of one sentence after another, in chunks of any size; hands back what to play.

    Within a sentence, audio passes at once up to its latest sound; the quiet after it is held until
    more sound follows (a pause inside the sentence, played as it was) or the sentence ends. `join`
    drops the held quiet and returns the pause to play before the next sentence, whose leading quiet is
    dropped in turn. `end` returns the held quiet as it was: the message's own ending, or where a
    sentence broke off. The message's first sentence keeps its leading quiet (nothing waits for it).
    """

    __slots__ = ("_held", "_joined", "_sounded")

    def __init__(self) -> None:
        self._held = b""  # quiet (and a partial window) after the current sentence's latest sound
        self._sounded = False  # the current sentence has made a sound
        self._joined = False  # the current sentence follows a `join`: its leading quiet goes

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        whole = len(data) - len(data) % WINDOW_BYTES
        if whole and (self._sounded or not self._joined) and _loud_window(data, whole - WINDOW_BYTES):
            # Mid-sentence, the usual case: the chunk ends in sound, so all of it plays (the partial
            # window after waits to be judged whole).
            self._held = data[whole:]
            self._sounded = True
            return data[:whole]
        loud = _loud(data)
        if len(loud) == 0:
            if self._sounded:
                self._held = data  # quiet after a sound: a pause, or the sentence's tail
                return b""
            # Quiet before the sentence's first sound: a joined sentence's goes, the message's opening
            # quiet plays as it comes. A partial window waits to be judged whole.
            whole = len(data) - len(data) % WINDOW_BYTES
            self._held = data[whole:]
            return b"" if self._joined else data[:whole]
        start = 0 if self._sounded or not self._joined else int(loud[0]) * WINDOW_BYTES
        cut = (int(loud[-1]) + 1) * WINDOW_BYTES
        self._held = data[cut:]
        self._sounded = True
        return data[start:cut]

    def join(self, pause_s: float) -> bytes:
        """The current sentence has ended and another follows: the pause to play between them."""
        self._held = b""
        self._sounded = False
        self._joined = True
        return silence(pause_s)

    def end(self) -> bytes:
        """The current sentence has ended (or broken off) with no join: its held quiet, as it was. A
        sentence fed after this starts as the message did, its leading quiet kept."""
        held, self._held = self._held, b""
        self._sounded = False
        self._joined = False
        return held
