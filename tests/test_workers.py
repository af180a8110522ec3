"""`announcer serve --workers N` refuses, with one line and exit status 2, what cannot work before starting
anything: SQLite, the in-process sandbox Twilio, a port of the range in use. (N processes at work behind
nginx: tests/test_scale_out.py.)"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PG_URL = "postgresql+asyncpg://nobody@127.0.0.1:1/none"  # never reached: refused before anything opens
LIVE = {
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "0" * 32,
    "TWILIO_PHONE_NUMBER": "+15550100000",
    "PUBLIC_URL": "https://alerts.example.com",
}


async def serve_workers(tmp_path: Path, workers: int, **env: str) -> tuple[int, str]:
    """`announcer serve --workers N` in its own process: (exit status, stderr)."""
    own = ("TWILIO_", "ELEVENLABS_", "ANNOUNCER_", "DATABASE_URL", "PUBLIC_URL", "PORT")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "announcer.cli",
        "serve",
        "--workers",
        str(workers),
        env={**clean, "ANNOUNCER_DATA_DIR": str(tmp_path / "data"), "HOST": "127.0.0.1", **env},
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_more_than_one_process_on_sqlite_is_refused_with_one_line(tmp_path: Path) -> None:
    code, err = await serve_workers(tmp_path, 3, PORT=str(free_port()), **LIVE)
    assert code == 2
    assert err.splitlines() == [
        "error: --workers 3 needs PostgreSQL: SQLite is one process's file; set "
        "DATABASE_URL=postgresql+asyncpg://... or run one process"
    ]
    assert not (tmp_path / "data" / "announcer.db").exists()  # nothing opened


async def test_the_in_process_sandbox_twilio_is_refused(tmp_path: Path) -> None:
    code, err = await serve_workers(tmp_path, 2, PORT=str(free_port()), DATABASE_URL=PG_URL)
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith("error: --workers 2 needs Twilio settings (TWILIO_ACCOUNT_SID, ...)")


async def test_a_port_of_the_range_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The second worker's port is taken: PORT is the one before it.
        code, err = await serve_workers(tmp_path, 2, PORT=str(port - 1), DATABASE_URL=PG_URL, **LIVE)
    assert code == 2
    [line] = err.splitlines()
    assert f"port {port} on 127.0.0.1 is in use" in line or f"port {port - 1} on 127.0.0.1" in line, line
