"""The command line as a user meets it: start-up refuses bad settings and broken templates in one clear
line, and `sandbox call-in` places a call to a running service and prints the recording's path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from announcer.audio import lin2ulaw, rms
from tests.conftest import free_port


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "ELEVENLABS_", "ANNOUNCER_"))}
    keep.update({"ANNOUNCER_DATA_DIR": str(tmp_path / "data"), "ANNOUNCER_LOG_LEVEL": "INFO"})
    keep.update(extra)
    return keep


async def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "announcer.cli",
        *args,
        env=env,
        cwd=Path(env["ANNOUNCER_DATA_DIR"]).parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def sandbox_service(env: dict[str, str], cwd: Path) -> AsyncIterator[str]:
    """`announcer serve` in sandbox mode, once its start-up log says where calls go (that log is yielded)."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "announcer.cli", "serve", env=env, cwd=cwd, stderr=asyncio.subprocess.PIPE
    )
    drain: asyncio.Task[None] | None = None
    try:
        assert server.stderr is not None
        stderr = server.stderr
        async with asyncio.timeout(60):
            seen = ""
            while "loopback Twilio" not in seen:
                line = await stderr.readline()
                assert line, f"service exited early: {seen}"
                seen += line.decode()

        async def drain_stderr() -> None:
            # Read on until it exits: a pipe nobody reads fills up (64 KiB) and blocks the service's logging.
            while await stderr.readline():
                pass

        drain = asyncio.create_task(drain_stderr())
        yield seen
    finally:
        server.terminate()
        await server.wait()
        if drain is not None:
            await drain


async def test_bad_settings_stop_start_up_with_one_line(tmp_path: Path) -> None:
    code, _, err = await run_cli(env_for(tmp_path, PORT="eighty", TWILIO_CPS="0"), "serve")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "PORT" in lines[0] and "TWILIO_CPS" in lines[0]


async def test_broken_greeting_template_stops_start_up_naming_it(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "greeting.j2").write_text("Hello {{ org_name }}.\nYou called {{ missing_variable }}.\n")
    code, _, err = await run_cli(env_for(tmp_path, ANNOUNCER_TEMPLATES_DIR=str(templates)), "serve")
    assert code == 2
    assert "greeting.j2, line 2" in err and "missing_variable" in err


@pytest.mark.timeout(180)
async def test_serve_and_sandbox_call_in(tmp_path: Path) -> None:
    port = free_port()
    env = env_for(tmp_path, PORT=str(port), ANNOUNCER_SANDBOX_SPEED="20")
    async with sandbox_service(env, tmp_path) as seen:
        assert "sandbox mode" in seen
        code, out, err = await run_cli(env, "sandbox", "call-in", "--from", "+15551234567", timeout=120)
        assert code == 0, err
        wav_path = Path(out.strip().splitlines()[-1].removeprefix("recording: "))
        with wave.open(str(wav_path)) as wav:
            assert wav.getnframes() > 8000  # more than a second of greeting
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
        assert rms(lin2ulaw(pcm)) > 500  # speech, not silence


@pytest.mark.timeout(180)
async def test_sandbox_call_in_talks_with_the_agent_and_prints_the_transcript(tmp_path: Path) -> None:
    port = free_port()
    env = env_for(tmp_path, PORT=str(port), ANNOUNCER_SANDBOX_SPEED="20", GREETING_AGENT="1")
    async with sandbox_service(env, tmp_path):
        code, out, err = await run_cli(
            env,
            "sandbox",
            "call-in",
            "--agent",
            "--say",
            "Is the clinic open?",
            "--say",
            "Goodbye.",
            timeout=120,
        )
        assert code == 0, err
        transcript = out.split("transcript:\n", 1)[1].splitlines()
        assert transcript[0].startswith("  agent : Hello")
        assert "  caller: Is the clinic open?" in transcript
        assert "  caller: Goodbye." in transcript
        assert transcript[-1].startswith("  agent : ")  # the agent's goodbye ends it
        wav_path = Path(next(x for x in out.splitlines() if x.startswith("recording: ")).split(": ", 1)[1])
        with wave.open(str(wav_path)) as wav:
            assert wav.getnframes() > 8000 * 3  # greeting, both sides of the conversation
