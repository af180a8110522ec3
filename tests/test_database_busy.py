"""A database whose connections are all busy (the SQLite file has one) is overload, not a bug: a request
that waits past ANNOUNCER_DB_WAIT_S for one is answered 503 with Retry-After and a JSON error naming the
reason, never 500, and writes already accepted (the journal's) are written once a connection frees up."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from announcer.app import DATABASE
from announcer.store import journal as journal_module
from announcer.store.db import Database
from announcer.store.journal import Batch, Journal
from announcer.store.models import Alert
from tests.conftest import eventually, make_settings, start_service
from tests.test_alerts import AUTH, alert_body, get, post

WAIT_S = 0.5


@contextlib.asynccontextmanager
async def every_connection_held(db: Database) -> AsyncIterator[list[AsyncConnection]]:
    """Check out connections until the pool gives no more (one on SQLite, pool plus overflow on
    PostgreSQL); each is in use (a statement ran on it), so nobody else gets one until they are closed."""
    held: list[AsyncConnection] = []
    try:
        while True:
            conn = db.engine.connect()
            try:
                await conn.start()
            except PoolTimeout:
                break
            held.append(conn)
            await conn.execute(text("SELECT 1"))
        yield held
    finally:
        for conn in held:
            await conn.close()


async def test_a_request_finding_the_database_busy_is_answered_503_and_can_be_sent_again(
    tmp_path: Path, database_url: str
) -> None:
    runner, service = await start_service(make_settings(tmp_path, database_url, announcer_db_wait_s=WAIT_S))
    try:
        db = service.app[DATABASE]
        body = alert_body("+15550170001")
        key = {"Idempotency-Key": "busy-1"}
        async with every_connection_held(db) as held:
            assert held
            status, answer = await post(service, "/v1/alerts", body, key)
        assert status == 503, answer
        assert answer["error"] == "database_busy"
        assert "database" in answer["message"]

        # The same request, once a connection is free: accepted once, stored once.
        status, accepted = await post(service, "/v1/alerts", body, key)
        assert status == 202, accepted
        status, again = await post(service, "/v1/alerts", body, key)
        assert again["id"] == accepted["id"]
        assert (await get(service, f"/v1/alerts/{accepted['id']}"))[0] == 200
        async with db.sessions() as session:
            count = (await session.execute(select(func.count()).select_from(Alert))).scalar_one()
        assert count == 1
    finally:
        await runner.cleanup()


async def test_the_503_carries_retry_after(tmp_path: Path, database_url: str) -> None:
    runner, service = await start_service(make_settings(tmp_path, database_url, announcer_db_wait_s=WAIT_S))
    try:
        async with (
            every_connection_held(service.app[DATABASE]),
            aiohttp.ClientSession() as http,
            http.get(service.base_url + "/v1/alerts", headers=AUTH) as resp,
        ):
            assert resp.status == 503
            assert resp.content_type == "application/json"
            assert int(resp.headers["Retry-After"]) > 0
            assert (await resp.json())["error"] == "database_busy"
    finally:
        await runner.cleanup()


async def test_a_journaled_write_waits_out_a_busy_database_and_is_not_lost(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(database_url, pool_timeout=WAIT_S)
    await db.upgrade()
    journal = Journal(db.sessions)
    marker = "busy-journal-write"

    async def write(batch: Batch) -> str:
        await batch.session.execute(text("INSERT INTO busy_probe (v) VALUES (:v)"), {"v": marker})
        return marker

    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS busy_probe (v TEXT)"))
        caplog.set_level(logging.WARNING, logger="announcer.store.journal")
        async with every_connection_held(db):
            written = journal.submit(write)

            async def retried() -> bool:
                return any("stayed busy" in r.getMessage() for r in caplog.records)

            await eventually(retried, timeout=10)
            assert not written.done()
        assert await written == marker
        async with db.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT v FROM busy_probe"))).scalars().all()
        assert rows == [marker]
    finally:
        await journal.close()
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP TABLE IF EXISTS busy_probe"))
        await db.dispose()


async def test_a_batch_holds_the_connection_only_so_long_and_the_rest_follows_in_order(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No time at all: every batch stops after its second operation (the first takes the connection, the
    # clock starts after it), so six operations make three transactions, each call's in submitted order.
    monkeypatch.setattr(journal_module, "_MAX_HOLD_S", 0.0)
    db = Database(database_url)
    await db.upgrade()
    journal = Journal(db.sessions)
    ran: list[tuple[int, int]] = []

    def op(key: int, n: int) -> Any:
        async def run(batch: Batch) -> int:
            await batch.session.execute(text("SELECT 1"))
            ran.append((key, n))
            return n

        return run

    try:
        futures = [journal.submit(op(key, n), key) for n in range(3) for key in (2, 1)]
        assert [await f for f in futures] == [0, 0, 1, 1, 2, 2]
        assert journal.batches == 3
        assert journal.operations == 6
        assert ran == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    finally:
        await journal.close()
        await db.dispose()
