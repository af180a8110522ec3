"""A crash in the middle of an alert: the service (a real process) is killed with SIGKILL while the alert
is half-dialed and started again; every recipient is called exactly once (counted at the sandbox, which
lives in this process like the real Twilio would, outside the service)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from announcer.sandbox import SandboxElevenLabs, SandboxTwilio
from announcer.speech.local import LocalSynthesizer
from tests.conftest import API_TOKEN, AUTH, eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
RECIPIENTS = 50


class Outside:
    """The loopback Twilio and ElevenLabs, and how to (re)start the service against them."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.port = free_port()
        self.public = f"http://127.0.0.1:{self.port}"
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.tmp_path = tmp_path
        self.database_url = database_url
        local = LocalSynthesizer()
        self.el_key = secrets.token_hex(16)
        self.tts = SandboxElevenLabs(api_key=self.el_key, synthesize=local.synthesize)
        self.twilio = SandboxTwilio(
            account_sid=self.account_sid,
            auth_token=self.auth_token,
            phone_number="+15550100000",
            voice_url=self.public + "/twilio/voice",
            status_callback_url=None,
            recordings_dir=tmp_path / "recordings",
            say_synthesize=local.synthesize,
            speed=20.0,
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.el_base = await self.tts.start()
        self.tw_base = await self.twilio.start()

    async def serve(self) -> None:
        self.proc = await self.spawn(self.port)

    async def spawn(self, port: int) -> asyncio.subprocess.Process:
        """A service process on `port` against this sandbox and database (several may share them)."""
        public = f"http://127.0.0.1:{port}"
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("TWILIO_", "ELEVENLABS_", "ANNOUNCER_"))
            },
            "PUBLIC_URL": public,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
            "TWILIO_PHONE_NUMBER": "+15550100000",
            "TWILIO_API_BASE_URL": self.tw_base,
            "TWILIO_CPS": "25",
            "TWILIO_TIMEOUT_S": "2",
            "MAX_CONCURRENT_CALLS": "8",
            "ELEVENLABS_API_KEY": self.el_key,
            "ELEVENLABS_BASE_URL": self.el_base,
            "DATABASE_URL": self.database_url,
            "ANNOUNCER_DATA_DIR": str(self.tmp_path / f"data-{port}"),
            "ANNOUNCER_API_TOKEN": API_TOKEN,
            "ANNOUNCER_CLAIM_LEASE_S": "4",
            "ANNOUNCER_LOG_LEVEL": "WARNING",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "announcer.cli", "serve", env=env, cwd=ROOT
        )

        async def up() -> bool:
            assert proc.returncode is None, "the service exited"
            try:
                async with aiohttp.ClientSession() as http, http.get(public + "/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(up, timeout=60)
        return proc

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        await self.twilio.close()
        await self.tts.close()

    def placed(self) -> Counter[str]:
        return Counter(c.to for c in self.twilio.calls.values() if c.direction.value == "outbound-api")

    async def api(self, method: str, path: str, body: Any = None, port: int | None = None) -> Any:
        base = self.public if port is None else f"http://127.0.0.1:{port}"
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, base + path, json=body, headers=AUTH) as resp,
        ):
            return resp.status, await resp.json()


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
