"""Content-addressed audio cache, stored already cut into 160-byte frames (design.md, "Audio cache").

The key is sha256 over the engine's identity (provider, voice, model, output format, voice settings) and
the normalised text, so changing any of them never replays stale audio, and nothing needs invalidating.

Two tiers:
- disk, `directory/ab/<key>.ulaw`: the padded frames concatenated (a multiple of 160 bytes), written to
  a temporary file and renamed, so a crash or a concurrent writer never leaves a torn file;
- memory, an LRU bounded in bytes of base64 payload tuples: a cached announcement goes to the media
  socket with no encoding at all (design.md, "The hot path").

The synchronous methods do small blocking file I/O and are safe from any thread; on the event loop use
`load` and `store`, which keep the memory tier on the loop and push file I/O to a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

from announcer.audio import FRAME_BYTES
from announcer.files import write_private

log = logging.getLogger(__name__)

_SPACES = re.compile(r"\s+")
# What one cached frame costs in memory: the base64 str object plus its slot in the tuple.
_PAYLOAD_COST = sys.getsizeof(base64.b64encode(bytes(FRAME_BYTES)).decode("ascii")) + 8

Payloads = tuple[str, ...]


def normalise_text(text: str) -> str:
    """Whitespace collapsed and stripped: a re-wrapped template must hit the same entry."""
    return _SPACES.sub(" ", text).strip()


def encode_frames(frames: Sequence[bytes]) -> Payloads:
    """Base64 payloads of 160-byte frames, as Twilio Media Streams `media.payload` wants them."""
    b64 = base64.b64encode
    return tuple(b64(frame).decode("ascii") for frame in frames)


class AudioCache:
    def __init__(self, directory: Path, memory_limit_bytes: int = 64 * 2**20) -> None:
        self.directory = directory
        self.memory_limit_bytes = memory_limit_bytes
        self._memory: OrderedDict[str, Payloads] = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()  # the memory tier is shared with worker threads

    @staticmethod
    def key(identity: Mapping[str, object], text: str) -> str:
        """sha256 hex over canonical JSON (sorted keys, no spaces) of the identity and normalised text.

        Raises TypeError for an identity that is not plain JSON (a key must never depend on a repr).
        """
        canonical = json.dumps(
            {"identity": identity, "text": normalise_text(text)},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.ulaw"

    # --- memory tier ------------------------------------------------------------------------------

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    def peek(self, key: str) -> Payloads | None:
        """The memory tier only: never touches the disk, so it is safe on the event loop."""
        with self._lock:
            payloads = self._memory.get(key)
            if payloads is not None:
                self._memory.move_to_end(key)
            return payloads

    def _remember(self, key: str, payloads: Payloads) -> None:
        cost = len(payloads) * _PAYLOAD_COST
        if cost > self.memory_limit_bytes:
            return  # larger than the whole tier: serve it from disk rather than flush everything else
        with self._lock:
            old = self._memory.pop(key, None)
            if old is not None:
                self._memory_bytes -= len(old) * _PAYLOAD_COST
            self._memory[key] = payloads
            self._memory_bytes += cost
            while self._memory_bytes > self.memory_limit_bytes:
                _, evicted = self._memory.popitem(last=False)
                self._memory_bytes -= len(evicted) * _PAYLOAD_COST

    # --- disk tier --------------------------------------------------------------------------------

    def _read(self, key: str) -> Payloads | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("audio cache: cannot read %s: %s", path, err)
            return None
        if not data or len(data) % FRAME_BYTES:
            # Only a bug or outside tampering leaves this (writes are atomic): drop it, synthesize again.
            log.warning("audio cache: %s is not whole frames (%d bytes); discarded", path, len(data))
            path.unlink(missing_ok=True)
            return None
        return encode_frames([data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)])

    def _write(self, key: str, frames: Sequence[bytes]) -> None:
        # A temporary name of its own per writer (two processes storing the same key never share one),
        # then a rename; mode 0600: what was said is the data directory owner's only.
        write_private(self.path(key), b"".join(frames))

    # --- the API ----------------------------------------------------------------------------------

    def get(self, key: str) -> Payloads | None:
        """Payloads from memory, else from disk (encoded once, then kept in memory), else None."""
        payloads = self.peek(key)
        if payloads is None:
            payloads = self._read(key)
            if payloads is not None:
                self._remember(key, payloads)
        return payloads

    def put(self, key: str, frames: Sequence[bytes], payloads: Payloads | None = None) -> None:
        """Store whole 160-byte frames (the last one already padded). `payloads`, when the caller has
        them, spares encoding the frames again."""
        _check_frames(frames)
        self._write(key, frames)
        self._remember(key, payloads if payloads is not None else encode_frames(frames))

    def contains(self, key: str) -> bool:
        return self.peek(key) is not None or self.path(key).is_file()

    async def load(self, key: str) -> Payloads | None:
        """`get` for the event loop: a memory hit costs no thread hop."""
        payloads = self.peek(key)
        # A miss (every new text) is answered by one stat, microseconds on the local data dir, instead
        # of a worker-thread round trip that would sit in front of the TTS request.
        if payloads is None and os.path.isfile(self.path(key)):  # noqa: ASYNC240 (one stat, see above)
            payloads = await asyncio.to_thread(self._read, key)
            if payloads is not None:
                self._remember(key, payloads)
        return payloads

    async def store(self, key: str, frames: Sequence[bytes], payloads: Payloads | None = None) -> None:
        """`put` for the event loop: in memory at once (the next caller hits), on disk from a thread."""
        _check_frames(frames)
        self._remember(key, payloads if payloads is not None else encode_frames(frames))
        await asyncio.to_thread(self._write, key, frames)


def _check_frames(frames: Sequence[bytes]) -> None:
    if not frames or any(len(frame) != FRAME_BYTES for frame in frames):
        raise ValueError(f"audio cache stores whole {FRAME_BYTES}-byte frames only")
