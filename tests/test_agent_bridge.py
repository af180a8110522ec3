"""The bridge's deadlines, on a bare agent websocket (the sandbox flows are in test_agent.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from announcer.agent import bridge as bridge_module
from announcer.agent.bridge import AgentBridge, AgentPlan
from announcer.telephony.handoff import After, AgentEnd, AgentOffer, Handoff

METADATA = {
    "type": "conversation_initiation_metadata",
    "conversation_initiation_metadata_event": {
        "conversation_id": "conv_1",
        "agent_output_audio_format": "ulaw_8000",
        "user_input_audio_format": "ulaw_8000",
    },
}


async def test_a_slow_on_connected_is_not_taken_for_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # With 200 calls starting, recording the handover outlasted the metadata deadline, which then ended
    # the conversation as "reached the time limit" (benchmarks/agent_bridge.py).
    monkeypatch.setattr(bridge_module, "METADATA_TIMEOUT_S", 0.2)

    async def agent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the initiation data
        await ws.send_str(json.dumps(METADATA))
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", agent)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ends: list[AgentEnd] = []

    async with aiohttp.ClientSession() as http:

        class Connector:
            async def connect(self, agent_id: str) -> aiohttp.ClientWebSocketResponse:
                return await http.ws_connect(f"http://127.0.0.1:{port}/ws")

        async def slow_connected(conversation_id: str) -> None:
            await asyncio.sleep(0.5)  # longer than the metadata deadline

        async def ended(end: AgentEnd) -> None:
            ends.append(end)

        async def send(message: str) -> None:
            pass

        async def plan() -> AgentPlan:
            return AgentPlan()

        handoff = Handoff(
            call_id=1,
            call_kind="announcement",
            heard_text="",
            offer=AgentOffer(After.START),
            stream_sid="MZ" + "0" * 32,
            send=send,
            record=lambda *args, **kwargs: None,
            on_connected=slow_connected,
            on_end=ended,
        )
        transcript: Any = object()  # no turns in this conversation
        bridge = AgentBridge(Connector(), "agent", handoff, plan, transcript, max_s=60)  # type: ignore[arg-type]
        bridge.start()
        await asyncio.sleep(1.0)
        assert ends == []
        assert not bridge.closed.is_set()
        await bridge.close("the test is over")
        assert ends == []
    await runner.cleanup()
