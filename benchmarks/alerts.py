"""Alerts: accepting a large alert, the dial rate under TWILIO_CPS, and TTS requests per unique text.

The service runs as its own process, configured like a live deployment (strict phone numbers) whose Twilio
and ElevenLabs are the loopback sandbox hosted by this script, as in ttfa.py: the sandbox TTS serves
pre-made speech (so espeak does not compete with the service for the cores) and this process freezes its
start-up heap.

  1. accept: `POST /v1/alerts` of --recipients recipients (shared and per-recipient variables), timed at
     the client, p50 of 5 runs, each a new alert (its own Idempotency-Key). MAX_CONCURRENT_CALLS=1 and
     TWILIO_CPS=1; the dispatcher starts dialing at once, so every alert is cancelled right after it was
     accepted (outside the timing). SQLite; with --pg PostgreSQL too.
  2. dispatch: an alert of --dispatch recipients at TWILIO_CPS=50, MAX_CONCURRENT_CALLS=200, short texts,
     phones answering at once (in real time): create rate at the sandbox, the busiest 1 s window,
     duplicate calls, outcomes and the time to completion (with --pg on PostgreSQL too).
  3. TTS requests: 1 recipient (the requests one text needs), 200 recipients with one identical text,
     and 100 recipients sharing 10 texts.

Usage: .venv/bin/python benchmarks/alerts.py [--recipients 10000] [--dispatch 500] [--pg]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from harness import (
    cpu_s,
    deployment_env,
    free_port,
    pct,
    pg_database,
    phones,
    premade_voice,
    stop,
    verdict,
    wait_serving,
)

from announcer.api.schemas import AlertBody
from announcer.config import DEFAULT_TEMPLATES_DIR
from announcer.deliveries.plan import Limits, RecipientIn, plan_deliveries, prepare_template
from announcer.messages.destinations import DestinationPolicy
from announcer.messages.render import MessageRenderer
from announcer.sandbox import SandboxElevenLabs, SandboxTwilio
from announcer.speech.local import LocalSynthesizer
from announcer.speech.speaker import split_sentences

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + secrets.token_hex(16)
AUTH_TOKEN = secrets.token_hex(16)
EL_KEY = secrets.token_hex(16)
API_TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
NUMBER = "+15550100000"
ACCEPT_RUNS = 5
ACCEPT_TARGET_S = 1.0
CANCEL_TRIES = 5
LOG_RECORD = re.compile(r"(?m)^(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ )")
ALERT_ID = re.compile(r"al_[0-9a-f]+")
DISPATCH_CPS = 50
DISPATCH_CONCURRENCY = 200
# The sandbox phones run in real time: a faster sandbox clock shortens the calls but also multiplies the
# microphone frames each call sends (20x at speed 20), a load no real call puts on the service.
PHONE_SPEED = float(os.environ.get("PHONE_SPEED", "1"))
ACCEPT_TEMPLATE = "Hello {{ name }}, this is {{ org }}. Your code is {{ code | digits }}."


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most events in any half-open window [t, t + window)."""
    best = j = 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + window:
            j += 1
        best = max(best, j - i)
    return best


@dataclass
class Deployment:
    """A running service and the sandbox Twilio it dials through."""

    public: str
    twilio: SandboxTwilio
    proc: asyncio.subprocess.Process
    http: aiohttp.ClientSession
    log: Path  # the service's stderr

    def errors(self) -> str:
        """What the service logged at ERROR, in brief (the full text is in `log`)."""
        records = LOG_RECORD.split(self.log.read_text(errors="replace"))
        errors = [r for r in records if " ERROR " in r.split("\n", 1)[0]]
        if not errors:
            return "service logged no errors"
        kinds = Counter(ALERT_ID.sub("al_...", r.split("\n", 1)[0].split(" ERROR ", 1)[1]) for r in errors)
        deadlocks = sum("DeadlockDetectedError" in r for r in errors)
        listed = "; ".join(f"{n}x {kind!r}" for kind, n in kinds.most_common())
        return (
            f"service logged {len(errors)} error(s) ({listed}), {deadlocks} with DeadlockDetectedError "
            f"(see {self.log})"
        )

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.public + path, json=body, headers=AUTH) as resp:
            return resp.status, await resp.json()

    async def post_alert(self, body: dict[str, Any]) -> str:
        status, answer = await self.api("POST", "/v1/alerts", body)
        if status != 202:
            raise SystemExit(f"alert refused: {status} {json.dumps(answer)[:500]}")
        return str(answer["id"])

    async def finished(self, alert_id: str, timeout: float) -> dict[str, Any]:
        """Poll the alert until it is no longer active; return its last view."""
        async with asyncio.timeout(timeout):
            while True:
                status, view = await self.api("GET", f"/v1/alerts/{alert_id}")
                if status == 200 and view["status"] != "active":
                    return dict(view)
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def deploy(
    work: Path, label: str, database_url: str, tts: SandboxElevenLabs, cps: float, concurrency: int
) -> AsyncIterator[Deployment]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    local = LocalSynthesizer()
    twilio = SandboxTwilio(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        phone_number=NUMBER,
        voice_url=public + "/twilio/voice",
        status_callback_url=None,
        recordings_dir=work / label / "recordings",
        say_synthesize=local.synthesize,
        speed=PHONE_SPEED,
    )
    tw_base = await twilio.start()
    assert tts.base_url is not None
    env = deployment_env(
        port=port,
        twilio=(ACCOUNT_SID, AUTH_TOKEN, NUMBER, tw_base),
        elevenlabs=(EL_KEY, tts.base_url),
        database_url=database_url,
        data_dir=work / label / "data",
        api_token=API_TOKEN,
        cps=cps,
        max_calls=concurrency,
        log_level="ERROR",
    )
    log = work / label / "service.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "announcer.cli", "serve", env=env, cwd=ROOT, stdout=sink, stderr=sink
        )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            await wait_serving(http, public, proc)
            yield Deployment(public, twilio, proc, http, log)
    finally:
        await stop(proc)
        await twilio.close()


def accept_cost(body: bytes) -> dict[str, float]:
    """The acceptance's CPU work outside the database, with the service's own code in this process (ms,
    the median of 3): parse, validate, render + check every number, the request hash."""
    renderer = MessageRenderer(DEFAULT_TEMPLATES_DIR)
    limits = Limits(max_recipients=10_000, max_text_chars=2_000, destinations=DestinationPolicy())
    runs: dict[str, list[float]] = {"JSON": [], "pydantic": [], "render + numbers": [], "hash": []}
    for _ in range(3):
        t0 = time.perf_counter()
        data = json.loads(body)
        t1 = time.perf_counter()
        alert = AlertBody.model_validate(data)
        t2 = time.perf_counter()
        recipients = [RecipientIn(r.phone, r.variables, r.name, r.timezone) for r in alert.recipients]
        prepared = prepare_template(renderer, alert.template, alert.template_text)
        plan_deliveries(prepared, alert.variables, recipients, limits)
        t3 = time.perf_counter()
        canonical = json.dumps(alert.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        hashlib.sha256(canonical.encode()).hexdigest()
        t4 = time.perf_counter()
        for key, took in zip(runs, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            runs[key].append(took * 1000)
    return {key: statistics.median(values) for key, values in runs.items()}


def accept_body(numbers: list[str]) -> bytes:
    body = {
        "template_text": ACCEPT_TEMPLATE,
        "variables": {"org": "Acme Clinic"},
        "recipients": [
            {"phone": p, "name": f"Person {i}", "variables": {"code": f"{(i * 7919) % 1_000_000:06d}"}}
            for i, p in enumerate(numbers)
        ],
    }
    return json.dumps(body).encode()


async def accept(
    dep: Deployment, label: str, body: bytes, recipients: int, cost: dict[str, float] | None
) -> list[str]:
    """Part 1: `POST /v1/alerts` timed at the client, each alert cancelled once accepted (untimed)."""
    times: list[float] = []
    canceled: list[int] = []
    cancel_failures: Counter[int] = Counter()
    load = os.getloadavg()[0]
    headers = {**AUTH, "Content-Type": "application/json"}
    for _ in range(ACCEPT_RUNS):
        headers["Idempotency-Key"] = f"bench-{uuid.uuid4().hex}"
        t0 = time.perf_counter()
        async with dep.http.post(dep.public + "/v1/alerts", data=body, headers=headers) as resp:
            answer = await resp.json()
        elapsed = time.perf_counter() - t0
        if resp.status != 202 or answer.get("replayed") or answer.get("recipients") != recipients:
            raise SystemExit(f"alert not accepted as new: {resp.status} {json.dumps(answer)[:500]}")
        times.append(elapsed)
        for _ in range(CANCEL_TRIES):
            status, cancel = await dep.api("POST", f"/v1/alerts/{answer['id']}/cancel")
            if status == 200:
                canceled.append(int(cancel["canceled"]))
                break
            cancel_failures[status] += 1
            await asyncio.sleep(0.2)
        else:
            raise SystemExit(f"cancel failed {CANCEL_TRIES} times: {status} {cancel}")
    p50 = statistics.median(times)
    runs = ", ".join(f"{t * 1000:.0f}" for t in times)
    lines = [
        f"1. accept {recipients} recipients [{label}]: p50 {p50 * 1000:.0f} ms over {ACCEPT_RUNS} runs "
        f"(runs: {runs} ms); target <= {ACCEPT_TARGET_S * 1000:.0f} ms: {verdict(p50 <= ACCEPT_TARGET_S)}",
        f"   body {len(body):,} bytes ({len(body) / 2**20:.2f} MiB); each alert cancelled right after "
        f"acceptance (untimed), deliveries cancelled per run: {canceled}",
        f"   cancel answered non-200 {sum(cancel_failures.values())} time(s) {dict(cancel_failures)} and was "
        f"retried; {dep.errors()}; load average {load:.2f} before",
    ]
    if cost is not None:
        work = sum(cost.values())
        parts = ", ".join(f"{key} {ms:.0f} ms" for key, ms in cost.items())
        lines.append(
            f"   of which CPU outside the database (the service's code, timed in this process): {parts} "
            f"= {work:.0f} ms; the rest of the p50 (storing, HTTP) {p50 * 1000 - work:.0f} ms"
        )
    print("\n".join(lines), flush=True)
    return lines


async def dispatch(dep: Deployment, n: int, label: str) -> list[str]:
    """Part 2: the create rate at the sandbox, the busiest second, duplicates, outcomes, completion."""
    numbers = phones(n)
    body = {
        "template_text": "Test {{ n }}.",
        "recipients": [{"phone": p, "variables": {"n": i}} for i, p in enumerate(numbers)],
    }
    log_start = len(dep.twilio.rest_log)
    service_cpu, own_cpu = cpu_s(dep.proc.pid), time.process_time()
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    alert_id = await dep.post_alert(body)
    accepted = time.monotonic()
    view = await dep.finished(alert_id, timeout=n / DISPATCH_CPS * 3 + 120)
    done = time.monotonic()
    service_cpu, own_cpu = cpu_s(dep.proc.pid) - service_cpu, time.process_time() - own_cpu
    creates = [
        r for r in dep.twilio.rest_log[log_start:] if r.method == "POST" and r.path.endswith("/Calls.json")
    ]
    at = sorted(r.at for r in creates)
    refused = sum(1 for r in creates if r.status != 201)
    rate = (len(at) - 1) / (at[-1] - at[0]) if len(at) > 1 else float("nan")
    busiest = max_in_window(at)
    wanted = set(numbers)
    placed = Counter(
        c.to for c in dep.twilio.calls.values() if c.direction.value == "outbound-api" and c.to in wanted
    )
    duplicates = sum(count - 1 for count in placed.values() if count > 1)
    missing = len(wanted - set(placed))
    rate_ok = abs(rate - DISPATCH_CPS) <= 0.02 * DISPATCH_CPS
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(at)]
    ours = [c for c in dep.twilio.calls.values() if c.to in wanted and c.finished_at is not None]
    lasted = sorted((c.finished_at or 0.0) - c.placed_at for c in ours)
    answer_to_end = sorted((c.finished_at or 0.0) - c.answered_at for c in ours if c.answered_at is not None)
    peak = max_open(ours)
    lines = [
        f"2. dispatch {n} recipients [{label}] at TWILIO_CPS={DISPATCH_CPS}, MAX_CONCURRENT_CALLS="
        f"{DISPATCH_CONCURRENCY}: {len(at)} create requests ({refused} not 201) over "
        f"{at[-1] - at[0]:.2f} s -> {rate:.2f} calls/s (target {DISPATCH_CPS} +-2 %: {verdict(rate_ok)})",
        f"   busiest 1 s window: {busiest} creates (target <= {DISPATCH_CPS + 1}: "
        f"{verdict(busiest <= DISPATCH_CPS + 1)}); first create {(at[0] - t0) * 1000:.0f} ms after the POST",
        f"   duplicate calls: {duplicates} (target 0: {verdict(duplicates == 0)}); "
        f"recipients never called: {missing}",
        f"   alert {view['status']} {done - accepted:.2f} s after acceptance (accept took "
        f"{(accepted - t0) * 1000:.0f} ms); outcomes {json.dumps(view['counts'], sort_keys=True)}",
        f"   between creates: p50 {statistics.median(gaps):.1f} ms, max {max(gaps):.1f} ms (1/CPS = "
        f"{1000 / DISPATCH_CPS:.0f} ms); CPU while dispatching: service "
        f"{service_cpu / (done - t0) * 100:.0f}%, this process (sandbox phones) "
        f"{own_cpu / (done - t0) * 100:.0f}% of one core; load average {load:.2f} before; {dep.errors()}",
        f"   call length at the sandbox (create -> final status): p50 {pct(lasted, 50):.2f} s, p99 "
        f"{pct(lasted, 99):.2f} s; answer -> final status p50 {pct(answer_to_end, 50):.2f} s; "
        f"most calls open at once {peak} (MAX_CONCURRENT_CALLS={DISPATCH_CONCURRENCY})",
    ]
    print("\n".join(lines), flush=True)
    return lines


def max_open(calls: list[Any]) -> int:
    """The most calls open at once at the sandbox (from each call's create to its final status)."""
    edges = sorted([(c.placed_at, 1) for c in calls] + [(c.finished_at, -1) for c in calls])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


async def tts_requests(dep: Deployment, tts: SandboxElevenLabs) -> list[str]:
    """Part 3: TTS requests for one text said to 1 and to 200 recipients, and for 10 texts over 100."""
    numbers = phones(200)
    text = "Fire drill {{ tag }} starts at noon today, please leave by the stairs."
    run = secrets.token_hex(3)

    async def requests_for(template: str, recipients: list[dict[str, Any]], tag: str) -> int:
        before = len(tts.requests)
        alert_id = await dep.post_alert(
            {"template_text": template, "variables": {"tag": tag}, "recipients": recipients}
        )
        view = await dep.finished(alert_id, timeout=180)
        if view["status"] != "completed":
            raise SystemExit(f"alert {alert_id} ended {view['status']}")
        return len(tts.requests) - before

    sentences = len(split_sentences(text.replace("{{ tag }}", f"{run} one")))
    one = await requests_for(text, [{"phone": numbers[0]}], f"{run} one")
    same = await requests_for(text, [{"phone": p} for p in numbers], f"{run} same")
    grouped = "Fire drill {{ tag }} for group {{ group }} starts at noon today, please leave by the stairs."
    ten = await requests_for(
        grouped,
        [{"phone": p, "variables": {"group": i % 10}} for i, p in enumerate(numbers[:100])],
        f"{run} ten",
    )
    lines = [
        f"3. TTS requests: one text, 1 recipient: {one} (the text is {sentences} sentence(s))",
        f"   one identical text, 200 recipients: {same} requests (target {one}: {verdict(same == one)})",
        f"   10 distinct texts, 100 recipients: {ten} requests (target {10 * one}: "
        f"{verdict(ten == 10 * one)}); {dep.errors()}",
    ]
    print("\n".join(lines), flush=True)
    return lines


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="announcer-bench-alerts-"))
    tts = SandboxElevenLabs(api_key=EL_KEY, synthesize=premade_voice(LocalSynthesizer()))
    await tts.start()
    body = accept_body(phones(args.recipients))
    cost = accept_cost(body)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    # This process is the phone network: keep its own collector pauses out of the timings.
    gc.collect()
    gc.freeze()
    results: list[str] = []
    try:
        sqlite = f"sqlite+aiosqlite:///{work / 'accept.db'}"
        async with deploy(work, "accept-sqlite", sqlite, tts, cps=1, concurrency=1) as dep:
            results += await accept(dep, "SQLite", body, args.recipients, cost)
        if args.pg:
            async with (
                pg_database() as pg,
                deploy(work, "accept-pg", pg, tts, cps=1, concurrency=1) as dep,
            ):
                results += await accept(dep, "PostgreSQL", body, args.recipients, cost)
        dispatch_db = f"sqlite+aiosqlite:///{work / 'dispatch.db'}"
        async with deploy(
            work, "dispatch", dispatch_db, tts, cps=DISPATCH_CPS, concurrency=DISPATCH_CONCURRENCY
        ) as dep:
            results += await dispatch(dep, args.dispatch, "SQLite")
            results += await tts_requests(dep, tts)
        if args.pg:
            async with (
                pg_database() as pg,
                deploy(
                    work, "dispatch-pg", pg, tts, cps=DISPATCH_CPS, concurrency=DISPATCH_CONCURRENCY
                ) as dep,
            ):
                results += await dispatch(dep, args.dispatch, "PostgreSQL")
    finally:
        await tts.close()
    if not args.pg:
        results.append("(PostgreSQL not measured: pass --pg)")
    print("\n".join(["", "== summary ==", *results]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=10_000, help="recipients of the accepted alert")
    parser.add_argument("--dispatch", type=int, default=500, help="recipients of the dispatch-rate alert")
    parser.add_argument("--pg", action="store_true", help="also accept on PostgreSQL")
    asyncio.run(main(parser.parse_args()))
