"""Exit 0 when the local PostgreSQL answers (used by `make test` to decide on the PostgreSQL run)."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

URL = os.environ.get("ANNOUNCER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


async def _check() -> bool:
    try:
        conn = await asyncpg.connect(URL, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


if __name__ == "__main__":
    sys.exit(0 if asyncio.run(_check()) else 1)
