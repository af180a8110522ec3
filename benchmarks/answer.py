"""Who answered: how soon the message follows a person's "Hello?" and a machine's beep, whether it talks
over anyone, and whether every call's outcome tells the truth, on a mix of sandbox callees.

One alert of --calls recipients goes through the real API (`POST /v1/alerts`); each recipient's number is
a sandbox callee (`PhoneBehavior.callee`), in a fixed mix shuffled with --seed: people who say "Hello?"
0.3-1.2 s after answering, people who say nothing, people who say hello and then talk over the message,
answering machines with a beep, without one, full mailboxes (greeting, then they hang up), faxes. Every
phone rings 1-3 s first, as real ones do, so the service's prefetch of the message runs while it rings.
Each recipient's text names them (a TTS request of its own), served by the sandbox ElevenLabs from
premade speech with a first byte after --tts-first-byte-ms and at --tts-x times real time.

By default (--speed 1) the service runs as its own process, configured like a live deployment (strict
numbers, credentials) whose Twilio and ElevenLabs are the loopback sandbox hosted by this script, as in
alerts.py: the sandbox phones' CPU is not the service's. A deployment's playout clock runs at speed 1
only, so another --speed (or --in-process) runs the service in this process in sandbox mode, its clock at
the phones' speed, and the CPU printed is the whole process's (phones included).

Printed, times in sandbox ms (real ms at speed 1; the phone clock ticks every 10 real ms, so a time is
only as good as 10 * speed ms):
  1. a person's "Hello?" (its last frame's slot end, `SandboxCall.hello.ended_at`) -> the first frame of
     the message played at the phone: p50, p95, max, n (target p95 <= 300 ms); also from the hello's last
     voiced frame, what started each message (the service's `message_started` events), and a silent
     person's answer -> first frame (the service waits hello_timeout_ms, 1,500 ms, of silence)
  2. a machine's beep end -> the first frame of the voicemail message (`played_after(beep_ended_at)`)
     (target p95 <= 300 ms); machines without a beep from their greeting's end (machine detection waits
     for 1,200 ms of silence first: no target); anything played during a greeting
  3. the share of messages whose first 500 ms overlapped the callee's own sound (`overlap_ms`, from the
     message's first frame for people, from the voicemail's for machines) (target 0)
  4. outcomes right for N of N (hello/silent/talks-over: heard; machine with or without beep:
     voicemail_left; full mailbox: machine; fax: fax), each wrong one with its outcome_reason
  5. CPU per call, and what the phones saw (underruns, play gaps), service errors

Usage: .venv/bin/python benchmarks/answer.py [--calls 200] [--speed 1] [--concurrency 50] [--cps 5]
       [--seed 1] [--in-process] [--pg]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import random
import re
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
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

from announcer.sandbox import Callee, PhoneBehavior, SandboxCall, SandboxElevenLabs, SandboxTwilio
from announcer.sandbox.twilio_call import LineKind
from announcer.speech.local import LocalSynthesizer

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + secrets.token_hex(16)
AUTH_TOKEN = secrets.token_hex(16)
EL_KEY = secrets.token_hex(16)
API_TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
NUMBER = "+15550100000"
TARGET_MS = 300.0
OVERLAP_WINDOW_S = 0.5
RING_S = (1.0, 3.0)
HELLO_AFTER_S = (0.3, 1.2)  # people take 0.3-1.2 s to say hello (issue 14)
# The mix, in parts: the shares of the callees in the run (largest remainder for any --calls).
MIX: tuple[tuple[Callee, int], ...] = (
    (Callee.HELLO, 30),
    (Callee.SILENT, 10),
    (Callee.TALKS_OVER, 10),
    (Callee.MACHINE, 20),
    (Callee.MACHINE_NO_BEEP, 10),
    (Callee.MAILBOX_FULL, 10),
    (Callee.FAX, 10),
)
EXPECTED = {
    Callee.LISTENER: "heard",
    Callee.HELLO: "heard",
    Callee.SILENT: "heard",
    Callee.TALKS_OVER: "heard",
    Callee.MACHINE: "voicemail_left",
    Callee.MACHINE_NO_BEEP: "voicemail_left",
    Callee.MAILBOX_FULL: "machine",
    Callee.FAX: "fax",
}
PEOPLE = (Callee.HELLO, Callee.SILENT, Callee.TALKS_OVER)
SAYS_HELLO = (Callee.HELLO, Callee.TALKS_OVER)
RECORDS = (Callee.MACHINE, Callee.MACHINE_NO_BEEP)
# About 8 s of speech in three sentences (pipelined by the service); the name makes each text its own.
TEMPLATE = (
    "Hello {{ name }}, this is Acme Clinic with a reminder. Your appointment on Tuesday has moved from "
    "nine to ten thirty in the morning. Please call us back if the new time does not suit you."
)
LOG_RECORD = re.compile(r"(?m)^(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ )")
NUMBERS_IN = re.compile(r"\d+")


def mix(n: int, seed: int) -> list[Callee]:
    """`n` callees in MIX's shares (largest remainder), shuffled."""
    total = sum(parts for _, parts in MIX)
    exact = [(kind, n * parts / total) for kind, parts in MIX]
    counts = {kind: int(share) for kind, share in exact}
    short = n - sum(counts.values())
    for kind, _ in sorted(exact, key=lambda e: int(e[1]) - e[1])[:short]:
        counts[kind] += 1
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    random.Random(seed).shuffle(kinds)
    return kinds


@dataclass
class Service:
    """The service under test and the sandbox Twilio it dials through."""

    public: str
    twilio: SandboxTwilio
    http: aiohttp.ClientSession
    where: str  # how it runs, for the header
    cpu: Any  # () -> CPU seconds of the service (in-process: the whole process)
    errors: Any  # () -> what the service logged at ERROR, in brief

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.public + path, json=body, headers=AUTH) as resp:
            return resp.status, await resp.json()


def logged_errors(log: Path) -> str:
    records = LOG_RECORD.split(log.read_text(errors="replace"))
    errors = [r.split("\n", 1)[0] for r in records if " ERROR " in r.split("\n", 1)[0]]
    if not errors:
        return "service logged no errors"
    kinds = Counter(e.split(" ERROR ", 1)[1][:120] for e in errors)
    listed = "; ".join(f"{n}x {kind!r}" for kind, n in kinds.most_common(5))
    return f"service logged {len(errors)} error(s): {listed} (see {log})"


@contextlib.asynccontextmanager
async def own_process(
    work: Path, args: argparse.Namespace, database_url: str, tts: SandboxElevenLabs
) -> AsyncIterator[Service]:
    """`announcer serve` as a deployment runs it, against the sandbox peers of this process."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    twilio = SandboxTwilio(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        phone_number=NUMBER,
        voice_url=public + "/twilio/voice",
        status_callback_url=None,
        recordings_dir=work / "recordings",
        say_synthesize=LocalSynthesizer().synthesize,
        speed=args.speed,
    )
    tw_base = await twilio.start()
    assert tts.base_url is not None
    env = deployment_env(
        port=port,
        twilio=(ACCOUNT_SID, AUTH_TOKEN, NUMBER, tw_base),
        elevenlabs=(EL_KEY, tts.base_url),
        database_url=database_url,
        data_dir=work / "data",
        api_token=API_TOKEN,
        cps=args.cps,
        max_calls=args.concurrency,
        log_level="ERROR",
    )
    log = work / "service.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "announcer.cli", "serve", env=env, cwd=ROOT, stdout=sink, stderr=sink
        )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            await wait_serving(http, public, proc, log)
            yield Service(
                public,
                twilio,
                http,
                f"own process (pid {proc.pid}, a deployment's configuration)",
                lambda: cpu_s(proc.pid),
                lambda: logged_errors(log),
            )
    finally:
        await stop(proc)
        await twilio.close()


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def brief(self) -> str:
        if not self.records:
            return "service logged no errors"
        kinds = Counter(f"{r.name}: {r.getMessage()[:100]}" for r in self.records)
        listed = "; ".join(f"{n}x {kind!r}" for kind, n in kinds.most_common(5))
        return f"service (and sandbox) logged {len(self.records)} error(s): {listed}"


@contextlib.asynccontextmanager
async def in_process(
    work: Path, args: argparse.Namespace, database_url: str, tts: SandboxElevenLabs
) -> AsyncIterator[Service]:
    """The service in this process in sandbox mode (no Twilio credentials), its clock at --speed."""
    from announcer import logs
    from announcer.app import SANDBOX, create_app
    from announcer.config import Settings

    # Settings read the environment: this machine's own settings must not reach the service.
    for name in Settings.model_fields:
        os.environ.pop(name.upper(), None)
    logs.setup("ERROR")
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    port = free_port()
    settings = Settings(
        _env_file=None,
        host="127.0.0.1",
        port=port,
        database_url=database_url,
        announcer_data_dir=work / "data",
        announcer_api_token=API_TOKEN,
        announcer_log_level="ERROR",
        twilio_cps=args.cps,
        max_concurrent_calls=args.concurrency,
        announcer_sandbox_speed=args.speed,
        elevenlabs_api_key=EL_KEY,
        elevenlabs_base_url=tts.base_url,
    )
    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        twilio = runner.app[SANDBOX]
        assert isinstance(twilio, SandboxTwilio)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            yield Service(
                f"http://127.0.0.1:{port}",
                twilio,
                http,
                f"this process, sandbox mode at speed {args.speed:g} (CPU below: service and phones)",
                time.process_time,
                errors.brief,
            )
    finally:
        await runner.cleanup()
        logging.getLogger().removeHandler(errors)


@dataclass
class Recipient:
    phone: str
    kind: Callee
    behavior: PhoneBehavior
    delivery: dict[str, Any] = field(default_factory=dict)
    call: SandboxCall | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # the service's trail of the call

    @property
    def outcome(self) -> str | None:
        return self.delivery.get("outcome")


def cpu_pressure_s() -> float:
    """The time some runnable task waited for a CPU, machine-wide (/proc/pressure/cpu, `some total`): the
    other work on a shared machine that the tail of the timings may be waiting behind."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return int(line.rsplit("total=", 1)[1]) / 1e6
    return float("nan")


def ms(call: SandboxCall, start: float, end: float) -> float:
    """Sandbox ms from `start` to `end` (monotonic)."""
    return (end - start) * call.speed * 1000


def stats(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"p50 {pct(values, 50):.0f} ms, p95 {pct(values, 95):.0f} ms, max {max(values):.0f} ms, "
        f"n={len(values)}"
    )


def listed(items: list[str]) -> str:
    """How many, and the first few."""
    return f"{len(items)} ({', '.join(items[:5])})" if items else "0"


def target(values: list[float]) -> str:
    p95 = pct(values, 95)
    return f"target p95 <= {TARGET_MS:.0f} ms: {verdict(bool(values) and p95 <= TARGET_MS)}"


async def run(service: Service, people: list[Recipient], args: argparse.Namespace) -> float:
    """One alert to everyone; returns the wall seconds from the POST to the last call's end."""
    for r in people:
        service.twilio.set_behavior(r.phone, r.behavior)
    body = {
        "template_text": TEMPLATE,
        "recipients": [
            {"phone": r.phone, "variables": {"name": f"Person {i}"}} for i, r in enumerate(people)
        ],
    }
    t0 = time.monotonic()
    status, answer = await service.api("POST", "/v1/alerts", body)
    if status != 202:
        raise SystemExit(f"alert refused: {status} {answer}")
    alert_id = answer["id"]
    # Each call lasts well under a minute; the dial rate and the concurrency set the pace.
    budget = len(people) / args.cps + len(people) / args.concurrency * 60 / args.speed + 120
    async with asyncio.timeout(budget):
        while True:
            status, view = await service.api("GET", f"/v1/alerts/{alert_id}")
            if status == 200 and view["status"] != "active":
                break
            await asyncio.sleep(0.5)
    by_phone = {r.phone: r for r in people}
    after: int | None = -1
    while after is not None:
        status, page = await service.api("GET", f"/v1/alerts/{alert_id}/deliveries?after={after}&limit=1000")
        if status != 200:
            raise SystemExit(f"deliveries: {status} {page}")
        for d in page["deliveries"]:
            by_phone[d["phone"]].delivery = d
        after = page["next_after"]
    calls = {c.sid: c for c in service.twilio.calls.values()}
    for r in people:
        r.call = calls.get(r.delivery.get("call_sid") or "")
    # The alert is over once every outcome is in; the phones finish their calls a moment later.
    await asyncio.gather(*(r.call.wait_ended(60) for r in people if r.call is not None))
    wall = time.monotonic() - t0
    for r in people:
        sid = r.delivery.get("call_sid")
        if sid:
            status, view = await service.api("GET", f"/v1/calls/{sid}")
            r.events = view.get("events", []) if status == 200 else []
    return wall


def started_after(r: Recipient) -> str:
    """Why the service started the message (its `message_started` event), numbers taken out."""
    reasons = [e.get("after", "?") for e in r.events if e.get("kind") == "message_started"]
    return NUMBERS_IN.sub("N", reasons[0]) if reasons else "(not started)"


def report(people: list[Recipient]) -> list[str]:
    lines: list[str] = []
    # -- 1. a person's hello -> the message's first frame ----------------------------------------------
    hello_ms: list[float] = []
    voiced_ms: list[float] = []
    early: list[str] = []
    missing = 0
    for r in people:
        call = r.call
        if r.kind not in SAYS_HELLO or call is None:
            continue
        hello = call.hello
        if hello is None or hello.ended_at is None or call.first_played_at is None:
            missing += 1
            continue
        took = ms(call, hello.ended_at, call.first_played_at)
        hello_ms.append(took)
        if hello.sound_ended_at is not None:
            voiced_ms.append(ms(call, hello.sound_ended_at, call.first_played_at))
        if took < 0:
            early.append(f"{r.phone} ({took:.0f} ms)")
    why = Counter(started_after(r) for r in people if r.kind in SAYS_HELLO)
    lines += [
        f"1. a person's \"Hello?\" end -> the message's first frame: {stats(hello_ms)} ({target(hello_ms)})",
        f"   from the hello's last voiced frame: {stats(voiced_ms)}; no hello or no message: {missing}; "
        f"message before the hello ended: {listed(early)}",
        "   the service started it after: "
        + "; ".join(f"{n}x {reason!r}" for reason, n in why.most_common()),
    ]
    silent = [
        ms(r.call, r.call.answered_at, r.call.first_played_at)
        for r in people
        if r.kind is Callee.SILENT
        and r.call is not None
        and r.call.answered_at is not None
        and r.call.first_played_at is not None
    ]
    lines.append(f"   a silent person, answer -> the message's first frame: {stats(silent)}")
    # -- 2. a machine's beep -> the voicemail message's first frame ------------------------------------
    beep_ms: list[float] = []
    greeting_ms: list[float] = []
    over_greeting: list[str] = []
    no_voicemail = 0
    for r in people:
        call = r.call
        if r.kind not in (*RECORDS, Callee.MAILBOX_FULL) or call is None:
            continue
        greetings = call.lines(LineKind.GREETING)
        greeting_end = greetings[0].ended_at if greetings else None
        quiet_from = call.recording_started_at or greeting_end
        if call.first_played_at is not None and (quiet_from is None or call.first_played_at < quiet_from):
            over_greeting.append(f"{r.kind.value} {r.phone}")
        if r.kind not in RECORDS:
            continue
        # the beep's end, or (no beep) the greeting's: where the machine starts recording
        start = call.beep_ended_at if r.kind is Callee.MACHINE else call.recording_started_at
        first = call.played_after(start) if start is not None else None
        if start is None or first is None:
            no_voicemail += 1
            continue
        (beep_ms if r.kind is Callee.MACHINE else greeting_ms).append(ms(call, start, first))
    lines += [
        f"2. a machine's beep end -> the voicemail's first frame: {stats(beep_ms)} ({target(beep_ms)})",
        f"   no beep, the greeting's end -> the voicemail's first frame: {stats(greeting_ms)} "
        "(machine detection waits 1,200 ms of silence first)",
        f"   machines that recorded no voicemail: {no_voicemail}; audio played during a greeting (before the "
        f"beep, or before the greeting ended): {listed(over_greeting)}",
    ]
    # -- 3. the first 500 ms of each message against the callee's own sound -----------------------------
    overlapped: list[str] = []
    messages = 0
    for r in people:
        call = r.call
        if call is None:
            continue
        if r.kind in PEOPLE:
            start = call.first_played_at
        elif r.kind in RECORDS and call.recording_started_at is not None:
            start = call.played_after(call.recording_started_at)
        else:
            start = None
        if start is None:
            continue
        messages += 1
        overlap = call.overlap_ms(OVERLAP_WINDOW_S, start)
        if overlap > 0:
            overlapped.append(f"{r.kind.value} {r.phone} {overlap:.0f} ms ({r.outcome})")
    share = len(overlapped) / messages if messages else float("nan")
    other = [
        f"{r.kind.value} {r.phone}"
        for r in people
        if r.kind in (Callee.MAILBOX_FULL, Callee.FAX) and r.call is not None and r.call.first_played_at
    ]
    lines += [
        f"3. messages whose first {OVERLAP_WINDOW_S * 1000:.0f} ms overlapped the callee's sound: "
        f"{len(overlapped)} of {messages} ({share:.1%}) (target 0: {verdict(not overlapped)})",
        *(f"   {o}" for o in overlapped[:10]),
        f"   anything played to a full mailbox or a fax: {listed(other)}",
    ]
    # -- 4. outcomes ------------------------------------------------------------------------------------
    wrong = [r for r in people if r.outcome != EXPECTED[r.kind]]
    right = len(people) - len(wrong)
    per_kind: dict[Callee, Counter[str]] = {}
    for r in people:
        per_kind.setdefault(r.kind, Counter())[str(r.outcome)] += 1
    lines.append(
        f"4. outcomes right: {right} of {len(people)} (target {len(people)} of {len(people)}: "
        f"{verdict(not wrong)})"
    )
    for kind, _ in MIX:
        counts = per_kind.get(kind)
        if counts is None:
            continue
        got = ", ".join(f"{outcome} {n}" for outcome, n in counts.most_common())
        lines.append(f"   {kind.value} (expected {EXPECTED[kind]}): {got}")
    for r in wrong[:20]:
        d = r.delivery
        lines.append(
            f"   WRONG {r.kind.value} {r.phone} {d.get('call_sid')}: {r.outcome} (answered_by "
            f"{d.get('answered_by')}, amd_ms {d.get('amd_ms')}, played {d.get('played_ms')} of "
            f"{d.get('message_ms')} ms): {d.get('outcome_reason')!r}"
        )
    left = [r.delivery for r in people if r.outcome == "voicemail_left"]
    whole = sum(1 for d in left if d.get("message_ms") and d.get("played_ms") == d.get("message_ms"))
    answered = Counter(f"{r.kind.value}={r.delivery.get('answered_by')}" for r in people)
    lines += [
        f"   voicemail_left with played_ms == message_ms: {whole} of {len(left)}",
        "   answered_by: " + ", ".join(f"{k} {n}" for k, n in sorted(answered.items())),
    ]
    return lines


def phone_side(people: list[Recipient]) -> str:
    calls = [r.call for r in people if r.call is not None]
    underruns = [c.underrun_frames for c in calls]
    gaps = [c.max_play_gap_s * 1000 for c in calls if c.max_play_gap_s]
    problems = sum(len(c.protocol_errors) + len(c.application_errors) for c in calls)
    edges = sorted([(c.placed_at, 1) for c in calls] + [(c.finished_at or c.placed_at, -1) for c in calls])
    live = peak = 0
    for _, step in edges:
        live += step
        peak = max(peak, live)
    stuttered = sum(1 for u in underruns if u)
    # A play gap is real time, and the phones' own clock running late (this process busy) counts in it.
    return (
        f"phones: most calls open at once {peak}; underrun frames {sum(underruns)} on {stuttered} calls; "
        f"each call's longest gap between two played frames p50 {pct(gaps, 50):.0f} ms, max "
        f"{max(gaps, default=0):.0f} ms (real); protocol/application errors {problems}"
    )


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="announcer-bench-answer-"))
    rng = random.Random(args.seed)
    numbers = phones(args.calls)
    people = [
        Recipient(
            phone,
            kind,
            PhoneBehavior(
                callee=kind,
                ring_s=round(rng.uniform(*RING_S), 2),
                hello_after_s=round(rng.uniform(*HELLO_AFTER_S), 2),
            ),
        )
        for phone, kind in zip(numbers, mix(args.calls, args.seed), strict=True)
    ]
    tts = SandboxElevenLabs(api_key=EL_KEY, synthesize=premade_voice(LocalSynthesizer()))
    tts.first_byte_delay_s = args.tts_first_byte_ms / 1000
    tts.bytes_per_second = 8000 * args.tts_x
    tts.chunk_bytes = 320
    await tts.start()
    own = args.speed == 1 and not args.in_process
    kinds = Counter(r.kind for r in people)
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; {args.calls} calls: "
        + ", ".join(f"{kind.value} {kinds[kind]}" for kind, _ in MIX)
        + f"; ring {RING_S[0]:g}-{RING_S[1]:g} s, hello after {HELLO_AFTER_S[0]:g}-{HELLO_AFTER_S[1]:g} s; "
        f"TWILIO_CPS={args.cps:g}, MAX_CONCURRENT_CALLS={args.concurrency}; TTS first byte "
        f"{args.tts_first_byte_ms:g} ms at {args.tts_x:g}x real time; sandbox speed {args.speed:g}; "
        f"{'PostgreSQL' if args.pg else 'SQLite'}",
        flush=True,
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            if args.pg:
                database_url = await stack.enter_async_context(pg_database())
            else:
                database_url = f"sqlite+aiosqlite:///{work / 'answer.db'}"
            deploy = own_process if own else in_process
            service = await stack.enter_async_context(deploy(work, args, database_url, tts))
            print(f"service: {service.where}", flush=True)
            # This process is the phone network: keep its own collector pauses out of the timings.
            gc.collect()
            gc.freeze()
            cpu0, own0, waited0 = service.cpu(), time.process_time(), cpu_pressure_s()
            wall = await run(service, people, args)
            cpu, own_cpu = service.cpu() - cpu0, time.process_time() - own0
            waited = cpu_pressure_s() - waited0
            lines = report(people)
            per_call = cpu / args.calls * 1000
            lines.append(
                f"5. {args.calls} calls in {wall:.1f} s; service CPU {cpu:.1f} s = {per_call:.0f} ms per "
                f"call ({cpu / wall:.0%} of one core)"
                + ("" if not own else f"; this process (phones, TTS) {own_cpu:.1f} s ({own_cpu / wall:.0%})")
            )
            lines += [
                f"   CPU pressure (some task waiting for a CPU) {waited / wall:.0%} of the run; load average "
                f"{os.getloadavg()[0]:.2f} at its end",
                f"   {phone_side(people)}",
                f"   {service.errors()}",
            ]
    finally:
        await tts.close()
    print("\n".join(["", "== summary ==", *lines]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--speed", type=float, default=1.0, help="sandbox seconds per real second")
    parser.add_argument("--concurrency", type=int, default=50, help="MAX_CONCURRENT_CALLS")
    parser.add_argument("--cps", type=float, default=5.0, help="TWILIO_CPS")
    parser.add_argument("--seed", type=int, default=1, help="the mix's order, rings and hello times")
    parser.add_argument("--tts-first-byte-ms", type=float, default=150.0)
    parser.add_argument("--tts-x", type=float, default=5.0, help="TTS audio per second, times real time")
    parser.add_argument(
        "--in-process", action="store_true", help="the service in this process (sandbox mode)"
    )
    parser.add_argument("--pg", action="store_true", help="PostgreSQL (a fresh database) instead of SQLite")
    asyncio.run(main(parser.parse_args()))
