"""What the benchmarks share: free ports, valid phone numbers, a process's CPU time, verdicts,
percentiles, a fresh PostgreSQL database per run (created and dropped as tests/conftest.py does), the
service's environment as a live deployment's, waiting for it to serve and stopping it, and premade speech."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import phonenumbers

from announcer.speech.local import LocalSynthesizer

PG_ADMIN = os.environ.get("ANNOUNCER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def phones(n: int) -> list[str]:
    """`n` distinct numbers valid for their country (a live deployment refuses the rest)."""
    out: list[str] = []
    candidates = [f"+1415555{i:04d}" for i in range(10_000)] + [f"+1650555{i:04d}" for i in range(10_000)]
    for number in candidates:
        if phonenumbers.is_valid_number(phonenumbers.parse(number)):
            out.append(number)
            if len(out) == n:
                return out
    raise SystemExit(f"only {len(out)} valid numbers for {n} recipients")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else float("nan")


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database, dropped afterwards (as tests/conftest.py does)."""
    name = f"announcer_bench_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await admin(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def deployment_env(
    *,
    port: int,
    twilio: tuple[str, str, str, str],
    elevenlabs: tuple[str, str],
    database_url: str,
    data_dir: Path,
    api_token: str,
    cps: float,
    max_calls: int,
    log_level: str,
    **extra: str,
) -> dict[str, str]:
    """`announcer serve`'s environment as a live deployment's (credentials set, so no in-process sandbox)
    whose Twilio and ElevenLabs are the benchmark's peers: twilio = (account SID, auth token, number, base
    URL), elevenlabs = (API key, base URL). This machine's own TWILIO_/ELEVENLABS_/ANNOUNCER_ settings are
    left out."""
    account_sid, auth_token, number, twilio_base = twilio
    el_key, el_base = elevenlabs
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "ELEVENLABS_", "ANNOUNCER_"))},
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "TWILIO_ACCOUNT_SID": account_sid,
        "TWILIO_AUTH_TOKEN": auth_token,
        "TWILIO_PHONE_NUMBER": number,
        "TWILIO_API_BASE_URL": twilio_base,
        "TWILIO_CPS": str(cps),
        "MAX_CONCURRENT_CALLS": str(max_calls),
        "ELEVENLABS_API_KEY": el_key,
        "ELEVENLABS_BASE_URL": el_base,
        "DATABASE_URL": database_url,
        "ANNOUNCER_DATA_DIR": str(data_dir),
        "ANNOUNCER_API_TOKEN": api_token,
        "ANNOUNCER_LOG_LEVEL": log_level,
        **extra,
    }


async def wait_serving(
    http: aiohttp.ClientSession, public: str, proc: asyncio.subprocess.Process, log: Path | None = None
) -> None:
    """Until `GET /healthz` answers 200 (at most a minute); exits the benchmark if the service died."""
    see = f"; see {log}" if log is not None else ""
    for _ in range(1200):
        if proc.returncode is not None:
            raise SystemExit(f"service exited with {proc.returncode}{see}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(public + "/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise SystemExit(f"{public} did not come up{see}")


async def stop(proc: asyncio.subprocess.Process) -> None:
    """Terminate, and kill what is still there 15 s later."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def premade_voice(local: LocalSynthesizer, min_bytes: int = 160) -> Callable[[str], bytes]:
    """Speech made up front, cut to the length a text would take to say: real synthesis runs on
    ElevenLabs' machines, not on the cores the benchmark shares with the service."""
    sentence = "Good afternoon, and thank you for calling our office."
    clip = local.synthesize(sentence)
    per_char = len(clip) / len(sentence)

    def premade(text: str) -> bytes:
        size = max(min_bytes, int(len(text) * per_char))
        return (clip * (size // len(clip) + 1))[:size]

    return premade


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
    raise SystemExit(f"no {n} consecutive free ports")


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (the workers of `serve --workers N`)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


async def start_nginx(work: Path, ports: list[int], listen: int) -> asyncio.subprocess.Process:
    """Debian's nginx with deploy/nginx.conf's site, its upstream `ports` and its own `listen` port (as
    tests/test_scale_out.py starts it)."""
    import pwd
    import re
    import shutil

    nginx = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if nginx is None:
        raise SystemExit("nginx is not installed (apt-get install nginx)")
    text = Path(__file__).resolve().parent.parent.joinpath("deploy", "nginx.conf").read_text()  # noqa: ASYNC240
    servers = re.findall(r"(?m)^\s*server 127\.0\.0\.1:\d+.*;\n", text)
    options = servers[0].split(None, 2)[2].rstrip(";\n ") if len(servers[0].split()) > 2 else ""
    text = text.replace(servers[0], "".join(f"    server 127.0.0.1:{p} {options};\n" for p in ports), 1)
    for line in servers[1:]:
        text = text.replace(line, "", 1)
    text = re.sub(r"(?m)^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{listen};", text)
    d = work / "nginx"
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    temp = " ".join(f"{k}_temp_path {d / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = (
        f"{user}\ndaemon off;\nworker_processes 1;\npid {d / 'nginx.pid'};\n"
        f"error_log {d / 'error.log'} warn;\nevents {{ worker_connections 8192; }}\n"
        f"http {{ {temp} access_log off; include {d / 'announcer.conf'}; }}\n"
    )

    def write() -> None:
        d.mkdir()
        (d / "announcer.conf").write_text(text)
        (d / "nginx.conf").write_text(main)

    await asyncio.to_thread(write)
    return await asyncio.create_subprocess_exec(
        nginx, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")
    )
