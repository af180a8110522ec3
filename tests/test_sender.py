"""The media socket's coalescing sender (telephony/sender.py): frames it builds by hand are read back by
aiohttp's own client reader, intact and in order, and a burst goes out in one socket write."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from announcer.telephony import codec
from announcer.telephony.sender import Sender, text_frame

SID = "MZ" + "0" * 32
Script = Callable[[Sender, web.WebSocketResponse, list[int]], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(script: Script) -> AsyncIterator[tuple[TestServer, list[int]]]:
    """A server whose websocket runs `script` with a Sender; `writes` has the size of each write to its
    transport but aiohttp's close frames (opcode 8)."""
    writes: list[int] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        writer = await ws.prepare(request)
        transport: Any = request.transport
        write = transport.write

        def counting(data: bytes) -> None:
            if data[0] != 0x88:
                writes.append(len(data))
            write(data)

        transport.write = counting
        await script(Sender(ws, request, writer), ws, writes)
        async for _ in ws:  # until the client closes
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        yield server, writes
    finally:
        await server.close()


async def receive_all(server: TestServer, n: int) -> list[str]:
    got: list[str] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(server.make_url("/ws")) as ws:
        async with asyncio.timeout(10):
            while len(got) < n:
                msg = await ws.receive()
                if msg.type != WSMsgType.TEXT:
                    break
                got.append(msg.data)
    return got


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_header_lengths(length: int) -> None:
    frame = text_frame(b"x" * length)
    assert frame[0] == 0x81  # FIN, text, no RSV bits (uncompressed)
    assert frame[1] & 0x80 == 0  # a server's frames are not masked
    if length < 126:
        assert frame[1] == length and len(frame) == 2 + length
    elif length < 65536:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == length and len(frame) == 4 + length
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == length and len(frame) == 10 + length


async def test_every_length_boundary_read_back_by_aiohttp() -> None:
    texts = ["é" * 10, "a" * 125, "b" * 126, "c" * 127, "d" * 65535, "e" * 65536, "f" * 70000, ""]

    async def script(out: Sender, ws: web.WebSocketResponse, writes: list[int]) -> None:
        for text in texts:
            await out.send(text)

    async with serve(script) as (server, writes):
        assert await receive_all(server, len(texts)) == texts
        assert len(writes) == 1  # one loop turn, one write


async def test_a_burst_arrives_in_order_in_one_write_with_its_mark_after_the_media() -> None:
    payloads = [codec.encode_frame(bytes([i]) * 160) for i in range(10)]
    burst = [codec.media_message(SID, p) for p in payloads] + [codec.mark_message(SID, "end:1")]

    async def script(out: Sender, ws: web.WebSocketResponse, writes: list[int]) -> None:
        for message in burst:
            await out.send(message)
        assert writes == []  # nothing written until the loop turn ends
        await asyncio.sleep(0)
        assert len(writes) == 1
        await out.send(codec.mark_message(SID, "next:1"))  # a later turn: a write of its own

    async with serve(script) as (server, writes):
        got = await receive_all(server, len(burst) + 1)
        assert got == [*burst, codec.mark_message(SID, "next:1")]
        assert len(writes) == 2


async def test_what_was_queued_goes_out_before_the_close_frame() -> None:
    async def script(out: Sender, ws: web.WebSocketResponse, writes: list[int]) -> None:
        await out.send(codec.media_message(SID, codec.encode_frame(b"\xff" * 160)))
        out.flush()
        await ws.close(message=b"done")
        with pytest.raises(ConnectionResetError):
            await out.send(codec.clear_message(SID))

    async with (
        serve(script) as (server, _),
        aiohttp.ClientSession() as http,
        http.ws_connect(server.make_url("/ws")) as ws,
    ):
        first = await asyncio.wait_for(ws.receive(), 10)
        assert first.type == WSMsgType.TEXT and first.data.startswith('{"event":"media"')
        closing = await asyncio.wait_for(ws.receive(), 10)
        assert closing.type == WSMsgType.CLOSE and closing.extra == "done"


async def test_a_paused_transport_is_waited_for() -> None:
    """The peer does not read: once the transport's buffer is full, `send` waits as aiohttp's writer does
    (the buffer stays bounded), and goes on when the peer reads again."""
    big = "z" * 60_000
    sent = asyncio.Event()
    blocked = asyncio.Event()

    async def script(out: Sender, ws: web.WebSocketResponse, writes: list[int]) -> None:
        for _ in range(200):  # 12 MB: far past any socket buffer
            task = asyncio.ensure_future(out.send(big))
            done, _ = await asyncio.wait([task], timeout=2)
            if not done:
                blocked.set()
                await task
        sent.set()

    async with serve(script) as (server, _):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await asyncio.wait_for(blocked.wait(), 30)  # not reading: the sender waits
        assert not sent.is_set()
        async with asyncio.timeout(60):
            while not sent.is_set():
                await reader.read(1 << 20)  # reading again: it goes on
        writer.close()
