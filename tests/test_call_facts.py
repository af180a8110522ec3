"""What a call came to, in facts (issue 14): who answered and how long machine detection took, how much of
the message played of how long, the keys pressed; the voicemail a delivery carries to its call; and
migration 0008 on a database the code before wrote (its rows load, the new columns null), on SQLite and
PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from announcer.deliveries.policy import DeliveryPolicy
from announcer.options import StoredOptions
from announcer.store.calls import CallStore, hash_token
from announcer.store.db import MIGRATIONS_DIR, Database
from announcer.store.deliveries import DeliveryStore, NewDelivery


@dataclass
class Stores:
    db: Database
    calls: CallStore
    deliveries: DeliveryStore


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[Stores]:
    db = Database(database_url)
    await db.upgrade()
    calls = CallStore(db.sessions)
    deliveries = DeliveryStore(
        db.sessions, postgres=not db.is_sqlite, rules=DeliveryPolicy(), journal=calls.journal
    )
    try:
        yield Stores(db, calls, deliveries)
    finally:
        await calls.aclose()
        await db.dispose()


def a_phone() -> str:
    return "+1415555" + f"{secrets.randbelow(10_000):04d}"


def a_sid() -> str:
    return "CA" + secrets.token_hex(16)


async def one_delivery(stores: Stores, voicemail_text: str | None) -> str:
    alert_id, created = await stores.deliveries.create_alert(
        idempotency_key=None,
        request_hash=secrets.token_hex(32),
        source="api",
        template=None,
        template_text="Hello.",
        variables={},
        options=StoredOptions(),
        deliveries=[
            NewDelivery(
                position=0,
                phone=a_phone(),
                name=None,
                timezone=None,
                variables={},
                text="Hello. The message.",
                voicemail_text=voicemail_text,
            )
        ],
    )
    assert created
    return alert_id


@pytest.mark.parametrize("voicemail", ["Please call the office back.", None])
async def test_the_voicemail_reaches_the_call_with_its_grant(stores: Stores, voicemail: str | None) -> None:
    alert_id = await one_delivery(stores, voicemail)
    (claim,) = [
        c
        for c in await stores.deliveries.claim(
            limit=50, lease=timedelta(minutes=5), from_number="+15550100000"
        )
        if c.alert_id == alert_id
    ]
    grant = await stores.calls.consume_token(claim.token, a_sid())
    assert grant is not None and grant.text == "Hello. The message."
    assert grant.voicemail_text == voicemail  # None: a machine is told the message itself
    (view,) = await stores.deliveries.deliveries(alert_id, after=-1, limit=1)
    assert view.text == "Hello. The message."


async def test_call_facts_are_recorded_without_waiting(stores: Stores) -> None:
    alert_id = await one_delivery(stores, None)
    (claim,) = [
        c
        for c in await stores.deliveries.claim(
            limit=50, lease=timedelta(minutes=5), from_number="+15550100000"
        )
        if c.alert_id == alert_id
    ]
    call = await stores.calls.get(claim.call_id)
    assert call is not None
    assert (call.answered_by, call.amd_ms, call.played_ms, call.message_ms, call.keys) == (None,) * 5
    stores.calls.record_amd(claim.call_id, "machine_end_beep", 4120)
    stores.calls.record_amd(claim.call_id, "human", 10)  # a repeat: noted, the first verdict stands
    stores.calls.record_facts(claim.call_id, played_ms=2000, message_ms=5300)
    stores.calls.record_facts(claim.call_id, played_ms=5300, keys="2" * 40)  # replaces played_ms
    with pytest.raises(TypeError):
        stores.calls.record_facts(claim.call_id, heard=True)
    await stores.calls.flush()
    call = await stores.calls.get(claim.call_id)
    assert call is not None
    assert (call.answered_by, call.amd_ms) == ("machine_end_beep", 4120)
    assert (call.played_ms, call.message_ms, call.keys) == (5300, 5300, "2" * 32)  # the column's width
    amd = [e.detail for e in await stores.calls.events(claim.call_id) if e.kind == "amd"]
    assert amd == [
        {"answered_by": "machine_end_beep", "amd_ms": 4120},
        {"answered_by": "human", "amd_ms": 10},
    ]


# --- migration 0008 on rows written by the code before it ------------------------------------------


def _alembic(conn: Connection, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def _table(name: str, columns: str) -> sa.TableClause:
    """`name` with only the (space separated) `columns`: as the table stood before."""
    return sa.table(name, *(sa.column(c) for c in columns.split()))


async def write_as_before(db: Database) -> dict[str, Any]:
    """An alert whose one delivery was heard, its call and an unused stream token, as revision 0007
    held them (only the columns it had)."""
    now = datetime.now(UTC)
    token = secrets.token_urlsafe(24)
    ids: dict[str, Any] = {"alert": "al_" + secrets.token_hex(12), "sid": a_sid(), "token": token}
    async with db.engine.begin() as conn:
        await conn.run_sync(_alembic, "0007")
        await conn.execute(
            _table(
                "alerts",
                "id request_hash source template_text variables options status recipients created_at",
            )
            .insert()
            .values(
                id=ids["alert"],
                request_hash="0" * 64,
                source="api",
                template_text="Hello.",
                variables=sa.bindparam("v", {}, type_=sa.JSON),
                options=sa.bindparam("o", {"max_attempts": 1, "retry_on": ["busy"]}, type_=sa.JSON),
            )
            .values(status="completed", recipients=1, created_at=now)
        )
        delivery = _table(
            "deliveries",
            "alert_id position phone variables text state attempt max_attempts next_attempt_at "
            "call_sid outcome created_at updated_at finished_at",
        )
        ids["delivery"] = (
            await conn.execute(
                delivery.insert()
                .values(
                    alert_id=ids["alert"],
                    position=0,
                    phone=a_phone(),
                    variables=sa.bindparam("dv", {}, type_=sa.JSON),
                    text="Hello.",
                    state="heard",
                    attempt=1,
                    max_attempts=1,
                    next_attempt_at=now,
                    call_sid=ids["sid"],
                    outcome="heard",
                    created_at=now,
                    updated_at=now,
                    finished_at=now,
                )
                .returning(sa.column("id"))
            )
        ).scalar_one()
        calls = _table(
            "calls",
            "call_sid direction kind from_number to_number status outcome text last_sequence "
            "created_at updated_at delivery_id attempt",
        )
        ids["call"] = (
            await conn.execute(
                calls.insert()
                .values(
                    call_sid=ids["sid"],
                    direction="outbound-api",
                    kind="announcement",
                    from_number="+15550100000",
                    to_number="+14155550100",
                    status="in-progress",
                    outcome="heard",
                    text="Hello.",
                    last_sequence=-1,
                    created_at=now,
                    updated_at=now,
                    delivery_id=ids["delivery"],
                    attempt=1,
                )
                .returning(sa.column("id"))
            )
        ).scalar_one()
        await conn.execute(
            _table("stream_tokens", "token_hash call_id issued_at expires_at")
            .insert()
            .values(
                token_hash=hash_token(token),
                call_id=ids["call"],
                issued_at=now,
                expires_at=now + timedelta(minutes=5),
            )
        )
    return ids


async def test_migration_0008_keeps_the_rows_written_before_it(own_database_url: str) -> None:
    db = Database(own_database_url)
    try:
        ids = await write_as_before(db)
        assert not await db.at_head()
        await db.upgrade()  # as the first start after the upgrade does
        assert await db.at_head()
        calls = CallStore(db.sessions)
        deliveries = DeliveryStore(
            db.sessions, postgres=not db.is_sqlite, rules=DeliveryPolicy(), journal=calls.journal
        )
        try:
            call = await calls.get(ids["call"])
            assert call is not None and call.outcome == "heard"  # its outcome, as it was
            assert (call.answered_by, call.amd_ms, call.played_ms, call.message_ms, call.keys) == (None,) * 5
            (view,) = await deliveries.deliveries(ids["alert"], after=-1, limit=1)
            assert (view.state, view.outcome, view.text) == ("heard", "heard", "Hello.")
            assert (view.voicemail_text, view.answered_by, view.amd_ms, view.played_ms) == (None,) * 4
            assert (view.message_ms, view.keys) == (None, None)
            alert = await deliveries.alert(ids["alert"])
            assert alert is not None and alert.counts == {"heard": 1}
            assert alert.options.retry_on == ["busy"] and alert.options.machine_detection
            grant = await calls.consume_token(ids["token"], ids["sid"])
            assert grant is not None and grant.text == "Hello." and grant.voicemail_text is None
            calls.record_amd(ids["call"], "human", 900)  # and the new columns take facts
            await calls.flush()
            call = await calls.get(ids["call"])
            assert call is not None and (call.answered_by, call.amd_ms) == ("human", 900)
        finally:
            await calls.aclose()
    finally:
        await db.dispose()
