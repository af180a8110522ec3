"""Telephony audio: 160-byte framing, G.711 mu-law, WAV output."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from announcer import audio
from announcer.audio import FRAME_BYTES, MULAW_SILENCE, Framer


def test_constants_match_twilio_media_streams() -> None:
    assert (audio.SAMPLE_RATE, audio.FRAME_MS, FRAME_BYTES) == (8000, 20, 160)
    assert audio.SILENCE_FRAME == b"\xff" * 160


@pytest.mark.parametrize("sizes", [[1] * 500, [7, 333, 1, 159, 161, 1000], [160, 160], [2000], [159]])
def test_framer_gives_exact_frames_whatever_the_chunk_sizes(sizes: list[int]) -> None:
    stream = bytes(i % 251 for i in range(sum(sizes)))
    framer = Framer()
    frames: list[bytes] = []
    offset = 0
    for size in sizes:
        frames += framer.feed(stream[offset : offset + size])
        offset += size
    frames += framer.flush()

    assert all(len(frame) == FRAME_BYTES for frame in frames)
    assert len(frames) == -(-len(stream) // FRAME_BYTES)
    joined = b"".join(frames)
    assert joined[: len(stream)] == stream  # nothing lost, nothing reordered
    assert set(joined[len(stream) :]) <= {MULAW_SILENCE}  # the tail is padded with mu-law silence
    assert framer.flush() == []


def test_framer_on_whole_frames_pads_nothing() -> None:
    framer = Framer()
    assert framer.feed(b"\x01" * 320) == [b"\x01" * 160, b"\x01" * 160]
    assert framer.flush() == []


def test_cut_frames_and_reframe_agree() -> None:
    clip = bytes(range(256)) * 3  # 768 bytes: 4 whole frames and 128 bytes
    assert audio.cut_frames(clip) == list(audio.reframe([clip[:5], clip[5:700], clip[700:]]))
    assert audio.cut_frames(clip)[-1] == clip[640:] + b"\xff" * 32


def test_mulaw_roundtrip_keeps_the_signal() -> None:
    t = np.arange(8000) / 8000
    pcm = (np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16)
    decoded = audio.ulaw2lin(audio.lin2ulaw(pcm))
    # G.711 is logarithmic: the error stays within a few percent of the amplitude.
    assert np.max(np.abs(decoded.astype(np.int32) - pcm)) < 12000 * 0.04
    assert audio.rms(audio.lin2ulaw(pcm)) == pytest.approx(12000 / np.sqrt(2), rel=0.02)


def test_mulaw_known_codes() -> None:
    assert audio.lin2ulaw(np.zeros(4, np.int16)) == b"\xff" * 4  # silence is 0xFF
    assert audio.lin2ulaw(np.array([32767, -32768], np.int16)) == b"\x80\x00"
    assert audio.rms(b"\xff" * 160) == 0.0
    assert audio.rms(b"") == 0.0
    # Every code decodes and re-encodes to itself (except 0x7F, the second zero, which maps to 0xFF).
    codes = bytes(c for c in range(256) if c != 0x7F)
    assert audio.lin2ulaw(audio.ulaw2lin(codes)) == codes


def test_write_wav_is_readable(tmp_path: Path) -> None:
    clip = audio.lin2ulaw((np.sin(np.arange(4000) / 8) * 8000).astype(np.int16))
    path = tmp_path / "sub" / "clip.wav"
    audio.write_wav(path, clip)
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 8000, 4000)
        pcm = np.frombuffer(w.readframes(4000), "<i2")
    assert np.array_equal(pcm, audio.ulaw2lin(clip))
    assert not list(tmp_path.glob("sub/*.tmp"))
    assert audio.duration_s(clip) == 0.5
