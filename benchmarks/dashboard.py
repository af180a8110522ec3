"""The dashboard's page loads with 10,000 deliveries and 1,000 schedules in the database: p50 / p95 of
each page (target p95 under 200 ms) and the service's CPU per request, on SQLite and (with --pg)
PostgreSQL.

The database is filled before the service starts (migrations, then bulk rows: one alert of 9,000
recipients and 100 of 10, every delivery final with its call, 5 call events and 3 delivery events each,
1,000 opt-outs; 1,000 active cron schedules of 10 recipients each, the first with 50 past occurrences),
then `announcer serve` runs in sandbox mode (nothing is left to dial) and one signed-in client loads each
page `--rounds` times, one request at a time; then the Send page's preview of a 100-row CSV (a POST:
every row rendered) the same way.

    .venv/bin/python benchmarks/dashboard.py [--rounds 100] [--pg] [--no-sqlite] [--preview-only]

Any answer other than 200 is counted and shown with the service log's errors (the run goes on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from harness import cpu_s, free_port, pct, pg_database, stop, verdict, wait_serving
from sqlalchemy import insert

from announcer.options import ScheduleOptions, StoredOptions
from announcer.scheduling.when import when_from_json
from announcer.store.db import Database
from announcer.store.models import (
    Alert,
    Call,
    CallEvent,
    Delivery,
    DeliveryEvent,
    Occurrence,
    OptOut,
    Schedule,
    utcnow,
)
from announcer.store.schedules import arm_time

TOKEN = "bench-dashboard-token"
BIG = 9_000  # recipients of the big alert
SMALL_ALERTS, SMALL = 100, 10
OPT_OUTS = 1_000
OUTCOMES = ("heard", "heard", "heard", "confirmed", "voicemail_left", "no_answer", "busy", "failed")
TARGET_MS = 200.0
CHUNK = 2_000
SCHEDULES, SCHEDULE_RECIPIENTS, OCCURRENCES = 1_000, 10, 50
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC", "Australia/Sydney")
PREVIEW_ROWS = 100


async def seed(url: str) -> tuple[str, str]:
    """Fill the database; returns (the big alert's id, one call's SID)."""
    db = Database(url)
    await db.upgrade()
    now = utcnow()
    alerts: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    plan = [(f"al_bench{0:06d}", BIG)] + [(f"al_bench{i:06d}", SMALL) for i in range(1, SMALL_ALERTS + 1)]
    did = 0
    for n, (alert_id, size) in enumerate(plan):
        created = now - timedelta(minutes=len(plan) - n)
        alerts.append(
            {
                "id": alert_id,
                "request_hash": "0" * 64,
                "source": "api",
                "template": "alert.j2",
                "template_text": None,
                "variables": {},
                "options": StoredOptions(),
                "status": "completed",
                "recipients": size,
                "created_at": created,
                "finished_at": created + timedelta(seconds=30),
            }
        )
        for position in range(size):
            did += 1
            outcome = OUTCOMES[did % len(OUTCOMES)]
            deliveries.append(
                {
                    "id": did,
                    "alert_id": alert_id,
                    "position": position,
                    "phone": f"+1415{did:07d}",
                    "name": f"Person {did}",
                    "variables": {},
                    "text": f"Hello Person {did}. The billing server is down since half past nine today.",
                    "state": outcome,
                    "attempt": 1,
                    "max_attempts": 1,
                    "next_attempt_at": created,
                    "call_id": did,
                    "call_sid": f"CA{did:032x}",
                    "outcome": outcome,
                    "created_at": created,
                    "updated_at": created + timedelta(seconds=20),
                    "finished_at": created + timedelta(seconds=20),
                }
            )
    calls = [
        {
            "id": d["id"],
            "call_sid": d["call_sid"],
            "direction": "outbound-api",
            "kind": "announcement",
            "from_number": "+15550100000",
            "to_number": d["phone"],
            "status": "completed",
            "outcome": d["outcome"],
            "text": d["text"],
            "answered_by": "human",
            "played_ms": 4400,
            "message_ms": 4400,
            "last_sequence": 2,
            "created_at": d["created_at"],
            "updated_at": d["finished_at"],
            "ended_at": d["finished_at"],
            "delivery_id": d["id"],
            "attempt": 1,
        }
        for d in deliveries
    ]
    call_events = [
        {"call_id": c["id"], "at": c["created_at"], "kind": kind, "detail": {"status": "x"}}
        for c in calls
        for kind in ("stream_token_issued", "status", "stream_started", "outcome", "stream_closed")
    ]
    delivery_events = [
        {"delivery_id": d["id"], "at": d["created_at"], "kind": "state", "detail": {"state": state}}
        for d in deliveries
        for state in ("queued", "dialing", d["state"])
    ]
    opt_outs = [{"phone": f"+1650{i:07d}", "created_at": now} for i in range(OPT_OUTS)]
    schedules, occurrences = _schedules(now)
    async with db.engine.begin() as conn:
        for table, rows in (
            (Alert, alerts),
            (Delivery, deliveries),
            (Call, calls),
            (CallEvent, call_events),
            (DeliveryEvent, delivery_events),
            (OptOut, opt_outs),
            (Schedule, schedules),
            (Occurrence, occurrences),
        ):
            for start in range(0, len(rows), CHUNK):
                await conn.execute(insert(table), rows[start : start + CHUNK])
    await db.dispose()
    return plan[0][0], deliveries[BIG // 2]["call_sid"]


def _schedules(now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """1,000 active weekday schedules in five zones, starting in a week, each with its next run computed
    (as a start would find them), and 50 past occurrences of the first, each one of the small alerts."""
    options = ScheduleOptions()
    rows = []
    for i in range(SCHEDULES):
        # from a week on: none fires (nor has its speech made) while the pages are measured
        when = {
            "cron": f"{i % 60} {6 + i % 12} * * mon-fri",
            "timezone": ZONES[i % len(ZONES)],
            "start": (now + timedelta(days=7)).isoformat(),
        }
        next_run = when_from_json(when).first_after(now)
        rows.append(
            {
                "id": f"sc_bench{i:06d}",
                "name": f"check-in {i}",
                "template": None,
                "template_text": "Good morning {{ name }}, your {{ item }} is ready.",
                "variables": {"item": "parcel"},
                "recipients": {
                    "items": [
                        {
                            "phone": f"+1628{i:04d}{r:03d}",
                            "name": f"Person {r}",
                            "variables": {"item": f"box {r}"},
                        }
                        for r in range(SCHEDULE_RECIPIENTS)
                    ]
                },
                "when": when,
                "options": options,
                "status": "active",
                "last_planned_at": now,
                "next_run_at": next_run,
                "arm_at": arm_time(next_run, options),
                "created_at": now,
                "updated_at": now,
            }
        )
    occurrences = [
        {
            "schedule_id": "sc_bench000000",
            "planned_at": now - timedelta(days=n + 1),
            "status": "fired",
            "alert_id": f"al_bench{n + 1:06d}",
            "detail": {},
            "created_at": now - timedelta(days=n + 1),
        }
        for n in range(OCCURRENCES)
    ]
    return rows, occurrences


@contextlib.asynccontextmanager
async def serving(url: str, data_dir: Path) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "ELEVENLABS_", "ANNOUNCER_"))},
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": url,
        "ANNOUNCER_DATA_DIR": str(data_dir),
        "ANNOUNCER_API_TOKEN": TOKEN,
        "ANNOUNCER_LOG_LEVEL": "WARNING",
    }
    log = data_dir / "service.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "announcer.cli", "serve", env=env, stdout=out, stderr=out
        )
        public = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                await wait_serving(http, public, proc, log)
            yield public, proc.pid
        finally:
            await stop(proc)


async def measure(public: str, pid: int, pages: dict[str, str], rounds: int) -> Counter[int]:
    """Each page's times; the preview's answers by status (anything but 200 is a finding)."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base_url=public, cookie_jar=jar) as http:
        async with http.post("/sign-in", data={"token": TOKEN}, allow_redirects=False) as resp:
            assert resp.status == 303, resp.status
        if not pages:
            return await measure_preview(http, pid, rounds)
        print(
            f"{'page':<34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'CPU ms/req':>11}  target p95 < 200 ms"
        )
        for label, path in pages.items():
            async with http.get(path) as resp:  # once first: the templates compiled, the caches warm
                assert resp.status == 200, (path, resp.status, await resp.text())
            times: list[float] = []
            cpu_before = cpu_s(pid)
            for _ in range(rounds):
                start = time.perf_counter()
                async with http.get(path) as resp:
                    await resp.read()
                    assert resp.status == 200, (path, resp.status)
                times.append((time.perf_counter() - start) * 1000)
            cpu_ms = (cpu_s(pid) - cpu_before) * 1000 / rounds
            p95 = pct(times, 95)
            print(
                f"{label:<34} {pct(times, 50):8.1f} {p95:8.1f} {max(times):8.1f} {cpu_ms:11.1f}  "
                f"{verdict(p95 < TARGET_MS)}"
            )
        return await measure_preview(http, pid, rounds)


async def measure_preview(http: aiohttp.ClientSession, pid: int, rounds: int) -> Counter[int]:
    """The Send page's preview of a 100-row CSV: a POST that renders every row (in the render thread)
    and answers the table with each row's text and audio link."""
    async with http.get("/send") as resp:
        found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', await resp.text())
    assert found is not None
    csv = "phone,name,item\n" + "".join(f"+1415555{i:04d},Person {i},box {i}\n" for i in range(PREVIEW_ROWS))
    form = {
        "csrf_token": found.group(1),
        "key": "0" * 32,
        "action": "preview",
        "template_text": "Hello {{ name }}, your {{ item }} is ready at the front desk.",
        "recipients": csv,
    }
    times: list[float] = []
    statuses: Counter[int] = Counter()
    cpu_before = cpu_s(pid)
    for _ in range(rounds + 1):
        start = time.perf_counter()
        async with http.post("/send", data=form) as resp:
            page = await resp.text()
            statuses[resp.status] += 1
            if resp.status != 200:
                print(f"send preview answered {resp.status}: {page[:300]!r}")
        times.append((time.perf_counter() - start) * 1000)
    times = times[1:]  # the first: the template compiled
    cpu_ms = (cpu_s(pid) - cpu_before) * 1000 / (rounds + 1)
    p95 = pct(times, 95)
    label = f"send preview POST ({PREVIEW_ROWS} rows)"
    print(
        f"{label:<34} {pct(times, 50):8.1f} {p95:8.1f} {max(times):8.1f} {cpu_ms:11.1f}  "
        f"{verdict(p95 < TARGET_MS)}"
    )
    print(f"send preview answers by status: {dict(sorted(statuses.items()))}")
    return statuses


async def run(url: str, name: str, rounds: int, *, preview_only: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="announcer-bench-dash-") as tmp:
        if url == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp}/announcer.db"
        started = time.perf_counter()
        big, call_sid = await seed(url)
        seeded = time.perf_counter() - started
        print(f"\n== {name}: seeded 10,000 deliveries, 1,000 schedules in {seeded:.1f} s ==")
        async with serving(url, Path(tmp)) as (public, pid):
            if preview_only:
                statuses = await measure(public, pid, {}, rounds)
                _show_errors(Path(tmp), statuses)
                return
            pages = {
                "overview /": "/",
                "overview fragment /overview/live": "/overview/live",
                "alerts list /alerts": "/alerts",
                "alerts list, older page": "/alerts?before=al_bench000050",
                "alert (9,000 recipients)": f"/alerts/{big}",
                "alert, recipients 4501-4550": f"/alerts/{big}?start=4500",
                "alert progress fragment": f"/alerts/{big}/progress",
                "call": f"/calls/{call_sid}",
                "opt-outs (1,000)": "/opt-outs",
                "send /send": "/send",
                "send, a template picked": "/send?template=alert.j2",
                "schedules (1,000) /schedules": "/schedules",
                "schedule (50 occurrences)": "/schedules/sc_bench000000",
            }
            _show_errors(Path(tmp), await measure(public, pid, pages, rounds))


def _show_errors(data_dir: Path, statuses: Counter[int]) -> None:
    """The service log's errors, when an answer was not 200 (the log goes with the temporary dir)."""
    if set(statuses) <= {200}:
        return
    lines = (data_dir / "service.log").read_text(errors="replace").splitlines()
    print("service log, ERROR lines and tracebacks:")
    print(
        "\n".join(line for line in lines if "ERROR" in line or line.startswith(("Traceback", " ", "\t")))[
            -6000:
        ]
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100, help="loads of each page")
    parser.add_argument("--pg", action="store_true", help="PostgreSQL too (127.0.0.1:5432, as the tests)")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite run (with --pg)")
    parser.add_argument("--preview-only", action="store_true", help="only the Send page's preview")
    args = parser.parse_args()
    print(
        f"CPUs: {os.cpu_count()} (shared: wall-clock times are noisy; CPU per request is the service's own)"
    )
    if not args.no_sqlite:
        await run("sqlite", "SQLite", args.rounds, preview_only=args.preview_only)
    if args.pg:
        async with pg_database() as url:
            await run(url, "PostgreSQL", args.rounds, preview_only=args.preview_only)


if __name__ == "__main__":
    asyncio.run(main())
