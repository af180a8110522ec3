"""What a media session sends to Twilio: its text messages, coalesced into one socket write per burst.

The playout clock releases a stream's frames in bursts (about ten 20 ms frames at a time, fifty when a
message starts). aiohttp's `send_str` writes each message with its own `write()` syscall, which at 1,000
calls was a third of the process's CPU (design.md, "The hot path"). Here a message is framed as the
websocket frame aiohttp would have written (RFC 6455: FIN, opcode text, unmasked as a server's frames are,
no compression: the media socket never negotiates it) and queued; everything queued in one turn of the
event loop goes out as one write at the end of that turn. Order is kept: every message of the session
(media, marks, `clear`, an agent's audio) goes through the same queue, and the queue is flushed before
aiohttp writes anything of its own (a close frame: `flush` is called first; its pings are not sent on
this socket, see media.py).

Flow control is aiohttp's: when the transport's buffer passes its high-water mark the protocol is paused,
and `send` waits for it to drain as aiohttp's writer does.
"""

from __future__ import annotations

import asyncio
import struct

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

_OPCODE_TEXT = 0x81  # FIN + text
_LEN16 = struct.Struct("!BBH").pack
_LEN64 = struct.Struct("!BBQ").pack


def text_frame(data: bytes) -> bytes:
    """One unmasked (server) websocket text frame carrying `data`."""
    n = len(data)
    if n < 126:
        return bytes((_OPCODE_TEXT, n)) + data
    if n < 65536:
        return _LEN16(_OPCODE_TEXT, 126, n) + data
    return _LEN64(_OPCODE_TEXT, 127, n) + data


class Sender:
    """The outbound side of one media websocket (prepared; compression off)."""

    __slots__ = ("_frames", "_loop", "_request", "_scheduled", "_writer", "_ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, writer: AbstractStreamWriter) -> None:
        """`writer` is what `ws.prepare(request)` returned: its `drain` waits for a paused transport."""
        if ws.compress:
            raise ValueError(
                "coalesced sending frames messages uncompressed: open the socket with compress=False"
            )
        self._ws = ws
        self._request = request
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._frames: list[bytes] = []
        self._scheduled = False

    def queue(self, text: str) -> bool:
        """Queue one message; it is written with the rest of this loop turn's. True when the transport is
        paused (the peer reads slower than we write): `drain` before queueing more, as aiohttp's writer
        does. Raises ConnectionResetError once the socket is closing, as aiohttp's `send_str` does."""
        transport = self._request.transport
        if transport is None or transport.is_closing() or self._ws.closed:
            raise ConnectionResetError("Cannot write to closing transport")
        self._frames.append(text_frame(text.encode()))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)
        return self._request.protocol.writing_paused

    async def drain(self) -> None:
        """Write what is queued, and wait until the transport takes more."""
        self.flush()
        await self._writer.drain()

    async def send(self, text: str) -> None:
        """`queue`, and `drain` when the transport is paused."""
        if self.queue(text):
            await self.drain()

    def flush(self) -> None:
        """Write what is queued now (before anything aiohttp writes itself, such as a close frame)."""
        self._scheduled = False
        if not self._frames:
            return
        frames, self._frames = self._frames, []
        transport = self._request.transport
        if transport is None or transport.is_closing() or self._ws.closed:
            # The socket went away (the reader sees it and ends the call), or is being closed: nothing
            # may follow the close frame.
            return
        transport.write(b"".join(frames) if len(frames) > 1 else frames[0])

    def abort(self) -> None:
        """Drop the connection at once (a peer that stopped talking: no close handshake to wait for)."""
        self._frames.clear()
        transport = self._request.transport
        if transport is not None:
            transport.close()
