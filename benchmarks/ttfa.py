"""Time to first audio and memory per call for the greeting line.

The service runs as its own process, configured like a live deployment whose Twilio and ElevenLabs
happen to be the loopback sandbox hosted by this script (so the phones' cost is not counted as the
service's). Time to first audio = the phone's `start` message -> the first media frame at the phone.

  (a) cached: the greeting's audio is in the cache
  (b) live: every call a new text, the sandbox TTS answering after 150 ms and streaming at 5x real time.
      The service starts synthesis at the voice webhook, so part of the 150 ms passes before `start`;
      also printed: the streaming path alone (TTS request -> first frame at the phone), the webhooks'
      answer times, calls per second and the service's CPU per call
  (c) ElevenLabs' reference example (whole clip, one message) on the same sandbox, same TTS settings
  (d) as (b), but calls placed as fast as the service takes them: set-up capacity (calls/s, CPU per
      call); its latencies are queueing at saturation, not time to first audio
  (a)-(c) start calls at a steady rate (--rate), so they measure latency at a known load.
  RSS: the service's peak resident memory while 100 greeting calls play at once, per call

The sandbox TTS serves pre-made speech (its synthesis would otherwise compete with the service for the
same cores), and this process freezes its start-up heap as the service does, so the collector's pauses
of the phone network are not counted as the service's.

Usage: .venv/bin/python benchmarks/ttfa.py [--calls 200] [--rate 20] [--concurrency 20] [--rss-calls 100]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
from harness import free_port, premade_voice

from announcer.config import DEFAULT_TEMPLATES_DIR
from announcer.messages.greeting import Greeting
from announcer.messages.render import MessageRenderer
from announcer.messages.speakable import digits
from announcer.sandbox import SandboxCall, SandboxElevenLabs, SandboxTwilio
from announcer.speech.local import LocalSynthesizer

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + secrets.token_hex(16)
AUTH_TOKEN = secrets.token_hex(16)
EL_KEY = secrets.token_hex(16)
NUMBER = "+15550100000"
FIRST_BYTE_S = 0.150
TTS_BYTES_PER_S = 40_000  # 5x real time for 8 kHz mu-law


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(name: str, ms: list[float]) -> str:
    return (
        f"{name:<34} n={len(ms):<4} p50={pct(ms, 50):8.2f} ms  p99={pct(ms, 99):8.2f} ms  "
        f"max={max(ms):8.2f} ms  mean={statistics.fmean(ms):8.2f} ms"
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_healthy(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if proc.returncode is not None:
                raise SystemExit(f"service exited with {proc.returncode}")
            try:
                async with http.get(url) as resp:
                    if resp.status in (200, 404, 405):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


async def run_calls(
    sandbox: SandboxTwilio,
    callers: list[str],
    concurrency: int,
    arrived: Callable[[SandboxCall], Awaitable[None]],
    first_at: Callable[[SandboxCall], float | None],
    rate: float | None = None,
) -> tuple[list[float], list[SandboxCall]]:
    """Place the calls, at most `concurrency` at a time, and with `rate` one every 1/rate s (arrivals that
    do not wait for the service: latency at a given load); hang up as soon as audio arrived.
    Returns TTFA (ms) and the calls."""
    gate = asyncio.Semaphore(concurrency)
    out: list[float] = []
    placed: list[SandboxCall] = []
    t0 = time.monotonic()

    async def one(index: int, caller: str) -> None:
        if rate:
            await asyncio.sleep(max(0.0, t0 + index / rate - time.monotonic()))
        async with gate:
            call = await sandbox.call_in(caller)
            placed.append(call)
            await arrived(call)
            at = first_at(call)
            assert at is not None and call.start_sent_at is not None
            out.append((at - call.start_sent_at) * 1000)
            await call.hang_up()

    await asyncio.gather(*(one(i, c) for i, c in enumerate(callers)))
    return out, placed


async def live_scenario(
    label: str,
    sandbox: SandboxTwilio,
    tts: SandboxElevenLabs,
    pid: int,
    numbers: list[str],
    concurrency: int,
    rate: float | None,
) -> list[str]:
    """Distinct texts, TTS first byte after 150 ms: TTFA, the streaming path, webhooks, CPU per call."""
    lines: list[str] = []
    before = len(tts.requests)
    cpu_before, wall_before = cpu_s(pid), time.monotonic()
    ttfa, calls = await run_calls(sandbox, numbers, concurrency, media, lambda c: c.first_media_at, rate)
    wall, used = time.monotonic() - wall_before, cpu_s(pid) - cpu_before
    lines.append(summary(label, ttfa))
    lines.append(
        f"    {len(tts.requests) - before} TTS requests; {len(numbers) / wall:.0f} calls/s; service CPU "
        f"{used / wall * 100:.0f}% of one core, {used / len(numbers) * 1000:.1f} ms per call"
    )
    late = [(r.first_byte_at - r.received_at) * 1000 for r in tts.requests[before:] if r.first_byte_at]
    lines.append(summary("    sandbox TTS: request -> first byte", late))
    # The streaming path alone: the TTS request arriving at the sandbox -> the first frame at the phone
    # (the same process and clock). The call's text names the caller, so its first request does too.
    first_request: dict[str, float] = {}
    for r in tts.requests[before:]:
        for text in (r.next_text or "", r.text):
            first_request.setdefault(text, r.received_at)
    streaming = []
    for call in calls:
        spoken = digits(call.from_)
        at = next((t for k, t in first_request.items() if spoken in k), None)
        if at is not None and call.first_media_at is not None:
            streaming.append((call.first_media_at - at) * 1000)
    lines.append(summary("    TTS request -> first frame at phone", streaming))
    # The service starts synthesis at the voice webhook, so how long that takes matters too.
    sids = {c.sid for c in calls}
    for kind in ("voice", "status"):
        answered = [w for w in sandbox.webhook_log if w.kind == kind and w.call_sid in sids and w.answered_at]
        lines.append(
            summary(f"    {kind} webhook answered in", [(w.answered_at - w.at) * 1000 for w in answered])
        )
    print("\n".join(lines), flush=True)
    return lines


async def media(call: SandboxCall) -> None:
    await call.wait_for_media(60)


async def message(call: SandboxCall) -> None:
    await call.wait_for_message(60)


def callers(n: int, offset: int) -> list[str]:
    return [f"+1555{offset + i:07d}" for i in range(n)]


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="announcer-bench-"))
    local = LocalSynthesizer()
    tts = SandboxElevenLabs(api_key=EL_KEY, synthesize=premade_voice(local, min_bytes=0))
    el_base = await tts.start()
    port = free_port()
    public = f"http://127.0.0.1:{port}"

    def sandbox_for(voice_url: str, speed: float) -> SandboxTwilio:
        return SandboxTwilio(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            phone_number=NUMBER,
            voice_url=voice_url,
            status_callback_url=public + "/twilio/status",
            recordings_dir=work / "recordings",
            say_synthesize=local.synthesize,
            speed=speed,
        )

    fast = sandbox_for(public + "/twilio/voice", speed=20.0)
    tw_base = await fast.start()
    env = {
        **os.environ,
        "PUBLIC_URL": public,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_PHONE_NUMBER": NUMBER,
        "TWILIO_API_BASE_URL": tw_base,
        "ELEVENLABS_API_KEY": EL_KEY,
        "ELEVENLABS_BASE_URL": el_base,
        "ANNOUNCER_DATA_DIR": str(work / "data"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{work / 'a.db'}",
        "ANNOUNCER_LOG_LEVEL": "ERROR",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "announcer.cli", "serve", env=env, cwd=ROOT
    )
    results: list[str] = []
    try:
        await wait_healthy(public + "/healthz", proc)
        # This process is the phone network: keep its own collector pauses out of the timings (the
        # service does the same at start).
        gc.collect()
        gc.freeze()
        print(
            f"service pid {proc.pid} up; {args.calls} calls per scenario, {args.rate:g} a second "
            f"(at most {args.concurrency} at a time)",
            flush=True,
        )

        # (a) cached: one call fills the cache, then every call from the same caller says the same text
        warm = await fast.call_in("+15550000001")
        await warm.wait_ended(120)
        a, _ = await run_calls(
            fast,
            ["+15550000001"] * args.calls,
            args.concurrency,
            media,
            lambda c: c.first_media_at,
            args.rate,
        )
        results.append(summary("(a) cached", a))
        print(results[-1], flush=True)

        # (b) live: a distinct text per call, TTS first byte after 150 ms, at a steady arrival rate
        tts.first_byte_delay_s = FIRST_BYTE_S
        tts.bytes_per_second = TTS_BYTES_PER_S
        tts.chunk_bytes = 320
        results += await live_scenario(
            f"(b) live, TTS first byte 150 ms, {args.rate:g} calls/s",
            fast,
            tts,
            proc.pid,
            callers(args.calls, 1000),
            args.concurrency,
            args.rate,
        )
        # (d) the same, as fast as the service takes them (set-up capacity; latency here is queueing)
        results += await live_scenario(
            f"(d) live, {args.concurrency} at a time, no pacing",
            fast,
            tts,
            proc.pid,
            callers(args.calls, 3000),
            args.concurrency,
            None,
        )

        # (c) the reference example's approach on the same sandbox and the same TTS settings
        ref_port = free_port()
        ref_public = f"http://127.0.0.1:{ref_port}"
        text = Greeting(
            MessageRenderer(DEFAULT_TEMPLATES_DIR), "greeting.j2", "our office", ZoneInfo("UTC")
        ).render("+15550001000")
        ref_env = {
            **env,
            "PORT": str(ref_port),
            "SERVER_WS": f"ws://127.0.0.1:{ref_port}/call/connection",
            "REFERENCE_TEXT": text,
        }
        ref = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "benchmarks" / "reference_server.py"), env=ref_env, cwd=ROOT
        )
        ref_sandbox = sandbox_for(ref_public + "/call/incoming", speed=20.0)
        await ref_sandbox.start()
        try:
            await wait_healthy(ref_public + "/call/incoming", ref)
            c, _ = await run_calls(
                ref_sandbox,
                callers(args.calls, 5000),
                args.concurrency,
                message,
                lambda c: c.first_message_at,
                args.rate,
            )
            results.append(summary("(c) reference (whole clip, 1 msg)", c))
            print(results[-1], flush=True)
        finally:
            await ref_sandbox.close()
            ref.terminate()
            await ref.wait()

        # RSS per concurrent call: 100 cached greetings playing at once, in real time
        tts.first_byte_delay_s = 0.0
        tts.bytes_per_second = None
        realtime = sandbox_for(public + "/twilio/voice", speed=1.0)
        await realtime.start()
        try:
            await asyncio.sleep(1.0)  # let the service settle before the baseline reading
            base_rss, base_cpu, t0 = rss_kib(proc.pid), cpu_s(proc.pid), time.monotonic()
            peak = base_rss
            calls = [await realtime.call_in("+15550000001") for _ in range(args.rss_calls)]
            done = asyncio.gather(*(call.wait_ended(180) for call in calls))
            while not done.done():
                peak = max(peak, rss_kib(proc.pid))
                await asyncio.sleep(0.05)
            await done
            wall, used = time.monotonic() - t0, cpu_s(proc.pid) - base_cpu
            heard = [call.frames_received for call in calls]
            per_call = (peak - base_rss) / args.rss_calls
            results.append(
                f"RSS at {args.rss_calls} concurrent calls: baseline {base_rss / 1024:.1f} MiB, peak "
                f"{peak / 1024:.1f} MiB -> {per_call:.0f} KiB per call; "
                f"service CPU {used:.2f} s over {wall:.1f} s "
                f"({used / wall * 100:.0f}% of one core); frames per call min {min(heard)} max {max(heard)}; "
                f"underruns {sum(call.underrun_frames for call in calls)}"
            )
            print(results[-1], flush=True)
        finally:
            await realtime.close()
    finally:
        proc.terminate()
        await proc.wait()
        await fast.close()
        await tts.close()
    # the same interval as the service measured it (no benchmark-process scheduling in it)
    with sqlite3.connect(work / "a.db") as db:
        rows = db.execute(
            "SELECT c.from_number, e.detail FROM call_events e JOIN calls c ON c.id = e.call_id "
            "WHERE e.kind = 'speech_started' ORDER BY e.id"
        ).fetchall()
    live_callers = set(callers(args.calls, 1000))
    # (a) and the RSS calls come from the cache caller; skip the warm-up call (the first of them)
    cached = [float(json.loads(d)["first_frame_ms"]) for f, d in rows if f == "+15550000001"][
        1 : 1 + args.calls
    ]
    live = [float(json.loads(d)["first_frame_ms"]) for f, d in rows if f in live_callers]
    results.append(summary("service-side, (a) cached", cached))
    results.append(summary("service-side, (b) live", live))
    print("\n".join(["", "== summary ==", *results]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20, help="calls in flight at most")
    parser.add_argument("--rate", type=float, default=20.0, help="calls started per second in (a)-(c)")
    parser.add_argument("--rss-calls", type=int, default=100)
    asyncio.run(main(parser.parse_args()))
