"""The async engine and session factory, and migrations applied at start.

SQLite (aiosqlite) is the embedded default: WAL, and ONE connection per process. SQLite takes one writer
at a time anyway; with several connections the others wait inside SQLite's busy handler, which sleeps in
steps of up to 100 ms, so under load a webhook took hundreds of milliseconds. With one connection the
writers queue in the pool (asyncio, first come first served) and each waits only for the transactions
ahead of it. The busy timeout stays for other processes on the same file. The same code runs on
PostgreSQL through asyncpg, with a normal pool.

A request that waits longer than `pool_timeout` for a connection gets SQLAlchemy's pool TimeoutError,
which the API answers 503 with Retry-After (api/http.py): the default 30 s was longer than Twilio waits
for a webhook (15 s) and than a media stream waits for its start, so the caller had long given up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from announcer.files import create_private, make_private, private_dir
from announcer.store.reachable import (
    CONNECT_TIMEOUT_S,
    DatabaseUnavailable,
    sqlite_file_problem,
    why_unreachable,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# An arbitrary constant: every process of one deployment takes the same lock to migrate one at a time.
_MIGRATION_LOCK_ID = 0x616E6E6F
DEFAULT_POOL_TIMEOUT_S = 10.0


def head_revision() -> str:
    """The newest migration's revision id, read from the file names (each `versions/NNNN_name.py` is
    revision "NNNN"; a test holds them to what Alembic reads) rather than by loading Alembic."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Database:
    """Owns the engine; opened and closed by the app's lifecycle. `setting` names where the URL came from
    (DATABASE_URL, or ANNOUNCER_DATA_DIR for the default SQLite file) in DatabaseUnavailable's line."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        setting: str = "DATABASE_URL",
        pool_timeout: float = DEFAULT_POOL_TIMEOUT_S,
    ) -> None:
        self.url = make_url(url)
        self.setting = setting
        if self._sqlite_file and self.url.database:
            path = Path(self.url.database)
            try:
                private_dir(path.parent)
                # Made 0600 before SQLite opens it: SQLite gives its -wal and -shm files the database file's
                # mode, so the three stay private whatever the umask. Older ones are tightened.
                create_private(path)
                for companion in ("-wal", "-shm", "-journal"):
                    make_private(path.with_name(path.name + companion))
            except OSError as err:
                raise DatabaseUnavailable(setting, sqlite_file_problem(path, err)) from None
        options: dict[str, Any] = {"pool_size": 1, "max_overflow": 0} if self._sqlite_file else {}
        if self._sqlite_file or not self.is_sqlite:  # an in-memory SQLite has a static pool: no wait
            options["pool_timeout"] = pool_timeout
        self.engine: AsyncEngine = create_async_engine(
            self.url,
            echo=echo,
            pool_pre_ping=not self.is_sqlite,
            # Parameters are phone numbers and message texts: never in a log line or an error's text.
            hide_parameters=True,
            **options,
        )
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def _sqlite_file(self) -> bool:
        return self.is_sqlite and self.url.database not in (None, "", ":memory:")

    async def upgrade(self) -> None:
        """Apply the Alembic migrations up to head (serialised across processes on PostgreSQL). A database
        at head already (every start but the first after an upgrade) is told by one query, without
        loading Alembic: its imports cost a tenth of a second of every start. DatabaseUnavailable when the
        database cannot be reached at all."""
        await self.reachable()
        if await self.at_head():
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))

        def run(conn: Connection) -> None:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
            await conn.run_sync(run)

    async def reachable(self) -> None:
        """Connect once; DatabaseUnavailable saying why not (no such database, refused, unknown host...)."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S), self.engine.connect():
                pass
        except (DBAPIError, OSError, TimeoutError) as err:
            raise DatabaseUnavailable(self.setting, why_unreachable(self.url, err)) from None

    async def at_head(self) -> bool:
        """Whether the database's Alembic revision is the newest migration's."""
        try:
            async with self.engine.connect() as conn:
                found = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
        except DBAPIError:  # no such table: a new database
            return False
        return found == [head_revision()]

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            async with asyncio.timeout(timeout), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (OSError, TimeoutError, Exception):
            return False
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()
