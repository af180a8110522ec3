"""One scheduler per database: on PostgreSQL the processes sharing it elect one through a session-level
advisory lock, held on a connection of its own for as long as the process leads. When the leader dies its
connection goes and the lock with it; another process takes over at its next try. SQLite is one
process's file: that process leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

# An arbitrary constant shared by every process of a deployment ("sche" in ASCII).
SCHEDULER_LOCK_ID = 0x73636865
RETRY_S = 2.0  # how often a follower tries to take over, and a leader checks it still holds the lock


class Leadership:
    def __init__(self, engine: AsyncEngine, *, postgres: bool, retry_s: float = RETRY_S) -> None:
        self._engine = engine
        self._postgres = postgres
        self._retry_s = retry_s
        self._conn: AsyncConnection | None = None

    async def acquire(self) -> None:
        """Return once this process leads (at once on SQLite)."""
        if not self._postgres:
            return
        while True:
            with contextlib.suppress(Exception):
                if await self._try():
                    log.info("this process now runs the scheduler (advisory lock %#x)", SCHEDULER_LOCK_ID)
                    return
            await asyncio.sleep(self._retry_s)  # another process leads: try again later

    async def _try(self) -> bool:
        conn = await self._engine.connect()
        try:
            got = (
                await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": SCHEDULER_LOCK_ID})
            ).scalar()
            await conn.commit()
        except Exception:
            await conn.close()
            raise
        if got:
            self._conn = conn
            return True
        await conn.close()
        return False

    async def lost(self) -> None:
        """Return when this process no longer leads (its lock connection failed); never on SQLite."""
        if not self._postgres:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self._retry_s)
            try:
                assert self._conn is not None
                await self._conn.execute(text("SELECT 1"))
                await self._conn.commit()
            except Exception as err:
                log.error("lost the scheduler lock's connection (%r): no longer running the scheduler", err)
                await self._drop()
                return

    async def release(self) -> None:
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()  # ends the session, and with it the advisory lock
