"""Paging latency (issue 17's benchmark): from Alertmanager's webhook arriving to the first page call's
create request at Twilio, with 100 incidents opening at once; and the same escalation with the service
killed (SIGKILL) after step 1's pages and started again: step 2's lateness against its due time, and each
step paged exactly once.

    .venv/bin/python benchmarks/paging.py [--database sqlite|postgresql|both] [--groups 100] [--delay 15]

`announcer serve` runs as a live deployment would (its own process, credentials set), with the lean Twilio
of agent_bridge.py (through capacity_setup.peers) and the sandbox ElevenLabs in this process, and the real
Alertmanager (paging_peer.py) posting to it through a timing relay. Every time is this machine's
time.monotonic() (one clock for all its processes): the relay's arrival of a group's first firing webhook
and the lean Twilio's arrival of a create request. A create is tied to its incident through the API (the
incident's page -> its alert -> the delivery's call SID), never by order. TWILIO_CPS is 200 by default,
high enough that 100 page calls do not queue behind the dial rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import agent_bridge as lean
import aiohttp
from aiohttp import web
from capacity_setup import EL_KEY, SetupTwilio, logged_errors, peers
from harness import deployment_env, free_port, pct, pg_database, phones, stop, wait_serving
from paging_peer import Arrival, paging_peer

AUTH = {"Authorization": f"Bearer {lean.API_TOKEN}"}
TARGET_P95_S = 1.0


class PagingTwilio(SetupTwilio):
    """The lean Twilio noting, per Call SID, when its create request arrived (time.monotonic())."""

    answer = False  # main() sets it from --answer

    def __init__(self, http: aiohttp.ClientSession) -> None:
        super().__init__(http)
        self.created: dict[str, float] = {}

    async def _create(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        response = await super()._create(request)
        if response.status == 201 and isinstance(response.body, bytes):
            self.created[json.loads(response.body)["sid"]] = arrived
        return response

    async def _answer(self, call: lean.TwilioCall) -> None:
        # A call still going when its service is killed (or stopped at the end) cannot reach it any more.
        with contextlib.suppress(aiohttp.ClientError):
            if not self.answer:  # people take their time: the phones ring through the measurement
                await self._status(call, "ringing")
                return
            await super()._answer(call)

    async def _tick(self, call: lean.TwilioCall, loop_t: float) -> None:
        try:
            await super()._tick(call, loop_t)
        except (aiohttp.ClientError, ConnectionResetError):
            call.stopped = True  # its service was killed: the stream is gone, the clock goes on

    def to(self, phone: str) -> int:
        return sum(1 for call in self.calls.values() if call.to == phone)


@dataclass
class Result:
    label: str
    latencies: list[float] = field(default_factory=list)  # webhook -> step 1's create, seconds
    answered: list[float] = field(default_factory=list)  # webhook -> the service's answer to it, seconds
    stages: dict[str, list[float]] = field(default_factory=dict)  # where step 1's latency went
    lateness: list[float] = field(default_factory=list)  # step 2's create - its due time, seconds
    pages: Counter[str] = field(default_factory=Counter)  # "(round, step)" lists per incident
    creates: dict[str, int] = field(default_factory=dict)  # per phone
    errors: str = ""
    restart_s: float | None = None
    lowest_rate: float = 0.0  # admission control's lowest dial rate while the burst was dialed (/healthz)
    dial_reasons: list[str] = field(default_factory=list)  # what limited it, in order

    def row(self, values: list[float]) -> str:
        if not values:
            return "n/a"
        return (
            f"p50 {pct(values, 50) * 1000:.0f} ms, p95 {pct(values, 95) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms (n={len(values)})"
        )


class Service:
    """`announcer serve` on one port and one database, started and SIGKILLed at will."""

    def __init__(self, work: Path, env: dict[str, str], http: aiohttp.ClientSession, public: str) -> None:
        self.work, self.env, self.http, self.public = work, env, http, public
        self.proc: asyncio.subprocess.Process | None = None
        self.log = work / "service.log"

    async def start(self) -> None:
        with self.log.open("ab") as sink:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "announcer.cli",
                "serve",
                env=self.env,
                cwd=self.work,
                stdout=sink,
                stderr=sink,
            )
        await wait_serving(self.http, self.public, self.proc, self.log)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no clean-up of any kind
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None:
            await stop(self.proc)

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.public + path, json=body, headers=AUTH) as resp:
            answer = await resp.json()
            if resp.status >= 300:
                raise SystemExit(f"{method} {path}: {resp.status} {answer}")
            return answer


async def setup_paging(service: Service, numbers: list[str], delay_s: int) -> dict[str, Any]:
    """Two people, a policy (step 1: the first, `delay_s`; step 2: the second, for good), an integration."""
    people = [
        await service.api("POST", "/v1/people", {"name": f"Person {i + 1}", "phone": phone})
        for i, phone in enumerate(numbers)
    ]
    policy = await service.api(
        "POST",
        "/v1/escalation-policies",
        {
            "name": "bench",
            "steps": [
                {"delay_s": delay_s, "targets": [{"type": "person", "id": people[0]["id"]}]},
                {"delay_s": 3600, "targets": [{"type": "person", "id": people[1]["id"]}]},
            ],
        },
    )
    integration: dict[str, Any] = await service.api(
        "POST", "/v1/integrations", {"name": "bench", "kind": "alertmanager", "policy_id": policy["id"]}
    )
    return integration


async def gather_limited(calls: list[Any], limit: int = 8) -> list[Any]:
    """The coroutines run `limit` at a time (the service is not flooded by the bookkeeping)."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Any) -> Any:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def incidents(service: Service) -> list[dict[str, Any]]:
    """Every incident, with its events and pages."""
    listed: list[dict[str, Any]] = []
    before: str | None = None
    while True:
        query = f"/v1/incidents?limit=200{f'&before={before}' if before else ''}"
        page = await service.api("GET", query)
        listed.extend(page["incidents"])
        before = page["next_before"]
        if before is None:
            break
    return await gather_limited([service.api("GET", f"/v1/incidents/{i['id']}") for i in listed])


async def call_sid(service: Service, alert_id: str) -> str | None:
    page = await service.api("GET", f"/v1/alerts/{alert_id}/deliveries")
    sids = [d.get("call_sid") for d in page["deliveries"] if d.get("call_sid")]
    return str(sids[0]) if sids else None


async def created_to(twilio: PagingTwilio, phone: str, n: int, timeout: float) -> None:
    """Until `n` create requests for `phone` have reached the lean Twilio (this process's own state: no
    request to the service, whose timing is being measured)."""
    async with asyncio.timeout(timeout):
        while twilio.to(phone) < n:  # noqa: ASYNC110 - the calls dict is filled by the Twilio's handler
            await asyncio.sleep(0.02)


async def step_sids(service: Service, step: int, tries: int = 20) -> dict[str, str]:
    """incident id -> the Call SID of its page of `step` (round 0), read through the API once the creates
    are in (a SID is stored right after Twilio's answer: a few tries); incidents without one are left
    out (counted in the report)."""
    found: dict[str, str] = {}
    for _ in range(tries):
        seen = await incidents(service)
        wanted = {
            i["id"]: page["alert_id"]
            for i in seen
            if i["id"] not in found
            for page in i["pages"]
            if (page["round"], page["step"]) == (0, step) and page["alert_id"] is not None
        }
        sids = await gather_limited([call_sid(service, a) for a in wanted.values()])
        found.update({iid: sid for iid, sid in zip(wanted, sids, strict=True) if sid is not None})
        if len(found) == len(seen):
            break
        await asyncio.sleep(0.5)
    return found


@contextlib.asynccontextmanager
async def deployment(
    database: str, cps: float, max_calls: int
) -> AsyncIterator[tuple[Service, PagingTwilio]]:
    work = Path(tempfile.mkdtemp(prefix="announcer-bench-paging-"))
    async with contextlib.AsyncExitStack() as stack:
        if database == "postgresql":
            url = await stack.enter_async_context(pg_database())
        else:
            url = f"sqlite+aiosqlite:///{work / 'announcer.db'}"
        http, twilio, tw_base, el_base = await stack.enter_async_context(peers(work, PagingTwilio))
        assert isinstance(twilio, PagingTwilio)
        port = free_port()
        env = deployment_env(
            port=port,
            twilio=(lean.ACCOUNT_SID, lean.AUTH_TOKEN, lean.NUMBER, tw_base),
            elevenlabs=(EL_KEY, el_base),
            database_url=url,
            data_dir=work / "data",
            api_token=lean.API_TOKEN,
            cps=cps,
            max_calls=max_calls,
            log_level="WARNING",
        )
        service = Service(work, env, http, f"http://127.0.0.1:{port}")
        await service.start()
        stack.push_async_callback(service.stop)
        yield service, twilio


def first_page_latencies(
    seen: list[dict[str, Any]], sids: dict[str, str], twilio: PagingTwilio, firing: dict[str, Arrival]
) -> list[float]:
    by_id = {i["id"]: i for i in seen}
    return [twilio.created[sid] - firing[by_id[iid]["dedup_key"]].arrived for iid, sid in sids.items()]


def stages(
    seen: list[dict[str, Any]], sids: dict[str, str], twilio: PagingTwilio, firing: dict[str, Arrival]
) -> dict[str, list[float]]:
    """Step 1's latency cut at the incident's created_at and its page's (the service's wall clock, in the
    database): webhook -> incident opened -> step taken (the escalator) -> create at Twilio (the page
    made, its alert planned and dialed)."""
    offset = time.time() - time.monotonic()
    out: dict[str, list[float]] = {"webhook -> opened": [], "opened -> step taken": [], "step -> create": []}
    for i in seen:
        sid = sids.get(i["id"])
        page = next((p for p in i["pages"] if (p["round"], p["step"]) == (0, 0)), None)
        if sid is None or page is None:
            continue
        opened = datetime.fromisoformat(i["created_at"]).timestamp()
        taken = datetime.fromisoformat(page["created_at"]).timestamp()
        out["webhook -> opened"].append(opened - firing[i["dedup_key"]].wall)
        out["opened -> step taken"].append(taken - opened)
        out["step -> create"].append(twilio.created[sid] + offset - taken)
    return out


def check_pages(result: Result, seen: list[dict[str, Any]], twilio: PagingTwilio, numbers: list[str]) -> None:
    for i in seen:
        result.pages[str([(p["round"], p["step"]) for p in i["pages"]])] += 1
        paged = [e["kind"] for e in i["events"]].count("paged")
        if paged != len(i["pages"]):
            result.pages[f"paged events {paged} != pages {len(i['pages'])}"] += 1
    result.creates = {phone: twilio.to(phone) for phone in numbers}


async def warmed_up(service: Service, cps: float, timeout: float = 60.0) -> None:
    """Wait until admission control's dial rate has climbed to TWILIO_CPS, as it has in a service that has
    been up (idle) for a few seconds: a process starts at 20 calls/s and finds its headroom from there
    (deliveries/admission.py). `--cold` fires at once instead."""
    async with asyncio.timeout(timeout):
        while True:
            dialing = (await service.api("GET", "/healthz")).get("dialing") or {}
            if float(dialing.get("rate_per_s") or 0.0) >= cps:
                return
            await asyncio.sleep(0.25)


async def watch_dialing(service: Service, result: Result) -> None:
    """What admission control said while the burst was dialed (GET /healthz every 100 ms): the lowest rate
    and each reason it gave, so a slow step -> create shows whether the dial rate held it."""
    while True:
        try:
            health = await service.api("GET", "/healthz")
            dialing = health.get("dialing") or {}
            rate = float(dialing.get("rate_per_s") or 0.0)
            result.lowest_rate = min(result.lowest_rate, rate) if result.lowest_rate else rate
            why = f"{dialing.get('limited_by')}: {dialing.get('why')}"
            if not result.dial_reasons or result.dial_reasons[-1] != why:
                result.dial_reasons.append(why)
        except Exception:  # a probe is best effort; the numbers come from the creates
            pass
        await asyncio.sleep(0.1)


async def opening_at_once(args: argparse.Namespace, database: str) -> Result:
    result = Result(f"{database}: {args.groups} incidents at once")
    numbers = phones(2)
    async with deployment(database, args.cps, args.max_calls) as (service, twilio):
        integration = await setup_paging(service, numbers, 3600)
        url = f"{service.public}/v1/integrations/alertmanager/{integration['id']}"
        async with paging_peer(service.work / "am", url, integration["secret"], group_wait=0.5) as peer:
            if not args.cold:
                await warmed_up(service, args.cps)
            watch = asyncio.create_task(watch_dialing(service, result))
            await peer.fire(args.groups)
            firing = await peer.arrivals(args.groups, timeout=120)
            await created_to(twilio, numbers[0], args.groups, timeout=120)
            watch.cancel()
            result.answered = [a.answered - a.arrived for a in firing.values()]
            sids = await step_sids(service, 0)
            seen = await incidents(service)
            result.latencies = first_page_latencies(seen, sids, twilio, firing)
            result.stages = stages(seen, sids, twilio, firing)
            check_pages(result, seen, twilio, numbers)
        result.errors = logged_errors(service.log)
    return result


async def restarted(args: argparse.Namespace, database: str) -> Result:
    result = Result(f"{database}: {args.groups} incidents, SIGKILL after step 1")
    numbers = phones(2)
    async with deployment(database, args.cps, args.max_calls) as (service, twilio):
        integration = await setup_paging(service, numbers, args.delay)
        url = f"{service.public}/v1/integrations/alertmanager/{integration['id']}"
        async with paging_peer(service.work / "am", url, integration["secret"], group_wait=0.5) as peer:
            if not args.cold:
                await warmed_up(service, args.cps)
            watch = asyncio.create_task(watch_dialing(service, result))
            await peer.fire(args.groups)
            firing = await peer.arrivals(args.groups, timeout=120)
            await created_to(twilio, numbers[0], args.groups, timeout=120)
            watch.cancel()
            await service.kill()  # at once: step 2 is due `delay` after step 1
            killed = time.monotonic()
            await service.start()
            result.restart_s = time.monotonic() - killed
            await created_to(twilio, numbers[1], args.groups, timeout=args.delay + 120)
            first, second = await step_sids(service, 0), await step_sids(service, 1)
            seen = await incidents(service)
            result.latencies = first_page_latencies(seen, first, twilio, firing)
            # due times are the service's wall clock (the database); creates this process's monotonic one
            offset = time.time() - time.monotonic()
            by_id = {i["id"]: i for i in seen}
            for iid, sid in second.items():
                page = next(p for p in by_id[iid]["pages"] if (p["round"], p["step"]) == (0, 0))
                due = datetime.fromisoformat(page["created_at"]).timestamp() + args.delay
                result.lateness.append(twilio.created[sid] + offset - due)
            # a while past the last step 2, nothing more is paged
            await wait_quiet(service, twilio)
            seen = await incidents(service)
            check_pages(result, seen, twilio, numbers)
        result.errors = logged_errors(service.log)
    return result


async def wait_quiet(service: Service, twilio: PagingTwilio, quiet_s: float = 3.0) -> None:
    """Until no create has arrived for `quiet_s` (so a late duplicate page would be counted)."""
    last = len(twilio.created)
    since = time.monotonic()
    while time.monotonic() - since < quiet_s:
        await asyncio.sleep(0.25)
        if len(twilio.created) != last:
            last, since = len(twilio.created), time.monotonic()


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n{args.groups} groups (one alert each) posted to Alertmanager at once, group_wait 0.5 s, "
        f"TWILIO_CPS={args.cps:g}; step 2 due {args.delay} s after step 1; phones "
        f"{'answer after 0.3 s and stream' if args.answer else 'ring, unanswered'}\n"
    )
    print(
        "| run | webhook -> step 1's create | webhook -> its answer | step 2's create - its due time "
        "| pages per incident | creates per phone (step 1, step 2) |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        late = r.row(r.lateness) if r.lateness else "-"
        if r.restart_s is not None:
            late += f" (restart took {r.restart_s:.1f} s)"
        pages = "; ".join(f"{k} x{n}" for k, n in r.pages.items())
        creates = ", ".join(str(n) for n in r.creates.values())
        answered = r.row(r.answered) if r.answered else "-"
        print(f"| {r.label} | {r.row(r.latencies)} | {answered} | {late} | {pages} | {creates} |")
    for r in results:
        ok = bool(r.latencies) and pct(r.latencies, 95) < TARGET_P95_S
        print(f"{r.label}: p95 {'under' if ok else 'NOT under'} {TARGET_P95_S:g} s")
        print(f"{r.label}: {r.errors}")
        for name, values in r.stages.items():
            print(f"{r.label}: {name}: {r.row(values)}")
        if r.dial_reasons:
            print(
                f"{r.label}: dial rate at least {r.lowest_rate:.0f}/s; "
                f"limited by: {' -> '.join(r.dial_reasons)}"
            )


async def main(args: argparse.Namespace) -> None:
    PagingTwilio.answer = args.answer
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    results: list[Result] = []
    for database in databases:
        results.append(await opening_at_once(args, database))
        print(f"done: {results[-1].label}: {results[-1].row(results[-1].latencies)}", flush=True)
        if not args.no_restart:
            results.append(await restarted(args, database))
            print(f"done: {results[-1].label}: {results[-1].row(results[-1].latencies)}", flush=True)
    report(results, args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--groups", type=int, default=100)
    p.add_argument("--cps", type=float, default=200.0)
    p.add_argument("--max-calls", type=int, default=400)
    p.add_argument("--delay", type=int, default=15, help="step 1's delay_s (the restart run)")
    p.add_argument("--no-restart", action="store_true")
    p.add_argument(
        "--cold",
        action="store_true",
        help="fire as soon as the service is set up (its dial rate still climbing from 20/s), not once "
        "admission control has reached TWILIO_CPS as in a service that has been up a few seconds",
    )
    p.add_argument(
        "--answer", action="store_true", help="phones answer after 0.3 s and stream (default: they ring)"
    )
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
