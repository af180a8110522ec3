"""The sandbox ElevenLabs agent on its own: the real SDK for the signed URL, and an aiohttp websocket
client in the service's role (the bridge) for the conversation protocol."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from elevenlabs.client import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError

from announcer.app import SANDBOX_AGENT_ID
from announcer.audio import FRAME_BYTES, SILENCE_FRAME
from announcer.sandbox.convai import DEFAULT_AGENT_ID, SandboxConvAI
from announcer.sandbox.convai_agent import NOT_UNDERSTOOD, AgentBehavior
from announcer.sandbox.convai_records import CloseReason, Conversation
from announcer.sandbox.elevenlabs import SandboxElevenLabs
from announcer.sandbox.speech_book import SpeechBook, recognise
from announcer.sandbox.voice_activity import SpeechStarted, TurnDetector, TurnEnded
from announcer.speech.local import LocalSynthesizer
from tests.conftest import Service

API_KEY = "sandbox-el-key"
PUBLIC_AGENT = "public-agent"
T = 15.0  # generous bound for every wait; the tests themselves take milliseconds
INSTANT = 1e6  # sandbox speed at which the agent's audio "plays" in microseconds: no accidental barge-in
VOICE = LocalSynthesizer()


def synth(text: str) -> bytes:
    return VOICE.synthesize(text)


def silence(seconds: float) -> bytes:
    return SILENCE_FRAME * round(seconds * 50)


class Sandbox:
    def __init__(self, tts: SandboxElevenLabs, agent: SandboxConvAI, book: SpeechBook) -> None:
        self.tts, self.agent, self.book = tts, agent, book

    @property
    def base_url(self) -> str:
        assert self.tts.base_url is not None
        return self.tts.base_url

    def sdk(self, key: str = API_KEY) -> AsyncElevenLabs:
        return AsyncElevenLabs(api_key=key, base_url=self.base_url)

    def ws_url(self, agent_id: str = PUBLIC_AGENT, **query: str) -> str:
        extra = "".join(f"&{k}={v}" for k, v in query.items())
        return self.base_url.replace("http", "ws", 1) + f"/v1/convai/conversation?agent_id={agent_id}{extra}"

    def line(self, text: str) -> bytes:
        """What the sandbox phone does before it speaks: synthesize and register the line."""
        audio = synth(text)
        self.book.register(text, audio)
        return audio


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    book = SpeechBook()
    agent = SandboxConvAI(
        api_key=API_KEY,
        synthesize=synth,
        speech_book=book,
        agent_ids=(DEFAULT_AGENT_ID,),
        public_agent_ids=(PUBLIC_AGENT,),
        speed=INSTANT,
    )
    agent.behavior = AgentBehavior(ping_interval_s=None)
    tts = SandboxElevenLabs(api_key=API_KEY, synthesize=synth, extensions=[agent])
    await tts.start()
    yield Sandbox(tts, agent, book)
    await tts.close()


class Bridge:
    """The service's side of one agent conversation: one reader task, everything it received."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self.binary: list[bytes] = []
        self.raw: list[str] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.raw.append(msg.data)
                with contextlib.suppress(ValueError):  # the garbage knob sends malformed JSON
                    self.received.append(json.loads(msg.data))
            elif msg.type is aiohttp.WSMsgType.BINARY:
                self.binary.append(msg.data)
            self._notify()
        self.closed.set()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == kind]

    async def wait_for(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(T):
            while not check():
                await self._changed.wait()

    async def wait_type(self, kind: str, n: int = 1) -> dict[str, Any]:
        await self.wait_for(lambda: len(self.of(kind)) >= n)
        return self.of(kind)[n - 1]

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(msg))

    async def initiate(self, **fields: Any) -> None:
        await self.send({"type": "conversation_initiation_client_data", **fields})

    async def speak(self, audio: bytes, trailing_silence_s: float = 0.6) -> None:
        """Relay caller audio as the bridge does: one user_audio_chunk per 20 ms frame."""
        data = audio + silence(trailing_silence_s)
        for i in range(0, len(data), FRAME_BYTES):
            chunk = base64.b64encode(data[i : i + FRAME_BYTES]).decode()
            await self.send({"user_audio_chunk": chunk})

    def audio_of(self, event_id: int) -> bytes:
        return b"".join(
            base64.b64decode(m["audio_event"]["audio_base_64"])
            for m in self.of("audio")
            if m["audio_event"]["event_id"] == event_id
        )

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait({self._reader})


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def connect(session: aiohttp.ClientSession, url: str) -> Bridge:
    return Bridge(await session.ws_connect(url))


async def first_turn_sent(sandbox: Sandbox, n: int = 1) -> Conversation:
    """Wait until the agent has sent all of its first turn in the `n`th conversation."""
    conversation = await sandbox.agent.wait_for_conversation(T, n)
    await conversation.wait_until(
        lambda: bool(conversation.agent_turns) and conversation.agent_turns[0].done_sending, T
    )
    return conversation


# -- pure parts ----------------------------------------------------------------------------------
def test_turn_detector_finds_speech_and_the_end_of_the_turn() -> None:
    speech = synth("Yes, please.")
    detector = TurnDetector(silence_s=0.4)
    stream = silence(0.2) + speech + silence(0.5)
    events = []
    for i in range(0, len(stream), 333):  # pieces of any size
        events += detector.feed(stream[i : i + 333])
    assert len(events) == 2
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, TurnEnded)
    assert started.offset >= len(silence(0.2)) - FRAME_BYTES
    assert ended.start == started.offset and ended.end <= len(silence(0.2)) + len(speech) + FRAME_BYTES


def test_recognise_matches_whole_and_partial_lines_and_rejects_unknown_audio() -> None:
    lines = {text: synth(text) for text in ("Yes, please.", "No, thank you.", "Goodbye.")}
    book = list(lines.items())
    assert recognise(lines["No, thank you."], book) is not None
    found = recognise(silence(0.1) + lines["Yes, please."] + silence(0.2), book)
    assert found is not None and found.text == "Yes, please." and found.score > 0.9
    half = lines["No, thank you."][len(lines["No, thank you."]) // 2 :]  # relayed only in part
    assert (recognise(half, book) or pytest.fail("no match")).text == "No, thank you."
    assert recognise(synth("Something nobody registered."), book) is None
    assert recognise(silence(1), book) is None


# -- signed URL through the real SDK ---------------------------------------------------------------
async def test_signed_url_through_the_sdk_opens_a_private_conversation(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    signed = await sandbox.sdk().conversational_ai.conversations.get_signed_url(agent_id=DEFAULT_AGENT_ID)
    url = signed.signed_url
    assert url.startswith(sandbox.base_url.replace("http", "ws", 1) + "/v1/convai/conversation?")
    assert f"agent_id={DEFAULT_AGENT_ID}" in url and "conversation_signature=" in url
    bridge = await connect(session, url + "&source=python_sdk")  # the SDK appends its own parameters
    await bridge.initiate()
    meta = await bridge.wait_type("conversation_initiation_metadata")
    conversation = await sandbox.agent.wait_for_conversation(T)
    assert conversation.authenticated_by == "signature" and conversation.agent_id == DEFAULT_AGENT_ID
    assert meta["conversation_initiation_metadata_event"] == {
        "conversation_id": conversation.conversation_id,
        "agent_output_audio_format": "ulaw_8000",
        "user_input_audio_format": "ulaw_8000",
    }
    await bridge.close()
    assert await conversation.wait_closed(T) is CloseReason.CLIENT
    # the older spelling answers the same
    async with session.get(
        sandbox.base_url + f"/v1/convai/conversation/get_signed_url?agent_id={DEFAULT_AGENT_ID}",
        headers={"xi-api-key": API_KEY},
    ) as old:
        assert old.status == 200 and "conversation_signature=" in (await old.json())["signed_url"]


async def test_signed_url_bad_key_and_unknown_agent(sandbox: Sandbox) -> None:
    with pytest.raises(ApiError) as bad_key:
        await sandbox.sdk("wrong").conversational_ai.conversations.get_signed_url(agent_id=DEFAULT_AGENT_ID)
    assert bad_key.value.status_code == 401
    assert bad_key.value.body == {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}
    with pytest.raises(ApiError) as unknown:
        await sandbox.sdk().conversational_ai.conversations.get_signed_url(agent_id="agent_nobody")
    assert unknown.value.status_code == 404
    assert unknown.value.body["detail"]["status"] == "agent_not_found"


async def test_signed_url_failure_knobs(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    convai = sandbox.sdk().conversational_ai.conversations
    sandbox.agent.fail_signed_url("unauthorized")
    sandbox.agent.fail_signed_url("server_error")
    with pytest.raises(ApiError) as unauthorized:
        await convai.get_signed_url(agent_id=DEFAULT_AGENT_ID)
    assert unauthorized.value.status_code == 401
    with pytest.raises(ApiError) as server_error:
        await convai.get_signed_url(agent_id=DEFAULT_AGENT_ID, request_options={"max_retries": 0})
    assert server_error.value.status_code == 500
    sandbox.agent.fail_signed_url("unreachable")
    dead = (await convai.get_signed_url(agent_id=DEFAULT_AGENT_ID)).signed_url
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.ws_connect(dead)
    ok = await convai.get_signed_url(agent_id=DEFAULT_AGENT_ID)  # the knobs are used up
    bridge = await connect(session, ok.signed_url)
    await bridge.close()
    assert [r.status for r in sandbox.agent.signed_url_requests] == [401, 500, 200, 200]


async def test_websocket_refuses_missing_or_bad_signatures_before_the_upgrade(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    async def status_of(url: str, headers: dict[str, str] | None = None) -> int:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url, headers=headers)
        return refused.value.status

    assert await status_of(sandbox.ws_url(DEFAULT_AGENT_ID)) == 401
    assert await status_of(sandbox.ws_url(DEFAULT_AGENT_ID, conversation_signature="1.abc")) == 403
    expired = sandbox.agent.sign(DEFAULT_AGENT_ID, expires=1)
    assert await status_of(sandbox.ws_url(DEFAULT_AGENT_ID, conversation_signature=expired)) == 403
    other = sandbox.agent.sign(PUBLIC_AGENT)  # a signature for another agent
    assert await status_of(sandbox.ws_url(DEFAULT_AGENT_ID, conversation_signature=other)) == 403
    assert await status_of(sandbox.ws_url("agent_nobody")) == 404
    assert await status_of(sandbox.ws_url(DEFAULT_AGENT_ID), {"xi-api-key": "wrong"}) == 401
    public = await connect(session, sandbox.ws_url(PUBLIC_AGENT))  # a public agent needs no signature
    await public.close()
    assert sandbox.agent.conversations[0].authenticated_by == "public"
    keyed = Bridge(
        await session.ws_connect(sandbox.ws_url(DEFAULT_AGENT_ID), headers={"xi-api-key": API_KEY})
    )
    await keyed.close()
    assert sandbox.agent.conversations[1].authenticated_by == "api_key"


# -- the conversation ------------------------------------------------------------------------------
async def test_initiation_is_recorded_and_the_first_message_arrives_in_odd_chunks(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    bridge = await connect(session, sandbox.ws_url())
    override = {
        "agent": {"prompt": {"prompt": "Be brief."}, "first_message": "Hello {{name}}, you have a reminder."},
        "tts": {"voice_id": "v1"},
    }
    await bridge.initiate(conversation_config_override=override, dynamic_variables={"name": "Ada"})
    said = "Hello Ada, you have a reminder."
    conversation = await first_turn_sent(sandbox)
    turn = conversation.agent_turns[0]
    await bridge.wait_for(lambda: len(bridge.audio_of(turn.event_id)) == turn.total)
    assert bridge.of("agent_response")[0]["agent_response_event"] == {"agent_response": said}
    assert bridge.audio_of(turn.event_id) == conversation.agent_audio  # exactly the synthesized audio
    assert turn.text == said and turn.sent == turn.total and not turn.interrupted
    sizes = [len(base64.b64decode(m["audio_event"]["audio_base_64"])) for m in bridge.of("audio")]
    assert len(sizes) > 1 and all(size % FRAME_BYTES for size in sizes)  # never whole frames
    assert all(size % 2 == 1 and 1000 <= size <= 4000 for size in sizes[:-1])  # the last is the rest
    assert conversation.config_override == override
    assert conversation.dynamic_variables == {"name": "Ada"}
    assert conversation.first_message == said and conversation.agent_responses == [said]
    await bridge.send({"type": "contextual_update", "text": "The caller pressed 1."})
    await conversation.wait_until(lambda: bool(conversation.contextual_updates), T)
    assert conversation.contextual_updates == ["The caller pressed 1."]
    await bridge.close()


async def test_a_registered_line_is_recognised_and_answered(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.agent.behavior = AgentBehavior(ping_interval_s=None, replies={"appointment": "It is at noon."})
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    await first_turn_sent(sandbox)
    sandbox.line("Something else entirely.")
    yes = sandbox.line("Yes, please.")
    await bridge.speak(silence(0.3) + yes)
    transcript = await bridge.wait_type("user_transcript")
    assert transcript == {
        "type": "user_transcript",
        "user_transcription_event": {"user_transcript": "Yes, please."},
    }
    reply = await bridge.wait_type("agent_response", 2)
    assert reply["agent_response_event"]["agent_response"] == "You said: Yes, please."
    await bridge.speak(sandbox.line("When is my appointment?"))
    assert (await bridge.wait_type("agent_response", 3))["agent_response_event"][
        "agent_response"
    ] == "It is at noon."
    await bridge.speak(synth("Nobody registered this line."))
    assert (await bridge.wait_type("user_transcript", 3))["user_transcription_event"][
        "user_transcript"
    ] == NOT_UNDERSTOOD
    conversation = sandbox.agent.conversations[0]
    assert conversation.user_transcripts == ["Yes, please.", "When is my appointment?", NOT_UNDERSTOOD]
    assert conversation.interruptions == []
    assert conversation.user_audio.endswith(silence(0.6)) and conversation.user_audio_chunks > 100
    await bridge.close()


async def test_ping_is_sent_and_pongs_are_matched(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    sandbox.agent.behavior = AgentBehavior(ping_interval_s=0.05)
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    ping = (await bridge.wait_type("ping"))["ping_event"]
    assert ping["ping_ms"] is None  # nothing measured yet
    await bridge.send({"type": "pong", "event_id": ping["event_id"]})
    await bridge.send({"type": "pong", "event_id": 9999})
    conversation = sandbox.agent.conversations[0]
    await conversation.wait_until(lambda: len(conversation.pongs) == 2, T)
    assert [(p.event_id, p.matched) for p in conversation.pongs] == [(ping["event_id"], True), (9999, False)]
    assert conversation.pings[0].event_id == ping["event_id"]
    later = (await bridge.wait_type("ping", 2))["ping_event"]
    assert later["event_id"] > ping["event_id"] and isinstance(later["ping_ms"], int)
    await bridge.close()


async def test_barge_in_interrupts_the_turn_and_corrects_its_text(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.agent.speed = 1.0  # the first message plays for ~4 s of real time: plenty of time to barge in
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    first = await bridge.wait_type("audio")
    event_id = first["audio_event"]["event_id"]
    await bridge.speak(sandbox.line("Stop, please."))
    interruption = await bridge.wait_type("interruption")
    assert interruption == {"type": "interruption", "interruption_event": {"event_id": event_id}}
    correction = (await bridge.wait_type("agent_response_correction"))["agent_response_correction_event"]
    original = sandbox.agent.behavior.first_message
    assert correction["original_agent_response"] == original
    corrected = correction["corrected_agent_response"]
    assert original.startswith(corrected) and len(corrected) < len(original)
    # no audio of the interrupted turn after the interruption
    cut = bridge.received.index(interruption)
    assert all(
        m["audio_event"]["event_id"] != event_id for m in bridge.received[cut:] if m["type"] == "audio"
    )
    turn = sandbox.agent.conversations[0].agent_turns[0]
    assert turn.interrupted and len(bridge.audio_of(event_id)) == turn.sent < turn.total
    # the barge-in itself is a turn: heard and answered
    assert (await bridge.wait_type("user_transcript"))["user_transcription_event"][
        "user_transcript"
    ] == "Stop, please."
    conversation = sandbox.agent.conversations[0]
    assert [i.event_id for i in conversation.interruptions] == [event_id]
    assert conversation.corrections == [(original, corrected)]
    await bridge.close()


async def test_goodbye_ends_the_conversation_from_the_server(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    await first_turn_sent(sandbox)
    await bridge.speak(sandbox.line("Thanks, bye."))
    await bridge.wait_for(bridge.closed.is_set)
    assert bridge.ws.close_code == 1000
    goodbye = sandbox.agent.behavior.goodbye
    assert bridge.of("agent_response")[-1]["agent_response_event"]["agent_response"] == goodbye
    conversation = sandbox.agent.conversations[0]
    assert await conversation.wait_closed(T) is CloseReason.SERVER
    assert conversation.user_transcripts == ["Thanks, bye."]
    assert conversation.closed_at is not None and conversation.closed_at >= conversation.opened_at


async def test_end_conversation_knob(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    conversation = await sandbox.agent.wait_for_conversation(T)
    sandbox.agent.end_conversation(conversation)
    assert await conversation.wait_closed(T) is CloseReason.SERVER
    await bridge.wait_for(bridge.closed.is_set)
    assert conversation.agent_responses == [
        sandbox.agent.behavior.first_message,
        sandbox.agent.behavior.goodbye,
    ]


# -- failure knobs ---------------------------------------------------------------------------------
async def test_wrong_audio_format_is_announced(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    sandbox.agent.behavior = AgentBehavior(ping_interval_s=None, output_format="pcm_16000")
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    meta = (await bridge.wait_type("conversation_initiation_metadata"))[
        "conversation_initiation_metadata_event"
    ]
    assert meta["agent_output_audio_format"] == "pcm_16000" and meta["user_input_audio_format"] == "ulaw_8000"
    await bridge.close()


@pytest.mark.parametrize("knob", [{"drop_after_first_message": True}, {"drop_after_s": 0.05}])
async def test_drop_aborts_without_a_close_frame(
    sandbox: Sandbox, session: aiohttp.ClientSession, knob: dict[str, Any]
) -> None:
    sandbox.agent.behavior = AgentBehavior(ping_interval_s=None, **knob)
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    await bridge.wait_for(bridge.closed.is_set)
    assert bridge.ws.close_code == 1006  # abnormal closure: no close frame came
    conversation = sandbox.agent.conversations[0]
    assert await conversation.wait_closed(T) is CloseReason.ABORTED


async def test_end_after_first_message_closes_normally(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.agent.behavior = AgentBehavior(ping_interval_s=None, end_after_first_message=True)
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    await bridge.wait_for(bridge.closed.is_set)
    assert bridge.ws.close_code == 1000
    conversation = sandbox.agent.conversations[0]
    assert bridge.audio_of(conversation.agent_turns[0].event_id) == conversation.agent_audio
    assert await conversation.wait_closed(T) is CloseReason.SERVER


async def test_garbage_comes_before_a_normal_conversation(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.agent.behavior = AgentBehavior(ping_interval_s=None, garbage=True)
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    await first_turn_sent(sandbox)
    assert json.loads(bridge.raw[0])["type"] == "conversation_initiation_metadata"
    assert json.loads(bridge.raw[1])["type"] == "sandbox_unknown_event"
    with pytest.raises(ValueError):
        json.loads(bridge.raw[2])
    assert json.loads(bridge.raw[3]) == {"type": "ping", "ping_event": {"ping_ms": 12}}
    assert len(bridge.binary) == 1
    await bridge.speak(sandbox.line("Yes, please."))
    assert (await bridge.wait_type("user_transcript"))["user_transcription_event"][
        "user_transcript"
    ] == "Yes, please."
    await bridge.close()


async def test_bad_client_messages_are_recorded_not_fatal(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    await bridge.ws.send_str("not json")
    await bridge.send({"type": "pong"})
    await bridge.send({"user_audio_chunk": "@@@"})
    await bridge.ws.send_bytes(b"\x00")
    conversation = await sandbox.agent.wait_for_conversation(T)
    await conversation.wait_until(lambda: len(conversation.protocol_errors) == 4, T)
    assert "not valid JSON" in conversation.protocol_errors[0]
    assert "no integer event_id" in conversation.protocol_errors[1]
    assert "not valid base64" in conversation.protocol_errors[2]
    assert "binary frame" in conversation.protocol_errors[3]
    assert not conversation.closed.is_set()
    await bridge.close()


async def test_closing_the_sandbox_ends_open_conversations(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    bridge = await connect(session, sandbox.ws_url())
    await bridge.initiate()
    conversation = await sandbox.agent.wait_for_conversation(T)
    await sandbox.agent.close()
    assert await conversation.wait_closed(T) is CloseReason.SHUTDOWN
    await bridge.wait_for(bridge.closed.is_set)
    assert bridge.ws.close_code == 1001


async def test_the_service_runs_the_sandbox_agent_beside_the_tts_sandbox(service: Service) -> None:
    """Sandbox mode: the agent answers on ELEVENLABS_BASE_URL, and shares its SpeechBook with the phone."""
    p = service.providers
    client = AsyncElevenLabs(api_key=p.elevenlabs_api_key, base_url=p.elevenlabs_base_url)
    signed = await client.conversational_ai.conversations.get_signed_url(agent_id=SANDBOX_AGENT_ID)
    assert signed.signed_url.startswith(p.elevenlabs_base_url.replace("http", "ws", 1))
    assert service.agent.speech_book is service.sandbox.speech_book
    assert service.agent.speed == service.settings.announcer_sandbox_speed
