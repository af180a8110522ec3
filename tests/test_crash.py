"""A crash in the middle of an alert: the service (a real process) is killed with SIGKILL while the alert
is half-dialed and started again; every recipient is called exactly once (counted at the sandbox, which
lives in this process like the real Twilio would, outside the service)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually, free_port
from tests.outside import Loopback, api, kill, running, spawn, stop, wait_healthy

RECIPIENTS = 50


class Outside:
    """The loopback Twilio and ElevenLabs, and how to (re)start the service against them."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.port = free_port()
        self.public = f"http://127.0.0.1:{self.port}"
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.loopback = Loopback(tmp_path, self.public)
        self.twilio = self.loopback.twilio
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        await self.loopback.start()

    async def serve(self) -> None:
        self.proc = await self.spawn(self.port)

    async def spawn(self, port: int) -> asyncio.subprocess.Process:
        """A service process on `port` against this sandbox and database (several may share them)."""
        env = self.loopback.env(
            port=port,
            database_url=self.database_url,
            data_dir=self.tmp_path / f"data-{port}",
            PUBLIC_URL=f"http://127.0.0.1:{port}",
            TWILIO_CPS="25",
            TWILIO_TIMEOUT_S="2",
            MAX_CONCURRENT_CALLS="8",
            ANNOUNCER_CLAIM_LEASE_S="4",
        )
        proc = await spawn(env)
        await wait_healthy(f"http://127.0.0.1:{port}", running(proc))
        return proc

    async def kill(self) -> None:
        assert self.proc is not None
        await kill(self.proc)

    async def close(self) -> None:
        await stop(self.proc)
        await self.loopback.close()

    def placed(self) -> Counter[str]:
        return self.loopback.placed()

    async def api(self, method: str, path: str, body: Any = None, port: int | None = None) -> Any:
        return await api(self.public if port is None else f"http://127.0.0.1:{port}", method, path, body)


@pytest.fixture
async def outside(tmp_path: Path, database_url: str) -> AsyncIterator[Outside]:
    world = Outside(tmp_path, database_url)
    await world.start()
    try:
        yield world
    finally:
        await world.close()


async def test_sigkill_mid_alert_calls_everyone_exactly_once(outside: Outside) -> None:
    await outside.serve()
    phones = [f"+1415555{2000 + i:04d}" for i in range(RECIPIENTS)]  # valid: a live-mode service is strict
    body = {
        "template_text": "Drill {{ n }}. This is only a test.",
        "recipients": [{"phone": p, "variables": {"n": i}} for i, p in enumerate(phones)],
    }
    status, accepted = await outside.api("POST", "/v1/alerts", body)
    assert status == 202, accepted

    async def half_dialed() -> bool:
        return sum(outside.placed().values()) >= RECIPIENTS // 3

    await eventually(half_dialed, timeout=60)
    await outside.kill()
    killed_at = sum(outside.placed().values())
    assert 0 < killed_at < RECIPIENTS
    await outside.serve()

    async def done() -> bool:
        code, alert = await outside.api("GET", f"/v1/alerts/{accepted['id']}")
        return code == 200 and alert["status"] == "completed"

    await eventually(done, timeout=120)
    placed = outside.placed()
    assert set(placed) == set(phones)
    assert max(placed.values()) == 1, {p: n for p, n in placed.items() if n > 1}
    _, alert = await outside.api("GET", f"/v1/alerts/{accepted['id']}")
    assert sum(alert["counts"].values()) == RECIPIENTS


async def test_a_service_down_across_a_fire_runs_it_once_after_a_real_restart(outside: Outside) -> None:
    """Stopped (SIGKILL) before a reminder's time, started after it: the misfire policy (`run`, within the
    grace) makes the reminder once; a second restart does not make it again."""
    from datetime import UTC, datetime, timedelta

    await outside.serve()
    phone = "+14155552999"
    at = datetime.now(UTC) + timedelta(seconds=2)
    body = {
        "template_text": "Reminder: the drill starts at noon.",
        "recipients": [{"phone": phone}],
        "when": {"at": at.isoformat()},
        "options": {"misfire": "run", "misfire_grace_s": 600},
    }
    status, created = await outside.api("POST", "/v1/schedules", body)
    assert status == 201, created
    await outside.kill()

    async def past() -> bool:
        return datetime.now(UTC) > at + timedelta(seconds=0.5)

    await eventually(past)
    assert outside.placed()[phone] == 0  # it was down at the time
    for _ in range(2):
        await outside.serve()

        async def made() -> bool:
            code, view = await outside.api("GET", f"/v1/schedules/{created['id']}")
            return code == 200 and any(o["status"] == "fired" for o in view["occurrences"])

        await eventually(made, timeout=60)

        async def scheduler_running() -> bool:  # caught up and armed: a second run would have happened
            _, health = await outside.api("GET", "/healthz")
            return bool(health["scheduler"] == "running")

        await eventually(scheduler_running, timeout=30)
        _, view = await outside.api("GET", f"/v1/schedules/{created['id']}")
        [occurrence] = view["occurrences"]
        assert occurrence["detail"].get("late") is True
        alert_id = occurrence["alert_id"]

        async def done(alert_id: str = alert_id) -> bool:
            code, alert = await outside.api("GET", f"/v1/alerts/{alert_id}")
            return code == 200 and alert["status"] == "completed"

        await eventually(done, timeout=60)
        assert outside.placed()[phone] == 1
        await outside.kill()


async def test_two_service_processes_on_one_postgresql_fire_each_occurrence_once(
    outside: Outside, database_url: str
) -> None:
    """Two real processes on one PostgreSQL database: one runs the scheduler (advisory lock), both serve
    the API; every reminder is made and called once, and when the leader is killed the other takes
    over."""
    if not database_url.startswith("postgresql"):
        pytest.skip("several processes share a database on PostgreSQL; SQLite is one process's file")
    from datetime import UTC, datetime, timedelta

    ports = [free_port(), free_port()]
    procs = [await outside.spawn(port) for port in ports]
    try:

        async def roles() -> list[str]:
            return [(await outside.api("GET", "/healthz", port=p))[1]["scheduler"] for p in ports]

        async def one_runs() -> bool:
            return sorted(await roles()) == ["running", "standby"]

        await eventually(one_runs, timeout=30)
        leader = ports[(await roles()).index("running")]
        follower = ports[1 - ports.index(leader)]
        phones = [f"+1415555{3000 + i:04d}" for i in range(6)]
        at = datetime.now(UTC) + timedelta(seconds=5)
        created = []
        for i, phone in enumerate(phones):  # through both processes
            body = {
                "template_text": "Reminder {{ n }}.",
                "variables": {"n": i},
                "recipients": [{"phone": phone}],
                "when": {"at": at.isoformat()},
            }
            status, answer = await outside.api("POST", "/v1/schedules", body, port=ports[i % 2])
            assert status == 201, answer
            created.append(answer["id"])

        async def all_called() -> bool:
            return all(outside.placed()[p] >= 1 for p in phones)

        await eventually(all_called, timeout=60)
        # The leader dies; the other process takes over and makes the next reminder.
        procs[ports.index(leader)].send_signal(signal.SIGKILL)
        await procs[ports.index(leader)].wait()

        async def took_over() -> bool:
            return bool((await outside.api("GET", "/healthz", port=follower))[1]["scheduler"] == "running")

        await eventually(took_over, timeout=30)
        late = "+14155553999"
        body = {
            "template_text": "After the takeover.",
            "recipients": [{"phone": late}],
            "when": {"at": (datetime.now(UTC) + timedelta(seconds=2)).isoformat()},
        }
        status, answer = await outside.api("POST", "/v1/schedules", body, port=follower)
        assert status == 201, answer

        async def late_called() -> bool:
            return outside.placed()[late] >= 1

        await eventually(late_called, timeout=60)
        placed = outside.placed()
        assert all(placed[p] == 1 for p in [*phones, late]), placed
        for schedule_id in created:
            _, view = await outside.api("GET", f"/v1/schedules/{schedule_id}", port=follower)
            assert [o["status"] for o in view["occurrences"]] == ["fired"]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
