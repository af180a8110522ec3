"""Set-up cost (issue 15, benchmark (b)) and two processes behind nginx (benchmark (c)).

(b) `announcer serve` runs as a live deployment (credentials, strict numbers) pinned to CPU 1; this process
is pinned to CPU 0 and hosts its peers: the lean Twilio of agent_bridge.py (REST create/update/fetch, signed
`ringing`, `in-progress` and `completed` callbacks, one media websocket per call with `connected`, `start`
carrying the TwiML's token, a `media` frame every 20 ms, mark echoes on a play-out clock, `stop` when the
service hangs up through REST) and the sandbox ElevenLabs (one text for every call: one synthesis, then the
service's speech cache). One alert of --calls recipients through `POST /v1/alerts` with a very short message,
`start: on_answer` and no machine detection, so a call's life is mostly its set-up: create, three status
callbacks, stream start, marks, REST hang-up, outcome, journal. Printed per TWILIO_CPS:
- CPU ms per call: the service's user+sys (/proc/PID/stat) from the POST to the alert's end, less what it
  spends idle over as long (measured for 5 s before the POST, with the same /healthz polling), divided by
  the calls completed (it includes accepting the alert and the short message's own streaming, printed
  beside it as stream-seconds per call: at ~1.1 ms per call-second, a few tenths of a millisecond); the raw
  figure beside it;
- the sustained set-up rate: creates per second at the peer (first to last create), and the most creates in
  any 1.01 s window (what Twilio's per-account CPS sees);
- stream `start` sent -> the first media frame received, p50 / p99;
- calls lost: outcomes other than `heard` (hung_up_early above all), and calls never created;
- the admission rate /healthz reported under "dialing" (polled every 0.5 s: the lowest and the last);
- on PostgreSQL, the deadlocks it detected in the run's database (pg_stat_database).

(c) `announcer serve --workers 2` on one PostgreSQL behind Debian's nginx (deploy/nginx.conf, as
tests/test_scale_out.py starts it), unpinned (two processes, two cores, the peers beside them): the
aggregate set-up rate and the account-wide CPS held (most creates in any 1.01 s window).

Usage: .venv/bin/python benchmarks/capacity.py setup [--calls 1000] [--cps 50 200 1000] [--db sqlite pg]
       [--profile DIR] ; .venv/bin/python benchmarks/capacity.py nginx [--calls 1000] [--cps 200]
(--profile DIR attaches `py-spy record --native -r 250 -f raw` to the service over each run: it pauses the
service at each sample, so take the numbers from a run without it.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import agent_bridge as lean
import aiohttp
import asyncpg  # type: ignore[import-untyped]
from aiohttp import web
from harness import (
    child_pids,
    consecutive_free_ports,
    cpu_s,
    deployment_env,
    free_port,
    pct,
    pg_database,
    phones,
    premade_voice,
    start_nginx,
    stop,
    wait_serving,
)

from announcer.sandbox import SandboxElevenLabs
from announcer.speech.local import LocalSynthesizer

ROOT = Path(__file__).resolve().parent.parent
EL_KEY = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {lean.API_TOKEN}"}
MESSAGE = "Test alert."
WINDOW_S = 1.01
IDLE_S = 5.0


class SetupTwilio(lean.LeanTwilio):
    """agent_bridge.py's lean Twilio, also noting when each create arrived and each stream started."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        super().__init__(http)
        self.creates: list[float] = []
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    async def _create(self, request: web.Request) -> web.Response:
        self.creates.append(time.monotonic())
        return await super()._create(request)

    async def _answer(self, call: lean.TwilioCall) -> None:
        # As LeanTwilio._answer, with the start's send time noted.
        await self._status(call, "ringing")
        await asyncio.sleep(lean.RING_S)
        call.answered_at = time.monotonic()
        await self._status(call, "in-progress")
        ws = await self.http.ws_connect(
            call.stream_url, headers={"X-Twilio-Signature": self._sign(call.stream_url, {})}, compress=0
        )
        call.ws = ws
        await ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        start = {
            "event": "start",
            "sequenceNumber": call.next_seq(),
            "start": {
                "accountSid": lean.ACCOUNT_SID,
                "streamSid": call.stream_sid,
                "callSid": call.sid,
                "tracks": ["inbound"],
                "customParameters": {"token": call.token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": call.stream_sid,
        }
        self.started[call.sid] = time.monotonic()
        await ws.send_json(start)
        self.slots[call.index % lean.SLOTS].append(call)
        try:
            await self._receive(call, ws)
        finally:
            self.ended[call.sid] = time.monotonic()
            with contextlib.suppress(ValueError):
                self.slots[call.index % lean.SLOTS].remove(call)


@dataclass
class Run:
    label: str
    calls: int
    cpu_s: float = 0.0
    wall_s: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    creates: list[float] = field(default_factory=list)
    first_frame_ms: list[float] = field(default_factory=list)
    stream_s: float = 0.0
    dialing: list[dict[str, Any]] = field(default_factory=list)
    errors: str = ""
    deadlocks: int | None = None  # PostgreSQL's count for the run's database
    idle_cpu_per_s: float = 0.0

    def lines(self) -> list[str]:
        done = sum(self.outcomes.values())
        heard = self.outcomes.get("heard", 0)
        c = sorted(self.creates)
        rate = (len(c) - 1) / (c[-1] - c[0]) if len(c) > 1 and c[-1] > c[0] else float("nan")
        busiest, j = 0, 0
        for i, t in enumerate(c):
            while t - c[j] >= WINDOW_S:
                j += 1
            busiest = max(busiest, i - j + 1)
        rates = [float(d.get("rate_per_s", "nan")) for d in self.dialing if "rate_per_s" in d]
        last = self.dialing[-1] if self.dialing else {}
        lost = self.calls - heard
        net = self.cpu_s - self.idle_cpu_per_s * self.wall_s
        return [
            f"== {self.label}: {self.calls} calls ==",
            f"  CPU {net * 1000 / max(1, done):.2f} ms per call net of idle "
            f"({self.idle_cpu_per_s * 1000:.0f} ms/s idle); {self.cpu_s * 1000 / max(1, done):.2f} ms raw "
            f"({self.cpu_s:.2f} s over {done} calls, "
            f"{self.wall_s:.1f} s wall; streaming {self.stream_s / max(1, done):.2f} s per call)",
            f"  set-up rate {rate:.1f} creates/s at the peer; busiest {WINDOW_S} s window: {busiest} creates",
            f"  start -> first frame p50 {pct(self.first_frame_ms, 50):.1f} ms, "
            f"p99 {pct(self.first_frame_ms, 99):.1f} ms (n={len(self.first_frame_ms)})",
            f"  lost {lost} (outcomes {dict(self.outcomes)}; {self.calls - len(c)} never created)",
            f"  /healthz dialing: rate min {min(rates, default=float('nan')):.1f}/s, "
            f"last {last.get('rate_per_s')}/s limited by {last.get('limited_by')} ({last.get('why')})",
            f"  {self.errors}"
            + ("" if self.deadlocks is None else f"; PostgreSQL deadlocks: {self.deadlocks}"),
        ]


def logged_errors(log: Path) -> str:
    lines = [
        ln for ln in log.read_text(errors="replace").splitlines() if " ERROR " in ln or "Traceback" in ln
    ]
    kinds = Counter(ln.split(" ERROR ", 1)[-1][:100] for ln in lines)
    return f"service errors: {len(lines)}" + (f" e.g. {kinds.most_common(3)} (see {log})" if lines else "")


async def pg_deadlocks(url: str) -> int:
    """Deadlocks PostgreSQL detected in the database at `url` (each cost a batch a second and a retry)."""
    conn = await asyncpg.connect(url.replace("+asyncpg", "", 1))
    try:
        for _ in range(20):  # a backend's counters reach the view shortly after it exits
            await asyncio.sleep(0.1)
            await conn.execute("SELECT pg_stat_clear_snapshot()")
        found = await conn.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(found or 0)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def peers(
    work: Path, twilio_class: type[SetupTwilio] = SetupTwilio
) -> AsyncIterator[tuple[aiohttp.ClientSession, SetupTwilio, str, str]]:
    """The lean Twilio (`twilio_class`: SetupTwilio or one noting more) and the sandbox ElevenLabs."""
    tts = SandboxElevenLabs(api_key=EL_KEY, synthesize=premade_voice(LocalSynthesizer()))
    el_base = await tts.start()
    http = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=120), connector=aiohttp.TCPConnector(limit=0)
    )
    twilio = twilio_class(http)
    runner = web.AppRunner(twilio.app(), access_log=None)
    await runner.setup()
    rest_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", rest_port).start()
    clock = asyncio.create_task(twilio.clock())
    try:
        yield http, twilio, f"http://127.0.0.1:{rest_port}", el_base
    finally:
        clock.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await clock
        await twilio.close()
        await runner.cleanup()
        await http.close()
        await tts.close()


async def measure(args: argparse.Namespace, *, database: str, cps: float, workers: int) -> Run:
    work = Path(tempfile.mkdtemp(prefix="announcer-bench-capacity-"))
    async with contextlib.AsyncExitStack() as stack:
        if database == "pg":
            url = await stack.enter_async_context(pg_database())
        else:
            url = f"sqlite+aiosqlite:///{work / 'announcer.db'}"
        http, twilio, tw_base, el_base = await stack.enter_async_context(peers(work))
        if workers == 1:
            port = free_port()
            public = f"http://127.0.0.1:{port}"
            ports = [port]
        else:
            base = consecutive_free_ports(workers)
            ports = list(range(base, base + workers))
            listen = free_port()
            public = f"http://127.0.0.1:{listen}"
            nginx = await start_nginx(work, ports, listen)
            stack.push_async_callback(stop, nginx)
        env = deployment_env(
            port=ports[0],
            twilio=(lean.ACCOUNT_SID, lean.AUTH_TOKEN, lean.NUMBER, tw_base),
            elevenlabs=(EL_KEY, el_base),
            database_url=url,
            data_dir=work / "data",
            api_token=lean.API_TOKEN,
            cps=cps,
            max_calls=args.max_calls,
            log_level="WARNING",
        )
        env["PUBLIC_URL"] = public
        log = work / "service.log"
        command = [sys.executable, "-m", "announcer.cli", "serve"]
        if workers > 1:
            command += ["--workers", str(workers)]
        with log.open("wb") as sink:
            service = await asyncio.create_subprocess_exec(
                *command, env=env, cwd=work, stdout=sink, stderr=sink
            )
        stack.push_async_callback(stop, service)
        if workers == 1:
            os.sched_setaffinity(0, {0})
            os.sched_setaffinity(service.pid, {1})
        for port in ports:
            await wait_serving(http, f"http://127.0.0.1:{port}", service, log)
        await wait_serving(http, public, service, log)
        pids = [service.pid] if workers == 1 else child_pids(service.pid)
        label = f"{'SQLite' if database == 'sqlite' else 'PostgreSQL'}, TWILIO_CPS={cps:g}"
        label += ", pinned to CPU 1" if workers == 1 else f", {workers} processes behind nginx"
        run = Run(label, args.calls)
        profiler = None
        if getattr(args, "profile", None) and workers == 1:
            spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
            out = Path(args.profile) / f"setup-{database}-{cps:g}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            profiler = await asyncio.create_subprocess_exec(
                spy, "record", "--native", "-r", "250", "-p", str(service.pid),
                "-f", "raw", "-o", str(out),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        body = {
            "template_text": MESSAGE,
            "recipients": [{"phone": p} for p in phones(args.calls)],
            "options": {"start": "on_answer", "machine_detection": False},
        }
        # What the service spends idle (its pollers, and this script's /healthz polls), over IDLE_S with the
        # same polling: taken off the run's CPU by its length, so a run held to a low rate (a busy machine,
        # admission control) is not charged more per call for the time it took.
        idle0, i0 = sum(cpu_s(p) for p in pids), time.monotonic()
        while time.monotonic() - i0 < IDLE_S:
            async with http.get(public + "/healthz") as resp:
                await resp.read()
            await asyncio.sleep(0.5)
        run.idle_cpu_per_s = (sum(cpu_s(p) for p in pids) - idle0) / (time.monotonic() - i0)
        cpu0 = sum(cpu_s(p) for p in pids)
        t0 = time.monotonic()
        async with http.post(public + "/v1/alerts", json=body, headers=AUTH) as resp:
            answer = await resp.json()
            if resp.status != 202:
                raise SystemExit(f"alert refused: {resp.status} {answer}")
        budget = args.calls / 4 + 120  # a busy machine holds admission control far below TWILIO_CPS
        async with asyncio.timeout(budget):
            while True:
                async with http.get(public + "/healthz") as resp:
                    run.dialing.append((await resp.json()).get("dialing", {}))
                async with http.get(public + f"/v1/alerts/{answer['id']}", headers=AUTH) as resp:
                    view = await resp.json()
                if view.get("status") != "active":
                    break
                await asyncio.sleep(0.5)
        run.wall_s = time.monotonic() - t0
        run.cpu_s = sum(cpu_s(p) for p in pids) - cpu0
        if profiler is not None:
            if profiler.returncode is None:
                profiler.send_signal(signal.SIGINT)
            await profiler.wait()
        after: int | None = -1
        while after is not None:
            async with http.get(
                public + f"/v1/alerts/{answer['id']}/deliveries?after={after}&limit=1000", headers=AUTH
            ) as resp:
                page = await resp.json()
            run.outcomes.update(str(d.get("outcome")) for d in page["deliveries"])
            after = page["next_after"]
        run.creates = list(twilio.creates)
        for call in twilio.calls.values():
            began = twilio.started.get(call.sid)
            if began is not None and call.bridged_at is not None:
                run.first_frame_ms.append((call.bridged_at - began) * 1000)
            if began is not None:
                run.stream_s += twilio.ended.get(call.sid, time.monotonic()) - began
        run.errors = logged_errors(log)
        if database == "pg":
            await stop(service)  # its connections close and report their counters
            run.deadlocks = await pg_deadlocks(url)
    shutil.rmtree(work, ignore_errors=True)
    return run


async def main_setup(args: argparse.Namespace) -> None:
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; message {MESSAGE!r}",
        flush=True,
    )
    for database in args.db:
        for cps in args.cps:
            run = await measure(args, database=database, cps=cps, workers=1)
            print("\n".join(run.lines()), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end", flush=True)


async def main_nginx(args: argparse.Namespace) -> None:
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; message {MESSAGE!r}",
        flush=True,
    )
    for cps in args.cps:
        run = await measure(args, database="pg", cps=cps, workers=args.workers)
        print("\n".join(run.lines()), flush=True)


def parser(nginx: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000, help="recipients of the alert")
    p.add_argument("--cps", type=float, nargs="+", default=[200.0] if nginx else [50.0, 200.0, 1000.0])
    p.add_argument("--max-calls", type=int, default=2000, help="MAX_CONCURRENT_CALLS")
    if nginx:
        p.add_argument("--workers", type=int, default=2)
    else:
        p.add_argument("--db", nargs="+", choices=["sqlite", "pg"], default=["sqlite", "pg"])
        p.add_argument("--profile", help="py-spy raw profiles of the service into this directory")
    return p


def setup(argv: list[str]) -> None:
    asyncio.run(main_setup(parser(nginx=False).parse_args(argv)))


def nginx(argv: list[str]) -> None:
    asyncio.run(main_nginx(parser(nginx=True).parse_args(argv)))
