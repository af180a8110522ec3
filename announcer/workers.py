"""`announcer serve --workers N`: N service processes on one machine, for a load balancer in front.

One process uses one core; a machine with more cores runs one per core. Worker i (0-based) is an ordinary
`announcer serve` on HOST, port PORT + i, with its own data directory `<ANNOUNCER_DATA_DIR>/worker-<i>`
(its speech cache and recordings; the data directory's lock is held by the supervisor). Everything the
processes share is in the database: deliveries, calls, stream tokens, schedules, so any process answers
any webhook or media websocket of any call, and nginx (deploy/nginx.conf) spreads them over the ports.

Separate ports rather than one shared socket: when a worker dies, connecting to its port is refused at
once and nginx passes the request to the next one, where a shared (inherited) socket would queue it
unanswered until the worker is back.

The supervisor restarts a worker that exits on its own (after 1 s, doubling to 30 s while it keeps
dying young), and on SIGINT or SIGTERM stops them all (SIGTERM: each finishes what it is doing, as a
single `announcer serve` does) and exits. A worker that refuses to start (exit status 2: its line on
stderr says which setting) stops the lot: starting it again would fail the same way.

Refused with one line before anything starts: SQLite (one process's file; the data directory's lock
would stop the second anyway) and the in-process sandbox Twilio (each process would run its own phone
network with its own auth token, and the webhooks of one reach the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from announcer.config import Settings
from announcer.files import write_private
from announcer.instance import InstanceError, bind, lock_data_dir

log = logging.getLogger("announcer.workers")

RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
YOUNG_S = 10.0  # a worker that dies sooner than this after its start is restarted later each time
STOP_GRACE_S = 30.0  # a worker still running this long after SIGTERM is killed
REFUSED = 2  # `announcer serve`'s exit status for "fix the settings": not worth a restart

PR_SET_PDEATHSIG = 1


def refusal(settings: Settings, workers: int) -> str | None:
    """Why `workers` processes cannot share these settings (one line), or None."""
    if workers < 1:
        return f"--workers {workers}: expected 1 or more"
    if workers == 1:
        return None
    if settings.resolved_database_url.startswith("sqlite"):
        return (
            f"--workers {workers} needs PostgreSQL: SQLite is one process's file; set DATABASE_URL="
            "postgresql+asyncpg://... or run one process"
        )
    if settings.twilio_sandbox:
        return (
            f"--workers {workers} needs Twilio settings (TWILIO_ACCOUNT_SID, ...): the sandbox phone "
            "network lives inside one process; run one process to try the sandbox"
        )
    if settings.port + workers - 1 > 65535:
        return f"--workers {workers} from PORT {settings.port}: ports past 65535"
    return None


@dataclass
class Worker:
    index: int
    port: int
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    backoff: float = RESTART_FIRST_S
    restarts: int = field(default=0)


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM when the supervisor dies (even by SIGKILL), so no worker is
    left serving alone with nobody to restart or stop it. Linux only; elsewhere nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, settings: Settings, workers: int, token: str) -> None:
        self._settings = settings
        self._stopping = asyncio.Event()
        base = {k: v for k, v in os.environ.items()}
        self._workers = [
            Worker(
                index=i,
                port=settings.port + i,
                env={
                    **base,
                    "ANNOUNCER_DATA_DIR": str(settings.announcer_data_dir / f"worker-{i}"),
                    # One token for all: a client's request reaches any of them (and `announcer send`
                    # reads it from the data directory, where the supervisor wrote it).
                    "ANNOUNCER_API_TOKEN": token,
                },
            )
            for i in range(workers)
        ]
        self.code = 0

    async def _spawn(self, worker: Worker) -> None:
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "announcer.cli",
            "serve",
            "--host",
            self._settings.host,
            "--port",
            str(worker.port),
            env=worker.env,
            # Its own process group: Ctrl-C at a terminal reaches the supervisor alone, which stops each
            # worker once (a second signal in the middle of a worker's shutdown would cut it short).
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        worker.started = time.monotonic()
        log.info(
            "worker %d (pid %d) on %s:%d", worker.index, worker.proc.pid, self._settings.host, worker.port
        )

    async def _watch(self, worker: Worker) -> None:
        """Keep one worker running until the supervisor stops."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - worker.started
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            if code == REFUSED and lived < YOUNG_S:
                log.error("worker %d %s at start (see its line above): stopping all", worker.index, how)
                self.code = REFUSED
                self._stopping.set()
                return
            if lived < YOUNG_S:  # dying young again and again: wait longer each time
                delay = worker.backoff
                worker.backoff = min(worker.backoff * 2, RESTART_MAX_S)
            else:
                delay = worker.backoff = RESTART_FIRST_S
            log.error(
                "worker %d (pid %d) %s; restarting in %.0f s", worker.index, worker.proc.pid, how, delay
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            worker.restarts += 1
            await self._spawn(worker)
            if self._stopping.is_set():  # the stop came while it was starting: `run` did not see it
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.terminate()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        for worker in self._workers:
            await self._spawn(worker)
        watchers = [asyncio.create_task(self._watch(w), name=f"worker-{w.index}") for w in self._workers]
        await self._stopping.wait()
        log.info("stopping %d workers", len(self._workers))
        running = [w.proc for w in self._workers if w.proc is not None and w.proc.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        if running:
            _, late = await asyncio.wait(
                [asyncio.create_task(p.wait()) for p in running], timeout=STOP_GRACE_S
            )
            if late:
                log.error("%d workers still running %.0f s after SIGTERM: killed", len(late), STOP_GRACE_S)
                for proc in running:
                    if proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                await asyncio.gather(*(p.wait() for p in running))
        await asyncio.gather(*watchers)
        return self.code


def supervise(settings: Settings, workers: int) -> int:
    """Run `workers` service processes until SIGINT/SIGTERM; the exit status."""
    why = refusal(settings, workers)
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return REFUSED
    try:
        # Every port free before any worker starts: the common mistake named at once, nothing started.
        for i in range(workers):
            bind(settings.host, settings.port + i).close()
        lock_fd = lock_data_dir(settings.announcer_data_dir)
    except InstanceError as err:
        print(f"error: {err}", file=sys.stderr)
        return REFUSED
    try:
        if settings.announcer_api_token is not None:
            token = settings.announcer_api_token.get_secret_value()
        else:
            token = secrets.token_urlsafe(24)
            path: Path = settings.announcer_data_dir / "api-token"
            write_private(path, (token + "\n").encode())
            log.warning("ANNOUNCER_API_TOKEN is not set: this run's API token is in %s", path)
        return asyncio.run(Supervisor(settings, workers, token).run())
    finally:
        os.close(lock_fd)
