"""The real Alertmanager harness: Debian's `prometheus-alertmanager` started by the test on a free loopback
port, with a configuration of the test's own whose one receiver ("announcer") posts its webhook to the URL
the test gives, with the Bearer credentials the test gives.

* `running_alertmanager(directory, webhook_url, secret, ...)`: an async context manager (for the
  benchmarks too) that writes the configuration, starts the binary, waits for `/-/ready` and stops the
  process on the way out (terminate, then kill if it lingers). Alertmanager's log is kept in a file of the
  directory and quoted in every failure.
* `alertmanager` fixture (registered from conftest.py's `pytest_plugins`): the same context manager with
  the test's tmp dir and the binary filled in; skips the test, saying why, where the binary is missing
  (`make test -rs` lists the skips).

Timings are in seconds and written as milliseconds (Alertmanager's durations accept `ms`): group_wait is
how long a new group waits before its first notification, group_interval how often a group's changes
(a resolve, a new alert) are sent, repeat_interval when an unchanged group is sent again (checked at each
group_interval tick, so a repeat arrives between repeat_interval and repeat_interval + group_interval
after the notification before it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import free_port

BINARY_CANDIDATES = ("/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager")
MISSING = "prometheus-alertmanager not installed: apt-get install prometheus-alertmanager (.ci/run does)"
RECEIVER = "announcer"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# The ways a start fails because another process took free_port()'s port before Alertmanager bound it.
_PORT_TAKEN = ("address already in use",)


def alertmanager_path() -> str | None:
    """ANNOUNCER_TEST_ALERTMANAGER, or Debian's binary."""
    wanted = os.environ.get("ANNOUNCER_TEST_ALERTMANAGER")
    if wanted:
        return wanted if os.access(wanted, os.X_OK) else None
    for candidate in BINARY_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def config(
    webhook_url: str,
    secret: str,
    *,
    group_by: Sequence[str],
    group_wait: float,
    group_interval: float,
    repeat_interval: float,
) -> dict[str, Any]:
    """The configuration file's content (JSON, which Alertmanager's YAML reader takes as it is)."""
    return {
        "route": {
            "receiver": RECEIVER,
            "group_by": list(group_by),
            "group_wait": _duration(group_wait),
            "group_interval": _duration(group_interval),
            "repeat_interval": _duration(repeat_interval),
        },
        "receivers": [
            {
                "name": RECEIVER,
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "max_alerts": 0,
                        "http_config": {"authorization": {"type": "Bearer", "credentials": secret}},
                    }
                ],
            }
        ],
    }


def alert(
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
    *,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    generator_url: str = "http://prometheus.example.com/graph?g0.expr=up+%3D%3D+0",
) -> dict[str, Any]:
    """One alert as Alertmanager's POST /api/v2/alerts takes it (postableAlert)."""
    body: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations or {},
        "startsAt": rfc3339(starts_at or datetime.now(UTC)),
        "generatorURL": generator_url,
    }
    if ends_at is not None:
        body["endsAt"] = rfc3339(ends_at)
    return body


class AlertmanagerError(AssertionError):
    """Alertmanager answered badly or would not start; the message carries its log."""


@dataclass
class Alertmanager:
    """A running Alertmanager and its API."""

    base_url: str
    process: asyncio.subprocess.Process
    log_path: Path
    config_path: Path
    session: aiohttp.ClientSession

    def log(self) -> str:
        """Alertmanager's own log (stderr) so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.base_url + path, json=body) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise AlertmanagerError(
                    f"{method} {path}: HTTP {resp.status} {text}\n--- alertmanager log ---\n{self.log()}"
                )
            return json.loads(text) if text.strip() else None

    async def post_alerts(self, alerts: Sequence[dict[str, Any]]) -> None:
        """POST /api/v2/alerts, as Prometheus does (alerts made by `alert()`)."""
        await self._call("POST", "/api/v2/alerts", list(alerts))

    async def resolve(self, alerts: Sequence[dict[str, Any]], at: datetime | None = None) -> None:
        """The same alerts again with endsAt now (or `at`): resolved at the group's next flush.
        A hair in the past so that Alertmanager, comparing with its own clock, sees them ended."""
        ended = rfc3339(at or datetime.now(UTC) - timedelta(milliseconds=1))
        await self.post_alerts([{**a, "endsAt": ended} for a in alerts])

    async def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts."""
        result: list[dict[str, Any]] = await self._call("GET", "/api/v2/alerts")
        return result

    async def silences(self) -> list[dict[str, Any]]:
        """GET /api/v2/silences."""
        result: list[dict[str, Any]] = await self._call("GET", "/api/v2/silences")
        return result

    async def silence(
        self, matchers: dict[str, str], *, duration_s: float = 3600, comment: str = "test", by: str = "test"
    ) -> str:
        """POST /api/v2/silences: a silence of equal-matchers from now; its id."""
        now = datetime.now(UTC)
        body = {
            "matchers": [
                {"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in matchers.items()
            ],
            "startsAt": rfc3339(now),
            "endsAt": rfc3339(now + timedelta(seconds=duration_s)),
            "createdBy": by,
            "comment": comment,
        }
        result = await self._call("POST", "/api/v2/silences", body)
        return str(result["silenceID"])


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()


async def _wait_ready(am: Alertmanager, timeout: float) -> None:
    """Poll /-/ready until 200, the process exits, or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if am.process.returncode is not None:
            raise AlertmanagerError(
                f"alertmanager exited ({am.process.returncode}) before ready:\n{am.log()}"
            )
        try:
            async with am.session.get(am.base_url + "/-/ready") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass  # not listening yet
        if loop.time() > deadline:
            raise AlertmanagerError(f"alertmanager not ready after {timeout} s:\n{am.log()}")
        # The process gives no readiness signal of its own (no sd_notify here): poll, with a deadline.
        await asyncio.sleep(0.05)


def _prepare(directory: Path, config_text: str) -> tuple[Path, Path]:
    """The directory with its configuration file and storage folder: (config file, storage)."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "alertmanager.yml"
    config_path.write_text(config_text)
    storage = directory / "storage"
    storage.mkdir(exist_ok=True)
    return config_path, storage


@asynccontextmanager
async def running_alertmanager(
    directory: Path,
    webhook_url: str,
    secret: str,
    *,
    group_by: Sequence[str] = ("alertname",),
    group_wait: float = 1.0,
    group_interval: float = 2.0,
    repeat_interval: float = 4.0,
    binary: str | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
) -> AsyncIterator[Alertmanager]:
    """Alertmanager started in `directory` (its config, storage and log), ready, then stopped."""
    executable = binary or alertmanager_path()
    if executable is None:
        raise AlertmanagerError(MISSING)
    text = json.dumps(
        config(
            webhook_url,
            secret,
            group_by=group_by,
            group_wait=group_wait,
            group_interval=group_interval,
            repeat_interval=repeat_interval,
        ),
        indent=2,
    )
    config_path, storage = _prepare(directory, text)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for attempt in range(5):
            log_path = directory / f"alertmanager-{attempt}.log"  # a try's own: a retry starts clean
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            with log_path.open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    executable,
                    f"--config.file={config_path}",
                    f"--storage.path={storage}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    # links in the payload (externalURL) name this instance, not the machine's hostname
                    f"--web.external-url={base_url}",
                    "--cluster.listen-address=",  # no gossip: no second port, no settle wait
                    "--log.level=debug",
                    cwd=directory,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            am = Alertmanager(base_url, process, log_path, config_path, session)
            try:
                await _wait_ready(am, ready_timeout)
            except AlertmanagerError:
                await _stop(process)
                if any(s in am.log().lower() for s in _PORT_TAKEN):
                    continue
                raise
            try:
                yield am
            finally:
                await _stop(process)
            return
        raise AlertmanagerError("alertmanager: no free port after 5 tries")


@dataclass(frozen=True)
class Webhook:
    """One notification as it arrived: when (the loop's monotonic clock), its headers and JSON body."""

    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class WebhookReceiver:
    """A loopback HTTP server that keeps every POST it receives, for tests that look at what
    Alertmanager sends without the service in between. `url` is where to point the receiver."""

    def __init__(self) -> None:
        self.received: list[Webhook] = []
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        webhook = Webhook(
            asyncio.get_running_loop().time(), request.path, dict(request.headers), await request.json()
        )
        async with self._arrived:
            self.received.append(webhook)
            self._arrived.notify_all()
        return web.json_response({})

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(
        self, check: Callable[[Webhook], bool], *, after: int = 0, timeout: float = 10.0
    ) -> Webhook:
        """The first webhook from index `after` on that passes `check`, waiting up to `timeout`."""
        async with asyncio.timeout(timeout), self._arrived:
            while True:
                for webhook in self.received[after:]:
                    if check(webhook):
                        return webhook
                await self._arrived.wait()


AlertmanagerFactory = Callable[..., AbstractAsyncContextManager[Alertmanager]]


@pytest.fixture
def alertmanager(tmp_path: Path) -> AlertmanagerFactory:
    """`async with alertmanager(webhook_url, secret, group_wait=..., ...) as am:` (running_alertmanager's
    keywords); skips the test where the binary is missing. Started again with the same `name`, an
    Alertmanager finds the silences and notification log the one before it left (a restart); two at
    once need two names."""
    binary = alertmanager_path()
    if binary is None:
        pytest.skip(MISSING)

    def start(
        webhook_url: str, secret: str, *, name: str = "alertmanager", **options: Any
    ) -> AbstractAsyncContextManager[Alertmanager]:
        return running_alertmanager(tmp_path / name, webhook_url, secret, binary=binary, **options)

    return start
