"""What the benchmarks share: free ports, valid phone numbers, a process's CPU time, verdicts,
percentiles, and a fresh PostgreSQL database per run (created and dropped as tests/conftest.py does)."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import phonenumbers

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
