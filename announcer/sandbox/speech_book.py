"""The sandbox's shared vocabulary: what each known line sounds like, so the agent can tell what it heard.

The sandbox phone registers every line before it speaks it (text -> the exact mu-law it will send); the
sandbox agent recognises a caller's turn by finding pieces of the audio it actually received inside a
registered line.  No text travels beside the audio: a line the bridge mangled or never relayed is not
recognised, exactly as a real speech recogniser would fail.  Matching is by 20 ms probes rather than one
exact search so a turn that was relayed only in part (the bridge connected late, frames lost) still
matches the line it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from announcer.audio import FRAME_BYTES
from announcer.sandbox.voice_activity import VOICED_RMS, window_rms

MIN_SCORE = 0.5  # share of the turn's voiced probes found in a line
_PREFILTER_PROBES = 6


@dataclass(frozen=True, slots=True)
class Recognition:
    text: str
    score: float  # share of voiced probes found in the line's audio (1.0: all of it)


class SpeechBook:
    """text -> mu-law audio of every line the sandbox phone has spoken (or is about to)."""

    def __init__(self) -> None:
        self._lines: dict[str, bytes] = {}

    def register(self, text: str, audio: bytes) -> None:
        self._lines[text] = audio

    def __len__(self) -> int:
        return len(self._lines)

    def __contains__(self, text: object) -> bool:
        return text in self._lines

    def snapshot(self) -> list[tuple[str, bytes]]:
        """A copy to match against off the event loop (the phone may register lines meanwhile)."""
        return list(self._lines.items())


def recognise(
    audio: bytes, lines: Sequence[tuple[str, bytes]], min_score: float = MIN_SCORE
) -> Recognition | None:
    """Which line `audio` (one caller turn) is, or None.  CPU-bound: run it in a thread."""
    rms = window_rms(audio)
    probes = [
        audio[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i, r in enumerate(rms.tolist()) if r > VOICED_RMS
    ]
    if not probes:
        return None
    step = max(1, len(probes) // _PREFILTER_PROBES)
    sample = probes[::step]
    best: tuple[float, int, str] | None = None  # (score, -length mismatch, text)
    for text, line in lines:
        if not any(p in line for p in sample):
            continue  # cheap rejection: a line this turn came from shares most of its probes
        score = sum(p in line for p in probes) / len(probes)
        key = (score, -abs(len(line) - len(audio)), text)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None or best[0] < min_score:
        return None
    return Recognition(best[2], best[0])
