"""The sandbox Twilio, on its own: the real twilio SDK against its REST API, and a tiny aiohttp app
in the role of our service (voice webhook, status callback, media websocket) against its phone."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import wave
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.voice_response import Connect, VoiceResponse

from announcer.audio import FRAME_BYTES, SILENCE_FRAME
from announcer.sandbox import media_messages as mm
from announcer.sandbox.phone import Phone, PhoneClock
from announcer.sandbox.phone_voice import PhoneVoice
from announcer.sandbox.speech_book import SpeechBook
from announcer.sandbox.twilio import PhoneBehavior, SandboxCall, SandboxTwilio
from announcer.sandbox.twilio_call import CallStatus, Direction
from announcer.sandbox.twilio_webhooks import WebhookClient

ACCOUNT_SID = "AC" + "a1" * 16
AUTH_TOKEN = "sandbox-auth-token"
SANDBOX_NUMBER = "+15550001000"
CALLER = "+15550002000"
SPEED = 50.0
AUTH_HEADERS = {"Authorization": aiohttp.encode_basic_auth(ACCOUNT_SID, AUTH_TOKEN)}
T = 10.0  # generous bound for every wait; the tests themselves take milliseconds


def synth(text: str) -> bytes:
    """Stand-in for the sandbox voice: 100 ms of a recognisable byte per <Say>."""
    return bytes([0x2A]) * (FRAME_BYTES * 5)


def tone(n: int) -> list[bytes]:
    """n distinct, recognisable frames."""
    return [bytes([0x10 + i % 0x60]) * FRAME_BYTES for i in range(n)]


# -- "our service" -------------------------------------------------------------------------------
class StreamSession:
    """The service's side of one media websocket: everything received, and helpers to send."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()

    def add(self, msg: dict[str, Any]) -> None:
        self.received.append(msg)
        self._changed.set()
        self._changed = asyncio.Event()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("event") == name]

    @property
    def stream_sid(self) -> str:
        sid: str = self.events("start")[0]["streamSid"]
        return sid

    async def wait_for(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(T):
            while True:
                for msg in self.received:
                    if check(msg):
                        return msg
                await self._changed.wait()

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(msg))

    async def send_frame(self, frame: bytes, stream_sid: str | None = None) -> None:
        payload = base64.b64encode(frame).decode()
        await self.send(
            {"event": "media", "streamSid": stream_sid or self.stream_sid, "media": {"payload": payload}}
        )

    async def send_mark(self, name: str) -> None:
        await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})


StreamHandler = Callable[[StreamSession], Coroutine[Any, Any, None]]


class FakeService:
    """Answers the voice webhook with <Connect><Stream>, records status callbacks, accepts the media
    websocket and hands it to the test's `stream_handler`.  Checks every Twilio signature."""

    def __init__(self) -> None:
        self.validator = RequestValidator(AUTH_TOKEN)
        self.base = ""
        self.ws_url = ""
        self.voice_status = 200
        self.voice_body: str | None = None  # answer this instead of <Connect><Stream>
        self.after_connect: Callable[[VoiceResponse], object] = lambda r: None
        self.stream_handler: StreamHandler | None = None
        self.voice_forms: list[dict[str, str]] = []
        self.status_forms: list[dict[str, str]] = []
        self.amd_forms: list[dict[str, str]] = []  # AsyncAmdStatusCallback, signature checked
        self.bad_signatures: list[str] = []
        self.sessions: list[StreamSession] = []
        self.handler_errors: list[BaseException] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_post("/twilio/status", self.status)
        app.router.add_post("/twilio/amd", self.amd)
        app.router.add_post("/twilio/fallback", self.fallback)
        app.router.add_get("/twilio/media", self.media)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/twilio/media"

    async def close(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def _signed(self, request: web.Request, params: dict[str, str]) -> bool:
        url = self.base + request.path_qs  # the public URL as configured, like the real service
        if request.path == "/twilio/media":
            url = self.ws_url
        ok: bool = self.validator.validate(url, params, request.headers.get("X-Twilio-Signature", ""))
        if not ok:
            self.bad_signatures.append(request.path)
        return ok

    async def voice(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not self._signed(request, form):
            return web.Response(status=403)
        self.voice_forms.append(form)
        self._notify()
        if self.voice_status != 200:
            return web.Response(status=self.voice_status, text="boom")
        if self.voice_body is not None:
            return web.Response(text=self.voice_body, content_type="text/xml")
        response = VoiceResponse()
        connect = Connect()
        connect.stream(url=self.ws_url).parameter(name="token", value="tok-" + form["CallSid"][-4:])
        response.append(connect)
        self.after_connect(response)
        return web.Response(text=response.to_xml(), content_type="text/xml")

    async def fallback(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not self._signed(request, form):
            return web.Response(status=403)
        self.voice_forms.append(form)
        response = VoiceResponse()
        response.say("From the URL")
        return web.Response(text=response.to_xml(), content_type="text/xml")

    async def status(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not self._signed(request, form):
            return web.Response(status=403)
        self.status_forms.append(form)
        self._notify()
        return web.Response(status=204)

    async def amd(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not self._signed(request, form):
            return web.Response(status=403)
        self.amd_forms.append(form)
        self._notify()
        return web.Response(status=204)

    async def wait_amd(self, call_sid: str) -> dict[str, str]:
        async with asyncio.timeout(T):
            while True:
                for form in self.amd_forms:
                    if form["CallSid"] == call_sid:
                        return form
                await self._changed.wait()

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        if not self._signed(request, {}):
            raise web.HTTPForbidden()
        await ws.prepare(request)
        session = StreamSession(ws)
        self.sessions.append(session)
        self._notify()
        handler = asyncio.create_task(self.stream_handler(session)) if self.stream_handler else None
        async for msg in ws:  # the one reader of this socket
            if msg.type is aiohttp.WSMsgType.TEXT:
                session.add(json.loads(msg.data))
        session.closed.set()
        if handler is not None:
            if not handler.done():
                handler.cancel()
            await asyncio.wait({handler})
            if not handler.cancelled() and handler.exception() is not None:
                self.handler_errors.append(handler.exception())  # type: ignore[arg-type]
        return ws

    async def wait_status(self, call_sid: str, status: str) -> dict[str, str]:
        async with asyncio.timeout(T):
            while True:
                for form in self.status_forms:
                    if form["CallSid"] == call_sid and form["CallStatus"] == status:
                        return form
                await self._changed.wait()

    async def wait_session(self) -> StreamSession:
        async with asyncio.timeout(T):
            while not self.sessions:
                await self._changed.wait()
        return self.sessions[-1]

    def statuses(self, call_sid: str) -> list[dict[str, str]]:
        return [f for f in self.status_forms if f["CallSid"] == call_sid]


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    svc = FakeService()
    await svc.start()
    yield svc
    await svc.close()
    assert svc.bad_signatures == []
    assert svc.handler_errors == []


@pytest.fixture
async def sandbox(service: FakeService, tmp_path: Any) -> AsyncIterator[SandboxTwilio]:
    sb = SandboxTwilio(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        phone_number=SANDBOX_NUMBER,
        voice_url=service.base + "/twilio/voice",
        status_callback_url=service.base + "/twilio/status",
        recordings_dir=tmp_path / "recordings",
        say_synthesize=synth,
        speed=SPEED,
    )
    await sb.start()
    yield sb
    await sb.close()


def make_client(base_url: str, token: str = AUTH_TOKEN) -> tuple[Client, AsyncTwilioHttpClient]:
    http = AsyncTwilioHttpClient()
    client = Client(ACCOUNT_SID, token, http_client=http, environment={})
    client.api.base_url = base_url
    return client, http


@pytest.fixture
async def client(sandbox: SandboxTwilio) -> AsyncIterator[Client]:
    c, http = make_client(sandbox.base_url)
    yield c
    await http.close()


async def close_after_mark(session: StreamSession, frames: list[bytes], mark: str = "end:1") -> None:
    """The service's happy path: speak, mark, wait for the echo, hang up the stream."""
    await session.wait_for(lambda m: m["event"] == "start")
    for frame in frames:
        await session.send_frame(frame)
    await session.send_mark(mark)
    await session.wait_for(lambda m: m["event"] == "mark")
    await session.ws.close()


# -- pure parts ----------------------------------------------------------------------------------
def test_signature_matches_twilio_documented_example() -> None:
    hooks = WebhookClient(None, "12345", [])  # type: ignore[arg-type]  # signing needs no session
    params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ]
    assert hooks.sign("https://mycompany.com/myapp.php?foo=1&bar=2", params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("not json", "not valid JSON"),
        ("[1]", "not a JSON object"),
        ('{"event": "hello", "streamSid": "MZ1"}', "unknown event 'hello'"),
        ('{"event": "media", "streamSid": "MZ2", "media": {"payload": ""}}', "expected 'MZ1'"),
        ('{"event": "media", "streamSid": "MZ1", "media": {"payload": "@@@"}}', "not valid base64"),
        ('{"event": "media", "streamSid": "MZ1", "media": {}}', "no media.payload"),
        ('{"event": "mark", "streamSid": "MZ1", "mark": {}}', "no mark.name"),
    ],
)
def test_malformed_service_messages_are_named(message: str, error: str) -> None:
    with pytest.raises(mm.StreamProtocolError, match=error):
        mm.parse_service_message(message, "MZ1")


def test_short_payload_is_reported_with_its_size() -> None:
    payload = base64.b64encode(b"\x00" * 159).decode()
    msg = json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": payload}})
    with pytest.raises(mm.StreamProtocolError, match=r"^media payload is 159 bytes, expected 160$"):
        mm.parse_service_message(msg, "MZ1")


def test_phone_messages_are_twilio_json() -> None:
    media = json.loads(mm.media_message(7, stream_sid="MZ1", chunk=3, timestamp_ms=40, payload_b64="AA=="))
    assert media == {
        "event": "media",
        "sequenceNumber": "7",
        "streamSid": "MZ1",
        "media": {"track": "inbound", "chunk": "3", "timestamp": "40", "payload": "AA=="},
    }
    assert base64.b64decode(mm.SILENCE_PAYLOAD) == SILENCE_FRAME


class _Link:
    def __init__(self) -> None:
        self.mic: list[tuple[int, int]] = []
        self.payloads: list[str | None] = []
        self.marks: list[str] = []

    def send_mic_frame(self, chunk: int, timestamp_ms: int, payload_b64: str | None) -> None:
        self.mic.append((chunk, timestamp_ms))
        self.payloads.append(payload_b64)

    def echo_mark(self, name: str) -> None:
        self.marks.append(name)


def _bare_call() -> SandboxCall:
    class _Control:
        def end_call(self, call: SandboxCall) -> None:
            pass

    return SandboxCall("CA1", ACCOUNT_SID, Direction.INBOUND, CALLER, SANDBOX_NUMBER, _Control())


async def test_phone_plays_on_its_clock_echoes_marks_and_counts_underruns() -> None:
    """Drive one phone with explicit times (speed 1: a slot is 20 ms)."""
    call, link = _bare_call(), _Link()
    phone = Phone(call, PhoneClock(speed=1.0))
    phone.attach(link, now=100.0)
    a, b, c = tone(3)
    phone.receive_frame(a, now=100.0)
    phone.receive_mark("m1", now=100.001)
    phone.tick(100.0)
    assert call.heard == a and link.marks == []  # the frame is playing, the mark waits for its end
    phone.tick(100.02)
    assert link.marks == ["m1"]
    assert link.mic == [(1, 0)]  # the microphone sends a frame every slot, timestamps in ms
    # silence after a mark is not an underrun
    phone.receive_frame(b, now=100.1)
    phone.tick(100.1)
    # ...but a dry buffer in the middle of a segment is: 100.12 -> 100.2 is 4 slots
    phone.receive_frame(c, now=100.2)
    assert call.underrun_frames == 4
    phone.tick(100.3)
    assert call.heard == a + b + c
    assert call.frames_received == 3
    # clear drops audio and echoes pending marks at once
    phone.receive_frame(a, now=100.4)
    phone.receive_frame(b, now=100.4)
    phone.receive_mark("m2", now=100.4)
    phone.receive_clear(now=100.4)
    assert link.marks == ["m1", "m2"]
    phone.tick(100.5)
    assert call.heard == a + b + c


async def test_phone_measures_the_longest_pause_between_frames_it_plays() -> None:
    """A late tick (a stalled event loop) plays late frames at once: the pause is the real time between
    the frames played, within a stretch of audio; the silence after a mark is no pause."""
    call, link = _bare_call(), _Link()
    phone = Phone(call, PhoneClock(speed=1.0))
    phone.attach(link, now=100.0)
    for frame in tone(4):
        phone.receive_frame(frame, now=100.0)
    phone.receive_mark("m1", now=100.0)
    phone.tick(100.0)
    phone.tick(100.02)
    assert call.max_play_gap_s == pytest.approx(0.02)
    phone.tick(100.1)  # 80 ms late: the two frames due by now play together
    assert call.max_play_gap_s == pytest.approx(0.08) and len(call.heard) == 4 * FRAME_BYTES
    assert link.marks == ["m1"]
    phone.receive_frame(tone(1)[0], now=101.0)  # a new stretch, a second after the mark
    phone.tick(101.0)
    assert call.max_play_gap_s == pytest.approx(0.08)


async def test_phone_says_a_line_one_frame_per_slot_and_a_detach_cuts_it() -> None:
    call, link = _bare_call(), _Link()
    book = SpeechBook()
    voice = PhoneVoice(lambda text: bytes([0x2A]) * 400, book)  # 2.5 frames: the last is padded
    phone = Phone(call, PhoneClock(speed=1.0), voice)
    phone.attach(link, now=100.0)
    line = await voice.prepare("Hi")
    assert line.audio == bytes([0x2A]) * 400 + SILENCE_FRAME[:80] and book.snapshot() == [("Hi", line.audio)]
    done = phone.speak(line)
    phone.tick(100.02)
    phone.tick(100.04)
    assert [base64.b64decode(p) for p in link.payloads if p] == [line.audio[:160], line.audio[160:320]]
    assert phone.speaking and call.spoke[0].started_at == pytest.approx(100.0)
    phone.detach()  # the stream ended with a frame still to send
    with pytest.raises(RuntimeError, match="stream ended before 'Hi' was said"):
        await done
    assert call.spoke[0].cut and call.spoke[0].frames_sent == 2 and call.spoke[0].finished_at is None


# -- REST API through the real SDK ---------------------------------------------------------------
LONG_CALL = "<Response><Pause length='600'/></Response>"


async def test_rest_create_fetch_list_update(sandbox: SandboxTwilio, client: Client) -> None:
    first = await client.calls.create_async(to="+15550003001", from_=SANDBOX_NUMBER, twiml=LONG_CALL)
    second = await client.calls.create_async(to="+15550003002", from_=SANDBOX_NUMBER, twiml=LONG_CALL)
    assert first.status == "queued" and first.direction == "outbound-api"
    assert first.sid.startswith("CA") and len(first.sid) == 34
    assert first.uri == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{first.sid}.json"
    assert first.account_sid == ACCOUNT_SID and first.api_version == "2010-04-01"
    assert isinstance(first.date_created, dt.datetime)
    await sandbox.calls[first.sid].wait_for_status(CallStatus.IN_PROGRESS, T)
    await sandbox.calls[second.sid].wait_for_status(CallStatus.IN_PROGRESS, T)

    fetched = await client.calls(first.sid).fetch_async()
    assert (fetched.status, fetched.to, fetched._from) == ("in-progress", "+15550003001", SANDBOX_NUMBER)
    assert fetched.start_time is not None and fetched.end_time is None

    by_to = await client.calls.list_async(to="+15550003002")
    assert [c.sid for c in by_to] == [second.sid]
    today = dt.datetime.now(dt.UTC).date()
    paged = await client.calls.list_async(start_time_after=today, status="in-progress", page_size=1)
    assert [c.sid for c in paged] == [second.sid, first.sid]  # newest first, across two pages
    assert await client.calls.list_async(start_time_before=today) == []
    raw = await client.calls.page_async(page_size=1)
    assert raw.next_page_url is not None

    done = await client.calls(first.sid).update_async(status="completed")
    assert done.status == "completed"
    await sandbox.calls[first.sid].wait_ended(T)
    again = await client.calls(first.sid).update_async(status="completed")  # hanging up twice is fine
    assert again.status == "completed" and again.duration is not None
    canceled = await client.calls(second.sid).update_async(status="canceled")  # no-op once answered
    assert canceled.status == "in-progress"
    assert [c.sid for c in await client.calls.list_async(status="completed")] == [first.sid]
    assert [r.status for r in sandbox.rest_log if r.method == "POST"][:2] == [201, 201]


async def test_rest_errors(sandbox: SandboxTwilio, client: Client) -> None:
    bad_client, http = make_client(sandbox.base_url, token="wrong")
    try:
        with pytest.raises(TwilioRestException) as auth:
            await bad_client.calls.create_async(to="+15550003001", from_=SANDBOX_NUMBER, twiml=LONG_CALL)
    finally:
        await http.close()
    assert (auth.value.status, auth.value.code) == (401, 20003)

    with pytest.raises(TwilioRestException) as bad_to:
        await client.calls.create_async(to="555-CALL-ME", from_=SANDBOX_NUMBER, twiml=LONG_CALL)
    assert (bad_to.value.status, bad_to.value.code) == (400, 21211)
    with pytest.raises(TwilioRestException) as no_url:
        await client.calls.create_async(to="+15550003001", from_=SANDBOX_NUMBER)
    assert (no_url.value.status, no_url.value.code) == (400, 21205)
    with pytest.raises(TwilioRestException) as missing:
        await client.calls("CA" + "0" * 32).fetch_async()
    assert (missing.value.status, missing.value.code) == (404, 20404)

    call = await client.calls.create_async(to="+15550003001", from_=SANDBOX_NUMBER, twiml=LONG_CALL)
    await client.calls(call.sid).update_async(status="completed")
    with pytest.raises(TwilioRestException) as not_live:
        await client.calls(call.sid).update_async(twiml="<Response><Say>hi</Say></Response>")
    assert (not_live.value.status, not_live.value.code) == (400, 21220)

    # what the SDK cannot send: missing parameters, another account's path
    calls_url = f"{sandbox.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    async with aiohttp.ClientSession(headers=AUTH_HEADERS) as http_session:
        async with http_session.post(
            calls_url, data={"From": SANDBOX_NUMBER, "Url": "https://x.test/v"}
        ) as r:
            assert (r.status, (await r.json())["code"]) == (400, 21201)
        async with http_session.post(calls_url, data={"To": "+15550003001", "Url": "https://x.test/v"}) as r:
            body = await r.json()
            assert (r.status, body["code"]) == (400, 21603)
            assert body["more_info"] == "https://www.twilio.com/docs/errors/21603"
        other = calls_url.replace(ACCOUNT_SID, "AC" + "0" * 32)
        async with http_session.get(other) as r:
            assert (r.status, (await r.json())["code"]) == (404, 20404)
    assert [r.status for r in sandbox.rest_log][:1] == [401]


# -- calls through "our service" -------------------------------------------------------------------
async def test_inbound_call_end_to_end(service: FakeService, sandbox: SandboxTwilio) -> None:
    frames = tone(25)
    service.stream_handler = lambda s: close_after_mark(s, frames)
    call = await sandbox.call_in(CALLER, caller_name="Ada")
    await call.wait_for_media(T)
    assert await call.wait_for_mark("end:", T) == "end:1"
    await call.wait_ended(T)

    assert call.status == "completed" and call.direction == "inbound"
    assert call.application_errors == [] and call.protocol_errors == []
    voice = service.voice_forms[0]
    assert voice["CallStatus"] == "ringing" and voice["Direction"] == "inbound"
    assert (voice["From"], voice["To"], voice["CallerName"]) == (CALLER, SANDBOX_NUMBER, "Ada")
    assert (voice["AccountSid"], voice["ApiVersion"]) == (ACCOUNT_SID, "2010-04-01")

    session = service.sessions[0]
    connected, start = session.received[0], session.received[1]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["sequenceNumber"] == "1" and start["streamSid"] == call.stream_sid
    assert start["start"] == {
        "accountSid": ACCOUNT_SID,
        "streamSid": call.stream_sid,
        "callSid": call.sid,
        "tracks": ["inbound"],
        "customParameters": {"token": "tok-" + call.sid[-4:]},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    assert call.custom_parameters == {"token": "tok-" + call.sid[-4:]}
    seqs = [int(m["sequenceNumber"]) for m in session.received[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    mic = session.events("media")
    assert mic and all(m["media"]["track"] == "inbound" for m in mic)
    assert base64.b64decode(mic[0]["media"]["payload"]) == SILENCE_FRAME
    assert session.events("mark") == [
        {"event": "mark", "sequenceNumber": session.events("mark")[0]["sequenceNumber"],
         "streamSid": call.stream_sid, "mark": {"name": "end:1"}}
    ]  # fmt: skip
    assert session.events("stop") == []  # the service closed the stream itself

    assert call.frames_received == 25 and call.heard == b"".join(frames)
    assert call.marks_echoed == ["end:1"] and call.underrun_frames == 0
    assert call.start_sent_at is not None and call.first_media_at is not None
    assert call.first_media_at >= call.start_sent_at
    assert call.wav_path == sandbox.recordings_dir / f"{call.sid}.wav"
    with wave.open(str(call.wav_path)) as wav:
        assert wav.getframerate() == 8000 and wav.getnframes() == 25 * FRAME_BYTES  # 0.5 s

    status = await service.wait_status(call.sid, "completed")
    assert status["SequenceNumber"] == "0" and status["CallbackSource"] == "call-progress-events"
    assert status["Direction"] == "inbound" and int(status["CallDuration"]) >= 0
    assert dt.datetime.strptime(status["Timestamp"], "%a, %d %b %Y %H:%M:%S %z")
    assert [w.kind for w in sandbox.webhook_log] == ["voice", "status"]
    assert all(w.status in (200, 204) for w in sandbox.webhook_log)


@pytest.mark.parametrize("via", ["twiml", "url"])
async def test_redirect_to_say_stops_the_stream(
    service: FakeService, sandbox: SandboxTwilio, client: Client, via: str
) -> None:
    call = await sandbox.call_in(CALLER)
    session = await service.wait_session()
    await session.wait_for(lambda m: m["event"] == "start")

    if via == "twiml":
        await client.calls(call.sid).update_async(
            twiml="<Response><Say voice='Polly.Joanna'>From the URL</Say></Response>"
        )
    else:
        await client.calls(call.sid).update_async(url=service.base + "/twilio/fallback")
    stop = await session.wait_for(lambda m: m["event"] == "stop")
    assert stop["stop"] == {"accountSid": ACCOUNT_SID, "callSid": call.sid}
    assert stop["streamSid"] == call.stream_sid
    async with asyncio.timeout(T):
        await session.closed.wait()
    await call.wait_ended(T)
    assert call.said == ["From the URL"] and call.heard == synth("From the URL")
    assert call.status == "completed" and call.application_errors == []
    if via == "url":
        assert service.voice_forms[-1]["CallStatus"] == "in-progress"
        assert [w.kind for w in sandbox.webhook_log] == ["voice", "redirect", "status"]


async def test_malformed_frames_are_protocol_errors_and_valid_ones_still_play(
    service: FakeService, sandbox: SandboxTwilio
) -> None:
    good = tone(2)

    async def sloppy(session: StreamSession) -> None:
        await session.wait_for(lambda m: m["event"] == "start")
        await session.send_frame(good[0])
        await session.send({"event": "media", "streamSid": session.stream_sid, "media": {"payload": "%%%"}})
        await session.send_frame(b"\xff" * 159)
        await session.send_frame(good[1], stream_sid="MZ" + "0" * 32)
        await session.send_frame(good[1])
        await session.send_mark("end")
        await session.wait_for(lambda m: m["event"] == "mark")
        await session.ws.close()

    service.stream_handler = sloppy
    call = await sandbox.call_in(CALLER)
    await call.wait_ended(T)
    assert len(call.protocol_errors) == 3
    assert all(e.startswith("31951 ") for e in call.protocol_errors)
    assert "not valid base64" in call.protocol_errors[0]
    assert call.protocol_errors[1] == "31951 media payload is 159 bytes, expected 160"
    assert "streamSid" in call.protocol_errors[2]
    assert call.frames_received == 2 and call.heard == good[0] + good[1]
    assert call.status == "completed"


async def test_press_sends_dtmf_and_hang_up_sends_stop(service: FakeService, sandbox: SandboxTwilio) -> None:
    call = await sandbox.call_in(CALLER)
    session = await service.wait_session()
    await session.wait_for(lambda m: m["event"] == "start")
    await call.press("1#")
    await session.wait_for(lambda m: m["event"] == "dtmf" and m["dtmf"]["digit"] == "#")
    dtmf = session.events("dtmf")
    assert [m["dtmf"] for m in dtmf] == [
        {"track": "inbound_track", "digit": "1"},
        {"track": "inbound_track", "digit": "#"},
    ]
    assert all(m["streamSid"] == call.stream_sid for m in dtmf)
    with pytest.raises(ValueError, match="DTMF"):
        await call.press("x")

    await call.hang_up()
    assert call.ended.is_set() and call.status == "completed"
    assert session.closed.is_set()
    stop = session.received[-1]
    assert stop["event"] == "stop" and stop["stop"]["callSid"] == call.sid
    completed = await service.wait_status(call.sid, "completed")
    assert completed["SequenceNumber"] == "0"
    with pytest.raises(RuntimeError, match="no open media stream"):
        await call.press("1")


def mic_audio(session: StreamSession) -> list[bytes]:
    """The phone's microphone frames as the service received them, in order."""
    return [base64.b64decode(m["media"]["payload"]) for m in session.events("media")]


async def test_say_puts_the_line_on_the_microphone(service: FakeService, sandbox: SandboxTwilio) -> None:
    call = await sandbox.call_in(CALLER)
    session = await service.wait_session()
    await session.wait_for(lambda m: m["event"] == "start")
    await call.say("Yes, please.")
    line = synth("Yes, please.")
    assert sandbox.speech_book.snapshot() == [("Yes, please.", line)]  # registered before it was said
    await session.wait_for(
        lambda m: (
            len(session.events("media")) > 0
            and mic_audio(session)[-1] == SILENCE_FRAME
            and line in b"".join(mic_audio(session))
        )
    )
    frames = mic_audio(session)
    spoken = [i for i, f in enumerate(frames) if f != SILENCE_FRAME]
    assert b"".join(frames[i] for i in spoken) == line  # all of it, in order ...
    assert spoken == list(range(spoken[0], spoken[0] + len(spoken)))  # ... in consecutive 20 ms slots
    chunks = [int(m["media"]["chunk"]) for m in session.events("media")]
    assert chunks == list(range(1, len(chunks) + 1))
    assert [(s.text, s.finished_at is not None, s.cut) for s in call.spoke] == [("Yes, please.", True, False)]
    await call.hang_up()
    with pytest.raises(RuntimeError, match="no open media stream"):
        await call.say("Too late.")


async def test_scripted_lines_answer_each_turn_of_the_far_end(
    service: FakeService, sandbox: SandboxTwilio
) -> None:
    async def talk(session: StreamSession) -> None:
        """Two turns of the far end, each answered by the phone's next line after a quiet spell."""
        await session.wait_for(lambda m: m["event"] == "start")
        for turn in (1, 2):
            for frame in tone(10):
                await session.send_frame(frame)
            said = 5 * turn  # frames of speech the phone has sent once it answered this turn
            await session.wait_for(
                lambda m, said=said: sum(f != SILENCE_FRAME for f in mic_audio(session)) >= said
            )
        await session.ws.close()

    service.stream_handler = talk
    call = await sandbox.call_in(CALLER, behavior=PhoneBehavior(lines=("First line.", "Second line.")))
    await call.wait_ended(T)
    assert [s.text for s in call.spoke] == ["First line.", "Second line."]
    first, second = call.spoke
    assert first.finished_at is not None and second.finished_at is not None
    heard_first_turn_until = call.answered_at  # the lines came only after the far end talked
    assert heard_first_turn_until is not None and first.queued_at > heard_first_turn_until
    assert "First line." in sandbox.speech_book and "Second line." in sandbox.speech_book


async def test_outbound_behaviours_and_status_callbacks(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    service.stream_handler = lambda s: close_after_mark(s, tone(5))
    sandbox.set_behavior("+15550004001", PhoneBehavior(answer="busy"))
    sandbox.set_behavior("+15550004002", PhoneBehavior(answer="no-answer", ring_s=1))
    sandbox.set_behavior("+15550004003", PhoneBehavior(answer="fail", sip_code=480))
    events = ["initiated", "ringing", "answered", "completed"]
    status_url = service.base + "/twilio/status"
    sids = {}
    for to in ("+15550004001", "+15550004002", "+15550004003", "+15550004004"):
        created = await client.calls.create_async(
            to=to,
            from_=SANDBOX_NUMBER,
            url=service.base + "/twilio/voice",
            status_callback=status_url,
            status_callback_event=events,
            machine_detection="Enable",
        )
        sids[to] = created.sid
    for sid in sids.values():
        await sandbox.calls[sid].wait_ended(T)

    def progress(sid: str) -> list[tuple[str, str]]:
        return [(f["SequenceNumber"], f["CallStatus"]) for f in service.statuses(sid)]

    assert progress(sids["+15550004001"]) == [("0", "initiated"), ("1", "busy")]
    assert progress(sids["+15550004002"]) == [("0", "initiated"), ("1", "ringing"), ("2", "no-answer")]
    assert progress(sids["+15550004003"]) == [("0", "initiated"), ("1", "failed")]
    assert service.statuses(sids["+15550004003"])[-1]["SipResponseCode"] == "480"
    answered = sids["+15550004004"]
    assert progress(answered) == [
        ("0", "initiated"),
        ("1", "ringing"),
        ("2", "in-progress"),
        ("3", "completed"),
    ]
    assert service.statuses(answered)[2]["AnsweredBy"] == "human"
    assert all(f["Direction"] == "outbound-api" for f in service.statuses(answered))

    voice = [f for f in service.voice_forms if f["CallSid"] == answered]
    assert len(voice) == 1 and voice[0]["CallStatus"] == "in-progress"
    assert (voice[0]["Direction"], voice[0]["AnsweredBy"]) == ("outbound-api", "human")
    call = sandbox.calls[answered]
    assert call.frames_received == 5 and call.marks_echoed == ["end:1"]
    assert [sandbox.calls[s].status for s in sids.values()] == ["busy", "no-answer", "failed", "completed"]
    fetched = await client.calls(answered).fetch_async()
    assert fetched.answered_by == "human" and fetched.status == "completed"


async def test_cancel_while_ringing(service: FakeService, sandbox: SandboxTwilio, client: Client) -> None:
    sandbox.set_behavior("+15550006001", PhoneBehavior(ring_s=30))
    created = await client.calls.create_async(
        to="+15550006001",
        from_=SANDBOX_NUMBER,
        url=service.base + "/twilio/voice",
        status_callback=service.base + "/twilio/status",
        status_callback_event=["initiated", "ringing", "answered", "completed"],
    )
    call = sandbox.calls[created.sid]
    await call.wait_for_status("ringing", T)
    with pytest.raises(TwilioRestException) as not_live:
        await client.calls(created.sid).update_async(twiml="<Response><Hangup/></Response>")
    assert not_live.value.code == 21220
    canceled = await client.calls(created.sid).update_async(status="canceled")
    assert canceled.status == "canceled"
    await call.wait_ended(T)
    progress = [(f["SequenceNumber"], f["CallStatus"]) for f in service.statuses(created.sid)]
    assert progress == [("0", "initiated"), ("1", "ringing"), ("2", "canceled")]
    assert service.voice_forms == [] and call.wav_path is None


async def test_default_status_callback_is_completed_only(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    sandbox.set_behavior("+15550005001", PhoneBehavior(hang_up_after_s=1))
    created = await client.calls.create_async(
        to="+15550005001",
        from_=SANDBOX_NUMBER,
        twiml=LONG_CALL,
        status_callback=service.base + "/twilio/status",
    )
    await sandbox.calls[created.sid].wait_ended(T)  # the callee hangs up after 1 s (sandbox clock)
    assert [(f["SequenceNumber"], f["CallStatus"]) for f in service.statuses(created.sid)] == [
        ("0", "completed")
    ]


async def test_application_errors_end_the_call(service: FakeService, sandbox: SandboxTwilio) -> None:
    service.voice_status = 500
    failed = await sandbox.call_in(CALLER)
    await failed.wait_ended(T)
    assert len(failed.application_errors) == 1 and failed.application_errors[0].startswith("11200 ")

    service.voice_status = 200
    service.after_connect = lambda r: r.play("https://x.test/a.mp3")
    unsupported = await sandbox.call_in(CALLER)
    await unsupported.wait_ended(T)
    assert ["<Play>" in e for e in unsupported.application_errors] == [True]
    assert service.sessions == []  # the document was rejected before any verb ran

    service.voice_body = "<Response><Say>unclosed</Response>"
    broken = await sandbox.call_in(CALLER)
    await broken.wait_ended(T)
    assert [e[:6] for e in broken.application_errors] == ["12100 "]


async def test_say_after_the_stream_and_hangup(service: FakeService, sandbox: SandboxTwilio) -> None:
    service.stream_handler = lambda s: close_after_mark(s, tone(3))
    service.after_connect = lambda r: (r.say("Goodbye"), r.hangup(), r.say("never"))
    call = await sandbox.call_in(CALLER)
    await call.wait_ended(T)
    assert call.said == ["Goodbye"]
    assert call.heard == b"".join(tone(3)) + synth("Goodbye")


async def test_control_api(service: FakeService, sandbox: SandboxTwilio) -> None:
    auth = AUTH_HEADERS
    async with aiohttp.ClientSession(base_url=sandbox.base_url) as http:
        async with http.post("/_sandbox/calls", json={"from": CALLER}) as r:
            assert r.status == 401
        async with http.post("/_sandbox/calls", json={"from": CALLER}, headers=auth) as r:
            assert r.status == 201
            sid = (await r.json())["sid"]
        session = await service.wait_session()
        await session.wait_for(lambda m: m["event"] == "start")
        async with http.post(f"/_sandbox/calls/{sid}/digits", json={"digits": "42"}, headers=auth) as r:
            assert r.status == 200
        assert [m["dtmf"]["digit"] for m in session.events("dtmf")] == ["4", "2"]
        async with http.post(f"/_sandbox/calls/{sid}/hangup", headers=auth) as r:
            assert r.status == 200
        await sandbox.calls[sid].wait_ended(T)
        async with http.get(f"/_sandbox/calls/{sid}", headers=auth) as r:
            summary = await r.json()
        assert summary["status"] == "completed" and summary["ended"] is True
        assert summary["wav_path"] == str(sandbox.recordings_dir / f"{sid}.wav")
        assert summary["protocol_errors"] == [] and summary["application_errors"] == []
        async with http.get("/_sandbox/calls/CA0", headers=auth) as r:
            assert r.status == 404
