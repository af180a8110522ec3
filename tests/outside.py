"""The world outside a real `announcer serve` process, for the tests that start, kill and restart one:
the loopback Twilio and ElevenLabs live in the test's process, as the real ones would, and the service
reaches them over the network. One copy of the launch (environment, health wait, SIGKILL) for every
such test."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp

from announcer.sandbox import SandboxElevenLabs, SandboxTwilio
from announcer.speech.local import LocalSynthesizer
from tests.conftest import API_TOKEN, AUTH, eventually

ROOT = Path(__file__).resolve().parent.parent
TWILIO_NUMBER = "+15550100000"


class Loopback:
    """The sandbox Twilio and ElevenLabs, reached by the service at `public`'s voice webhook."""

    def __init__(self, tmp_path: Path, public: str, speed: float = 20.0) -> None:
        self.public = public
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        local = LocalSynthesizer()
        self.el_key = secrets.token_hex(16)
        self.tts = SandboxElevenLabs(api_key=self.el_key, synthesize=local.synthesize)
        self.twilio = SandboxTwilio(
            account_sid=self.account_sid,
            auth_token=self.auth_token,
            phone_number=TWILIO_NUMBER,
            voice_url=public + "/twilio/voice",
            status_callback_url=None,
            recordings_dir=tmp_path / "recordings",
            say_synthesize=local.synthesize,
            speed=speed,
        )

    async def start(self) -> None:
        self.el_base = await self.tts.start()
        self.tw_base = await self.twilio.start()

    async def close(self) -> None:
        await self.twilio.close()
        await self.tts.close()

    def env(self, *, port: int, database_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
        """A live deployment's environment against this loopback (the developer's own settings left out),
        listening on `port`; `settings` add to it or override it."""
        return {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("TWILIO_", "ELEVENLABS_", "ANNOUNCER_"))
            },
            "PUBLIC_URL": self.public,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
            "TWILIO_PHONE_NUMBER": TWILIO_NUMBER,
            "TWILIO_API_BASE_URL": self.tw_base,
            "ELEVENLABS_API_KEY": self.el_key,
            "ELEVENLABS_BASE_URL": self.el_base,
            "DATABASE_URL": database_url,
            "ANNOUNCER_DATA_DIR": str(data_dir),
            "ANNOUNCER_API_TOKEN": API_TOKEN,
            "ANNOUNCER_LOG_LEVEL": "WARNING",
            **settings,
        }

    def placed(self) -> Counter[str]:
        """Outbound calls per number, as the sandbox placed them."""
        return Counter(c.to for c in self.twilio.calls.values() if c.direction.value == "outbound-api")


async def spawn(
    env: Mapping[str, str], *args: str, cwd: Path = ROOT, log: IO[bytes] | None = None
) -> asyncio.subprocess.Process:
    """`announcer serve` (plus `args`) in a process of its own."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "announcer.cli", "serve", *args, env=dict(env), cwd=cwd, stdout=log, stderr=log
    )


async def wait_healthy(url: str, alive: Callable[[], None], timeout: float = 60) -> None:
    """Until `url`/healthz answers 200; `alive` raises (with what went wrong) once a process it watches
    has exited, so a crash at start fails at once rather than at the timeout."""

    async def up() -> bool:
        alive()
        try:
            async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(up, timeout=timeout)


def running(proc: asyncio.subprocess.Process, what: str = "the service") -> Callable[[], None]:
    def check() -> None:
        assert proc.returncode is None, f"{what} exited ({proc.returncode})"

    return check


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def stop(proc: asyncio.subprocess.Process | None, timeout: float = 60) -> None:
    """SIGTERM and wait; SIGKILL if it does not stop in time."""
    if proc is None or proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        await kill(proc)


async def api(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, base + path, json=body, headers=AUTH) as resp,
    ):
        return resp.status, await resp.json()
