"""The CPU one `GET /metrics` costs the service, with the series a working service has.

A service in sandbox mode runs in this process (SQLite, or `--pg` PostgreSQL); an alert to --calls
sandbox phones (people, busy lines, unanswered, refused numbers) fills its counters and histograms. Then,
with nothing else going on, the process CPU time (`time.process_time`, so a shared machine's other load
does not count) of:
  1. --scrapes calls of the `/metrics` handler itself (the dial queue's count query + the exposition),
     through aiohttp's request object but without the socket;
  2. the exposition alone (`generate_latest` of the app's registry);
  3. --scrapes real HTTP scrapes from this same process (so the client's CPU is in it too: an upper
     bound of what a scrape over the network costs the service).
Printed per scrape, with the exposition's size and its number of samples.

Usage: .venv/bin/python benchmarks/scrape.py [--calls 40] [--scrapes 500] [--pg]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from harness import free_port, pg_database
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from announcer.app import API_TOKEN, DELIVERIES, SANDBOX, create_app
from announcer.config import Settings
from announcer.metrics import METRICS, metrics_handler
from announcer.metrics.route import Scrape
from announcer.sandbox.twilio_call import PhoneBehavior


@contextlib.asynccontextmanager
async def database(pg: bool, data: Path) -> AsyncIterator[str]:
    if pg:
        async with pg_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{data / 'announcer.db'}"


async def run(calls: int, scrapes: int, pg: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        async with database(pg, data) as url:
            port = free_port()
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                host="127.0.0.1",
                port=port,
                database_url=url,
                announcer_data_dir=data / "data",
                announcer_sandbox_speed=25.0,
                twilio_cps=50.0,
                max_concurrent_calls=calls,
            )
            app = create_app(settings)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            base = f"http://127.0.0.1:{port}"
            try:
                await fill(app, base, calls)
                await measure(app, base, scrapes)
            finally:
                await runner.cleanup()


async def fill(app: web.Application, base: str, calls: int) -> None:
    """One alert whose phones behave four ways; returns once it has finished."""
    sandbox = app[SANDBOX]
    phones = [f"+1555019{i:04d}" for i in range(calls)]
    for i, phone in enumerate(phones):
        behavior = [None, PhoneBehavior(answer="busy"), PhoneBehavior(answer="no-answer")][i % 4 % 3]
        if i % 4 == 3:
            behavior = PhoneBehavior(refuse_code=21211 if i % 8 == 3 else 21219)
        if behavior is not None:
            sandbox.set_behavior(phone, behavior)
    auth = {"Authorization": f"Bearer {app[API_TOKEN]}"}
    body = {
        "template_text": "Hello {{ name }}. The billing server is down.",
        "recipients": [{"phone": p, "name": f"Person {i}"} for i, p in enumerate(phones)],
    }
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.post(base + "/v1/alerts", json=body) as resp:
            alert = await resp.json()
            assert resp.status == 202, alert
        async with asyncio.timeout(120):
            while True:
                async with http.get(f"{base}/v1/alerts/{alert['id']}") as resp:
                    if (await resp.json())["status"] != "active":
                        break
                await asyncio.sleep(0.2)
        for call in list(sandbox.calls.values()):
            await call.wait_ended(60)


async def measure(app: web.Application, base: str, scrapes: int) -> None:
    registry = app[METRICS].registry
    scrape = Scrape(app[METRICS], app[DELIVERIES].due, None)
    request = make_mocked_request("GET", "/metrics", app=app)
    await metrics_handler(request, scrape)  # warm: the first query prepares its statement
    text = generate_latest(registry).decode()
    samples = sum(len(f.samples) for f in text_string_to_metric_families(text))

    started = time.process_time()
    for _ in range(scrapes):
        await metrics_handler(request, scrape)
    handler_ms = (time.process_time() - started) / scrapes * 1000

    started = time.process_time()
    for _ in range(scrapes):
        generate_latest(registry)
    encode_ms = (time.process_time() - started) / scrapes * 1000

    async with aiohttp.ClientSession() as http:
        started = time.process_time()
        for _ in range(scrapes):
            async with http.get(base + "/metrics") as resp:
                await resp.read()
        http_ms = (time.process_time() - started) / scrapes * 1000

    print(f"exposition: {len(text):,} bytes, {samples} samples")
    print(f"1. handler (count query + exposition): {handler_ms:.3f} ms CPU per scrape")
    print(f"2. exposition alone (generate_latest):  {encode_ms:.3f} ms CPU per scrape")
    print(f"3. HTTP scrape, client in-process:      {http_ms:.3f} ms CPU per scrape (upper bound)")
    print(f"   at one scrape every 15 s: {handler_ms / 15 / 10:.4f} % of a core")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--pg", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run(args.calls, args.scrapes, args.pg))


if __name__ == "__main__":
    main()
