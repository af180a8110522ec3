"""Telephony audio, shared by the service and the sandbox: G.711 mu-law at 8 kHz in 20 ms frames.

Pure functions only (no I/O but `write_wav`). Twilio Media Streams carry `audio/x-mulaw`, 8000 Hz, mono;
a frame of 20 ms is 160 bytes and mu-law silence is 0xFF (protocols.md, "Media Streams websocket").
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from announcer.files import write_private

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # 160 bytes of mu-law = 20 ms
MULAW_SILENCE = 0xFF
SILENCE_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES

_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def lin2ulaw(pcm16: npt.NDArray[np.int16]) -> bytes:
    """Encode signed 16-bit PCM as G.711 mu-law, bit-exact with CPython's audioop.lin2ulaw.

    audioop works on 14 bits and maps the out-of-range top segment to 0x7F; this does the same
    (checked over all 65536 inputs, sdk-notes.md section 5), so it outlives audioop's removal in 3.13.
    """
    v = pcm16.astype(np.int32) >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), 8159) + 0x21
    seg = np.searchsorted(_SEG_END, v)
    u = np.where(seg >= 8, 0x7F, (seg << 4) | ((v >> np.minimum(seg + 1, 8)) & 0x0F))
    return (u ^ mask).astype(np.uint8).tobytes()


def ulaw2lin(ulaw: bytes) -> npt.NDArray[np.int16]:
    """Decode G.711 mu-law bytes to signed 16-bit PCM."""
    u = ~np.frombuffer(ulaw, np.uint8).astype(np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def pad_frame(chunk: bytes) -> bytes:
    """Pad a short final chunk with mu-law silence to a whole frame."""
    return chunk + bytes([MULAW_SILENCE]) * (FRAME_BYTES - len(chunk)) if len(chunk) < FRAME_BYTES else chunk


def cut_frames(audio: bytes) -> list[bytes]:
    """Cut mu-law audio into 160-byte frames, the last one padded with silence."""
    return [pad_frame(audio[i : i + FRAME_BYTES]) for i in range(0, len(audio), FRAME_BYTES)]


class Framer:
    """Re-frames a stream of arbitrarily sized mu-law chunks into exact 160-byte frames.

    `feed` returns the whole frames available so far; `flush` returns the padded remainder (or nothing).
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    @property
    def pending(self) -> bool:
        """Whether part of a frame waits for more audio (or for `flush`)."""
        return bool(self._pending)

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk if self._pending else chunk
        whole = len(data) - len(data) % FRAME_BYTES
        self._pending = data[whole:]
        return [data[i : i + FRAME_BYTES] for i in range(0, whole, FRAME_BYTES)]

    def flush(self) -> list[bytes]:
        rest, self._pending = self._pending, b""
        return [pad_frame(rest)] if rest else []


def reframe(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Synchronous convenience over `Framer` for whole clips."""
    framer = Framer()
    for chunk in chunks:
        yield from framer.feed(chunk)
    yield from framer.flush()


def duration_s(ulaw: bytes) -> float:
    return len(ulaw) / SAMPLE_RATE


def wav_bytes(ulaw: bytes) -> bytes:
    """8 kHz mu-law audio as a 16-bit PCM WAV file any player opens."""
    pcm = ulaw2lin(ulaw).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
    data = b"data" + struct.pack("<I", len(pcm))
    return header + fmt + data + pcm


def write_wav(path: Path, ulaw: bytes) -> None:
    write_private(path, wav_bytes(ulaw))  # a recording is what a person heard: its owner's only


def rms(ulaw: bytes) -> float:
    """Root-mean-square level of mu-law audio in 16-bit PCM units (silence is 0)."""
    if not ulaw:
        return 0.0
    x = ulaw2lin(ulaw).astype(np.float64)
    return float(np.sqrt(np.mean(x * x)))
