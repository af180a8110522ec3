"""The Alertmanager side of benchmarks/paging.py: the real Alertmanager (tests/alertmanager.py's harness)
whose webhook goes through a timing relay on its way to the service, so that the benchmark knows, per
groupKey, when Alertmanager's webhook arrived, without instrumenting the service.

    async with paging_peer(work_dir, service_webhook_url, integration_secret) as peer:
        await peer.fire(100)                  # 100 distinct groups (one alertname each), in one POST
        firing = await peer.arrivals(100)     # groupKey -> its first firing webhook's Arrival
        ...                                   # the benchmark reads the sandbox Twilio's create times
        await peer.resolve()

The relay passes each POST on as it came (body, Authorization, Content-Type, User-Agent) and answers
Alertmanager with the service's own status and body, so Alertmanager retries a refused webhook as it would
in production. Times are `time.monotonic()`: CLOCK_MONOTONIC is one clock for every process of the
machine, so they compare with a service process's own monotonic stamps; `wall` is kept for logs.

Run alone (`.venv/bin/python benchmarks/paging_peer.py [--groups 100]`) it measures the peer itself against
a bare receiver: from the POST to Alertmanager to each group's webhook at the receiver, less group_wait:
what Alertmanager and the relay add before the service sees anything.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from harness import pct

from tests.alertmanager import Alertmanager, WebhookReceiver, alert, running_alertmanager

FORWARDED_HEADERS = ("Authorization", "Content-Type", "User-Agent")
ALERTNAME_PREFIX = "PagingBench"


@dataclass(frozen=True)
class Arrival:
    """One webhook through the relay: when it arrived, when the service answered, and how."""

    group_key: str
    status: str  # the payload's "firing" | "resolved"
    alerts: int
    arrived: float  # time.monotonic() as the relay got the request
    wall: float  # time.time() at the same moment
    answered: float  # time.monotonic() as the service's answer came back
    answer_status: int  # the service's HTTP status (599: no answer)


@dataclass
class TimingRelay:
    """A loopback HTTP server between Alertmanager and the service; every webhook's Arrival is kept."""

    target_url: str
    received: list[Arrival] = field(default_factory=list)
    url: str = ""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        arrived, wall = time.monotonic(), time.time()
        raw = await request.read()
        payload: dict[str, Any] = await request.json()
        headers = {k: request.headers[k] for k in FORWARDED_HEADERS if k in request.headers}
        assert self._session is not None
        try:
            async with self._session.post(self.target_url, data=raw, headers=headers) as resp:
                body, status = await resp.read(), resp.status
                content_type = resp.headers.get("Content-Type", "application/json")
        except aiohttp.ClientError as err:
            body, status, content_type = str(err).encode(), 599, "text/plain"
        arrival = Arrival(
            group_key=str(payload.get("groupKey")),
            status=str(payload.get("status")),
            alerts=len(payload.get("alerts", [])),
            arrived=arrived,
            wall=wall,
            answered=time.monotonic(),
            answer_status=status,
        )
        async with self._changed:
            self.received.append(arrival)
            self._changed.notify_all()
        # 599 is no status Alertmanager knows: a 502 makes it retry as any failed delivery
        return web.Response(
            body=body,
            status=502 if status == 599 else status,
            content_type=None,
            headers={"Content-Type": content_type},
        )

    async def __aenter__(self) -> TimingRelay:
        # no connection limit: 100 webhooks at once must not queue in the relay
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        )
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/relay"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def first(self, n: int, status: str = "firing", timeout: float = 60.0) -> dict[str, Arrival]:
        """groupKey -> the first `status` webhook of each group, once `n` groups have one."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                seen: dict[str, Arrival] = {}
                for arrival in self.received:
                    if arrival.status == status:
                        seen.setdefault(arrival.group_key, arrival)
                if len(seen) >= n:
                    return seen
                await self._changed.wait()


@dataclass
class Peer:
    am: Alertmanager
    relay: TimingRelay
    posted: list[dict[str, Any]] = field(default_factory=list)
    posted_at: float = 0.0  # time.monotonic() just before the last fire()'s POST

    async def fire(self, groups: int = 100, *, run: str = "") -> list[str]:
        """`groups` distinct groups (alertname PagingBench<run><i>, grouped by alertname) in one POST to
        Alertmanager; their groupKeys as Alertmanager will send them."""
        names = [f"{ALERTNAME_PREFIX}{run}{i:04d}" for i in range(groups)]
        alerts = [
            alert(
                {"alertname": name, "severity": "critical", "service": "bench"},
                {"summary": f"Benchmark incident {name}"},
            )
            for name in names
        ]
        self.posted.extend(alerts)
        self.posted_at = time.monotonic()
        await self.am.post_alerts(alerts)
        return [f'{{}}:{{alertname="{name}"}}' for name in names]

    async def arrivals(self, groups: int, timeout: float = 60.0) -> dict[str, Arrival]:
        """groupKey -> its first firing webhook, once `groups` groups have arrived."""
        return await self.relay.first(groups, "firing", timeout)

    async def resolve(self, alerts: Sequence[dict[str, Any]] | None = None) -> None:
        """Resolve the given alerts (all fired so far by default) at Alertmanager."""
        await self.am.resolve(self.posted if alerts is None else alerts)


@asynccontextmanager
async def paging_peer(
    directory: Path,
    webhook_url: str,
    secret: str,
    *,
    group_wait: float = 0.5,
    group_interval: float = 5.0,
    repeat_interval: float = 3600.0,
) -> AsyncIterator[Peer]:
    """Alertmanager (config, storage and log in `directory`) posting through a TimingRelay to
    `webhook_url` (the service's /v1/integrations/alertmanager/{id}) with Bearer `secret`."""
    async with (
        TimingRelay(webhook_url) as relay,
        running_alertmanager(
            directory,
            relay.url,
            secret,
            group_by=("alertname",),
            group_wait=group_wait,
            group_interval=group_interval,
            repeat_interval=repeat_interval,
        ) as am,
    ):
        yield Peer(am, relay)


async def self_check(groups: int, group_wait: float) -> None:
    """The peer against a bare receiver: what Alertmanager and the relay add, before any service."""
    with tempfile.TemporaryDirectory(prefix="paging-peer-") as work:
        async with (
            WebhookReceiver() as receiver,
            paging_peer(Path(work), receiver.url, "bench-secret", group_wait=group_wait) as peer,
        ):
            keys = await peer.fire(groups)
            firing = await peer.arrivals(groups)
            assert set(firing) == set(keys), "groupKeys differ from the ones expected"
            after = [a.arrived - peer.posted_at - group_wait for a in firing.values()]
            hop = [a.answered - a.arrived for a in firing.values()]
            print(
                f"{groups} groups, group_wait {group_wait} s: POST -> webhook at the relay, less group_wait: "
                f"p50 {pct(after, 50) * 1000:.0f} ms, p95 {pct(after, 95) * 1000:.0f} ms, "
                f"max {max(after) * 1000:.0f} ms; relay -> receiver -> relay p95 {pct(hop, 95) * 1000:.1f} ms"
            )
            await peer.resolve()
            await peer.relay.first(groups, "resolved", timeout=30)
            print(f"{groups} groups resolved")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--group-wait", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(self_check(args.groups, args.group_wait))


if __name__ == "__main__":
    main()
