"""Capacity, part (a): steady media streaming at 300 / 600 / 1,000 concurrent calls on one core.

Issue 15 point 5: 1,000 concurrent streams on one core with every frame on time. The service
(`python -m announcer.cli serve`, configured like a live deployment on SQLite) is pinned to CPU 1; this
process, the load generator, is pinned to CPU 0 and plays Twilio:

- a lean REST server (Basic auth; create, update, fetch, list calls). A create's inline TwiML gives the
  `<Stream>` URL and its `<Parameter name="token">`; the call is answered RING_S later. No status callbacks
  are sent (their cost is set-up, measured by `capacity.py setup`, not streaming).
- the media websocket of each call over a raw asyncio socket (aiohttp's client is too heavy for 1,000
  sockets beside the service): the HTTP upgrade, then masked client frames as Twilio's: `connected`,
  `start` carrying the token, a `media` frame every 20 ms (pre-encoded per call: the same 160 bytes of
  silence each time, its sequence numbers fixed; the service's fast path does not read them), `mark`
  echoes once the audio sent before the mark has played, `stop` and a close when the service hangs up.
  One clock drives every call's frames (20 slots of 1 ms, the calls spread over them, as 1,000 phones
  are not in lockstep).
- the phone side: each call's play-out, a jitter buffer of JITTER_S: play-out starts JITTER_S after the
  first frame arrives; a frame arriving after the audio before it has finished playing is an underrun
  (the phone plays silence, and refills its jitter buffer before playing on).
- ElevenLabs: the sandbox TTS in this process, one long premade clip for the alert's one text (the
  service synthesizes it once; every call then streams it from the cache).

The calls are placed through the service (`POST /v1/alerts`, TWILIO_CPS=--cps, so Twilio's ramp of about
100 starts a second), in stages: up to 300, then 600, then 1,000 live streams; at each stage, after
--settle seconds, a window of --seconds measures:
  - CPU per call-second: the service's user+sys CPU over the window / (live calls x window); and per
    frame delivered (a process starved of CPU by other work sends fewer frames, in bigger bursts, so its
    CPU per call-second falls: per frame delivered is the fairer number then);
  - frames delivered: media frames received by the phones in the window / 50 per live call-second;
  - underruns: frames that arrived after their play-out time (calls affected), over the window;
  - write() syscalls per frame sent (/proc/PID/io syscw), the service's event-loop behaviour in brief;
  - start: `start` -> first media frame p50 / p99 of the stage's new streams, and streams timed out at
    start (no media frame within START_WAIT_S of `start`, or closed by the service before one); the
    ramp: the stage's starts per second (admission control may place calls slower than --cps);
  - the generator's own CPU share and how late its 1 ms slots ran (p99): a late generator makes the
    service look late, so read the underruns with it.

The same run then measures a bare aiohttp relay (`--relay`: a minimal aiohttp websocket server, as a
naive application would be written: every message through json.loads, a task per call sleeping to send
the same pre-encoded frames every 20 ms) pinned to the same core, with the same generator, stages and
windows, connected directly (no REST): the floor the issue compares against.

The machine may be shared: CPU per call-second is the robust number; the CPU pressure line says how much
runnable work waited for a CPU during the windows.

Usage: .venv/bin/python benchmarks/capacity_streams.py [--stages 300,600,1000] [--seconds 15]
       [--settle 4] [--cps 100] [--pg] [--no-relay | --relay-only] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import random
import resource
import secrets
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import WSMsgType, web
from aiohttp._websocket.helpers import websocket_mask
from harness import cpu_s, deployment_env, free_port, pct, pg_database, phones, stop, wait_serving

from announcer.sandbox import SandboxElevenLabs
from announcer.telephony import codec

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
ACCOUNT_SID = "AC" + secrets.token_hex(16)
AUTH_TOKEN = secrets.token_hex(16)
EL_KEY = secrets.token_hex(16)
API_TOKEN = secrets.token_hex(16)
NUMBER = "+15550100000"
API_VERSION = "2010-04-01"
FRAME_S = 0.02
FRAME = 160
SLOTS = 20
RING_S = 0.5
JITTER_S = 0.06
START_WAIT_S = 10.0
RAMP_WAIT_S = 300.0
CLIP_S = 900  # longer than any run (admission control may ramp slowly): every stream speaks to the end
SERVICE_CPU, GENERATOR_CPU = 1, 0


# ===== the phone side: one media websocket over a raw asyncio socket ======================================


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = random.getrandbits(32).to_bytes(4, "big")
    body = bytearray(payload)
    websocket_mask(mask, body)
    return head + mask + bytes(body)


class Phone(asyncio.Protocol):
    """One call's media stream as Twilio's side of it: sends what Twilio sends, plays what it receives."""

    def __init__(self, gen: Generator, index: int, url: str, token: str, call_sid: str) -> None:
        self.gen = gen
        self.index = index
        self.url = url
        self.token = token
        self.call_sid = call_sid
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = b""
        self.seq = 1
        self.start_sent_at: float | None = None
        self.first_media_at: float | None = None
        self.frames_in = 0
        self.underruns = 0
        self.play_end = 0.0  # when the audio received so far will have played
        self.marks: deque[tuple[float, str]] = deque()
        self.closed = False
        self.stopped = False
        self.media = client_frame(
            (
                f'{{"event":"media","sequenceNumber":"3","streamSid":"{self.stream_sid}","media":'
                f'{{"track":"inbound","chunk":"1","timestamp":"20","payload":"{gen.silence_b64}"}}}}'
            ).encode()
        )

    # --- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's is not a subclass)
        host, port, path = split_url(self.url)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        transport.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.gen.refused += 1
                self.close()
                return
            self.upgraded = True
            buf = buf[end + 4 :]
            self.opened()
        i, n = 0, len(buf)
        now = time.monotonic()
        while n - i >= 2:
            b0, length = buf[i], buf[i + 1] & 0x7F
            head = 2
            if length == 126:
                if n - i < 4:
                    break
                length, head = int.from_bytes(buf[i + 2 : i + 4], "big"), 4
            elif length == 127:
                if n - i < 10:
                    break
                length, head = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
            if n - i < head + length:
                break
            payload = buf[i + head : i + head + length]
            i += head + length
            self.frame(b0 & 0x0F, payload, now)
        self.buf = buf[i:]

    # --- the stream ---------------------------------------------------------------------------------------
    def opened(self) -> None:
        self.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": ACCOUNT_SID,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": {"token": self.token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": self.stream_sid,
        }
        self.send(json.dumps(start))
        self.start_sent_at = time.monotonic()
        self.gen.slots[self.index % SLOTS].append(self)

    def frame(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode == 0x1:
            if payload.startswith(b'{"event":"media"'):
                self.frames_in += 1
                if self.first_media_at is None:
                    self.first_media_at = now
                    self.play_end = now + JITTER_S
                elif now > self.play_end:
                    self.underruns += 1  # the phone ran dry: it refills its jitter buffer first
                    self.play_end = now + JITTER_S
                self.play_end += FRAME_S
            elif payload.startswith(b'{"event":"mark"'):
                self.marks.append((self.play_end, json.loads(payload)["mark"]["name"]))
            elif payload.startswith(b'{"event":"clear"'):
                self.play_end = now
                while self.marks:
                    self.echo(self.marks.popleft()[1])
        elif opcode == 0x8:
            self.close()
        elif opcode == 0x9 and self.transport is not None:
            self.transport.write(client_frame(payload, 0xA))

    def send(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(text.encode()))

    def echo(self, name: str) -> None:
        self.seq += 1
        mark = {"event": "mark", "sequenceNumber": str(self.seq), "streamSid": self.stream_sid,
                "mark": {"name": name}}  # fmt: skip
        self.send(json.dumps(mark))

    def tick(self, now: float) -> None:
        transport = self.transport
        if transport is None or self.stopped:
            return
        while self.marks and self.marks[0][0] <= now:
            self.echo(self.marks.popleft()[1])
        transport.write(self.media)
        self.gen.media_sent += 1

    def hang_up(self) -> None:
        """The call ends: `stop`, then the close handshake."""
        if self.stopped:
            return
        stop = {"event": "stop", "sequenceNumber": str(self.seq + 1), "streamSid": self.stream_sid,
                "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid}}  # fmt: skip
        self.send(json.dumps(stop))
        self.stopped = True
        if self.transport is not None:
            self.transport.write(client_frame((1000).to_bytes(2, "big"), 0x8))

    def close(self) -> None:
        self.stopped = True
        if self.transport is not None:
            self.transport.close()


def split_url(url: str) -> tuple[str, int, str]:
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, int(port or 80), "/" + path


class Generator:
    """Every phone, one clock for all of them, and Twilio's REST API (lean: what the service calls)."""

    def __init__(self) -> None:
        self.phones: list[Phone] = []
        self.by_sid: dict[str, Phone] = {}
        self.slots: list[list[Phone]] = [[] for _ in range(SLOTS)]
        self.silence_b64 = base64.b64encode(b"\xff" * FRAME).decode()
        self.media_sent = 0
        self.refused = 0
        self.late_ms: list[tuple[float, float]] = []  # (monotonic, ms) a slot ran late
        self.hangups = 0
        self._running = True
        self._tasks: set[asyncio.Task[Any]] = set()
        self._auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()

    def dial(self, url: str, token: str, call_sid: str) -> None:
        phone = Phone(self, len(self.phones), url, token, call_sid)
        self.phones.append(phone)
        self.by_sid[call_sid] = phone
        host, port, _ = split_url(url)
        task = asyncio.create_task(self._connect(phone, host, port))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, phone: Phone, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: phone, host, port)
        except OSError:
            self.refused += 1
            phone.closed = True

    async def clock(self) -> None:
        loop = asyncio.get_running_loop()
        step = FRAME_S / SLOTS
        due = loop.time()
        k = 0
        late = self.late_ms
        while self._running:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            late.append((now, (loop.time() - due) * 1000))
            for phone in self.slots[k]:
                phone.tick(now)
            k = (k + 1) % SLOTS
            due += step
            if loop.time() - due > 0.2:  # far behind (a stall): skip ahead rather than burst
                due = loop.time()

    def close(self) -> None:
        self._running = False
        for phone in self.phones:
            phone.close()

    # --- REST ---------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_check])
        base = f"/{API_VERSION}/Accounts/{{account}}"
        app.router.add_post(base + "/Calls.json", self._create)
        app.router.add_get(base + "/Calls.json", self._list)
        app.router.add_post(base + "/Calls/{sid}.json", self._update)
        app.router.add_get(base + "/Calls/{sid}.json", self._fetch)
        return app

    @web.middleware
    async def _auth_check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if (
            request.headers.get("Authorization") != self._auth
            or request.match_info.get("account") != ACCOUNT_SID
        ):
            return rest_error(401, 20003, "Authenticate")
        response: web.StreamResponse = await handler(request)
        return response

    def _resource(self, sid: str, to: str, status: str) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{ACCOUNT_SID}/Calls/{sid}.json"
        return {"sid": sid, "account_sid": ACCOUNT_SID, "to": to, "from": NUMBER, "status": status,
                "direction": "outbound-api", "api_version": API_VERSION,
                "date_created": formatdate(usegmt=True), "start_time": None, "uri": uri}  # fmt: skip

    async def _create(self, request: web.Request) -> web.Response:
        form = await request.post()
        stream = ET.fromstring(str(form.get("Twiml", ""))).find("./Connect/Stream")
        if stream is None:
            return rest_error(400, 21205, "this lean Twilio only runs <Connect><Stream> TwiML")
        params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        sid = "CA" + secrets.token_hex(16)
        url, token = str(stream.get("url")), str(params.get("token", ""))
        asyncio.get_running_loop().call_later(RING_S, self.dial, url, token, sid)
        return web.json_response(self._resource(sid, str(form["To"]), "queued"), status=201)

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": [], "end": 0, "page": 0, "page_size": 50, "start": 0})

    async def _fetch(self, request: web.Request) -> web.Response:
        phone = self.by_sid.get(request.match_info["sid"])
        if phone is None:
            return rest_error(404, 20404, "not found")
        return web.json_response(
            self._resource(phone.call_sid, "", "completed" if phone.stopped else "in-progress")
        )

    async def _update(self, request: web.Request) -> web.Response:
        phone = self.by_sid.get(request.match_info["sid"])
        if phone is None or phone.stopped:
            return rest_error(404, 20404, "not found")
        form = await request.post()
        if form.get("Status") in ("completed", "canceled"):
            self.hangups += 1
            phone.hang_up()
        return web.json_response(self._resource(phone.call_sid, "", "in-progress"))


def rest_error(status: int, code: int, message: str) -> web.Response:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}"}
    return web.json_response({**body, "status": status}, status=status)


# ===== the bare aiohttp relay (--relay-peer) ==============================================================


def relay_frames() -> list[str]:
    clip = premade_clip()
    return [base64.b64encode(clip[i : i + FRAME]).decode() for i in range(0, len(clip), FRAME)]


async def relay_peer(port: int) -> None:
    """A minimal aiohttp websocket server: on `start`, the clip's pre-encoded frames every 20 ms."""
    payloads = relay_frames()

    async def media(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        sender: asyncio.Task[None] | None = None

        async def send(sid: str) -> None:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for i, payload in enumerate(payloads):
                delay = t0 + i * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send_str(codec.media_message(sid, payload))
            await ws.send_str(codec.mark_message(sid, "end:1"))

        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            if event.get("event") == "start" and sender is None:
                sender = asyncio.create_task(send(event["start"]["streamSid"]))
            elif event.get("event") == "stop":
                break
        if sender is not None:
            sender.cancel()
        return ws

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/twilio/media", media)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


# ===== orchestration ======================================================================================


def premade_clip() -> bytes:
    """CLIP_S seconds of quiet noise (mu-law 0x80-0xFE): the one long message every call speaks."""
    pattern = bytes(random.Random(7).randrange(0x80, 0xFF) for _ in range(8000))
    return pattern * CLIP_S


def syscw(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    return 0


def cpu_pressure_s() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return int(line.rsplit("total=", 1)[1]) / 1e6
    return float("nan")


@dataclass
class Stage:
    calls: int
    live: int = 0
    cpu_ms_per_call_s: float = float("nan")
    cpu_us_per_frame: float = float("nan")
    delivered: float = float("nan")
    underruns: int = 0
    underrun_calls: int = 0
    writes_per_frame: float = float("nan")
    start_p50_ms: float = float("nan")
    start_p99_ms: float = float("nan")
    start_timeouts: int = 0
    started_per_s: float = float("nan")
    gen_cpu: float = float("nan")
    gen_late_p99_ms: float = float("nan")
    pressure_s: float = float("nan")
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.calls:>5} calls: live {self.live}, CPU {self.cpu_ms_per_call_s:.3f} ms/call-s "
            f"({self.cpu_us_per_frame:.1f} us per frame delivered), "
            f"frames delivered {self.delivered * 100:.2f} %, underruns {self.underruns} "
            f"({self.underrun_calls} calls), write() per frame {self.writes_per_frame:.2f}, "
            f"start->first frame p50 {self.start_p50_ms:.0f} / p99 {self.start_p99_ms:.0f} ms, "
            f"timeouts at start {self.start_timeouts}, ramp {self.started_per_s:.0f} starts/s; "
            f"generator CPU {self.gen_cpu * 100:.0f} %, its slots late p99 {self.gen_late_p99_ms:.1f} ms; "
            f"CPU pressure {self.pressure_s:.1f} s"
        )


async def post_alert(http: aiohttp.ClientSession, public: str, body: dict[str, Any], stage: Stage) -> None:
    """The stage's calls, as one alert; tried again while the service answers 5xx (a busy database: noted)."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    for attempt in range(5):
        async with http.post(public + "/v1/alerts", json=body, headers=headers) as resp:
            if resp.status == 202:
                return
            text = (await resp.text())[:200]
        stage.notes.append(f"POST /v1/alerts answered {resp.status} (try {attempt + 1}): {text}")
        print(stage.notes[-1], flush=True)
        if resp.status < 500:
            break
    raise SystemExit("the stage's alert was refused")


async def run_mode(args: argparse.Namespace, relay: bool) -> list[Stage]:
    if args.pg and not relay:
        async with pg_database() as url:
            return await run_on(args, relay, url)
    return await run_on(args, relay, None)


async def run_on(args: argparse.Namespace, relay: bool, database_url: str | None) -> list[Stage]:
    label = "bare aiohttp relay" if relay else "announcer"
    work = Path(tempfile.mkdtemp(prefix="announcer-bench-streams-"))
    gen = Generator()
    tts = SandboxElevenLabs(api_key=EL_KEY, synthesize=lambda text: premade_clip())
    el_base = await tts.start()
    runner = web.AppRunner(gen.app(), access_log=None)
    await runner.setup()
    rest_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", rest_port, backlog=1024).start()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = deployment_env(
        port=port,
        twilio=(ACCOUNT_SID, AUTH_TOKEN, NUMBER, f"http://127.0.0.1:{rest_port}"),
        elevenlabs=(EL_KEY, el_base),
        database_url=database_url or f"sqlite+aiosqlite:///{work / 'announcer.db'}",
        data_dir=work / "data",
        api_token=API_TOKEN,
        cps=args.cps,
        max_calls=max(args.stages) + 50,
        log_level="WARNING",
    )
    command = ["-m", "announcer.cli", "serve"]
    if relay:
        command = [str(SCRIPT), "--relay-peer", "--port", str(port)]
    log = work / "service.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *command, env=env, cwd=ROOT, stdout=sink, stderr=sink
        )
    if args.pin:
        os.sched_setaffinity(proc.pid, {SERVICE_CPU})
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
    clock: asyncio.Task[None] | None = None
    stages: list[Stage] = []
    try:
        await wait_serving(http, public, proc, log)
        gc.collect()
        gc.freeze()
        clock = asyncio.create_task(gen.clock())
        numbers = phones(max(args.stages))
        placed = 0
        print(
            f"--- {label} (pid {proc.pid}{f', pinned to CPU {SERVICE_CPU}' if args.pin else ''}) ---",
            flush=True,
        )
        for n in args.stages:
            stage = Stage(n)
            first = len(gen.phones)
            if relay:
                for _ in range(n - placed):
                    gen.dial(
                        public.replace("http", "ws", 1) + "/twilio/media", "", "CA" + secrets.token_hex(16)
                    )
                    await asyncio.sleep(1 / args.cps)
            else:
                body = {
                    "template_text": "This is a long announcement for the capacity benchmark.",
                    "recipients": [{"phone": p} for p in numbers[placed:n]],
                    "options": {"machine_detection": False, "start": "on_answer"},
                }
                await post_alert(http, public, body, stage)
            placed = n
            # Until every stream of the stage has its first frame (or has timed out at start).
            # Admission control may place the calls slower than --cps (a busy process, a busy machine):
            # the stage waits for them (at most RAMP_WAIT_S), then for every stream's first frame.
            deadline = time.monotonic() + RAMP_WAIT_S
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                news = gen.phones[first:]
                if len(gen.phones) >= n and all(
                    p.first_media_at is not None
                    or p.closed
                    or (p.start_sent_at is not None and time.monotonic() - p.start_sent_at > START_WAIT_S)
                    for p in news
                ):
                    break
                if proc.returncode is not None:
                    raise SystemExit(f"{label} exited; see {log}")
            news = gen.phones[first:]
            waits = [
                (p.first_media_at - p.start_sent_at) * 1000
                for p in news
                if p.first_media_at is not None and p.start_sent_at is not None
                and p.first_media_at - p.start_sent_at <= START_WAIT_S
            ]  # fmt: skip
            stage.start_p50_ms, stage.start_p99_ms = pct(waits, 50), pct(waits, 99)
            starts = [p.start_sent_at for p in news if p.start_sent_at is not None]
            stage.start_timeouts = len(starts) - len(waits)
            if len(starts) < n - first:
                stage.notes.append(f"{n - first - len(starts)} of the stage's calls never started a stream")
            if len(starts) > 1:
                stage.started_per_s = (len(starts) - 1) / (max(starts) - min(starts) or 1e-9)
            await asyncio.sleep(args.settle)
            # --- the steady window ---
            live = [p for p in gen.phones if p.first_media_at is not None and not p.closed and not p.stopped]
            frames0 = {id(p): p.frames_in for p in live}
            under0 = {id(p): p.underruns for p in live}
            cpu0, own0, w0, pr0 = cpu_s(proc.pid), time.process_time(), syscw(proc.pid), cpu_pressure_s()
            t0 = time.monotonic()
            await asyncio.sleep(args.seconds)
            t1 = time.monotonic()
            cpu1, own1, w1, pr1 = cpu_s(proc.pid), time.process_time(), syscw(proc.pid), cpu_pressure_s()
            window = t1 - t0
            stage.live = len(live)
            frames = sum(p.frames_in - frames0[id(p)] for p in live)
            stage.cpu_ms_per_call_s = (cpu1 - cpu0) * 1000 / (len(live) * window) if live else float("nan")
            stage.delivered = frames / (len(live) * window / FRAME_S) if live else float("nan")
            stage.cpu_us_per_frame = (cpu1 - cpu0) * 1e6 / frames if frames else float("nan")
            per_call = [p.underruns - under0[id(p)] for p in live]
            stage.underruns, stage.underrun_calls = sum(per_call), sum(1 for u in per_call if u)
            stage.writes_per_frame = (w1 - w0) / frames if frames else float("nan")
            stage.gen_cpu = (own1 - own0) / window
            stage.gen_late_p99_ms = pct([ms for at, ms in gen.late_ms if t0 <= at <= t1], 99)
            stage.pressure_s = pr1 - pr0
            if gen.refused:
                stage.notes.append(f"{gen.refused} connections refused so far")
            print(stage.line() + "".join(f"\n        {note}" for note in stage.notes), flush=True)
            stages.append(stage)
        return stages
    finally:
        if clock is not None:
            gen.close()
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock
        await stop(proc)
        await http.close()
        await runner.cleanup()
        await tts.close()
        errors = [ln for ln in log.read_text(errors="replace").splitlines() if " ERROR " in ln]
        if errors:
            print(f"{label} logged {len(errors)} ERROR lines, e.g. {errors[0][:200]} (see {log})", flush=True)


async def run(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    if args.pin:
        os.sched_setaffinity(0, {GENERATOR_CPU})
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} at start; "
        f"service on CPU {SERVICE_CPU}, generator on CPU {GENERATOR_CPU}"
        if args.pin
        else "not pinned",
        flush=True,
    )
    results: dict[str, list[Stage]] = {}
    if not args.relay_only:
        results["announcer"] = await run_mode(args, relay=False)
    if args.relay or args.relay_only:
        results["relay"] = await run_mode(args, relay=True)
    if len(results) == 2:
        print("\n== announcer vs the bare aiohttp relay, same generator, same run ==", flush=True)
        for ours, floor in zip(results["announcer"], results["relay"], strict=True):
            print(
                f"{ours.calls:>5} calls: CPU {ours.cpu_ms_per_call_s:.3f} vs "
                f"{floor.cpu_ms_per_call_s:.3f} ms/call-s; "
                f"delivered {ours.delivered * 100:.2f} vs {floor.delivered * 100:.2f} %; underruns "
                f"{ours.underruns} vs {floor.underruns}; timeouts at start {ours.start_timeouts} vs "
                f"{floor.start_timeouts}",
                flush=True,
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", default="300,600,1000", help="concurrent calls at each stage")
    parser.add_argument("--seconds", type=float, default=15.0, help="each stage's steady window")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds after a stage's ramp")
    parser.add_argument("--cps", type=float, default=100.0, help="starts per second (TWILIO_CPS)")
    parser.add_argument("--no-relay", dest="relay", action="store_false", help="skip the bare relay")
    parser.add_argument("--relay-only", action="store_true", help="only the bare relay")
    parser.add_argument("--pg", action="store_true", help="the service on PostgreSQL (default SQLite)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin to CPUs")
    parser.add_argument("--relay-peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.stages = [int(s) for s in str(args.stages).split(",")]
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        args.pin = False
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.relay_peer:
        uvloop.run(relay_peer(args.port))  # as `announcer serve` runs: a like-for-like floor
        return
    uvloop.run(run(args))  # the generator must stay light beside 1,000 sockets


if __name__ == "__main__":
    main(sys.argv[1:])
