"""Call records on SQLite and PostgreSQL: single-use tokens and monotonic status transitions."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from announcer.store.calls import CallStore
from announcer.store.db import Database
from announcer.store.journal import Batch
from announcer.store.models import CallEvent, CallStatus


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[CallStore]:
    db = Database(database_url)
    await db.upgrade()
    await db.upgrade()  # idempotent: a second start migrates nothing
    store = CallStore(db.sessions)
    try:
        yield store
    finally:
        await store.aclose()
        await db.dispose()


def new_sid() -> str:
    return "CA" + secrets.token_hex(16)


async def open_call(store: CallStore, sid: str) -> tuple[int, str]:
    grant, token = await store.open_inbound(
        call_sid=sid,
        from_number="+15550001111",
        to_number="+15550100000",
        kind="greeting",
        text="Hi",
        status="ringing",
    )
    return grant.call_id, token


async def test_token_is_single_use_and_bound_to_its_call(store: CallStore) -> None:
    sid = new_sid()
    call_id, token = await open_call(store, sid)
    assert await store.consume_token(token, new_sid()) is None  # another call cannot use it...
    grant = await store.consume_token(token, sid)
    # ...and a wrong call burnt it: a token is tried once, whoever presents it
    assert grant is None
    _, token2 = await open_call(store, sid)  # Twilio retried the webhook: same call, new token
    grant = await store.consume_token(token2, sid)
    assert grant is not None and grant.call_id == call_id and grant.text == "Hi"
    assert await store.consume_token(token2, sid) is None
    assert await store.consume_token("made-up", sid) is None


async def test_status_never_moves_backwards(store: CallStore) -> None:
    call_id, _ = await open_call(store, new_sid())
    assert await store.apply_status(call_id, CallStatus.IN_PROGRESS, sequence=None, source="stream")
    assert await store.apply_status(
        call_id, CallStatus.COMPLETED, sequence=3, source="callback", duration_s=4
    )
    # late, duplicated, out of order: all ignored, all noted
    assert not await store.apply_status(call_id, CallStatus.RINGING, sequence=1, source="callback")
    assert not await store.apply_status(call_id, CallStatus.COMPLETED, sequence=3, source="callback")
    assert not await store.apply_status(call_id, CallStatus.FAILED, sequence=4, source="callback")
    call = await store.get(call_id)
    assert (
        call is not None and call.status == "completed" and call.duration_s == 4 and call.ended_at is not None
    )
    kinds = [(e.kind, e.detail.get("status")) for e in await store.events(call_id)]
    assert [s for k, s in kinds if k == "status"] == ["ringing", "in-progress", "completed"]
    assert len([k for k, _ in kinds if k == "status_ignored"]) == 3


async def test_outcome_is_recorded_once(store: CallStore) -> None:
    call_id, _ = await open_call(store, new_sid())
    await store.set_outcome(call_id, "heard")
    await store.set_outcome(call_id, "hung_up_early")
    call = await store.get(call_id)
    assert call is not None and call.outcome == "heard"


async def test_writes_share_transactions_and_keep_their_order(store: CallStore) -> None:
    call_id, _ = await open_call(store, new_sid())
    batches = store.journal.batches
    for i in range(200):
        store.record(call_id, "tick", i=i)  # a live call's bookkeeping: nobody waits for each one
    await store.set_outcome(call_id, "heard")  # queued behind the 200: done means they are too
    ticks = [e.detail["i"] for e in await store.events(call_id) if e.kind == "tick"]
    assert ticks == list(range(200))
    # group commit: 201 writes in far fewer transactions than one each
    assert store.journal.batches - batches < 20


async def test_a_failing_write_costs_only_itself(store: CallStore) -> None:
    call_id, _ = await open_call(store, new_sid())

    async def orphan(batch: Batch) -> None:
        batch.session.add(CallEvent(call_id=call_id + 10_000, kind="orphan", detail={}))  # no such call

    store.record(call_id, "before")
    bad = store.journal.submit(orphan)  # queued between the two: all three go into one batch first
    store.record(call_id, "after")
    with pytest.raises(IntegrityError):  # the foreign key refuses it...
        await bad
    await store.flush()
    kinds = [e.kind for e in await store.events(call_id)]
    assert kinds[-2:] == ["before", "after"]  # ...and the batch's other writes are retried alone
    assert await store.apply_status(call_id, CallStatus.IN_PROGRESS, sequence=None, source="stream")


async def test_a_database_at_head_is_told_without_alembic_and_one_behind_is_not(
    database_url: str, tmp_path: Path
) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from announcer.store.db import MIGRATIONS_DIR, head_revision

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert head_revision() == ScriptDirectory.from_config(cfg).get_current_head()
    new = Database(f"sqlite+aiosqlite:///{tmp_path / 'new.db'}")
    try:
        assert not await new.at_head()  # no alembic_version table yet
    finally:
        await new.dispose()
    db = Database(database_url)  # on PostgreSQL the run's database, shared: put back as found
    try:
        await db.upgrade()
        assert await db.at_head()
        async with db.engine.begin() as conn:  # as a database from before the newest migration stands
            await conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        try:
            assert not await db.at_head()
        finally:
            async with db.engine.begin() as conn:
                back = text("UPDATE alembic_version SET version_num = :v")
                await conn.execute(back, {"v": head_revision()})
    finally:
        await db.dispose()
