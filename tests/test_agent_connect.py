"""Reaching the agent (announcer/agent/connect.py): many conversations at once, and a handshake that hangs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from announcer.agent.connect import AgentConnector, AgentUnavailable

KEY = "test-key"
AGENT = "agent-1"


@dataclass
class Agents:
    base_url: str
    stall: asyncio.Event  # set: the websocket handshake hangs


@pytest.fixture
async def agents() -> AsyncIterator[Agents]:
    """A minimal agents endpoint: signed URL, and websockets that stay open until the client closes."""
    stall = asyncio.Event()

    async def signed_url(request: web.Request) -> web.Response:
        assert request.headers.get("xi-api-key") == KEY
        return web.json_response(
            {"signed_url": f"ws://{request.host}/v1/convai/conversation?agent_id={AGENT}"}
        )

    async def conversation(request: web.Request) -> web.StreamResponse:
        if stall.is_set():
            await asyncio.sleep(30)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/v1/convai/conversation/get-signed-url", signed_url)
    app.router.add_get("/v1/convai/conversation", conversation)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Agents(f"http://127.0.0.1:{port}", stall)
    finally:
        await runner.cleanup()


async def test_more_than_a_hundred_conversations_at_once(agents: Agents) -> None:
    # aiohttp's default pool holds 100 connections: the 101st agent used to wait for one to close.
    connector = AgentConnector(KEY, agents.base_url, timeout_s=5.0)
    try:
        sockets = await asyncio.wait_for(asyncio.gather(*(connector.connect(AGENT) for _ in range(120))), 10)
        assert all(not ws.closed for ws in sockets)
        await asyncio.gather(*(ws.close() for ws in sockets))
    finally:
        await connector.aclose()


async def test_a_hanging_handshake_gives_up_within_the_deadline(agents: Agents) -> None:
    agents.stall.set()
    connector = AgentConnector(KEY, agents.base_url, timeout_s=0.3)
    try:
        with pytest.raises(AgentUnavailable, match="did not open in time"):
            await asyncio.wait_for(connector.connect(AGENT), 5)
    finally:
        await connector.aclose()
