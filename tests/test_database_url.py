"""A mistake in DATABASE_URL is one line naming the setting and what to do, at the start of `announcer
serve` and `announcer db upgrade`; the URLs hosting providers hand out are read as they mean."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from announcer.config import ConfigError, database_url, load_settings
from tests.conftest import free_port
from tests.pg_available import _check as pg_answers


def test_provider_urls_mean_asyncpg_and_libpq_sslmode_is_asyncpg_ssl() -> None:
    assert (
        database_url("postgres://u:p@db.example.com:5433/app")
        == "postgresql+asyncpg://u:p@db.example.com:5433/app"
    )
    assert database_url("postgresql://u@h/app?sslmode=require") == "postgresql+asyncpg://u@h/app?ssl=require"
    assert database_url("postgresql+asyncpg://u@h/app") == "postgresql+asyncpg://u@h/app"
    assert database_url("sqlite:////var/lib/announcer/a.db") == "sqlite+aiosqlite:////var/lib/announcer/a.db"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u:hunter2@h/app", "'mysql' databases are not supported"),
        ("postgresql+psycopg2://u:hunter2@h/app", "the driver 'psycopg2' is not one announcer installs"),
        ("hunter2", "expected a URL such as postgresql://"),
        ("postgres://u:hunter2@/app", "no host"),
    ],
)
def test_a_url_of_another_kind_is_one_line_without_its_password(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None, database_url=url)
    line = str(err.value)
    assert "DATABASE_URL: " in line and says in line and "\n" not in line
    assert "hunter2" not in line


async def run(tmp_path: Path, url: str, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "ELEVENLABS_", "ANNOUNCER_"))}
    env.update(
        DATABASE_URL=url,
        ANNOUNCER_DATA_DIR=str(tmp_path / "data"),
        PORT=str(free_port()),
        ANNOUNCER_LOG_LEVEL="WARNING",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "announcer.cli", *args, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def the_error(stderr: str) -> str:
    """The one error line (log lines of the start may come before it); no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize("command", [("serve",), ("db", "upgrade")])
async def test_a_refused_connection(tmp_path: Path, command: tuple[str, ...]) -> None:
    port = free_port()  # nothing listens there
    code, err = await run(tmp_path, f"postgres://postgres@127.0.0.1:{port}/announcer", *command)
    assert code == 2
    line = the_error(err)
    assert line.startswith("error: DATABASE_URL: ") and f"127.0.0.1:{port} (connection refused)" in line


@pytest.mark.parametrize("command", [("serve",), ("db", "upgrade")])
async def test_a_sqlite_file_whose_directory_is_a_file(tmp_path: Path, command: tuple[str, ...]) -> None:
    (tmp_path / "occupied").write_text("")
    code, err = await run(tmp_path, f"sqlite:///{tmp_path}/occupied/announcer.db", *command)
    assert code == 2
    line = the_error(err)
    assert line.startswith("error: DATABASE_URL: cannot open the SQLite database ")
    assert "a file stands where its directory should be" in line


async def test_a_database_that_does_not_exist_names_createdb(tmp_path: Path) -> None:
    if not await pg_answers():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    code, err = await run(tmp_path, "postgresql://postgres@127.0.0.1:5432/announcer_nowhere_16", "serve")
    assert code == 2
    line = the_error(err)
    assert "the database 'announcer_nowhere_16' does not exist" in line
    assert "`createdb -h 127.0.0.1 -p 5432 -U postgres announcer_nowhere_16`" in line


async def test_db_upgrade_through_a_provider_style_url(tmp_path: Path) -> None:
    if not await pg_answers():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    import asyncpg

    name = f"announcer_fr_{os.getpid()}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        code, err = await run(tmp_path, f"postgres://postgres@127.0.0.1:5432/{name}", "db", "upgrade")
        assert code == 0, err
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
