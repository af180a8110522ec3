"""A call's recording: what the phone heard, and (when the phone spoke) both sides on one timeline.

`SandboxCall.heard` is playback only, gaps left out; it stays the call's record of what the service
played.  A call in which the phone said something is saved instead as the conversation as a listener
on the line would hear it: the far end's audio where it played and the phone's lines where it said them,
mixed, with the silences between turns kept (times on the phone clock, so at `speed` > 1 the WAV still
runs at real speech speed).
"""

from __future__ import annotations

import numpy as np

from announcer.audio import FRAME_BYTES, SAMPLE_RATE, lin2ulaw, ulaw2lin
from announcer.sandbox.twilio_call import SandboxCall


def conversation_audio(call: SandboxCall, speed: float) -> bytes:
    """Both sides of `call` mixed on the phone clock's timeline (mu-law); `heard` if nothing was said."""
    heard = call.heard
    pieces: list[tuple[float, bytes]] = []
    segments = call._heard_segments
    for i, (at, offset) in enumerate(segments):
        end = segments[i + 1][1] if i + 1 < len(segments) else len(heard)
        pieces.append((at, heard[offset:end]))
    for line in call.spoke:
        if line.started_at is not None and line.frames_sent:
            pieces.append((line.started_at, line.audio[: line.frames_sent * FRAME_BYTES]))
    if not call.spoke or not pieces:
        return heard
    origin = min(at for at, _ in pieces)
    placed = [(round((at - origin) * speed * SAMPLE_RATE), audio) for at, audio in pieces]
    length = max(start + len(audio) for start, audio in placed)
    mix = np.zeros(length, dtype=np.int32)
    for start, audio in placed:
        mix[start : start + len(audio)] += ulaw2lin(audio)
    return lin2ulaw(np.clip(mix, -32768, 32767).astype(np.int16))
