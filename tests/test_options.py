"""Alert and schedule options as typed models (announcer/options.py): rows written before the models were
stored as models load as they behaved, every kind of alert keeps the JSON it always had, and a row the
rules of today would refuse still reads (as it was meant, or its default), on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from announcer.config import DEFAULT_TEMPLATES_DIR
from announcer.deliveries.policy import DeliveryPolicy, quiet_hours_of
from announcer.deliveries.quiet_hours import parse_quiet_hours
from announcer.deliveries.script import CallScripts
from announcer.messages.render import MessageRenderer
from announcer.options import AlertOptions, ScheduleOptions, StoredOptions, load
from announcer.store.calls import CallStore, StreamGrant
from announcer.store.db import Database
from announcer.store.deliveries import DeliveryStore, NewDelivery
from announcer.store.models import DeliveryState
from announcer.store.rules import FollowUp
from announcer.store.schedules import ScheduleStore, arm_time
from announcer.telephony.callflow import DECLINE_KEY, SNOOZE_KEY
from announcer.telephony.handoff import After, AgentOffer

# The `options` JSON the code before typed options wrote (main at 6b8832b), byte for byte: an alert
# through the API (`body.options.model_dump(mode="json")`), a schedule and its fire (`{**schedule.options,
# "schedule_id", "planned_at", "timezone"}`), and POST /outbound-call (an alert's defaults and the agent).
API_ALERT: dict[str, Any] = {
    "max_attempts": 3,
    "retry_on": ["busy"],
    "retry_backoff_s": 60.0,
    "confirm": True,
    "repeat_key": "4",
    "callback_url": None,
    "agent": {"after": "key", "key": "5", "prompt": None, "first_message": None},
}
SCHEDULE: dict[str, Any] = {
    "max_attempts": 2,
    "retry_on": ["no_answer"],
    "retry_backoff_s": 60.0,
    "confirm": True,
    "repeat_key": None,
    "callback_url": None,
    "agent": None,
    "quiet_hours": {"start": "21:00", "end": "08:00"},
    "misfire": "run",
    "misfire_grace_s": 300.0,
    "presynthesize_s": 600.0,
    "snooze_s": 120.0,
}
FIRE: dict[str, Any] = {
    **SCHEDULE,
    "schedule_id": "sc_0123456789abcdef01234567",
    "planned_at": "2027-06-10T08:00:00+02:00",
    "timezone": "Europe/Berlin",
}
OUTBOUND: dict[str, Any] = {
    "max_attempts": 1,
    "retry_on": ["busy", "no_answer"],
    "retry_backoff_s": 60.0,
    "confirm": False,
    "repeat_key": None,
    "callback_url": None,
    "agent": {
        "after": "start",
        "prompt": "You are the clinic's receptionist.",
        "first_message": "Hello from Acme.",
    },
}
# What a row from before machine detection (issue 14) reads as: the defaults of the options added then. An
# /outbound-call's agent greets, so its call started on answer, and does still.
AMD: dict[str, Any] = {
    "machine_detection": True,
    "start": "after_hello",
    "hello_timeout_ms": 1500,
    "on_machine": "leave_message",
}
OUTBOUND_AMD = {**AMD, "start": "on_answer"}
# The tables as the code before wrote them: options a plain JSON column.
_ALERTS = sa.table("alerts", sa.column("id", sa.String), sa.column("options", sa.JSON))
_SCHEDULES = sa.table("schedules", sa.column("id", sa.String), sa.column("options", sa.JSON))
NOW = datetime(2027, 6, 10, 5, 0, tzinfo=UTC)  # 07:00 in Berlin: inside the schedule's quiet hours


@dataclass
class Stores:
    db: Database
    calls: CallStore
    deliveries: DeliveryStore
    schedules: ScheduleStore


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[Stores]:
    db = Database(database_url)
    await db.upgrade()
    calls = CallStore(db.sessions)
    deliveries = DeliveryStore(
        db.sessions, postgres=not db.is_sqlite, rules=DeliveryPolicy(), journal=calls.journal
    )
    try:
        yield Stores(db, calls, deliveries, ScheduleStore(db.sessions))
    finally:
        await calls.aclose()
        await db.dispose()


async def old_alert(stores: Stores, options: dict[str, Any]) -> str:
    """An alert of one recipient whose row holds `options` as the code before wrote them."""
    phone = "+1415555" + f"{secrets.randbelow(10_000):04d}"
    alert_id, created = await stores.deliveries.create_alert(
        idempotency_key=None,
        request_hash=secrets.token_hex(32),
        source="api",
        template=None,
        template_text="Hello.",
        variables={},
        options=StoredOptions(),
        deliveries=[
            NewDelivery(position=0, phone=phone, name=None, timezone=None, variables={}, text="Hello.")
        ],
    )
    assert created
    async with stores.db.sessions() as s:
        await s.execute(sa.update(_ALERTS).where(_ALERTS.c.id == alert_id).values(options=options))
        await s.commit()
    return alert_id


async def options_of_its_call(stores: Stores, alert_id: str) -> StoredOptions:
    """The alert's options as its call reads them: claimed, then the stream token redeemed."""
    (claim,) = [
        c
        for c in await stores.deliveries.claim(
            limit=50, lease=timedelta(minutes=5), from_number="+15550100000"
        )
        if c.alert_id == alert_id
    ]
    grant = await stores.calls.consume_token(claim.token, "CA" + secrets.token_hex(16))
    assert grant is not None and grant.options is not None
    assert grant.options == claim.options == await stores.deliveries.call_options(claim.call_id)
    return grant.options


def scripts(stores: Stores) -> CallScripts:
    return CallScripts(stores.deliveries, MessageRenderer(DEFAULT_TEMPLATES_DIR))


def grant(options: StoredOptions) -> StreamGrant:
    return StreamGrant(call_id=1, call_sid=None, text="Hello.", kind="announcement", options=options)


async def test_an_api_alerts_old_row_loads_as_it_behaved(stores: Stores) -> None:
    alert_id = await old_alert(stores, API_ALERT)
    view = await stores.deliveries.alert(alert_id)
    # GET /v1/alerts/{id}
    assert view is not None and view.options.model_dump(mode="json") == {**API_ALERT, **AMD}
    options = await options_of_its_call(stores, alert_id)
    assert options == StoredOptions.accepted(AlertOptions.model_validate(API_ALERT))
    script = await scripts(stores).for_grant(grant(options))
    assert script is not None and script.prompt and script.repeat_keys == {"2", "4"}
    assert script.decline_key is None and script.agent == AgentOffer(After.KEY, key="5")
    policy = DeliveryPolicy()
    follow = policy.after_final(
        DeliveryState.BUSY, options, attempt=1, max_attempts=3, alert_active=True, now=NOW
    )
    assert follow.retry_at is not None  # retry_on: busy
    no_answer = policy.after_final(
        DeliveryState.NO_ANSWER, options, attempt=1, max_attempts=3, alert_active=True, now=NOW
    )
    assert no_answer == FollowUp()  # not in its retry_on
    assert policy.deferral(options, "Europe/Berlin", NOW) is None  # an alert has no quiet hours


async def test_a_schedule_fires_old_row_loads_as_it_behaved(stores: Stores) -> None:
    alert_id = await old_alert(stores, FIRE)
    view = await stores.deliveries.alert(alert_id)
    assert view is not None and view.options.model_dump(mode="json") == {**FIRE, **AMD}
    options = view.options
    assert options.schedule_id == FIRE["schedule_id"] and options.timezone == "Europe/Berlin"
    assert options.planned_at == datetime(2027, 6, 10, 8, 0, tzinfo=timezone(timedelta(hours=2)))
    # The reminder's keys: 2 cancels, 3 asks for a later call.
    script = await scripts(stores).for_grant(grant(options))
    assert script is not None and (script.decline_key, script.snooze_key) == (DECLINE_KEY, SNOOZE_KEY)
    assert script.agent is None
    policy = DeliveryPolicy()
    # Its quiet hours, read in the schedule's zone for a recipient without one: due at 08:00 Berlin.
    assert quiet_hours_of(options) == parse_quiet_hours({"start": "21:00", "end": "08:00"})
    assert policy.deferral(options, None, NOW) == datetime(2027, 6, 10, 6, 0, tzinfo=UTC)
    snoozed = policy.after_final(
        DeliveryState.SNOOZED, options, attempt=1, max_attempts=2, alert_active=True, now=NOW
    )
    assert snoozed == FollowUp(again_at=NOW + timedelta(seconds=120))


async def test_an_outbound_calls_old_row_loads_as_it_behaved(stores: Stores) -> None:
    alert_id = await old_alert(stores, OUTBOUND)
    view = await stores.deliveries.alert(alert_id)
    assert view is not None and view.options.model_dump(mode="json") == {**OUTBOUND, **OUTBOUND_AMD}
    options = await options_of_its_call(stores, alert_id)
    assert AgentOffer.from_options(options) == AgentOffer(
        After.START, prompt=OUTBOUND["agent"]["prompt"], first_message=OUTBOUND["agent"]["first_message"]
    )
    assert options == StoredOptions.outbound(
        prompt=OUTBOUND["agent"]["prompt"], first_message=OUTBOUND["agent"]["first_message"]
    )


async def test_a_schedules_old_row_loads_as_it_behaved(stores: Stores) -> None:
    row = await stores.schedules.create(
        name=None,
        template=None,
        template_text="Hello.",
        variables={},
        recipients=[{"phone": "+14155550100", "variables": {}, "name": None, "timezone": None}],
        when={"cron": "0 8 * * *", "timezone": "Europe/Berlin"},
        options=ScheduleOptions(),
        next_run_at=None,
    )
    async with stores.db.sessions() as s:
        await s.execute(sa.update(_SCHEDULES).where(_SCHEDULES.c.id == row.id).values(options=SCHEDULE))
        await s.commit()
    loaded = await stores.schedules.get(row.id)
    # GET /v1/schedules/{id}
    assert loaded is not None and loaded.options.model_dump(mode="json") == {**SCHEDULE, **AMD}
    assert loaded.options == ScheduleOptions.model_validate(SCHEDULE)
    assert arm_time(NOW, loaded.options) == NOW - timedelta(seconds=600)
    # A fire of it holds the same options and where it came from, as the code before wrote them.
    fired = StoredOptions.fired(
        loaded.options,
        schedule_id=FIRE["schedule_id"],
        planned_at=datetime.fromisoformat(FIRE["planned_at"]),
        timezone="Europe/Berlin",
    )
    assert fired.model_dump(mode="json") == {**FIRE, **AMD}


def test_each_kind_of_alert_writes_the_json_it_always_wrote() -> None:
    # ... and, since issue 14, the machine detection options, every default written out
    accepted = StoredOptions.accepted(AlertOptions.model_validate(API_ALERT))
    assert accepted.model_dump(mode="json") == {**API_ALERT, **AMD}
    outbound = StoredOptions.outbound(
        prompt=OUTBOUND["agent"]["prompt"], first_message=OUTBOUND["agent"]["first_message"]
    )
    assert outbound.model_dump(mode="json") == {**OUTBOUND, **OUTBOUND_AMD}
    assert ScheduleOptions.model_validate(SCHEDULE).model_dump(mode="json") == {**SCHEDULE, **AMD}


def test_machine_detection_options_and_their_limits() -> None:
    chosen = {"machine_detection": False, "start": "on_answer", "hello_timeout_ms": 300}
    chosen["on_machine"] = "hang_up"
    stored = StoredOptions.accepted(AlertOptions.model_validate(chosen))
    assert stored.model_dump(mode="json") == {**AlertOptions().model_dump(), **chosen}
    assert AlertOptions.model_validate({"retry_on": ["machine", "voicemail_left", "busy"]}).retry_on == [
        "machine",
        "voicemail_left",
        "busy",
    ]
    for bad in (
        {"hello_timeout_ms": 299},
        {"hello_timeout_ms": 10_001},
        {"start": "later"},
        {"on_machine": "leave"},
        {"machine_detection": "yes"},
        {"retry_on": ["fax"]},  # a fax line answers as a fax again: never retried
    ):
        with pytest.raises(ValueError):
            AlertOptions.model_validate(bad)
    # A row written with them reads them back; one whose value no longer reads gets its default.
    assert load(StoredOptions, {**API_ALERT, **chosen}) == StoredOptions.accepted(
        AlertOptions.model_validate({**API_ALERT, **chosen})
    )
    assert load(StoredOptions, {**API_ALERT, "hello_timeout_ms": 5}).hello_timeout_ms == 1500
    # An /outbound-call that said how to start is read as it said.
    assert load(StoredOptions, {**OUTBOUND, "start": "after_hello"}).start == "after_hello"


def test_the_documented_defaults_are_the_ones_read() -> None:
    # `retry_on` is what the API documents, also for a row that does not say (none was ever written so).
    assert AlertOptions().retry_on == ["busy", "no_answer"] == load(StoredOptions, {}).retry_on
    defaults = load(ScheduleOptions, {})
    assert (defaults.misfire_grace_s, defaults.presynthesize_s, defaults.snooze_s) == (300.0, 600.0, 900.0)
    assert (defaults.retry_backoff_s, defaults.max_attempts) == (60.0, 1)


def test_a_row_todays_rules_refuse_still_reads(caplog: pytest.LogCaptureFixture) -> None:
    # retry_on became a set after rows were written with repeats: read as the set they meant
    assert load(StoredOptions, {**API_ALERT, "retry_on": ["busy", "busy"]}).retry_on == ["busy"]
    with pytest.raises(ValueError):
        AlertOptions.model_validate({"retry_on": ["busy", "busy"]})  # a request is still refused
    # an unknown key (a newer version's) is ignored; a value that does not read is its default, logged
    # without the value
    odd = load(StoredOptions, {**API_ALERT, "from_the_future": 1, "snooze_s": "soon", "repeat_key": "+1555"})
    assert odd.snooze_s == 900.0 and odd.repeat_key is None and odd.retry_on == ["busy"]
    assert "repeat_key, snooze_s" in caplog.text and "+1555" not in caplog.text
