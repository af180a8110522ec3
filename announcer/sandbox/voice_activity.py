"""Voice activity on received mu-law, as the sandbox agent hears its caller: pure, no I/O.

The audio is judged in 20 ms windows by their loudness: mu-law silence (0xFF, and 0x7F, which also
decodes to 0) and the near-silence around espeak's words stay far below `VOICED_RMS`, speech far above
(sandbox voice, measured: pauses ~3, words 300-4000).  A turn ends after `silence_s` of unvoiced audio;
the sandbox voice's longest pause inside one line (after a full stop) is ~320 ms, below the 400 ms
default, so one spoken line is one turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from announcer.audio import FRAME_BYTES, FRAME_MS, ulaw2lin

VOICED_RMS = 200.0  # 16-bit linear scale


def window_rms(audio: bytes) -> npt.NDArray[np.float32]:
    """RMS of each whole 20 ms window of `audio` (a trailing partial window is ignored)."""
    whole = len(audio) - len(audio) % FRAME_BYTES
    if whole == 0:
        return np.zeros(0, dtype=np.float32)
    pcm = ulaw2lin(audio[:whole]).astype(np.float32).reshape(-1, FRAME_BYTES)
    rms: npt.NDArray[np.float32] = np.sqrt(np.mean(pcm * pcm, axis=1))
    return rms


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    offset: int  # byte offset in the received stream of the first voiced window


@dataclass(frozen=True, slots=True)
class TurnEnded:
    start: int  # byte offsets in the received stream: first voiced window ..
    end: int  # .. end of the last voiced window (exclusive)


TurnEvent = SpeechStarted | TurnEnded


class TurnDetector:
    """Fed the received audio in pieces of any size; reports where speech starts and turns end."""

    def __init__(self, silence_s: float = 0.4, threshold: float = VOICED_RMS) -> None:
        self._end_windows = max(1, round(silence_s * 1000 / FRAME_MS))
        self._threshold = threshold
        self._pending = b""
        self._offset = 0  # stream offset of the start of `_pending`
        self._start: int | None = None  # set while in a turn
        self._last_voiced_end = 0
        self._quiet = 0

    @property
    def in_turn(self) -> bool:
        return self._start is not None

    def feed(self, audio: bytes) -> list[TurnEvent]:
        data = self._pending + audio if self._pending else audio
        whole = len(data) - len(data) % FRAME_BYTES
        self._pending = data[whole:]
        events: list[TurnEvent] = []
        offset = self._offset
        for rms in window_rms(data[:whole]).tolist():
            if rms > self._threshold:
                if self._start is None:
                    self._start = offset
                    events.append(SpeechStarted(offset))
                self._quiet = 0
                self._last_voiced_end = offset + FRAME_BYTES
            elif self._start is not None:
                self._quiet += 1
                if self._quiet >= self._end_windows:
                    events.append(TurnEnded(self._start, self._last_voiced_end))
                    self._start = None
                    self._quiet = 0
            offset += FRAME_BYTES
        self._offset = offset
        return events
