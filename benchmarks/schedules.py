"""Schedules: start-up with 10,000 active schedules, and how late one-shot schedules fire next to them.

The service runs as its own process, configured like a live deployment (strict phone numbers, the default
INFO log level) whose Twilio and ElevenLabs are the loopback sandbox hosted by this script, as in
alerts.py. SQLite; with --pg PostgreSQL too (a fresh database each time, dropped afterwards).

  1. start-up: --schedules active schedules (mostly cron lines such as "0 8 * * mon-fri" in IANA zones
     picked at random, some with start/end, some one-shots days ahead; none due within 15 minutes; with
     --near a share of daily crons due within the hour after that) are stored up front with
     ScheduleStore.create after the migrations, then the service is started and timed from its process
     start to its scheduler running: /healthz polled (20 ms apart) until it says "scheduler": "running"
     (set once every active schedule is caught up and those due within the horizon, an hour plus their
     pre-synthesis lead, are armed; the rest wait in the table until they come near), then one
     GET /v1/schedules must list every schedule with a next_run_at. Printed: that time (an upper bound:
     the answer that first said running), the send time of the last poll that
     did not (a lower bound), what one listing costs once armed, the timestamp of the last APScheduler
     "Added job" line in the service's log (none: APScheduler logs at WARNING), the longest /healthz
     answer from the process start to armed (polled every 100 ms, refused connections not counted: a stalled
     event loop shows here), what the service logged at ERROR, its CPU time, and its VmRSS
     (/proc/PID/status, 1 s after armed) against a service started on an empty database.
  2. fire lateness: with those schedules armed, --oneshots one-shot schedules with distinct phone numbers
     are created through the API, their `when.at` a few seconds ahead and grouped on instants 1 s apart
     (groups of 1, 4, 10, 25 one-shots, one recipient each, sharing an instant). TWILIO_CPS=50: the
     i-th call of an instant (0-based, by arrival) is expected i/50 s after it. Lateness = arrival of the
     create request at the sandbox Twilio (its rest_log `.at`, time.monotonic()) - the planned time (wall
     clock, converted with one paired reading of both clocks) - i/50 s. p50/p99/max, also without the CPS
     correction, by group size, and the split at the service's "schedule ... fired" log line (the alert
     made).

--profile also records the service with py-spy while it arms (slower; the start-up it prints then
includes the sampling) and prints where the samples were.

Usage: .venv/bin/python benchmarks/schedules.py [--schedules 10000] [--oneshots 200] [--near 0.0] [--pg]
       [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import math
import os
import random
import re
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

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
)

from announcer.options import ScheduleOptions
from announcer.sandbox import SandboxElevenLabs, SandboxTwilio
from announcer.scheduling.scheduler import HORIZON_S
from announcer.scheduling.when import parse_when
from announcer.speech.local import LocalSynthesizer
from announcer.store.db import Database
from announcer.store.schedules import ScheduleStore, arm_time

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + secrets.token_hex(16)
AUTH_TOKEN = secrets.token_hex(16)
EL_KEY = secrets.token_hex(16)
API_TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
NUMBER = "+15550100000"
PY_SPY = Path(sys.executable).parent / "py-spy"

STARTUP_TARGET_S = 2.0
LATENESS_TARGET_S = 1.0
CPS = 50
CONCURRENCY = 200
GROUP_SIZES = (1, 4, 10, 25)  # one-shots sharing an instant, cycled; 25 / CPS = 0.5 s < the 1 s spacing
INSTANT_GAP_S = 1.0
LEAD_S = 5.0  # the first instant is this far ahead, plus the expected time to create them all
POLL_GAP_S = 0.05
HEALTH_GAP_S = 0.1
SETTLE_S = 1.0
# No stored schedule is due this soon: the run (a minute or two) places no call of theirs, nor makes their
# speech ahead (600 s before).
QUIET = timedelta(minutes=15)
CRONS = (
    "0 8 * * mon-fri",
    "30 7 * * mon-fri",
    "0 9 * * *",
    "45 6 * * tue,thu",
    "0 8,17 * * mon-fri",
    "15 9 * * mon",
    "0 10 * * sat",
    "0 18 * * sun",
    "0 12 1 * *",
)
TEXT = "Good morning {{ name }}, this is {{ org }}: your shift starts at nine."
ONESHOT_TEXT = "Reminder {{ n }}: the shuttle leaves at nine."
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ([\w.]+): (.*)$")
FIRED = re.compile(r"schedule (sc_[0-9a-f]+) fired for ")


def ms(values: list[float]) -> str:
    p50, p99, worst = pct(values, 50) * 1000, pct(values, 99) * 1000, max(values) * 1000
    return f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of /proc/PID/status in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm"):
            out[key] = int(value.split()[0])
    return out


def clock_offset() -> float:
    """time.time() - time.monotonic(), from the tightest of a few paired readings."""
    best = (math.inf, 0.0)
    for _ in range(20):
        m1 = time.monotonic()
        wall = time.time()
        m2 = time.monotonic()
        best = min(best, (m2 - m1, wall - (m1 + m2) / 2))
    return best[1]


def log_records(path: Path) -> list[tuple[float, str, str, str]]:
    """(wall time, level, logger, message) of each record of the service's log."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if m:
            at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # logging's local time
            out.append((at, m[2], m[3], m[4]))
    return out


# --- the schedules stored up front ------------------------------------------------------------------------


def zones() -> list[str]:
    skip = ("Etc/", "SystemV/", "US/", "posix", "right", "Factory")
    return sorted(z for z in available_timezones() if "/" in z and not z.startswith(skip))


def within_horizon(rows: list[dict[str, Any]], now: datetime) -> int:
    """How many of `rows` a start at `now` arms (their arm_at within the default horizon)."""
    until = now + timedelta(seconds=HORIZON_S)
    return sum(1 for r in rows if (arm_time(r["next_run_at"], r["options"]) or until) < until)


def seed_rows(
    n: int, now: datetime, quiet: timedelta, near: float, rng: random.Random
) -> tuple[list[dict[str, Any]], str]:
    """`n` schedules as ScheduleStore.create arguments, none due before now + quiet (a fire during the
    run would place calls), a share `near` of them daily crons due within the hour after that (all at
    08:00 somewhere, and the service started at 07:15: the most a start arms); and what they are, in
    brief."""
    names = zones()
    pool = phones(1000)
    options = ScheduleOptions()
    rows: list[dict[str, Any]] = []
    kinds: Counter[str] = Counter()
    rejected = 0
    while len(rows) < n:
        zone = rng.choice(names)
        pick = rng.random()
        raw: dict[str, Any]
        if len(rows) < near * n:
            local = (now + quiet + timedelta(minutes=rng.uniform(1, 55))).astimezone(ZoneInfo(zone))
            raw, kind = {"cron": f"{local.minute} {local.hour} * * *", "timezone": zone}, "near"
        elif pick < 0.10:
            at = (now + timedelta(days=rng.uniform(1, 60))).astimezone(ZoneInfo(zone))
            raw, kind = (
                {"at": at.replace(tzinfo=None, second=0, microsecond=0).isoformat(), "timezone": zone},
                "at",
            )
        elif pick < 0.15:
            raw = {
                "cron": rng.choice(CRONS),
                "timezone": zone,
                "start": (now - timedelta(days=1)).isoformat(),
                "end": (now + timedelta(days=rng.uniform(30, 365))).isoformat(),
            }
            kind = "cron+end"
        else:
            raw, kind = {"cron": rng.choice(CRONS), "timezone": zone}, "cron"
        when = parse_when(raw, now)
        upcoming = when.next_times(now, 1)
        if not upcoming or upcoming[0] < now + quiet:
            rejected += 1
            continue
        kinds[kind] += 1
        recipients = [
            {"phone": rng.choice(pool), "variables": {}, "name": f"Person {len(rows)}-{j}", "timezone": zone}
            for j in range(rng.randint(1, 3))
        ]
        rows.append(
            {
                "name": f"bench {len(rows)}",
                "template": None,
                "template_text": TEXT,
                "variables": {"org": "Acme Clinic"},
                "recipients": recipients,
                "when": when.as_json(),
                "options": options,
                "next_run_at": upcoming[0],
            }
        )
    brief = (
        f"{kinds['cron']} cron, {kinds['cron+end']} cron with start/end, {kinds['at']} one-shots 1-60 days "
        f"ahead, {kinds['near']} daily crons due {quiet.total_seconds() / 60:.0f}-"
        f"{quiet.total_seconds() / 60 + 56:.0f} min ahead; {len({r['when']['timezone'] for r in rows})} "
        f"zones; {rejected} drawn and dropped as due within {quiet.total_seconds() / 60:.0f} min; "
        f"{within_horizon(rows, now)} due within the scheduler's horizon (armed at start)"
    )
    return rows, brief


async def seed(url: str, rows: list[dict[str, Any]]) -> float:
    """Migrate and store `rows` (ScheduleStore.create, as the API would); the seconds it took."""
    db = Database(url)
    try:
        await db.upgrade()
        store = ScheduleStore(db.sessions)
        t0 = time.monotonic()
        gate = asyncio.Semaphore(1 if db.is_sqlite else 8)

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                await store.create(**row)

        await asyncio.gather(*(one(r) for r in rows))
        return time.monotonic() - t0
    finally:
        await db.dispose()


# --- the service ------------------------------------------------------------------------------------------


@dataclass
class Service:
    label: str
    public: str
    proc: asyncio.subprocess.Process
    spawned: float  # time.monotonic() just before the process was started
    log: Path
    http: aiohttp.ClientSession
    twilio: SandboxTwilio
    offset: float = field(default_factory=clock_offset)

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.public + path, json=body, headers=AUTH) as resp:
            return resp.status, await resp.json()

    def since_spawn(self, wall: float) -> float:
        return wall - self.offset - self.spawned

    def errors(self, since: float = 0.0) -> str:
        """What the service logged at ERROR from wall time `since`, in brief."""
        kinds = Counter(
            message[:80]
            for at, level, _, message in log_records(self.log)
            if level in ("ERROR", "CRITICAL") and at >= since
        )
        if not kinds:
            return "no errors logged"
        listed = "; ".join(f"{n}x {kind!r}" for kind, n in kinds.most_common())
        return f"{sum(kinds.values())} error(s) logged: {listed} (see {self.log})"


@contextlib.asynccontextmanager
async def serve(
    work: Path, label: str, database_url: str, tts: SandboxElevenLabs, timeout: float
) -> AsyncIterator[Service]:
    """The service as its own process (not waited for: start-up is what is measured)."""
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
        cps=CPS,
        max_calls=CONCURRENCY,
        log_level="INFO",
    )
    log = work / label / "service.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout + 60)) as http:
            with log.open("wb") as sink:
                spawned = time.monotonic()
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "announcer.cli",
                    "serve",
                    env=env,
                    cwd=ROOT,
                    stdout=sink,
                    stderr=sink,
                )
            yield Service(label, public, proc, spawned, log, http, twilio)
    finally:
        if proc is not None:
            await stop(proc)
        await twilio.close()


# --- 1. start-up ------------------------------------------------------------------------------------------


@dataclass
class Startup:
    healthy: float  # s after spawn: the first /healthz 200
    armed: float  # s after spawn: the answer of the listing that first showed every schedule armed
    armed_after: float  # s after spawn: the send of the last listing that did not (the lower bound)
    polls: int
    listing_s: float  # one GET /v1/schedules once armed
    stall_s: float  # the longest /healthz answer from the process start to armed
    cpu_s: float  # the service's CPU time at armed
    rss_kib: int
    hwm_kib: int
    running_rss_kib: int  # at running, before the listing (which loads every schedule into this process)
    log_started: float | None  # s after spawn: "announcer starting" (imports done)
    log_scheduler: float | None  # s after spawn: APScheduler "Scheduler started"
    log_last_added: float | None  # s after spawn: the last "Added job" of the start-up
    added: int
    errors: str  # what the service logged at ERROR up to armed + SETTLE_S


async def wait_healthy(svc: Service, timeout: float) -> float:
    while time.monotonic() - svc.spawned < timeout:
        if svc.proc.returncode is not None:
            raise SystemExit(f"service exited with {svc.proc.returncode} (see {svc.log})")
        with contextlib.suppress(aiohttp.ClientError):
            async with svc.http.get(svc.public + "/healthz") as resp:
                if resp.status == 200:
                    return time.monotonic()
        await asyncio.sleep(0.02)
    raise SystemExit(f"{svc.label}: /healthz did not answer within {timeout:.0f} s")


async def watch_health(svc: Service, stop: asyncio.Event, worst: list[float]) -> None:
    """The longest /healthz answer until `stop` (from the process start; refused connections do not
    count): how long the event loop stalled while it armed."""
    while not stop.is_set():
        t0 = time.monotonic()
        with contextlib.suppress(aiohttp.ClientError):
            async with svc.http.get(svc.public + "/healthz") as resp:
                await resp.read()
            worst[0] = max(worst[0], time.monotonic() - t0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEALTH_GAP_S)


async def wait_log(svc: Service, text: str, timeout: float) -> None:
    while text not in svc.log.read_text(errors="replace"):
        if svc.proc.returncode is not None or time.monotonic() - svc.spawned > timeout:
            raise SystemExit(f"{svc.label}: no {text!r} in {svc.log}")
        await asyncio.sleep(0.02)


async def start_profile(pid: int, out: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(PY_SPY),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "100",
        "-o",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop_profile(spy: asyncio.subprocess.Process) -> None:
    if spy.returncode is None:
        spy.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(spy.wait(), 60)
        except TimeoutError:
            spy.kill()
            await spy.wait()


def profile_lines(path: Path) -> list[str]:
    """Where py-spy's samples were: the share of samples under a few functions, and the top leaves."""
    if not path.exists():
        return ["   py-spy wrote no profile"]
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    total = sum(c for _, c in stacks)
    if not total:
        return ["   py-spy recorded no samples"]

    def share(name: str) -> float:
        """Samples with `name` (a function, or a method named by its own or its class's name) on the stack."""

        def named(frame: str) -> bool:
            function = frame.split(" (", 1)[0]
            return function == name or function.endswith("." + name)

        return sum(c for frames, c in stacks if any(named(f) for f in frames)) / total

    watched = (
        "Scheduler._start",
        "Scheduler._catch_up",
        "When.times_between",
        "When.next_times",
        "CronTrigger.get_next_fire_time",
        "Scheduler.add",
        "BaseScheduler.add_job",
        "_process_jobs",
        "ScheduleStore.active",
        "list_schedules",
    )
    inclusive = ", ".join(f"{name} {share(name) * 100:.0f}%" for name in watched)
    leaves: Counter[str] = Counter()
    for frames, c in stacks:
        leaves[frames[-1]] += c
    top = "; ".join(f"{frame} {c / total * 100:.0f}%" for frame, c in leaves.most_common(6))
    return [
        f"   py-spy while arming ({total} samples at 100 Hz; see {path}): under {inclusive}",
        f"   most frequent leaf frames: {top}",
    ]


async def startup(svc: Service, expected: int, timeout: float, profile: Path | None) -> Startup:
    spy = None
    if profile is not None:  # attached once the interpreter is up and the app made (imports done)
        await wait_log(svc, "announcer starting", timeout)
        spy = await start_profile(svc.proc.pid, profile)
    stop = asyncio.Event()
    worst = [0.0]
    watcher = asyncio.create_task(watch_health(svc, stop, worst))
    polls = 0
    try:
        healthy = await wait_healthy(svc, timeout)
        last_miss = healthy
        while True:
            if svc.proc.returncode is not None:
                raise SystemExit(f"service exited with {svc.proc.returncode} (see {svc.log})")
            # /healthz says "scheduler": "running" once this process has caught up and armed every
            # active schedule (a cheap poll; the listing below confirms every one has its next run).
            sent = time.monotonic()
            status, body = await svc.api("GET", "/healthz")
            received = time.monotonic()
            polls += 1
            if status == 200 and body.get("scheduler") == "running":
                break
            last_miss = sent
            if received - svc.spawned > timeout:
                raise SystemExit(f"{svc.label}: the scheduler was not running after {timeout:.0f} s")
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await watcher
        if spy is not None:
            await stop_profile(spy)
    cpu = cpu_s(svc.proc.pid)
    running_rss = proc_status(svc.proc.pid).get("VmRSS", 0)
    t0 = time.monotonic()
    status, body = await svc.api("GET", "/v1/schedules")
    listing_s = time.monotonic() - t0
    listed = body.get("schedules", []) if status == 200 else []
    armed = sum(1 for s in listed if s.get("next_run_at"))
    if len(listed) != expected or armed != expected:
        raise SystemExit(f"{svc.label}: running, but {armed} of {expected} schedules armed")
    await asyncio.sleep(SETTLE_S)
    mem = proc_status(svc.proc.pid)
    started = scheduler = last_added = None
    added = 0
    for at, _, logger, message in log_records(svc.log):
        if message.startswith("announcer starting"):
            started = svc.since_spawn(at)
        elif message == "Scheduler started":
            scheduler = svc.since_spawn(at)
        elif logger.startswith("apscheduler") and message.startswith("Added job"):
            added += 1
            last_added = svc.since_spawn(at)
    return Startup(
        healthy=healthy - svc.spawned,
        armed=received - svc.spawned,
        armed_after=last_miss - svc.spawned,
        polls=polls,
        listing_s=listing_s,
        stall_s=worst[0],
        cpu_s=cpu,
        rss_kib=mem.get("VmRSS", 0),
        hwm_kib=mem.get("VmHWM", 0),
        running_rss_kib=running_rss,
        log_started=started,
        log_scheduler=scheduler,
        log_last_added=last_added,
        added=added,
        errors=svc.errors(),
    )


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def startup_lines(label: str, n: int, brief: str, seeded_s: float, run: Startup, empty: Startup) -> list[str]:
    return [
        f"1. start-up with {n} active schedules [{label}]: armed {run.armed:.2f} s after the process started "
        f'(/healthz answered "scheduler": "running", then a listing showed next_run_at for all {n}; '
        f"the last poll before was sent at "
        f"{run.armed_after:.2f} s; {run.polls} polls); target <= {STARTUP_TARGET_S:.0f} s: "
        f"{verdict(run.armed <= STARTUP_TARGET_S)}",
        f"   /healthz first 200 at {run.healthy:.2f} s (empty database: {empty.healthy:.2f} s, armed "
        f"{empty.armed:.2f} s); service log: 'announcer starting' {seconds(run.log_started)}, APScheduler "
        f"'Scheduler started' {seconds(run.log_scheduler)}, last of {run.added} 'Added job' "
        f"{seconds(run.log_last_added)}",
        f"   longest /healthz answer until armed {run.stall_s:.2f} s (polled every "
        f"{HEALTH_GAP_S * 1000:.0f} ms); service CPU at armed {run.cpu_s:.1f} s (empty: "
        f"{empty.cpu_s:.1f} s); one listing of {n} "
        f"once armed {run.listing_s * 1000:.0f} ms",
        f"   VmRSS {SETTLE_S:.0f} s after armed: {run.rss_kib / 1024:.1f} MiB vs {empty.rss_kib / 1024:.1f} "
        f"MiB with 0 schedules (+{(run.rss_kib - empty.rss_kib) / 1024:.1f} MiB, "
        f"{(run.rss_kib - empty.rss_kib) * 1024 / max(n, 1) / 1000:.1f} kB per schedule); peak VmHWM "
        f"{run.hwm_kib / 1024:.1f} MiB vs {empty.hwm_kib / 1024:.1f} MiB; at running, before the listing: "
        f"{run.running_rss_kib / 1024:.1f} MiB vs {empty.running_rss_kib / 1024:.1f} MiB "
        f"({(run.running_rss_kib - empty.running_rss_kib) * 1024 / max(n, 1) / 1000:.1f} kB per schedule)",
        f"   service during start-up: {run.errors}",
        f"   schedules: {brief}; stored in {seeded_s:.1f} s ({n / seeded_s:.0f}/s) with ScheduleStore.create",
    ]


# --- 2. fire lateness -------------------------------------------------------------------------------------


async def fire_lateness(svc: Service, k: int, label: str, n: int) -> list[str]:
    numbers = phones(k)
    names = zones()
    rng = random.Random(7)
    sizes = list(itertools.islice(itertools.cycle(GROUP_SIZES), k))
    instants: list[int] = []
    for j, size in enumerate(sizes):
        instants += [j] * size
    instants = instants[:k]
    offset = clock_offset()
    began = time.time()
    first = math.ceil(time.time() + LEAD_S + k * 0.02)
    planned_wall = [first + j * INSTANT_GAP_S for j in instants]
    by_phone: dict[str, tuple[float, int]] = {}  # phone -> (planned wall time, instant)
    by_schedule: dict[str, float] = {}
    create_s: list[float] = []
    log_start = len(svc.twilio.rest_log)
    for i, (phone, planned) in enumerate(zip(numbers, planned_wall, strict=True)):
        zone = rng.choice(names)
        local = datetime.fromtimestamp(planned, UTC).astimezone(ZoneInfo(zone))
        body = {
            "name": f"one-shot {i}",
            "template_text": ONESHOT_TEXT,
            "variables": {"n": i},
            "recipients": [{"phone": phone}],
            "when": {"at": local.isoformat(), "timezone": zone},
        }
        t0 = time.monotonic()
        status, answer = await svc.api("POST", "/v1/schedules", body)
        create_s.append(time.monotonic() - t0)
        if status != 201:
            raise SystemExit(f"schedule refused: {status} {answer}")
        if datetime.fromisoformat(answer["next_run_at"]).timestamp() != planned:
            raise SystemExit(f"next_run_at {answer['next_run_at']} is not {local.isoformat()}")
        by_phone[phone] = (planned, instants[i])
        by_schedule[answer["id"]] = planned
    ahead = first - time.time()
    last = max(planned_wall)
    deadline = last - offset + 60
    wanted = set(by_phone)

    def creates() -> list[Any]:
        return [
            r
            for r in svc.twilio.rest_log[log_start:]
            if r.method == "POST" and r.path.endswith("/Calls.json") and dict(r.form).get("To") in wanted
        ]

    while time.monotonic() < deadline:
        if len({dict(r.form).get("To") for r in creates()}) == k and time.monotonic() > last - offset + 2:
            break
        await asyncio.sleep(0.2)
    arrivals = creates()
    placed = Counter(dict(r.form)["To"] for r in arrivals)
    first_arrival: dict[str, float] = {}
    for r in sorted(arrivals, key=lambda r: r.at):
        first_arrival.setdefault(dict(r.form)["To"], r.at)
    refused = sum(1 for r in arrivals if r.status != 201)
    groups: dict[int, list[tuple[float, str]]] = {}
    for phone, at in first_arrival.items():
        groups.setdefault(by_phone[phone][1], []).append((at, phone))
    raw: list[float] = []
    late: list[float] = []
    first_in_group: list[float] = []
    group_size = Counter(instants)
    by_size: dict[int, list[float]] = {}
    for instant, members in groups.items():
        for i, (at, phone) in enumerate(sorted(members)):
            planned_mono = by_phone[phone][0] - offset
            raw.append(at - planned_mono)
            late.append(at - planned_mono - i / CPS)
            by_size.setdefault(group_size[instant], []).append(late[-1])
            if i == 0:
                first_in_group.append(at - planned_mono)
    sized = "; ".join(
        f"{size}: p50 {pct(v, 50) * 1000:.0f} / max {max(v) * 1000:.0f} ms"
        for size, v in sorted(by_size.items())
    )
    made: dict[str, float] = {}
    for at, _, _, message in log_records(svc.log):
        m = FIRED.match(message)
        if m and m[1] in by_schedule:
            made[m[1]] = at - by_schedule[m[1]]
    missing = k - len(first_arrival)
    duplicates = sum(c - 1 for c in placed.values())
    if not late:
        return [f"2. fire lateness [{label}]: no create request arrived (see {svc.log}): MISSED"]
    p99 = pct(late, 99)
    ok = p99 <= LATENESS_TARGET_S and missing == 0
    made_line = (
        "alert made (the service's 'fired' log line, ms resolution) after the planned time: "
        + ms(list(made.values()))
        if made
        else "no 'fired' log lines found"
    )
    return [
        f"2. fire lateness [{label}], {k} one-shots on {len(groups)} instants {INSTANT_GAP_S:.0f} s apart "
        f"(groups of {'/'.join(map(str, GROUP_SIZES))}) next to {n} armed schedules, TWILIO_CPS={CPS}: "
        f"beyond the CPS queue {ms(late)}; target p99 <= {LATENESS_TARGET_S * 1000:.0f} ms: {verdict(ok)}",
        f"   raw (create at the sandbox Twilio - planned): {ms(raw)}; the first call of each instant: "
        f"{ms(first_in_group)}",
        f"   beyond the CPS queue by calls sharing the instant: {sized}",
        f"   {made_line}",
        f"   create requests {len(arrivals)} ({refused} not 201), recipients never called {missing}, "
        f"duplicate calls {duplicates}; POST /v1/schedules {ms(create_s)}, the last created {ahead:.1f} s "
        f"before the first instant; service: {svc.errors(since=began)}",
    ]


# --- main -------------------------------------------------------------------------------------------------


async def measure(
    work: Path,
    label: str,
    empty_url: str,
    seeded_url: str,
    tts: SandboxElevenLabs,
    args: argparse.Namespace,
    profile: bool,
) -> list[str]:
    rows, brief = seed_rows(args.schedules, datetime.now(UTC), QUIET, args.near, random.Random(1))
    await seed(empty_url, [])
    async with serve(work, f"{label}-empty", empty_url, tts, args.startup_timeout) as svc:
        empty = await startup(svc, 0, args.startup_timeout, None)
    print(
        f"[{label}] empty database: healthy {empty.healthy:.2f} s, VmRSS {empty.rss_kib / 1024:.1f} MiB",
        flush=True,
    )
    seeded_s = await seed(seeded_url, rows)
    print(f"[{label}] {len(rows)} schedules stored in {seeded_s:.1f} s; starting the service", flush=True)
    spy_out = work / f"{label}-py-spy.txt" if profile else None
    async with serve(work, f"{label}-seeded", seeded_url, tts, args.startup_timeout) as svc:
        run = await startup(svc, len(rows), args.startup_timeout, spy_out)
        lines = startup_lines(label, len(rows), brief, seeded_s, run, empty)
        if spy_out is not None:
            lines += profile_lines(spy_out)
        print("\n".join(lines), flush=True)
        fired = await fire_lateness(svc, args.oneshots, label, len(rows))
        print("\n".join(fired), flush=True)
    return lines + fired


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="announcer-bench-schedules-"))
    tts = SandboxElevenLabs(api_key=EL_KEY, synthesize=premade_voice(LocalSynthesizer()))
    await tts.start()
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; files in {work}", flush=True
    )
    gc.collect()
    gc.freeze()
    results: list[str] = []
    try:
        results += await measure(
            work,
            "SQLite",
            f"sqlite+aiosqlite:///{work / 'empty.db'}",
            f"sqlite+aiosqlite:///{work / 'seeded.db'}",
            tts,
            args,
            args.profile,
        )
        if args.pg:
            async with pg_database() as empty_pg, pg_database() as seeded_pg:
                results += await measure(work, "PostgreSQL", empty_pg, seeded_pg, tts, args, False)
    finally:
        await tts.close()
    if not args.pg:
        results.append("(PostgreSQL not measured: pass --pg)")
    print("\n".join(["", "== summary ==", *results]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schedules", type=int, default=10_000, help="active schedules stored up front")
    parser.add_argument("--oneshots", type=int, default=200, help="one-shot schedules timed as they fire")
    parser.add_argument("--pg", action="store_true", help="also on PostgreSQL")
    parser.add_argument(
        "--near",
        type=float,
        default=0.0,
        help="share of the schedules due within the hour (all armed at start; 1.0: the worst case)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the service while it arms (SQLite)")
    parser.add_argument(
        "--startup-timeout", type=float, default=1800.0, help="give up when not armed after this (s)"
    )
    asyncio.run(main(parser.parse_args()))
