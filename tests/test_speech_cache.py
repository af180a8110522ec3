"""The content-addressed audio cache: keys, the disk tier, the memory LRU."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from announcer.audio import FRAME_BYTES
from announcer.speech.cache import AudioCache, encode_frames

IDENTITY = {"provider": "elevenlabs", "voice": "V1", "model": "m", "output_format": "ulaw_8000"}


def frames_of(n: int, fill: int = 1) -> list[bytes]:
    return [bytes([fill + i % 200]) * FRAME_BYTES for i in range(n)]


def test_key_is_stable_and_ignores_layout_whitespace() -> None:
    key = AudioCache.key(IDENTITY, "Hello   there.\n Bye.")
    assert key == AudioCache.key(dict(reversed(IDENTITY.items())), " Hello there. Bye. ")
    assert len(key) == 64 and int(key, 16) >= 0


@pytest.mark.parametrize(
    ("identity", "text"),
    [
        ({**IDENTITY, "voice": "V2"}, "Hello there. Bye."),
        ({**IDENTITY, "voice_settings": {"stability": 0.4}}, "Hello there. Bye."),
        (IDENTITY, "Hello there! Bye."),
        (IDENTITY, "hello there. Bye."),
    ],
)
def test_key_changes_with_anything_that_changes_the_audio(identity: dict[str, object], text: str) -> None:
    assert AudioCache.key(identity, text) != AudioCache.key(IDENTITY, "Hello there. Bye.")


def test_put_stores_whole_frames_on_disk_and_payloads_in_memory(tmp_path: Path) -> None:
    cache = AudioCache(tmp_path)
    key = AudioCache.key(IDENTITY, "x")
    frames = frames_of(3)
    cache.put(key, frames)
    path = tmp_path / key[:2] / f"{key}.ulaw"
    assert path.read_bytes() == b"".join(frames)
    assert cache.get(key) == tuple(base64.b64encode(f).decode() for f in frames)
    assert cache.contains(key)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_new_process_reads_the_disk_once(tmp_path: Path) -> None:
    key = AudioCache.key(IDENTITY, "x")
    AudioCache(tmp_path).put(key, frames_of(5))
    fresh = AudioCache(tmp_path)
    assert fresh.peek(key) is None and fresh.contains(key)
    payloads = fresh.get(key)
    assert payloads == encode_frames(frames_of(5))
    assert fresh.peek(key) is payloads  # now served from memory, already encoded


def test_misses_and_bad_input(tmp_path: Path) -> None:
    cache = AudioCache(tmp_path)
    assert cache.get("ab" * 32) is None and not cache.contains("ab" * 32)
    with pytest.raises(ValueError):
        cache.put("ab" * 32, [b"\x01" * 100])  # frames must be whole and padded
    with pytest.raises(ValueError):
        cache.put("ab" * 32, [])


def test_a_torn_file_is_discarded(tmp_path: Path) -> None:
    cache = AudioCache(tmp_path)
    key = "cd" * 32
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_bytes(b"\x01" * 250)
    assert cache.get(key) is None
    assert not cache.path(key).exists()


def test_memory_is_an_lru_bounded_in_bytes(tmp_path: Path) -> None:
    one = len(encode_frames(frames_of(1))[0])
    cache = AudioCache(tmp_path, memory_limit_bytes=10 * 300)  # room for ~10 frames of payload
    keys = [f"{i:02x}" * 32 for i in range(4)]
    for key in keys[:3]:
        cache.put(key, frames_of(3))
    assert cache.peek(keys[0]) is not None  # touch: keys[1] is now the least recently used
    cache.put(keys[3], frames_of(3))
    assert cache.peek(keys[1]) is None
    assert all(cache.peek(k) is not None for k in (keys[0], keys[2], keys[3]))
    assert 0 < cache.memory_bytes <= 10 * 300 and one == 216
    assert cache.get(keys[1]) is not None  # still on disk

    cache.put("ee" * 32, frames_of(40))  # larger than the whole memory tier: disk only
    assert cache.peek("ee" * 32) is None and cache.get("ee" * 32) is not None
    assert cache.peek(keys[3]) is not None


async def test_async_variants(tmp_path: Path) -> None:
    cache = AudioCache(tmp_path)
    key = AudioCache.key(IDENTITY, "y")
    payloads = encode_frames(frames_of(2))
    await cache.store(key, frames_of(2), payloads)
    assert cache.peek(key) is payloads  # kept as given: no second encoding
    assert await AudioCache(tmp_path).load(key) == payloads
    assert await cache.load("00" * 32) is None
