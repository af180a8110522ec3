"""Agent bridge: the latency it adds each way and its CPU per bridged call-second, at 200 calls at once.

Issue 6's targets: agent `audio` message in -> Twilio `media` out, and Twilio `media` in ->
`user_audio_chunk` out, p99 <= 2 ms each way with 200 concurrent bridged calls; and the service's CPU per
bridged call-second.

How it runs (three processes, so the peers' work is not counted as the service's):

- the service: `python -m announcer.cli serve`, configured like a live deployment (credentials, strict
  numbers, SQLite), TWILIO_API_BASE_URL and ELEVENLABS_BASE_URL pointed at the peers below,
  ELEVENLABS_AGENT_ID set to the peer agent's id, TWILIO_CPS=50, MAX_CONCURRENT_CALLS above --calls.
- this process is Twilio: a lean REST server (Basic auth; create, update, fetch, list calls) and, for each
  created call, what Twilio does: signed status callbacks (`ringing`, `in-progress`, at the end
  `completed`), then the media websocket to the `<Stream>` URL of the call's inline TwiML (upgrade signed
  over the URL), `connected`, `start` carrying the `<Parameter name="token">` the TwiML holds, a `media`
  frame every 20 ms in real time, `mark` echoes once the audio sent before them would have played (a
  play-out clock per call), and `stop` when the caller hangs up. One clock drives every call's frames
  (20 slots of 1 ms, the calls spread over them: 200 phones do not speak in lockstep, and a burst of 200
  frames in the same millisecond would measure queueing behind the burst rather than the bridge).
- a child process (this script with --agent-peer) is ElevenLabs: the sandbox TTS (`SandboxElevenLabs`,
  the service prefetches its apology through it) with a lean Conversational AI extension: the signed-URL
  endpoint the SDK calls (`xi-api-key` checked) and the conversation websocket (signature checked), which
  sends `conversation_initiation_metadata` (ulaw_8000 both ways), one `agent_response`, then `audio` at
  real-time pace in chunks of odd sizes (1,500-6,000 bytes, never a multiple of 160: each chunk's tail
  waits in the bridge for the next chunk or its padding), a `ping` every 2-4 s (its `pong` round trip is
  reported too).
  The sandbox classes (`SandboxTwilio` with its phones, `SandboxConvAI` with its scripted agents) would
  synthesize speech, run phone clocks and record WAVs for 200 calls: too heavy to keep beside the service
  on two cores, hence these lean peers that speak the same wire protocols.

Calls are placed with `POST /outbound-call` (bearer auth): the agent has the call from its first second.

Latency is read from the audio itself. Each audio piece starts with a 21-byte tag: four 0x00 bytes (a
mu-law value the filler never uses), a kind byte, and the sender's `time.monotonic_ns()` as 16 bytes of
0x10 + nibble. CLOCK_MONOTONIC is system-wide on Linux, so the two peer processes compare their clocks
directly. The filler bytes are 0x80-0xFE (quiet noise, no 0x00) and the bridge's padding is 0xFF, so a tag
is found wherever the re-framing into 160-byte frames cuts it (a tag split across two frames counts from
the frame holding its first byte).
- Twilio -> agent: every 160-byte `media` frame starts with a tag; the bridge passes the base64 on untouched
  and the agent peer reads the tag from `user_audio_chunk`.
- agent -> Twilio: each agent chunk carries a tag at its start (the metric: the chunk in -> its first frame
  out) and a second one 180 bytes before its end, which always falls in the last whole frames the bridge
  sends for that chunk (reported as "last frame": the chunk's whole relay; its tail < 160 bytes waits for
  the next chunk or 80 ms and padding, by design, so the very last byte is not a bridge latency).
Only pieces sent inside the steady window count. Each peer also reports its own event-loop lag (how late a
10 ms sleep wakes) and CPU: a peer that is late to read its socket inflates the latencies, so read the
latencies together with those. The service's CPU = user+sys of its pid over the window / (bridged calls x
window seconds); RSS = VmRSS at the end of the window (VmHWM beside it).

`--baseline` runs the same peers through a minimal relay in place of the service (no database, token,
marks, padding, heartbeats or transcript): the floor of this apparatus on this machine at this load;
`--with-baseline` runs both back to back and prints the difference. They run one after the other, so compare
them only when their CPU pressure lines are alike.

Usage: .venv/bin/python benchmarks/agent_bridge.py [--calls 200] [--seconds 25] [--with-baseline]
       [--profile prof.txt] [--gc-log] [--dump samples.json]
(--profile attaches `py-spy record --nonblocking -f raw` to the service over the window; its sampling then
costs the machine CPU too, so take the CPU numbers from a run without it. --gc-log starts the service with a
collector callback that logs each collection over 2 ms with its CLOCK_MONOTONIC time, to set beside the
window's start printed by the run. --dump writes the agent -> Twilio samples for a look at their time series.)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import json
import math
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import WSMsgType, web
from harness import cpu_s, deployment_env, free_port, pct, phones, stop, wait_serving
from twilio.request_validator import RequestValidator

from announcer.sandbox import SandboxElevenLabs

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
ACCOUNT_SID = "AC" + secrets.token_hex(16)
AUTH_TOKEN = secrets.token_hex(16)
API_TOKEN = secrets.token_hex(16)
NUMBER = "+15550100000"
AGENT_ID = "agent_bench" + secrets.token_hex(6)
TARGET_MS = 2.0
CPS = 50
FRAME = 160
FRAME_S = 0.020
SLOTS = 20  # the Twilio clock's slots per 20 ms frame: the calls are spread over them
RING_S = 0.3  # create -> answered
API_VERSION = "2010-04-01"

# --- the tag: where a piece of audio says when it was sent ------------------------------------------------
MARKER = b"\x00\x00\x00\x00"
TAG_BYTES = 21
KIND_MEDIA, KIND_FIRST, KIND_LAST = 0, 1, 2
_rng = random.Random(6)
FILLER = bytes(_rng.randrange(0x80, 0xFF) for _ in range(8192))  # 0x80-0xFE: never 0x00, never padding


def tag(kind: int, ns: int) -> bytes:
    return MARKER + bytes([0x10 | kind]) + bytes(0x10 | ((ns >> s) & 0xF) for s in range(60, -4, -4))


def read_tag(data: bytes | memoryview, at: int) -> tuple[int, int] | None:
    """(kind, send time in ns) of the tag at `at`, None when those bytes are not one."""
    body = data[at + 4 : at + TAG_BYTES]
    if len(body) != TAG_BYTES - 4 or any(b & 0xF0 != 0x10 for b in body):
        return None
    ns = 0
    for b in body[1:]:
        ns = (ns << 4) | (b & 0xF)
    return body[0] & 0xF, ns


def summary(name: str, ms: list[float], target: float | None = None) -> str:
    if not ms:
        return f"{name}: no samples"
    p99 = pct(ms, 99)
    line = (
        f"{name}: p50 {pct(ms, 50):.3f} ms, p99 {p99:.3f} ms, max {max(ms):.3f} ms "
        f"(n={len(ms):,}, p90 {pct(ms, 90):.3f}, p99.9 {pct(ms, 99.9):.3f})"
    )
    if target is not None:
        line += f"; target p99 <= {target:g} ms: {'PASS' if p99 <= target else 'MISS'}"
    return line


class LagMeter:
    """How late a 10 ms sleep wakes up in this process: the peer's own scheduling delay."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (monotonic, lateness ms)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.010)
            now = time.monotonic()
            self.samples.append((now, (now - t - 0.010) * 1000))

    def between(self, t0: float, t1: float) -> list[float]:
        return [ms for at, ms in self.samples if t0 <= at <= t1]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# ===== the agent peer (its own process) ===================================================================


@dataclass(eq=False)
class AgentConversation:
    ws: web.WebSocketResponse
    audio_in: int = 0
    next_event: int = 1
    pings: dict[int, int] = field(default_factory=dict)  # event id -> sent ns


class LeanAgent:
    """ElevenLabs' Conversational AI, lean: signed URL + conversation websocket (an extension of the
    sandbox ElevenLabs app, which serves the TTS the service also uses)."""

    def __init__(self, api_key: str, agent_id: str) -> None:
        self.api_key = api_key
        self.agent_id = agent_id
        self._secret = secrets.token_bytes(16)
        self.open: set[AgentConversation] = set()
        self.bridged = 0  # conversations that received the caller's audio
        self.conversations = 0
        self.user_audio: list[tuple[int, int]] = []  # (sent ns, received ns) of media -> user_audio_chunk
        self.chunks_sent: list[int] = []  # sent ns of every audio chunk
        self.pongs: list[tuple[int, int]] = []  # (ping sent ns, pong received ns)
        self.unreadable = 0
        self.lag = LagMeter()
        self.cpu0 = 0.0

    def install(self, app: web.Application) -> None:
        app.router.add_get("/v1/convai/conversation/get-signed-url", self._signed_url)
        app.router.add_get("/v1/convai/conversation", self._conversation)
        app.router.add_get("/bench/status", self._status)
        app.router.add_get("/bench/results", self._results)

    async def close(self) -> None:
        for conv in list(self.open):
            await conv.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)

    def _sign(self, expires: int) -> str:
        mac = hmac.new(self._secret, f"{self.agent_id}\n{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    async def _signed_url(self, request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get("xi-api-key", "").encode(), self.api_key.encode()):
            return web.json_response({"detail": {"status": "invalid_api_key", "message": "no"}}, status=401)
        if request.query.get("agent_id") != self.agent_id:
            return web.json_response({"detail": {"status": "agent_not_found", "message": "?"}}, status=404)
        query = urlencode(
            {"agent_id": self.agent_id, "conversation_signature": self._sign(int(time.time()) + 900)}
        )
        return web.json_response({"signed_url": f"ws://{request.host}/v1/convai/conversation?{query}"})

    async def _conversation(self, request: web.Request) -> web.StreamResponse:
        signature = request.query.get("conversation_signature", "")
        expires = signature.partition(".")[0]
        if not expires.isdigit() or not hmac.compare_digest(signature, self._sign(int(expires))):
            return web.json_response({"detail": {"status": "invalid_signature", "message": "no"}}, status=403)
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4 * 2**20)
        await ws.prepare(request)
        conv = AgentConversation(ws)
        self.open.add(conv)
        self.conversations += 1
        speaking: asyncio.Task[None] | None = None
        try:
            first = await ws.receive(timeout=10)
            if first.type != WSMsgType.TEXT or "conversation_initiation_client_data" not in first.data:
                return ws
            meta = {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": "conv_" + secrets.token_hex(12),
                    "agent_output_audio_format": "ulaw_8000",
                    "user_input_audio_format": "ulaw_8000",
                },
            }
            await ws.send_str(json.dumps(meta))
            await ws.send_str(
                '{"type":"agent_response","agent_response_event":{"agent_response":"Hello, how can I help?"}}'
            )
            speaking = asyncio.create_task(self._speak(conv))
            await self._listen(conv)
        finally:
            self.open.discard(conv)
            if speaking is not None:
                speaking.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                    await speaking
        return ws

    async def _listen(self, conv: AgentConversation) -> None:
        prefix = '{"user_audio_chunk":"'
        got = self.user_audio.append
        async for msg in conv.ws:
            if msg.type != WSMsgType.TEXT:
                continue
            now = time.monotonic_ns()
            raw: str = msg.data
            if raw.startswith(prefix):
                if conv.audio_in == 0:
                    self.bridged += 1
                conv.audio_in += 1
                at = len(prefix)
                found = read_tag(base64.b64decode(raw[at : at + 28]), 0)
                if found is None or found[0] != KIND_MEDIA:
                    self.unreadable += 1
                else:
                    got((found[1], now))
            elif '"pong"' in raw:
                sent = conv.pings.pop(int(json.loads(raw)["event_id"]), None)
                if sent is not None:
                    self.pongs.append((sent, now))

    async def _speak(self, conv: AgentConversation) -> None:
        """Audio at real-time pace, odd-sized chunks, a ping every 2-4 s."""
        rng = random.Random()
        loop = asyncio.get_running_loop()
        at = loop.time() + rng.uniform(0.05, 0.5)
        next_ping = at + rng.uniform(1.0, 3.0)
        ws = conv.ws
        while not ws.closed:
            await asyncio.sleep(max(0.0, at - loop.time()))
            size = rng.randrange(1500, 6000)
            if size % FRAME == 0:
                size += 1
            event_id = conv.next_event
            conv.next_event += 1
            now = time.monotonic_ns()
            chunk = bytearray(FILLER[:size])
            chunk[0:TAG_BYTES] = tag(KIND_FIRST, now)
            chunk[size - 180 : size - 180 + TAG_BYTES] = tag(KIND_LAST, now)
            audio = base64.b64encode(chunk).decode("ascii")
            await ws.send_str(
                '{"type":"audio","audio_event":{"audio_base_64":"'
                + audio
                + '","event_id":'
                + str(event_id)
                + "}}"
            )
            self.chunks_sent.append(now)
            # The bridge pads each chunk's tail to a whole frame: pace by the frames it will play.
            at += math.ceil(size / FRAME) * FRAME_S
            if at >= next_ping:
                event_id = conv.next_event
                conv.next_event += 1
                conv.pings[event_id] = time.monotonic_ns()
                await ws.send_str(
                    '{"type":"ping","ping_event":{"event_id":' + str(event_id) + ',"ping_ms":40}}'
                )
                next_ping += rng.uniform(2.0, 4.0)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"open": len(self.open), "bridged": self.bridged, "opened": self.conversations}
        )

    async def _results(self, request: web.Request) -> web.Response:
        t0, t1 = int(request.query["t0"]), int(request.query["t1"])
        user = [(r - s) / 1e6 for s, r in self.user_audio if t0 <= s <= t1]
        pongs = [(r - s) / 1e6 for s, r in self.pongs if t0 <= s <= t1]
        lag = self.lag.between(t0 / 1e9, t1 / 1e9)
        return web.json_response(
            {
                "user_audio_ms": user,
                "pong_ms": pongs,
                "chunks_sent": sum(1 for s in self.chunks_sent if t0 <= s <= t1),
                "unreadable": self.unreadable,
                "lag_ms": lag,
                "cpu_s": time.process_time() - self.cpu0,
            }
        )


async def agent_peer(api_key: str, agent_id: str) -> None:
    agent = LeanAgent(api_key, agent_id)
    tts = SandboxElevenLabs(api_key=api_key, synthesize=lambda text: b"\xff" * 8000, extensions=[agent])
    base = await tts.start()
    gc.collect()
    gc.freeze()
    agent.lag.start()
    agent.cpu0 = time.process_time()
    print(f"READY {base}", flush=True)
    try:
        await asyncio.Event().wait()  # until the benchmark terminates this process
    finally:
        await tts.close()


# ===== --baseline: the least a relay can do, in place of the service =====================================


async def relay_peer(port: int, el_base: str, api_key: str, agent_id: str) -> None:
    """Twilio media <-> agent with nothing else: no database, no token, no marks, no padding, no
    transcript. The same peers measure it, so its numbers are the floor of this apparatus on this machine
    at this load: what the bridge adds is the difference."""
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    key = '"payload":"'

    async def media(request: web.Request) -> web.WebSocketResponse:
        tw = web.WebSocketResponse(compress=False)
        await tw.prepare(request)
        sid = ""
        async for msg in tw:
            event = json.loads(msg.data)
            if event["event"] == "start":
                sid = event["start"]["streamSid"]
                break
        query = {"agent_id": agent_id}
        url = el_base + "/v1/convai/conversation/get-signed-url"
        async with http.get(url, params=query, headers={"xi-api-key": api_key}) as resp:
            signed = (await resp.json())["signed_url"]
        agent = await http.ws_connect(signed, compress=0)
        await agent.send_str('{"type":"conversation_initiation_client_data"}')

        async def to_twilio() -> None:
            rest = b""
            async for m in agent:
                event = json.loads(m.data)
                if event["type"] == "audio":
                    data = rest + base64.b64decode(event["audio_event"]["audio_base_64"])
                    whole = len(data) - len(data) % FRAME
                    for i in range(0, whole, FRAME):
                        payload = base64.b64encode(data[i : i + FRAME]).decode()
                        await tw.send_str(
                            '{"event":"media","streamSid":"'
                            + sid
                            + '","media":{"payload":"'
                            + payload
                            + '"}}'
                        )
                    rest = data[whole:]
                elif event["type"] == "ping":
                    await agent.send_str(f'{{"type":"pong","event_id":{event["ping_event"]["event_id"]}}}')

        relaying = asyncio.create_task(to_twilio())
        async for msg in tw:
            raw: str = msg.data
            if raw.startswith('{"event":"media"'):
                at = raw.index(key) + len(key)
                await agent.send_str('{"user_audio_chunk":"' + raw[at : raw.index('"', at)] + '"}')
            elif raw.startswith('{"event":"stop"'):
                break
        relaying.cancel()
        await agent.close()
        return tw

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/twilio/media", media)
    app.router.add_get("/healthz", healthz)
    gc.collect()
    gc.freeze()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()  # until the benchmark terminates this process
    finally:
        await http.close()
        await runner.cleanup()


# ===== Twilio (this process) ==============================================================================


@dataclass(eq=False)
class TwilioCall:
    index: int
    sid: str
    to: str
    stream_url: str
    token: str
    status_url: str | None
    status: str = "queued"
    stream_sid: str = "MZ" + secrets.token_hex(16)
    ws: aiohttp.ClientWebSocketResponse | None = None
    seq: int = 0
    chunk: int = 0
    callback_seq: int = 0
    play_end: float = 0.0  # when the audio received so far will have played
    marks: deque[tuple[float, str]] = field(default_factory=deque)
    created: float = field(default_factory=time.time)  # when its create arrived (wall clock)
    carry: bytes = b""  # the previous frame's last bytes: a tag may straddle two frames
    carry_ns: int = 0
    frames_in: int = 0
    answered_at: float | None = None
    bridged_at: float | None = None  # the first agent frame arrived
    stopped: bool = False

    def next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)


class LeanTwilio:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.validator = RequestValidator(AUTH_TOKEN)
        self.calls: dict[str, TwilioCall] = {}
        self.slots: list[list[TwilioCall]] = [[] for _ in range(SLOTS)]
        self.agent_audio: list[tuple[int, int, int]] = []  # (kind, sent ns, received ns)
        self.rest_log: list[tuple[str, str, int]] = []  # (method, path, status)
        self.media_sent = 0
        self.marks_echoed = 0
        self.hangups = 0
        self.window_counts = (0, 0)  # media sent, marks echoed in the steady window
        self.send_late: list[tuple[float, float]] = []  # (monotonic, ms) the clock's slot ran late
        self.lag = LagMeter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = True
        self._auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        self._media_payload = FILLER[TAG_BYTES:FRAME]

    # --- REST ---------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._log_and_auth])
        base = f"/{API_VERSION}/Accounts/{{account}}"
        app.router.add_post(base + "/Calls.json", self._create)
        app.router.add_get(base + "/Calls.json", self._list)
        app.router.add_post(base + "/Calls/{sid}.json", self._update)
        app.router.add_get(base + "/Calls/{sid}.json", self._fetch)
        return app

    @web.middleware
    async def _log_and_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if (
            request.headers.get("Authorization") != self._auth
            or request.match_info.get("account") != ACCOUNT_SID
        ):
            response: web.StreamResponse = _rest_error(401, 20003, "Authenticate")
        else:
            response = await handler(request)
        self.rest_log.append((request.method, request.path, response.status))
        return response

    def _resource(self, call: TwilioCall) -> dict[str, Any]:
        return {
            "sid": call.sid,
            "account_sid": ACCOUNT_SID,
            "to": call.to,
            "from": NUMBER,
            "status": call.status,
            "direction": "outbound-api",
            "api_version": API_VERSION,
            "date_created": formatdate(usegmt=True),
            "start_time": None,
            "uri": f"/{API_VERSION}/Accounts/{ACCOUNT_SID}/Calls/{call.sid}.json",
        }

    async def _create(self, request: web.Request) -> web.Response:
        form = await request.post()
        twiml = str(form.get("Twiml", ""))
        stream = ET.fromstring(twiml).find("./Connect/Stream")
        if stream is None:
            return _rest_error(400, 21205, "this lean Twilio only runs <Connect><Stream> TwiML")
        params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        call = TwilioCall(
            index=len(self.calls),
            sid="CA" + secrets.token_hex(16),
            to=str(form["To"]),
            stream_url=str(stream.get("url")),
            token=str(params.get("token", "")),
            status_url=str(form["StatusCallback"]) if form.get("StatusCallback") else None,
        )
        self.calls[call.sid] = call
        self._spawn(self._answer(call))
        return web.json_response(self._resource(call), status=201)

    def place_direct(self, stream_url: str) -> None:
        """--baseline: a call to the relay, with no REST request and no callbacks."""
        call = TwilioCall(len(self.calls), "CA" + secrets.token_hex(16), "", stream_url, "", None)
        self.calls[call.sid] = call
        self._spawn(self._answer(call))

    async def _list(self, request: web.Request) -> web.Response:
        """GET Calls.json filtered by `To` and `StartTime>` as Twilio does (a service that restarted asks it
        for the calls a claim without a SID placed; an empty list would have it dial them again)."""
        to = request.query.get("To")
        after = request.query.get("StartTime>")
        since = None
        if after:  # the SDK sends ISO 8601 ("...Z"); RFC 2822 read too
            moment = parsedate_to_datetime(after) if "," in after else datetime.fromisoformat(after)
            since = moment.timestamp()
        found = [
            self._resource(c)
            for c in self.calls.values()
            if (to is None or c.to == to) and (since is None or c.created >= since)
        ]
        return web.json_response({"calls": found, "end": len(found), "page": 0, "page_size": 50, "start": 0})

    async def _fetch(self, request: web.Request) -> web.Response:
        call = self.calls.get(request.match_info["sid"])
        if call is None:
            return _rest_error(404, 20404, "not found")
        return web.json_response(self._resource(call))

    async def _update(self, request: web.Request) -> web.Response:
        call = self.calls.get(request.match_info["sid"])
        if call is None or call.status == "completed":
            return _rest_error(404, 20404, "not found")
        form = await request.post()
        if form.get("Status") in ("completed", "canceled"):
            self.hangups += 1
            self._spawn(self.hang_up(call))
        return web.json_response(self._resource(call))

    # --- one call -----------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sign(self, url: str, params: dict[str, str]) -> str:
        return str(self.validator.compute_signature(url, params))

    async def _status(self, call: TwilioCall, status: str, **extra: str) -> None:
        call.status = status
        if call.status_url is None:
            return
        form = {
            "CallSid": call.sid,
            "AccountSid": ACCOUNT_SID,
            "From": NUMBER,
            "To": call.to,
            "Direction": "outbound-api",
            "ApiVersion": API_VERSION,
            "CallStatus": status,
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(call.callback_seq),
            "Timestamp": formatdate(usegmt=True),
            **extra,
        }
        call.callback_seq += 1
        headers = {"X-Twilio-Signature": self._sign(call.status_url, form)}
        async with self.http.post(call.status_url, data=form, headers=headers) as resp:
            if resp.status >= 300:
                print(f"status callback {status} for {call.sid}: HTTP {resp.status}", flush=True)

    async def _answer(self, call: TwilioCall) -> None:
        await self._status(call, "ringing")
        await asyncio.sleep(RING_S)
        call.answered_at = time.monotonic()
        await self._status(call, "in-progress")
        ws = await self.http.ws_connect(
            call.stream_url, headers={"X-Twilio-Signature": self._sign(call.stream_url, {})}, compress=0
        )
        call.ws = ws
        await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {
            "event": "start",
            "sequenceNumber": call.next_seq(),
            "start": {
                "accountSid": ACCOUNT_SID,
                "streamSid": call.stream_sid,
                "callSid": call.sid,
                "tracks": ["inbound"],
                "customParameters": {"token": call.token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": call.stream_sid,
        }
        await ws.send_str(json.dumps(start))
        self.slots[call.index % SLOTS].append(call)
        await self._receive(call, ws)

    async def _receive(self, call: TwilioCall, ws: aiohttp.ClientWebSocketResponse) -> None:
        got = self.agent_audio.append
        b64decode = base64.b64decode
        key = '"payload":"'
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            now = time.monotonic_ns()
            raw: str = msg.data
            if raw.startswith('{"event":"media"'):
                at = raw.index(key) + len(key)
                frame = b64decode(raw[at : raw.index('"', at)])
                call.frames_in += 1
                if call.bridged_at is None:
                    call.bridged_at = time.monotonic()
                loop_t = asyncio.get_running_loop().time()
                call.play_end = max(call.play_end, loop_t) + len(frame) / 8000
                carry = call.carry
                data = carry + frame
                p = data.find(MARKER)
                while p >= 0:
                    if p + TAG_BYTES > len(data):
                        break  # completed by the next frame (it is in the carry then)
                    if p + TAG_BYTES > len(carry):  # not already read with the previous frame
                        found = read_tag(data, p)
                        if found is not None:
                            got((found[0], found[1], call.carry_ns if p < len(carry) else now))
                    p = data.find(MARKER, p + 1)
                call.carry, call.carry_ns = frame[-(TAG_BYTES - 1) :], now
            elif raw.startswith('{"event":"mark"'):
                name = json.loads(raw)["mark"]["name"]
                call.marks.append((call.play_end, name))
            elif raw.startswith('{"event":"clear"'):
                call.play_end = 0.0
                for _, name in call.marks:
                    await self._echo(call, name)
                call.marks.clear()

    async def _echo(self, call: TwilioCall, name: str) -> None:
        if call.ws is None or call.ws.closed:
            return
        msg = {
            "event": "mark",
            "sequenceNumber": call.next_seq(),
            "streamSid": call.stream_sid,
            "mark": {"name": name},
        }
        await call.ws.send_str(json.dumps(msg))
        self.marks_echoed += 1

    async def _tick(self, call: TwilioCall, loop_t: float) -> None:
        ws = call.ws
        if ws is None or ws.closed or call.stopped:
            return
        while call.marks and call.marks[0][0] <= loop_t:
            await self._echo(call, call.marks.popleft()[1])
        call.chunk += 1
        payload = base64.b64encode(tag(KIND_MEDIA, time.monotonic_ns()) + self._media_payload).decode("ascii")
        await ws.send_str(
            f'{{"event":"media","sequenceNumber":"{call.next_seq()}","streamSid":"{call.stream_sid}",'
            f'"media":{{"track":"inbound","chunk":"{call.chunk}","timestamp":"{call.chunk * 20}",'
            f'"payload":"{payload}"}}}}'
        )
        self.media_sent += 1

    async def clock(self) -> None:
        """One clock for every phone: slot k of each 20 ms sends the frames of the calls in slot k."""
        loop = asyncio.get_running_loop()
        step = FRAME_S / SLOTS
        due = loop.time()
        k = 0
        while self._running:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            self.send_late.append((time.monotonic(), (now - due) * 1000))
            for call in self.slots[k]:
                await self._tick(call, now)
            k = (k + 1) % SLOTS
            due += step
            if now - due > 0.2:  # far behind (a stall): skip ahead rather than burst
                due = now

    async def hang_up(self, call: TwilioCall) -> None:
        """The call ends: `stop` on its stream, the socket closed, the `completed` callback."""
        if call.stopped:
            return
        call.stopped = True
        ws = call.ws
        if ws is not None and not ws.closed:
            stop = {
                "event": "stop",
                "sequenceNumber": call.next_seq(),
                "streamSid": call.stream_sid,
                "stop": {"accountSid": ACCOUNT_SID, "callSid": call.sid},
            }
            with contextlib.suppress(ConnectionResetError):
                await ws.send_str(json.dumps(stop))
            await ws.close()
        duration = str(round(time.monotonic() - call.answered_at)) if call.answered_at else "0"
        await self._status(call, "completed", CallDuration=duration)

    async def close(self) -> None:
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _rest_error(status: int, code: int, message: str) -> web.Response:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}"}
    return web.json_response({**body, "status": status}, status=status)


# ===== orchestration ======================================================================================


# --gc-log: the service, started with a collector callback that logs every collection over 2 ms.
GC_LOGGER = """
import gc, runpy, sys, time
began = {}
def watch(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    elif (took := time.perf_counter() - began.get(0, time.perf_counter())) > 0.002:
        print(f"GC gen{info['generation']} {took * 1000:.1f} ms at {time.monotonic():.3f}", file=sys.stderr)
gc.callbacks.append(watch)
sys.argv = ["announcer.cli", "serve"]
runpy.run_module("announcer.cli", run_name="__main__")
"""


def dump(path: str, samples: list[tuple[int, int, int]]) -> None:
    Path(path).write_text(json.dumps(samples))


def run_queue_wait_s(pid: int) -> float:
    """How long `pid` has been runnable but waiting for a CPU (/proc/PID/schedstat, field 2)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def cpu_pressure_s() -> float:
    """The time some runnable task waited for a CPU, machine-wide (/proc/pressure/cpu, `some total`)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return int(line.rsplit("total=", 1)[1]) / 1e6
    return float("nan")


def contention(pids: dict[str, int]) -> dict[str, float]:
    return {"pressure": cpu_pressure_s(), **{name: run_queue_wait_s(pid) for name, pid in pids.items()}}


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


async def start_agent_peer(api_key: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--agent-peer",
        "--agent-key",
        api_key,
        "--agent-id",
        AGENT_ID,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
    if not line.startswith("READY "):
        raise SystemExit(f"agent peer did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


async def main(args: argparse.Namespace) -> None:
    runs = [await measure(args, baseline=args.baseline)]
    if args.with_baseline and not args.baseline:
        runs.append(await measure(args, baseline=True))
        bridge, floor = runs
        lines = ["", "== the bridge over the minimal relay, same peers, back to back =="]
        for k, name in (("up", "agent -> Twilio"), ("down", "Twilio -> agent")):
            (b50, b99), (f50, f99) = bridge[k], floor[k]
            lines.append(
                f"{name}: p50 {b50:.3f} vs {f50:.3f} ms ({b50 - f50:+.3f}), p99 {b99:.3f} vs {f99:.3f} ms "
                f"({b99 - f99:+.3f})"
            )
        lines.append(
            f"CPU per call-second: {bridge['cpu'][0]:.2f} ms vs the relay's {floor['cpu'][0]:.2f} ms"
        )
        print("\n".join(lines), flush=True)


async def measure(args: argparse.Namespace, *, baseline: bool) -> dict[str, tuple[float, float]]:
    work = Path(tempfile.mkdtemp(prefix="announcer-bench-agent-"))
    el_key = secrets.token_hex(16)
    load_before = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} / {load_before[1]:.2f} at start",
        flush=True,
    )
    agent_proc, el_base = await start_agent_peer(el_key)
    if args.pin:
        # The peers share CPU 0, the service (below) has CPU 1: as a deployment gives the service its
        # own core, the latencies then count what the bridge does, not its wait behind the peers.
        os.sched_setaffinity(0, {0})
        os.sched_setaffinity(agent_proc.pid, {0})
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    http = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=120), connector=aiohttp.TCPConnector(limit=0)
    )
    twilio = LeanTwilio(http)
    runner = web.AppRunner(twilio.app(), access_log=None)
    await runner.setup()
    rest_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", rest_port).start()
    env = deployment_env(
        port=port,
        twilio=(ACCOUNT_SID, AUTH_TOKEN, NUMBER, f"http://127.0.0.1:{rest_port}"),
        elevenlabs=(el_key, el_base),
        database_url=f"sqlite+aiosqlite:///{work / 'announcer.db'}",
        data_dir=work / "data",
        api_token=API_TOKEN,
        cps=CPS,
        max_calls=args.calls + 20,
        log_level="WARNING",
        ELEVENLABS_AGENT_ID=AGENT_ID,
    )
    log = work / "service.log"
    command = ["-m", "announcer.cli", "serve"]
    if args.gc_log:
        command = ["-c", GC_LOGGER]
    if baseline:
        command = [str(SCRIPT), "--relay-peer", "--port", str(port), "--el-base", el_base]
        command += ["--agent-key", el_key, "--agent-id", AGENT_ID]
    with log.open("wb") as sink:
        service = await asyncio.create_subprocess_exec(
            sys.executable, *command, env=env, cwd=ROOT, stdout=sink, stderr=sink
        )
    if args.pin:
        os.sched_setaffinity(service.pid, {1})
        print("pinned: the service on CPU 1, both peers on CPU 0", flush=True)
    clock: asyncio.Task[None] | None = None
    try:
        await wait_serving(http, public, service, log)
        gc.collect()
        gc.freeze()
        twilio.lag.start()
        clock = asyncio.create_task(twilio.clock())
        if baseline:
            for _ in range(args.calls):
                twilio.place_direct(public.replace("http", "ws", 1) + "/twilio/media")
                await asyncio.sleep(1 / CPS)
        else:
            await place_calls(http, public, args.calls)
        await wait_bridged(http, el_base, twilio, args.calls, agent_proc)
        await asyncio.sleep(args.settle)
        # --- the steady window ---
        bridged_before = sum(1 for c in twilio.calls.values() if c.bridged_at is not None and not c.stopped)
        t0_ns = time.monotonic_ns()
        print(f"steady window from monotonic {t0_ns / 1e9:.3f} for {args.seconds:g} s", flush=True)
        cpu0, own0, agent_cpu0 = cpu_s(service.pid), time.process_time(), cpu_s(agent_proc.pid)
        pids = {"service": service.pid, "Twilio peer": os.getpid(), "agent peer": agent_proc.pid}
        waits0 = contention(pids)
        load0 = os.getloadavg()[0]
        frames0 = {c.sid: c.frames_in for c in twilio.calls.values()}
        media0, marks0 = twilio.media_sent, twilio.marks_echoed
        profiler = None
        if args.profile:
            spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
            profiler = await asyncio.create_subprocess_exec(
                spy, "record", "--nonblocking", "-p", str(service.pid), "-d", str(int(args.seconds)),
                "-f", "raw", "-o", args.profile + (".baseline" if baseline else ""),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        await asyncio.sleep(args.seconds)
        t1_ns = time.monotonic_ns()
        cpu1, own1, agent_cpu1 = cpu_s(service.pid), time.process_time(), cpu_s(agent_proc.pid)
        waits = {k: v - waits0[k] for k, v in contention(pids).items()}
        twilio.window_counts = (twilio.media_sent - media0, twilio.marks_echoed - marks0)
        load1 = os.getloadavg()[0]
        rss, hwm = proc_status(service.pid, "VmRSS"), proc_status(service.pid, "VmHWM")
        window = (t1_ns - t0_ns) / 1e9
        live = [c for c in twilio.calls.values() if c.bridged_at is not None and not c.stopped]
        # A call counts as bridged through the window when agent frames kept coming (>= 80 % of real time).
        through = [c for c in live if c.frames_in - frames0.get(c.sid, 0) >= 0.8 * window / FRAME_S]
        if profiler is not None:
            await profiler.wait()
        async with http.get(el_base + f"/bench/results?t0={t0_ns}&t1={t1_ns}") as resp:
            agent = await resp.json()
        cpus = (cpu1 - cpu0, own1 - own0, agent_cpu1 - agent_cpu0)
        if args.dump:  # (kind, sent ns, received ns) of every agent-audio tag, for a look at the time series
            dump(args.dump + (".baseline" if baseline else ""), twilio.agent_audio)
        return report(args, baseline, twilio, agent, t0_ns, t1_ns, *cpus,
                      (load0, load1), rss, hwm, bridged_before, len(through), log, waits)  # fmt: skip
    finally:
        for call in list(twilio.calls.values()):
            twilio._spawn(twilio.hang_up(call))
        await asyncio.sleep(1.0)
        if clock is not None:
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock
        await twilio.lag.stop()
        await stop(service)
        await twilio.close()
        await runner.cleanup()
        await http.close()
        await stop(agent_proc)


async def place_calls(http: aiohttp.ClientSession, public: str, n: int) -> None:
    numbers = phones(n)
    gate = asyncio.Semaphore(25)
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    failures: list[str] = []

    async def one(number: str) -> None:
        body = {"number": number, "prompt": "You are a helpful assistant.", "first_message": "Hello!"}
        async with gate, http.post(public + "/outbound-call", json=body, headers=headers) as resp:
            if resp.status != 200:
                failures.append(f"{resp.status} {(await resp.text())[:200]}")

    t0 = time.monotonic()
    await asyncio.gather(*(one(p) for p in numbers))
    if failures:
        raise SystemExit(f"{len(failures)} /outbound-call refused, e.g. {failures[0]}")
    print(f"placed {n} calls with POST /outbound-call in {time.monotonic() - t0:.1f} s", flush=True)


async def wait_bridged(
    http: aiohttp.ClientSession,
    el_base: str,
    twilio: LeanTwilio,
    n: int,
    agent_proc: asyncio.subprocess.Process,
) -> None:
    t0 = time.monotonic()
    status: dict[str, Any] = {}
    while time.monotonic() - t0 < 60 + n / CPS:
        async with http.get(el_base + "/bench/status") as resp:
            status = await resp.json()
        out = sum(1 for c in twilio.calls.values() if c.bridged_at is not None)
        if status["bridged"] >= n and out >= n:
            print(
                f"all {n} calls bridged both ways {time.monotonic() - t0:.1f} s after the last POST",
                flush=True,
            )
            return
        if agent_proc.returncode is not None:
            raise SystemExit("the agent peer died")
        await asyncio.sleep(0.25)
    out = sum(1 for c in twilio.calls.values() if c.bridged_at is not None)
    raise SystemExit(f"not all calls bridged: agent side {status}, Twilio side {out} of {n}")


def report(
    args: argparse.Namespace,
    baseline: bool,
    twilio: LeanTwilio,
    agent: dict[str, Any],
    t0_ns: int,
    t1_ns: int,
    service_cpu: float,
    own_cpu: float,
    agent_cpu: float,
    load: tuple[float, float],
    rss_kib: int,
    hwm_kib: int,
    bridged: int,
    through: int,
    log: Path,
    waits: dict[str, float],
) -> dict[str, tuple[float, float]]:
    window = (t1_ns - t0_ns) / 1e9
    first = [(r - s) / 1e6 for k, s, r in twilio.agent_audio if k == KIND_FIRST and t0_ns <= s <= t1_ns]
    last = [(r - s) / 1e6 for k, s, r in twilio.agent_audio if k == KIND_LAST and t0_ns <= s <= t1_ns]
    user = list(agent["user_audio_ms"])
    t0, t1 = t0_ns / 1e9, t1_ns / 1e9
    late = [ms for at, ms in twilio.send_late if t0 <= at <= t1]
    own_lag = twilio.lag.between(t0, t1)
    call_s = through * window
    errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
    warnings = [line for line in log.read_text(errors="replace").splitlines() if " WARNING " in line]
    up = first and pct(first, 99) <= TARGET_MS
    down = user and pct(user, 99) <= TARGET_MS
    lines = [
        "",
        f"== agent bridge: {args.calls} calls via POST /outbound-call, steady window {window:.1f} s =="
        if not baseline
        else f"== BASELINE: {args.calls} calls through a minimal relay in place of the service (its CPU "
        f"and RSS below are the relay's), steady window {window:.1f} s ==",
        f"bridged calls: {bridged} at the window's start, {through} bridged through it -> "
        f"{call_s:,.0f} bridged call-seconds",
        summary("agent audio in -> Twilio media out (chunk -> its first frame)", first, TARGET_MS),
        summary("   the same chunk -> its last whole frame (whole relay)", last),
        summary("Twilio media in -> user_audio_chunk out", user, TARGET_MS),
        summary("agent ping -> pong (round trip through the bridge)", list(agent["pong_ms"])),
        f"service CPU: {service_cpu:.2f} s over {window:.1f} s = {service_cpu / window * 100:.0f}% of one "
        f"core; "
        f"{service_cpu / call_s * 1000:.2f} ms CPU per bridged call-second "
        f"(-> one core holds ~{call_s / service_cpu:.0f} bridged calls)",
        f"service RSS at the window's end {rss_kib / 1024:.0f} MiB (VmHWM {hwm_kib / 1024:.0f} MiB), "
        f"{rss_kib / 1024 / max(1, through):.2f} MiB per call incl. the base",
        f"messages in the window: Twilio media sent {twilio.window_counts[0]:,}, their tags back "
        f"{len(user):,}; agent chunks sent {agent['chunks_sent']:,}, first-frame tags back {len(first):,}; "
        f"unreadable user audio {agent['unreadable']}; marks echoed {twilio.window_counts[1]:,}; REST "
        f"hang-ups {twilio.hangups}",
        f"peers (their delays count in the latencies): Twilio clock slot late p50 {pct(late, 50):.2f} / "
        f"p99 {pct(late, 99):.2f} ms; Twilio loop lag p99 {pct(own_lag, 99):.2f} ms max "
        f"{max(own_lag, default=0):.2f}; agent loop lag p99 {pct(agent['lag_ms'], 99):.2f} ms max "
        f"{max(agent['lag_ms'], default=0):.2f}; CPU Twilio peer {own_cpu / window * 100:.0f}%, agent peer "
        f"{agent_cpu / window * 100:.0f}% of one core",
        f"load average {load[0]:.2f} at the window's start, {load[1]:.2f} at its end ({os.cpu_count()} "
        f"CPUs); CPU pressure (some task waiting for a CPU) {waits['pressure'] / window * 100:.0f}% of the "
        f"window; runnable but waiting for a CPU: "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in waits.items() if k != "pressure")
        + "; "
        f"service log: {len(errors)} ERROR, {len(warnings)} WARNING lines ({log})",
        f"verdict: Twilio->agent p99 {'PASS' if down else 'MISS'}, "
        f"agent->Twilio p99 {'PASS' if up else 'MISS'}",
    ]
    if errors:
        lines.append("   first error: " + errors[0][:300])
    print("\n".join(lines), flush=True)
    return {
        "up": (pct(first, 50), pct(first, 99)),
        "down": (pct(user, 50), pct(user, 99)),
        "cpu": (service_cpu / call_s * 1000, 0.0),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200, help="concurrent bridged calls")
    parser.add_argument("--seconds", type=float, default=25.0, help="the steady window")
    parser.add_argument("--settle", type=float, default=3.0, help="wait after all calls are bridged")
    parser.add_argument("--profile", help="py-spy raw profile of the service over the window, to this file")
    parser.add_argument(
        "--with-baseline", action="store_true", help="then --baseline, and the difference (twice as long)"
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="the same peers through a minimal relay instead of the service",
    )
    parser.add_argument(
        "--pin", action="store_true", help="the service on CPU 1, the peers on CPU 0 (needs 2 CPUs)"
    )
    parser.add_argument("--gc-log", action="store_true", help="log the service's collections over 2 ms")
    parser.add_argument("--dump", help="the agent -> Twilio samples (kind, sent ns, received ns), as JSON")
    parser.add_argument("--agent-peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay-peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--el-base", help=argparse.SUPPRESS)
    parser.add_argument("--agent-key", help=argparse.SUPPRESS)
    parser.add_argument("--agent-id", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_peer:
        asyncio.run(agent_peer(args.agent_key, args.agent_id))
    elif args.relay_peer:
        asyncio.run(relay_peer(args.port, args.el_base, args.agent_key, args.agent_id))
    else:
        asyncio.run(main(args))
