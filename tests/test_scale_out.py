"""A process per core behind a real load balancer: `announcer serve --workers N` on one PostgreSQL database,
nginx in front started from deploy/nginx.conf, PUBLIC_URL = nginx's address. The loopback Twilio and
ElevenLabs live in this process, outside the service, as the real ones would: every create request, status
callback and media stream goes over the network, the callbacks and streams through nginx to whichever
process it picks. Counted at the sandbox (creates per number) and in nginx's access log (which process
served each callback and stream).

PostgreSQL only (SQLite is one process's file); skipped when nginx is not installed (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import signal
import socket
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from announcer.store.models import FINAL_DELIVERY_STATES
from tests.conftest import eventually, free_port
from tests.outside import Loopback, api, spawn, stop, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
RECIPIENTS = 300
FINAL = {str(s) for s in FINAL_DELIVERY_STATES}

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does): no load balancer"
)

# What each request nginx passed on went to: method, path, the upstream(s) tried, status, query.
LOG_FORMAT = "'$request_method $uri $upstream_addr $status ?$args'"
LOG_LINE = re.compile(r"^(\S+) (\S+) (.*) (\d{3}) \?(.*)$")


def consecutive_free_ports(n: int) -> int:
    """The first of `n` consecutive free ports on 127.0.0.1 (what `serve --workers n` listens on)."""
    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError(f"no {n} consecutive free ports")


def nginx_site(ports: list[int], listen: int) -> str:
    """deploy/nginx.conf with this test's processes in the upstream and its own port to listen on."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = re.findall(r"(?m)^\s*server 127\.0\.0\.1:\d+.*;\n", text)
    assert servers, "deploy/nginx.conf: no `server 127.0.0.1:PORT ...;` lines in the upstream"
    options = servers[0].split(None, 2)[2].rstrip(";\n ") if len(servers[0].split()) > 2 else ""
    mine = "".join(f"    server 127.0.0.1:{p} {options};\n" for p in ports)
    text = text.replace(servers[0], mine, 1)
    for line in servers[1:]:
        text = text.replace(line, "", 1)
    text, n = re.subn(r"(?m)^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{listen};", text)
    assert n == 1, "deploy/nginx.conf: expected one `listen 80;` line"
    return text


class Farm:
    """The sandbox Twilio and ElevenLabs, nginx, and `announcer serve --workers N` behind it."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.nginx_port = free_port()
        self.public = f"http://127.0.0.1:{self.nginx_port}"
        # Short calls (the phones' clock: rings, hellos); faster sends more microphone frames per call, a
        # load of this process's that slows everything on a 2-core machine.
        self.loopback = Loopback(tmp_path, self.public, speed=10.0)
        self.twilio = self.loopback.twilio
        self.nginx: asyncio.subprocess.Process | None = None
        self.service: asyncio.subprocess.Process | None = None
        self.ports: list[int] = []
        self.nginx_dir = tmp_path / "nginx"
        self.service_log = tmp_path / "service.log"

    async def start(self, workers: int) -> None:
        await self.loopback.start()
        base = consecutive_free_ports(workers)
        self.ports = list(range(base, base + workers))
        await self._start_nginx()
        await self._start_service(workers)

    async def _start_nginx(self) -> None:
        d = self.nginx_dir
        d.mkdir()
        (d / "announcer.conf").write_text(nginx_site(self.ports, self.nginx_port))
        # As root, nginx's workers would run as `nobody`, who cannot enter the test's private directory.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        temp = " ".join(
            f"{kind}_temp_path {d / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (d / "nginx.conf").write_text(
            f"""{user}
daemon off;
worker_processes 1;
pid {d / "nginx.pid"};
error_log {d / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    {temp}
    log_format scale {LOG_FORMAT};
    access_log {d / "access.log"} scale;
    include {d / "announcer.conf"};
}}
"""
        )
        assert NGINX is not None
        self.nginx = await asyncio.create_subprocess_exec(
            NGINX, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")
        )

    async def _start_service(self, workers: int) -> None:
        env = self.loopback.env(
            port=self.ports[0],
            database_url=self.database_url,
            data_dir=self.tmp_path / "data",
            TWILIO_CPS="20",
            TWILIO_TIMEOUT_S="3",
            MAX_CONCURRENT_CALLS="150",  # counted in the database: all processes together
            # A killed process's claims are reconciled by the others this soon after their claim. Not
            # shorter: a claim must be dialed and its SID recorded within the lease (the create's time
            # limit above included, on a loaded machine), or a living process's claim is reconciled too.
            ANNOUNCER_CLAIM_LEASE_S="10",
        )
        with self.service_log.open("wb") as sink:
            # cwd: no .env of the developer's
            self.service = await spawn(env, "--workers", str(len(self.ports)), cwd=self.tmp_path, log=sink)
        for port in self.ports:
            await self.wait_up(f"http://127.0.0.1:{port}")
        await self.wait_up(self.public)

    async def wait_up(self, url: str) -> None:
        def alive() -> None:
            assert self.service is not None and self.service.returncode is None, self.log_tail()
            assert self.nginx is not None and self.nginx.returncode is None, self.nginx_errors()

        await wait_healthy(url, alive, timeout=90)

    def log_tail(self) -> str:
        return self.service_log.read_text(errors="replace")[-3000:]

    def nginx_errors(self) -> str:
        path = self.nginx_dir / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    async def pid_at(self, port: int) -> int:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            return int((await resp.json())["pid"])

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await api(self.public, method, path, body)

    def creates(self) -> Counter[str]:
        """Create-call requests per number, as the sandbox received them (whatever it answered)."""
        return Counter(
            dict(r.form).get("To", "")
            for r in self.twilio.rest_log
            if r.method == "POST" and r.path.endswith("/Calls.json")
        )

    def served(self) -> list[tuple[str, str, str, int, str]]:
        """nginx's access log: (method, path, the process that answered (the last tried), status, query)."""
        rows = []
        for line in (self.nginx_dir / "access.log").read_text().splitlines():
            m = LOG_LINE.match(line)
            assert m, line
            method, path, upstreams, status, query = m.groups()
            rows.append((method, path, upstreams.split(", ")[-1], int(status), query))
        return rows

    async def stop_service(self) -> int:
        assert self.service is not None
        self.service.terminate()
        return await asyncio.wait_for(self.service.wait(), 60)

    async def close(self) -> None:
        for proc in (self.service, self.nginx):
            await stop(proc)
        await self.loopback.close()


@pytest.fixture
async def farm(tmp_path: Path, database_url: str) -> AsyncIterator[Farm]:
    if not database_url.startswith("postgresql"):
        pytest.skip("several processes share a database on PostgreSQL; SQLite is one process's file")
    world = Farm(tmp_path, database_url)
    try:
        yield world
    finally:
        await world.close()


async def post_alert(farm: Farm, first: int) -> tuple[str, list[str]]:
    phones = [f"+1415555{first + i:04d}" for i in range(RECIPIENTS)]  # valid: a live deployment is strict
    body = {
        "template_text": "Drill {{ n }}.",
        "recipients": [{"phone": p, "variables": {"n": i}} for i, p in enumerate(phones)],
    }
    status, accepted = await farm.api("POST", "/v1/alerts", body)
    assert status == 202, accepted
    return str(accepted["id"]), phones


async def completed(farm: Farm, alert_id: str) -> dict[str, Any]:
    view: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal view
        code, view = await farm.api("GET", f"/v1/alerts/{alert_id}")
        return code == 200 and view["status"] == "completed"

    await eventually(done, timeout=240)
    return view


def assert_each_called_once(farm: Farm, phones: list[str]) -> None:
    creates = farm.creates()
    assert set(creates) == set(phones), set(phones) ^ set(creates)
    twice = {p: n for p, n in creates.items() if n > 1}
    assert not twice, f"called more than once: {twice}"


async def callbacks_answered(farm: Farm) -> Counter[int | None]:
    """The status callbacks the sandbox sent through nginx, by the answer's status (None: no answer within
    Twilio's 15 s), once none is waiting (the last calls' `completed` may still be on its way). 204: signed
    over PUBLIC_URL (nginx's address) and accepted by whichever process got it; a 403 would be a signature
    checked over another URL."""

    async def answered() -> bool:
        return all(w.status is not None or w.error for w in farm.twilio.webhook_log)

    await eventually(answered, timeout=30)
    return Counter(w.status for w in farm.twilio.webhook_log if w.kind == "status")


def callback_latency(farm: Farm) -> str:
    """How long the status callbacks waited for their answer (ms): p50, p99, max."""
    waits = sorted(
        (w.answered_at - w.at) * 1000
        for w in farm.twilio.webhook_log
        if w.kind == "status" and w.answered_at is not None
    )
    if not waits:
        return "none answered"
    p50, p99 = waits[len(waits) // 2], waits[int(len(waits) * 0.99)]
    return f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {waits[-1]:.0f} ms"


async def outcomes(farm: Farm, alert_id: str) -> dict[str, str]:
    """Each delivery's outcome by phone (every page)."""
    found: dict[str, str] = {}
    after: int | None = -1
    while after is not None:
        code, page = await farm.api("GET", f"/v1/alerts/{alert_id}/deliveries?after={after}&limit=100")
        assert code == 200, page
        found.update({d["phone"]: d["outcome"] for d in page["deliveries"]})
        after = page["next_after"]
    return found


def assert_outcomes_true(
    farm: Farm, recorded: dict[str, str], killed_at: float | None = None
) -> Counter[str]:
    """Each delivery's outcome is what the sandbox saw of its call: an answered call is never `no_answer`;
    `heard` only when the phone echoed the message's end mark (or Twilio said it); a message the phone heard
    to its end mark is `heard` unless the call was live when a worker was killed (`killed_at`, monotonic:
    the echo may have reached the dead process only). Returns what was found, by kind, to print."""
    calls = {c.to: c for c in farm.twilio.calls.values()}  # each number is called once (asserted apart)
    seen: Counter[str] = Counter()
    wrong: list[str] = []
    for phone, outcome in recorded.items():
        call = calls[phone]
        answered = call.answered_at is not None
        end_echoed = any(m.startswith("end:") for m in call.marks_echoed) or bool(call.said)
        live_at_kill = (
            killed_at is not None
            and answered
            and call.placed_at <= killed_at <= (call.finished_at or float("inf"))
        )
        if answered and outcome == "no_answer":
            wrong.append(f"{phone} {call.sid}: answered ({call.duration_s} s) but recorded no_answer")
        elif outcome == "heard" and not end_echoed:
            wrong.append(f"{phone} {call.sid}: recorded heard, the phone never heard the end")
        elif end_echoed and outcome != "heard" and not live_at_kill:
            wrong.append(f"{phone} {call.sid}: the phone heard it all, recorded {outcome}")
        seen[f"{outcome}{' (live at the kill)' if live_at_kill else ''}"] += 1
    assert not wrong, "\n".join(wrong[:20])
    return seen


async def reconciled(farm: Farm) -> dict[str, int]:
    """What the processes that lived did about the killed one's work (read from the database): claims
    released (never dialed: due again), claims adopted (the call existed: kept), calls settled by asking
    Twilio (their callbacks were lost)."""
    conn = await asyncpg.connect(farm.database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        kinds = dict(
            await conn.fetch(
                "SELECT kind, count(*) FROM delivery_events WHERE kind IN ('claim_released', 'reconciled') "
                "GROUP BY kind"
            )
        )
        settled = await conn.fetchval(
            "SELECT count(*) FROM call_events WHERE kind = 'status' "
            "AND detail->>'source' = 'reconciled with Twilio'"
        )
    finally:
        await conn.close()
    return {
        "released": int(kinds.get("claim_released", 0)),
        "adopted": int(kinds.get("reconciled", 0)),
        "settled": int(settled),
    }


@pytest.mark.parametrize("workers", [2, 3])
async def test_processes_behind_nginx_call_everyone_once_and_share_callbacks_and_streams(
    farm: Farm, workers: int
) -> None:
    await farm.start(workers)
    alert_id, phones = await post_alert(farm, 2000)
    view = await completed(farm, alert_id)
    assert sum(view["counts"].values()) == RECIPIENTS
    assert set(view["counts"]) <= FINAL, view["counts"]
    # Every delivery final. Not every one heard on a loaded machine: a stream whose start waits more than
    # 10 s for its process is closed (hung_up_early); but each outcome is what its phone went through.
    assert view["counts"].get("heard", 0) > 0, view["counts"]
    truth = assert_outcomes_true(farm, await outcomes(farm, alert_id))
    pids = [await farm.pid_at(p) for p in farm.ports]
    assert_each_called_once(farm, phones)
    # None: unanswered within 15 s. The processes' journals deadlock on each other's rows at times (each
    # costs PostgreSQL's deadlock_timeout, 1 s), and a webhook waits for its journal: see the report.
    answers = await callbacks_answered(farm)
    assert set(answers) <= {204, None}, answers
    upstreams = {f"127.0.0.1:{p}" for p in farm.ports}

    async def streams_logged() -> bool:  # nginx logs a websocket when it closes, after its delivery is final
        return sum(1 for r in farm.served() if r[1] == "/twilio/media") >= RECIPIENTS

    await eventually(streams_logged, timeout=60)
    rows = farm.served()
    media = Counter(r[2] for r in rows if r[1] == "/twilio/media")
    status = Counter(r[2] for r in rows if r[1] == "/twilio/status")
    assert set(media) == upstreams, media  # every process served streams
    assert set(status) == upstreams, status  # and status callbacks
    # 499: the sandbox gave up after Twilio's 15 s (the None answers above)
    assert all(r[3] in (101, 200, 204, 499) for r in rows if r[1].startswith("/twilio/")), Counter(
        r[3] for r in rows
    )
    # The callbacks of one call reach different processes (any process answers any call's webhook).
    by_call: defaultdict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r[1] == "/twilio/status":
            by_call[r[4]].add(r[2])
    spread = sum(1 for answered in by_call.values() if len(answered) > 1)
    assert spread > RECIPIENTS // 4, (
        f"{spread} of {len(by_call)} calls had callbacks on more than one process"
    )
    # SIGTERM to the supervisor: every worker stops, and it exits 0.
    assert await farm.stop_service() == 0, farm.log_tail()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    print(
        f"\n{workers} processes: outcomes {view['counts']}; streams {dict(media)}, status callbacks "
        f"{dict(status)}, answered {dict(answers)} in {callback_latency(farm)}; outcomes as the sandbox saw "
        f"them {dict(truth)}"
    )


async def test_a_worker_killed_mid_alert_loses_nobody_and_calls_nobody_twice(farm: Farm) -> None:
    await farm.start(3)
    pids = [await farm.pid_at(p) for p in farm.ports]
    alert_id, phones = await post_alert(farm, 4000)

    async def under_way() -> bool:
        # Early enough that the calls are paced by the rate, not the concurrency limit: each process has
        # about a second of claims queued, which the others must reconcile after the kill.
        return sum(farm.creates().values()) >= RECIPIENTS // 6

    await eventually(under_way, timeout=120)
    victim = farm.ports[1]
    os.kill(pids[1], signal.SIGKILL)
    killed_mono = time.monotonic()
    killed_at = sum(farm.creates().values())
    assert killed_at < RECIPIENTS, "the alert was over before the kill: nothing tested"
    view = await completed(farm, alert_id)
    counts = view["counts"]
    assert sum(counts.values()) == RECIPIENTS
    assert set(counts) <= FINAL, counts  # nobody lost: every delivery has its outcome
    assert_each_called_once(farm, phones)
    # And each outcome true to its call: the calls the killed worker carried (their in-progress or their
    # stream went with it) were answered, so they are hung_up_early (or heard), never no_answer.
    truth = assert_outcomes_true(farm, await outcomes(farm, alert_id), killed_mono)
    # The callbacks the killed process had in hand when it died were answered 502 by nginx (it never
    # sends a POST twice); every other one was accepted by a process that lived.
    answers = await callbacks_answered(farm)
    assert set(answers) <= {204, 502, None}, answers
    lost = Counter(r[2] for r in farm.served() if r[1] == "/twilio/status" and r[3] == 502)
    assert set(lost) <= {f"127.0.0.1:{victim}"}, lost
    assert sum(lost.values()) == answers[502]
    # The others went on (the same processes) and the supervisor put a new one on the killed one's port.
    assert [await farm.pid_at(p) for p in (farm.ports[0], farm.ports[2])] == [pids[0], pids[2]]
    await farm.wait_up(f"http://127.0.0.1:{victim}")
    assert await farm.pid_at(victim) != pids[1]
    print(
        f"\nkilled pid {pids[1]} after {killed_at} creates; outcomes {counts}; callbacks lost with it "
        f"{answers[502]}; unanswered in 15 s {answers[None]}; answered in {callback_latency(farm)}; "
        f"reconciled {await reconciled(farm)}; outcomes as the sandbox saw them {dict(truth)}"
    )
