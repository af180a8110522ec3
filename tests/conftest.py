"""Fixtures: a database per run (SQLite per test, or one fresh PostgreSQL database per session) and the
whole service started on a real port, in sandbox mode: the loopback Twilio and ElevenLabs that the real
SDKs talk to are the only stand-ins for the outside world."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from announcer.config import Settings
from announcer.store.calls import CallStore

# The controllable wall clock of the scheduling tests, the browser harness (tests/browser.py) and the real
# Alertmanager harness (tests/alertmanager.py).
pytest_plugins = ("tests.clock", "tests.browser", "tests.alertmanager")

PG_ADMIN = os.environ.get("ANNOUNCER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
USE_PG = os.environ.get("ANNOUNCER_TEST_DATABASE") == "postgresql"
API_TOKEN = "test-api-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: the machine's own variables must not reach the tests."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)


@pytest.fixture(autouse=True)
def _quiet_collector() -> None:
    """Each test starts with the garbage of the ones before it collected and the survivors frozen: a
    full collection over the suite's heap took 100-550 ms, and one that fell inside a test stalled its
    event loop (the service, its sandbox and the test share it) and bunched what the test times."""
    gc.collect()
    gc.freeze()


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def _fresh_pg_database() -> Iterator[str]:
    """A new PostgreSQL database (its SQLAlchemy URL), dropped on the way out."""
    name = f"announcer_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """One fresh PostgreSQL database for the whole run, dropped at the end."""
    if not USE_PG:
        yield None
        return
    with _fresh_pg_database() as url:
        yield url


@pytest.fixture
def database_url(tmp_path: Path, pg_database: str | None) -> Iterator[str]:
    """SQLite: a file of the test's own. PostgreSQL: the run's database, emptied after the test (after
    the services using it have stopped): what one test left unfinished (a call still ringing, a retry
    due) must not be dialed by the next test's dispatcher."""
    if pg_database is None:
        yield f"sqlite+aiosqlite:///{tmp_path / 'announcer.db'}"
        return
    yield pg_database
    asyncio.run(_empty(pg_database))


async def _empty(url: str) -> None:
    from announcer.store.models import Base

    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        exists = await conn.fetchval("SELECT to_regclass('public.calls') IS NOT NULL")
        if exists:  # a test may have stopped before any service made the tables
            await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def own_database_url(tmp_path: Path) -> Iterator[str]:
    """A database for this test alone, on PostgreSQL too (where the run shares one): a service that
    starts arms every active schedule it finds, and one whose wall clock is moved to another year would
    owe other tests' leftover schedules months of fires."""
    if not USE_PG:
        yield f"sqlite+aiosqlite:///{tmp_path / 'announcer.db'}"
        return
    with _fresh_pg_database() as url:
        yield url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """A running announcer in sandbox mode, and handles on its sandbox."""

    app: web.Application
    base_url: str
    settings: Settings

    @property
    def sandbox(self) -> Any:
        from announcer.app import SANDBOX

        return self.app[SANDBOX]

    @property
    def tts(self) -> Any:
        from announcer.app import SANDBOX_TTS

        return self.app[SANDBOX_TTS]

    @property
    def agent(self) -> Any:
        from announcer.app import SANDBOX_AGENT

        return self.app[SANDBOX_AGENT]

    @property
    def store(self) -> CallStore:
        from announcer.app import STORE

        return self.app[STORE]

    @property
    def speaker(self) -> Any:
        from announcer.app import SPEAKER

        return self.app[SPEAKER]

    @property
    def providers(self) -> Any:
        from announcer.app import PROVIDERS

        return self.app[PROVIDERS]


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    port = free_port()
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "database_url": database_url,
        "announcer_data_dir": tmp_path / "data",
        "announcer_org_name": "Acme Clinic",
        "announcer_sandbox_speed": 25.0,
        "elevenlabs_timeout_s": 2.0,
        "twilio_timeout_s": 5.0,
        "announcer_api_token": API_TOKEN,
        "twilio_cps": 50.0,
    }
    values.update(overrides)
    # _env_file=None: a developer's .env must not leak into the tests.
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def start_service(settings: Settings) -> tuple[web.AppRunner, Service]:
    from announcer.app import create_app

    for _ in range(5):
        app = create_app(settings)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as err:
            # free_port's port was taken by another process before we bound it: another port
            await runner.cleanup()
            if err.errno != errno.EADDRINUSE:
                raise
            settings = settings.model_copy(update={"port": free_port()})
            continue
        return runner, Service(app=app, base_url=f"http://{settings.host}:{settings.port}", settings=settings)
    raise AssertionError("no free port after 5 tries")


@pytest.fixture
async def service(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    runner, svc = await start_service(make_settings(tmp_path, database_url))
    try:
        yield svc
    finally:
        await runner.cleanup()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait, with a deadline, for a condition another component makes true in its own time (a row the
    service commits after its reply); re-checked every 10 ms rather than one fixed sleep."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - the condition lives in the database, not in an Event
            await asyncio.sleep(0.01)


async def run_cli(
    tmp_path: Path, url: str, command: str, *args: str, timeout: float = 60
) -> tuple[int, str, str]:
    """`announcer COMMAND ARGS --url URL --token T` in its own process: (exit code, stdout, stderr).
    Awaited, never blocking the loop the service under test runs on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "ELEVENLABS_", "ANNOUNCER_"))}
    return await run_process(
        [
            sys.executable,
            "-m",
            "announcer.cli",
            command,
            *args,
            "--url",
            url,
            "--token",
            API_TOKEN,
        ],
        cwd=tmp_path,  # no .env of the developer's
        env=env,
        timeout=timeout,
    )


async def run_process(
    argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int, str, str]:
    """`argv` in its own process with no stdin: (exit code, stdout, stderr); killed at `timeout`."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
