"""`announcer serve` as a process (issue 12, holes 7 and 10): what it writes is its owner's only, whatever
the umask and whatever was there before; and a second instance on the same port or data directory
changes nothing the first relies on, and says in one line which setting to change."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import eventually, free_port
from tests.test_cli import env_for, run_cli, sandbox_service


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.timeout(180)
async def test_files_are_private_whatever_the_umask_and_the_old_modes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "audio-cache" / "ab").mkdir(parents=True)
    data.chmod(0o755)
    (data / "api-token").write_text("old\n")
    (data / "api-token").chmod(0o644)
    stale = data / "audio-cache" / "ab" / "old-entry"
    stale.write_bytes(b"\xff" * 160)
    stale.chmod(0o644)
    env = env_for(tmp_path, PORT=str(free_port()), ANNOUNCER_SANDBOX_SPEED="20")
    # A shell's usual umask: without the service's own care, everything it writes would be 0644.
    old_umask = os.umask(0o022)
    try:
        async with sandbox_service(env, tmp_path):
            code, out, err = await run_cli(env, "sandbox", "call-in", "--from", "+15551234567", timeout=120)
            assert code == 0, err
            recording = Path(out.strip().splitlines()[-1].removeprefix("recording: "))

            async def old_entries_tightened() -> bool:
                return mode(stale) == 0o600

            await eventually(old_entries_tightened, timeout=30)
            check_private(data, recording)  # while it runs: SQLite's -wal and -shm exist only then
    finally:
        os.umask(old_umask)


def check_private(data: Path, recording: Path) -> None:
    files = [p for p in data.rglob("*") if p.is_file()]
    dirs = [data, *(p for p in data.rglob("*") if p.is_dir())]
    assert {str(p.relative_to(data)) for p in files} >= {
        "announcer.db",
        "announcer.db-wal",
        "announcer.db-shm",
        "api-token",
        "sandbox.json",
        "serve.lock",
        str(recording.relative_to(data)),
    }
    assert sum(p.parent.parent.name == "audio-cache" for p in files) >= 2  # the old entry and the greeting
    assert {str(p.relative_to(data)): oct(mode(p)) for p in files if mode(p) != 0o600} == {}
    assert {str(p): oct(mode(p)) for p in dirs if mode(p) != 0o700} == {}


async def _serve_once(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "announcer.cli", "serve", env=env, cwd=cwd, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("the second instance kept running") from None
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.timeout(180)
async def test_a_second_serve_changes_nothing_the_first_relies_on(tmp_path: Path) -> None:
    port = free_port()
    env = env_for(tmp_path, PORT=str(port), ANNOUNCER_SANDBOX_SPEED="20")
    data = tmp_path / "data"
    async with sandbox_service(env, tmp_path):
        token = (data / "api-token").read_text()
        sandbox_file = (data / "sandbox.json").read_text()

        # The same command again: the port is taken
        code, err = await _serve_once(env, tmp_path)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert f"port {port}" in lines[0] and "PORT" in lines[0] and "Traceback" not in err

        # Another port, the same data directory
        code, err = await _serve_once({**env, "PORT": str(free_port())}, tmp_path)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "ANNOUNCER_DATA_DIR" in lines[0], err

        assert (data / "api-token").read_text() == token
        assert (data / "sandbox.json").read_text() == sandbox_file
        # What the README's commands do against the running service still works
        headers = {"Authorization": f"Bearer {token.strip()}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/v1/schedules", headers=headers) as resp,
        ):
            assert resp.status == 200
        code, _, err = await run_cli(env, "sandbox", "call-in", "--from", "+15551234567", timeout=120)
        assert code == 0, err
