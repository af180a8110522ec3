"""The README's shell examples, run as printed against a sandbox service this test starts: each ```sh (or
```bash) block is one bash script (its `# ...` lines are the output it shows, comments to bash), in a
directory whose `.venv` is this interpreter's and whose `data/` is the service's, as after `make run`.

What the test changes, and nothing else: the port (`localhost:8080` is the service's own free port, also
given to the commands as PORT), the speed of the sandbox's calls (ANNOUNCER_SANDBOX_SPEED), a `make run`
line (the service the test started, with the settings that line gives it), `curl` failing on an answer
other than 2xx (the examples use `curl -s`, which exits 0 on a 422), and in the PostgreSQL example a
database name of its own. Blocks that cannot run here are listed in NOT_RUN with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import free_port, run_process
from tests.pg_available import _check as pg_answers

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(?:sh|bash)\n(.*?)^```", re.MULTILINE | re.DOTALL)
MAKE_RUN = re.compile(r"^((?:[A-Z_]+=\S+ +)*)make run\b.*$", re.MULTILINE)

# A text each such block holds -> why it is not run.
NOT_RUN = {
    "make test    #": "installs the project and runs the whole suite: `make test` is what runs this test",
    "sudo cp deploy/nginx-tls.conf": "needs root, a domain and its certificate; tests/test_deploy.py runs "
    "nginx with deploy/nginx-tls.conf",
    "announcer serve --workers 4": "needs PostgreSQL, Twilio credentials and root for nginx; "
    "tests/test_scale_out.py runs this set-up",
    "benchmarks/ttfa.py": "benchmarks take minutes of CPU and print numbers; not part of the test run",
}

# Before each block: `curl` as printed, failing (with the body shown) on an answer other than 2xx.
PRELUDE = r"""set -eo pipefail
curl() {
  local out code
  out=$(command curl -sS -w '\n%{http_code}' "$@") || return 1
  code=${out##*$'\n'}
  printf '%s\n' "${out%$'\n'*}"
  case $code in 2??) ;; *) echo "curl: the service answered $code" >&2; return 1 ;; esac
}
"""


@dataclass(frozen=True)
class Example:
    heading: str
    text: str

    @property
    def id(self) -> str:
        first = next(line for line in self.text.splitlines() if line.strip() and not line.startswith("#"))
        return f"{self.heading}: {first[:40]}"


def examples() -> list[Example]:
    readme = README.read_text()
    found = []
    for match in FENCE.finditer(readme):
        headings = re.findall(r"^## (.+)$", readme[: match.start()], re.MULTILINE)
        found.append(Example(headings[-1] if headings else "", match.group(1)))
    return found


EXAMPLES = examples()


def test_every_example_is_run_or_says_why_not() -> None:
    assert len(EXAMPLES) >= 8
    for marker in NOT_RUN:
        assert sum(marker in e.text for e in EXAMPLES) == 1, f"NOT_RUN names no single block: {marker!r}"
    ran = [e for e in EXAMPLES if not any(marker in e.text for marker in NOT_RUN)]
    assert any("announcer send" in e.text for e in ran) and any("/v1/schedules" in e.text for e in ran)


def service_env(example: Example) -> dict[str, str]:
    """The settings of the service an example's `make run` line starts (none: the default one)."""
    env: dict[str, str] = {}
    for match in MAKE_RUN.finditer(example.text):
        env.update(item.split("=", 1) for item in match.group(1).split())  # type: ignore[misc]
    return env


def clean_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "ELEVENLABS_", "ANNOUNCER_"))}
    env.pop("DATABASE_URL", None)
    env.update(PORT=str(port), HOST="127.0.0.1", ANNOUNCER_SANDBOX_SPEED="20", ANNOUNCER_LOG_LEVEL="WARNING")
    return env


@contextlib.asynccontextmanager
async def sandbox_service(cwd: Path, env: dict[str, str]) -> AsyncIterator[None]:
    """`.venv/bin/announcer serve` in `cwd` (its data in `cwd/data`), once it answers."""
    server = await asyncio.create_subprocess_exec(
        str(cwd / ".venv" / "bin" / "announcer"), "serve", env=env, cwd=cwd, stderr=asyncio.subprocess.PIPE
    )
    assert server.stderr is not None
    stderr = server.stderr
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(60):
            seen = ""
            while "loopback Twilio" not in seen:
                line = await stderr.readline()
                assert line, f"the service exited early: {seen}"
                seen += line.decode()

        async def drain_stderr() -> None:  # a full pipe would block the service's logging
            while await stderr.readline():
                pass

        drain = asyncio.create_task(drain_stderr())
        yield
    finally:
        server.terminate()
        await server.wait()
        if drain is not None:
            await drain


async def run_block(script: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    return await run_process(["bash", "-c", PRELUDE + script], cwd=cwd, env=env, timeout=timeout)


def _own_database(script: str) -> tuple[str, str]:
    """The PostgreSQL example with a database of this run's own (the machine may have an `announcer`)."""
    name = f"announcer_readme_{os.getpid()}"
    script = re.sub(r"(-U postgres )announcer\b", rf"\g<1>{name}", script)
    script = re.sub(r"(127\.0\.0\.1/)announcer\b", rf"\g<1>{name}", script)
    assert script.count(name) == 2, script
    return script, name


async def _drop(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
async def test_the_example_works_as_printed(example: Example, tmp_path: Path) -> None:
    reasons = [why for marker, why in NOT_RUN.items() if marker in example.text]
    if reasons:
        pytest.skip(f"not run: {reasons[0]}")
    if "curl " in example.text and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (tmp_path / ".venv").symlink_to(sys.prefix)  # `.venv/bin/announcer` as after `make run`
    port = free_port()
    env = clean_env(port)
    script = MAKE_RUN.sub("", example.text).replace("localhost:8080", f"localhost:{port}")
    if "createdb " in script:
        if shutil.which("createdb") is None or not await pg_answers():
            pytest.skip("no PostgreSQL (and its createdb) at 127.0.0.1:5432")
        script, database = _own_database(script)
        try:
            code, out, err = await run_block(script, tmp_path, env, timeout=120)
        finally:
            await _drop(database)
        assert code == 0, f"{example.text}\n--- stdout:\n{out}\n--- stderr:\n{err}"
        assert "database is up to date" in out
        return
    async with sandbox_service(tmp_path, {**env, **service_env(example)}):
        code, out, err = await run_block(script, tmp_path, env, timeout=240)
    assert code == 0, f"{example.text}\n--- stdout:\n{out}\n--- stderr:\n{err}"
    assert_did_what_it_shows(script, out)


def assert_did_what_it_shows(script: str, out: str) -> None:
    """Exit 0 is not all: what the README shows each command printing is there."""
    commands = [line for line in script.splitlines() if line.startswith(".venv/bin/announcer")]
    tomorrow = (datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(days=1)).date().isoformat()
    if any("sandbox call-in" in c for c in commands):
        assert re.search(r"^calling \+15550100000 from \+1555\d+: call CA", out, re.M), out
        assert re.search(r"^recording: .*\.wav$", out, re.M), out
    if any("--agent" in c for c in commands):
        assert (
            "transcript:" in out and "  agent : " in out and "  caller: What are your opening hours?" in out
        )
    sends = sum(" send " in c for c in commands)
    assert out.count("completed after") == sends, out
    if "/v1/schedules" in script:
        assert re.search(rf'"status": ?"active".*"next_run_at": ?"{tomorrow}T09:00:00\+0[12]:00"', out), out
    if any("schedule add" in c for c in commands):
        assert re.search(rf"^schedule \S+: active, next run {tomorrow} 09:00\+0[12]:00$", out, re.M), out
        assert "Ada's appointment" in out  # `schedule list`
