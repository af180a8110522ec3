"""The sandbox phone talking with the sandbox agent, through a minimal bridge in the service's role.

The bridge here is the smallest thing that relays both ways (Twilio media -> user_audio_chunk, agent
audio -> 160-byte media frames, interruption -> clear, ping -> pong, agent close -> stream closed): it is
the test's stand-in for `announcer/agent`, to show that the two sandboxes hold a real conversation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from twilio.twiml.voice_response import Connect, VoiceResponse

from announcer.audio import Framer, lin2ulaw
from announcer.sandbox import (
    AgentBehavior,
    BargeIn,
    CloseReason,
    PhoneBehavior,
    SandboxConvAI,
    SandboxElevenLabs,
    SandboxTwilio,
    SpeechBook,
)
from announcer.speech.local import LocalSynthesizer

T = 30.0
SPEED = 10.0  # sandbox seconds per real second: the phone plays and the agent paces at this speed
API_KEY = "el-key"
AGENT = "public-agent"
VOICE = LocalSynthesizer()


def ulaw_of(wav_frames: bytes) -> bytes:
    """The WAV's samples back in mu-law, as the phone sent them (G.711 round-trips exactly)."""
    return lin2ulaw(np.frombuffer(wav_frames, dtype="<i2"))


class MiniBridge:
    """Voice webhook + media websocket: every call is bridged to the sandbox agent."""

    def __init__(self, agent_ws_url: str) -> None:
        self.agent_ws_url = agent_ws_url
        self.ws_url = ""
        self.base = ""
        self.errors: list[BaseException] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_post("/twilio/status", self.status)
        app.router.add_get("/twilio/media", self.media)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/twilio/media"

    async def close(self) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def voice(self, _request: web.Request) -> web.Response:
        response = VoiceResponse()
        connect = Connect()
        connect.stream(url=self.ws_url)
        response.append(connect)
        response.hangup()
        return web.Response(text=response.to_xml(), content_type="text/xml")

    async def status(self, _request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        assert self._session is not None
        twilio = web.WebSocketResponse()
        await twilio.prepare(request)
        agent = await self._session.ws_connect(self.agent_ws_url)
        await agent.send_str(json.dumps({"type": "conversation_initiation_client_data"}))
        stream_sid: list[str] = []
        played_out = asyncio.Event()
        relay = asyncio.create_task(self._from_agent(agent, twilio, stream_sid, played_out))
        try:
            async for msg in twilio:
                event = json.loads(msg.data)
                if event["event"] == "start":
                    stream_sid.append(event["streamSid"])
                elif event["event"] == "media" and not agent.closed:
                    with contextlib.suppress(ConnectionError):  # the agent may be ending the conversation
                        await agent.send_str(json.dumps({"user_audio_chunk": event["media"]["payload"]}))
                elif event["event"] == "mark":
                    played_out.set()
                elif event["event"] == "stop":
                    break
        finally:
            await agent.close()
            await asyncio.wait({relay})
            if not relay.cancelled() and relay.exception() is not None:
                self.errors.append(relay.exception())  # type: ignore[arg-type]
        return twilio

    async def _from_agent(
        self,
        agent: aiohttp.ClientWebSocketResponse,
        twilio: web.WebSocketResponse,
        sid: list[str],
        played_out: asyncio.Event,
    ) -> None:
        framer = Framer()

        async def to_twilio(msg: dict[str, Any]) -> None:
            if not twilio.closed:
                await twilio.send_str(json.dumps({"streamSid": sid[0], **msg}))

        async for msg in agent:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            kind = event["type"]
            if kind == "audio":
                for frame in framer.feed(base64.b64decode(event["audio_event"]["audio_base_64"])):
                    await to_twilio(
                        {"event": "media", "media": {"payload": base64.b64encode(frame).decode()}}
                    )
            elif kind == "interruption":
                framer = Framer()
                await to_twilio({"event": "clear"})
            elif kind == "ping":
                await agent.send_str(
                    json.dumps({"type": "pong", "event_id": event["ping_event"]["event_id"]})
                )
        for frame in framer.flush():
            await to_twilio({"event": "media", "media": {"payload": base64.b64encode(frame).decode()}})
        await to_twilio({"event": "mark", "mark": {"name": "agent-done"}})
        async with asyncio.timeout(T):  # let the goodbye play out before hanging up
            await played_out.wait()
        await twilio.close()  # the agent ended the conversation: the call moves on to <Hangup/>


class World:
    def __init__(self, twilio: SandboxTwilio, agent: SandboxConvAI, bridge: MiniBridge) -> None:
        self.twilio, self.agent, self.bridge = twilio, agent, bridge


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    book = SpeechBook()
    agent = SandboxConvAI(
        api_key=API_KEY,
        synthesize=VOICE.synthesize,
        speech_book=book,
        public_agent_ids=(AGENT,),
        speed=SPEED,
    )
    agent.behavior = AgentBehavior(ping_interval_s=0.1, first_message="Hello, this is your reminder.")
    tts = SandboxElevenLabs(api_key=API_KEY, synthesize=VOICE.synthesize, extensions=[agent])
    base = await tts.start()
    bridge = MiniBridge(base.replace("http", "ws", 1) + f"/v1/convai/conversation?agent_id={AGENT}")
    await bridge.start()
    twilio = SandboxTwilio(
        account_sid="AC" + "b2" * 16,
        auth_token="token",
        phone_number="+15550001000",
        voice_url=bridge.base + "/twilio/voice",
        status_callback_url=bridge.base + "/twilio/status",
        recordings_dir=tmp_path / "recordings",
        say_synthesize=VOICE.synthesize,
        speed=SPEED,
        speech_book=book,
    )
    await twilio.start()
    yield World(twilio, agent, bridge)
    await twilio.close()
    await bridge.close()
    await tts.close()
    assert bridge.errors == []


async def test_a_scripted_caller_talks_with_the_agent_until_goodbye(world: World) -> None:
    lines = ("I would like to confirm.", "Thank you, goodbye.")
    call = await world.twilio.call_in("+15550002000", behavior=PhoneBehavior(lines=lines))
    conversation = await world.agent.wait_for_conversation(T)
    assert await conversation.wait_closed(T) is CloseReason.SERVER
    await call.wait_ended(T)
    assert conversation.user_transcripts == list(lines)
    assert conversation.agent_responses == [
        "Hello, this is your reminder.",
        "You said: I would like to confirm.",
        world.agent.behavior.goodbye,
    ]
    assert (
        conversation.interruptions == [] and conversation.pongs and all(p.matched for p in conversation.pongs)
    )
    assert [s.text for s in call.spoke] == list(lines)
    assert call.status == "completed" and call.marks_echoed == ["agent-done"]
    # the phone heard every word the agent said ...
    assert call.heard == bytes(conversation.agent_audio) + b"\xff" * (
        len(call.heard) - len(conversation.agent_audio)
    )
    # ... and the call's WAV holds both sides on one timeline, the silences between turns included
    assert call.wav_path is not None
    with wave.open(str(call.wav_path)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (1, 8000)
        recorded = ulaw_of(wav.readframes(wav.getnframes()))
    said = sum(len(line.audio) for line in call.spoke)
    assert len(recorded) > len(call.heard) + said  # gaps kept: nobody talked over anybody
    middle = call.spoke[0].audio[1600:3200]
    assert middle in recorded  # the caller's own words, where they were said


async def test_a_caller_who_barges_in_interrupts_the_agent(world: World) -> None:
    world.agent.behavior = AgentBehavior(
        ping_interval_s=None,
        send_pace=1.0,  # audio leaves as fast as it plays, so the barge-in cuts what is still unsent
        first_message=(
            "Hello, this is a long message about your appointment next week at the clinic, "
            "with the address, the time, and what to bring along on the day."
        ),
    )
    behavior = PhoneBehavior(lines=("Goodbye.",), barge_in=BargeIn("Wait, stop.", turn=1, after_s=0.5))
    call = await world.twilio.call_in("+15550002000", behavior=behavior)
    conversation = await world.agent.wait_for_conversation(T)
    assert await conversation.wait_closed(T) is CloseReason.SERVER
    await call.wait_ended(T)
    assert [i.event_id for i in conversation.interruptions] == [conversation.agent_turns[0].event_id]
    first = conversation.agent_turns[0]
    assert first.interrupted and first.sent < first.total
    original, corrected = conversation.corrections[0]
    assert original.startswith(corrected) and corrected != original
    assert conversation.user_transcripts == ["Wait, stop.", "Goodbye."]
    assert [s.text for s in call.spoke] == ["Wait, stop.", "Goodbye."]
