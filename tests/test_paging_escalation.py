"""The escalator end to end through the sandbox: a key-1 acknowledgement stops the escalation and the other
page calls; no answer and a voicemail are not acknowledgements (the next step is paged after its delay);
the database is the truth across a restart (a second service on the same database pages the next step,
once). Every wait is on a condition with a timeout."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from announcer.app import DATABASE, ESCALATOR
from announcer.config import Settings
from announcer.paging.escalator import next_step
from announcer.sandbox.twilio_call import Callee, PhoneBehavior
from announcer.store.db import Database
from announcer.store.oncall import OncallStore
from tests.conftest import API_TOKEN, USE_PG, Service, eventually, free_port, make_settings, start_service
from tests.outside import kill, running, spawn, stop, wait_healthy
from tests.test_alerts import RECEIVER_ALLOWED
from tests.test_paging_ingest import ON_CALL, SECOND, am_payload, api, calls_to, incident, send, setup_paging

THIRD = "+15550170003"
DELAY_S = 2


async def rung(service: Service, phone: str, n: int = 1, timeout: float = 20) -> Any:
    async def there() -> bool:
        return len(calls_to(service, phone)) >= n

    await eventually(there, timeout=timeout)
    return calls_to(service, phone)[n - 1]


async def passes_after(service: Service, moment: float) -> None:
    """Wait until the escalator has run a whole pass that began after `moment` (time.time())."""
    escalator = service.app[ESCALATOR]
    start = escalator.passes

    async def later() -> bool:
        return time.time() > moment and escalator.passes >= start + 2

    await eventually(later, timeout=20)


def at(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def test_key_1_acknowledges_cancels_the_others_ringing_and_nobody_else_is_called(
    service: Service,
) -> None:
    # step 1 pages two people; one rings on and on, the other presses 1
    service.sandbox.set_behavior(THIRD, PhoneBehavior(answer="no-answer", ring_s=2000))
    integration, _ = await setup_paging(service, steps=[([ON_CALL, THIRD], DELAY_S), ([SECOND], DELAY_S)])
    status, answer = await send(service, integration, am_payload())
    assert status == 200, answer
    incident_id = answer["incident_id"]
    ringing = await rung(service, THIRD)
    await ringing.wait_for_status("ringing", 20)
    call = await rung(service, ON_CALL)
    await call.wait_for_mark("end:", 20)
    pressed = time.monotonic()
    await call.press("1")
    # the other ringing call is canceled promptly (the in-process wake-up, not the poll)
    await ringing.wait_for_status("canceled", 10)
    ack_to_cancel = time.monotonic() - pressed
    assert ack_to_cancel < 5, ack_to_cancel
    seen = await incident(service, incident_id)
    assert seen["state"] == "acknowledged" and seen["acknowledged_by"] == "Person 1"
    ack = [e for e in seen["events"] if e["kind"] == "acknowledged"]
    assert len(ack) == 1 and (ack[0]["who"], ack[0]["how"]) == ("Person 1", "key")
    # past the step's delay, nobody else is paged
    await passes_after(service, at(seen["acknowledged_at"]) + DELAY_S + 0.5)
    assert not calls_to(service, SECOND) and len(calls_to(service, ON_CALL)) == 1
    seen = await incident(service, incident_id)
    assert len(seen["pages"]) == 1
    outcomes = {p["phone"]: p["outcome"] for p in seen["pages"][0]["people"]}
    assert outcomes == {ON_CALL: "confirmed", THIRD: "canceled"}
    status, conflict = await api(service, "POST", f"/v1/incidents/{incident_id}/ack")
    assert status == 409 and conflict["state"] == "acknowledged"
    status, resolved = await api(service, "POST", f"/v1/incidents/{incident_id}/resolve")
    assert status == 200 and resolved["state"] == "resolved"
    assert (await incident(service, incident_id))["events"][-1]["how"] == "api"


async def test_no_answer_and_a_voicemail_escalate_to_the_next_step_after_its_delay(service: Service) -> None:
    service.sandbox.set_behavior(ON_CALL, PhoneBehavior(answer="no-answer"))
    service.sandbox.set_behavior(THIRD, PhoneBehavior(callee=Callee.MACHINE))
    integration, _ = await setup_paging(
        service, steps=[([ON_CALL], DELAY_S), ([THIRD], DELAY_S), ([SECOND], 60)]
    )
    status, answer = await send(service, integration, am_payload())
    assert status == 200, answer
    incident_id = answer["incident_id"]
    await rung(service, ON_CALL)
    await rung(service, THIRD, timeout=30)  # no answer: step 2 after the delay
    second = await rung(service, SECOND, timeout=40)  # a voicemail is no acknowledgement: step 3
    await second.wait_for_mark("end:", 20)
    await second.press("1")

    async def acknowledged() -> bool:
        return (await incident(service, incident_id))["state"] == "acknowledged"

    await eventually(acknowledged, timeout=20)
    seen = await incident(service, incident_id)
    pages = seen["pages"]
    assert [(p["round"], p["step"]) for p in pages] == [(0, 0), (0, 1), (0, 2)]
    for earlier, later in itertools.pairwise(pages):
        assert at(later["created_at"]) - at(earlier["created_at"]) >= DELAY_S - 0.05
    third_outcome = pages[1]["people"][0]["outcome"]
    assert third_outcome in ("voicemail_left", "machine", "heard"), third_outcome
    assert pages[0]["people"][0]["outcome"] == "no_answer"
    assert seen["acknowledged_by"] == "Person 2"
    assert [len(calls_to(service, p)) for p in (ON_CALL, THIRD, SECOND)] == [1, 1, 1]


async def test_the_policy_repeats_then_stops(service: Service) -> None:
    service.sandbox.set_behavior(ON_CALL, PhoneBehavior(answer="no-answer"))
    integration, _ = await setup_paging(service, steps=[([ON_CALL], 1)], repeat=1)
    status, answer = await send(service, integration, am_payload())
    assert status == 200, answer
    await rung(service, ON_CALL, 2, timeout=30)

    async def exhausted() -> bool:
        kinds = [e["kind"] for e in (await incident(service, answer["incident_id"]))["events"]]
        return "exhausted" in kinds

    await eventually(exhausted, timeout=20)
    seen = await incident(service, answer["incident_id"])
    assert [(p["round"], p["step"]) for p in seen["pages"]] == [(0, 0), (1, 0)]
    assert seen["state"] == "triggered" and seen["next_step_at"] is None
    assert len(calls_to(service, ON_CALL)) == 2


async def test_a_restart_between_steps_pages_the_next_step_once(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url)
    runner, first = await start_service(settings)
    try:
        first.sandbox.set_behavior(ON_CALL, PhoneBehavior(answer="no-answer"))
        integration, _ = await setup_paging(first, steps=[([ON_CALL], 3), ([SECOND], 60)])
        status, answer = await send(first, integration, am_payload())
        assert status == 200, answer
        incident_id = answer["incident_id"]
        await rung(first, ON_CALL)
        # Read before the stop: a restart slower than step 1's 3 s (a loaded machine) is not a second page
        seen_before = await incident(first, incident_id)
        assert [(p["round"], p["step"]) for p in seen_before["pages"]] == [(0, 0)]
    finally:
        await runner.cleanup()
    runner, second = await start_service(make_settings(tmp_path, database_url))
    try:
        call = await rung(second, SECOND, timeout=30)
        assert at(seen_before["next_step_at"]) <= time.time() + 0.05
        await call.wait_for_mark("end:", 20)
        await passes_after(second, time.time())
        seen = await incident(second, incident_id)
        assert [(p["round"], p["step"]) for p in seen["pages"]] == [(0, 0), (0, 1)]
        assert [e["kind"] for e in seen["events"]].count("paged") == 2
        assert len(calls_to(second, SECOND)) == 1 and not calls_to(second, ON_CALL)
    finally:
        await runner.cleanup()


async def test_key_3_escalates_now(service: Service) -> None:
    """Key 3 on a page ("escalate now": the call ends `declined`) makes the next step due at once, long
    before its delay."""
    integration, _ = await setup_paging(service, steps=[([ON_CALL], 600), ([SECOND], 600)])
    status, answer = await send(service, integration, am_payload())
    assert status == 200, answer
    call = await rung(service, ON_CALL)
    await call.wait_for_mark("end:", 20)
    pressed = time.monotonic()
    await call.press("3")
    await rung(service, SECOND, timeout=10)
    assert time.monotonic() - pressed < 10
    seen = await incident(service, answer["incident_id"])
    escalated = [e for e in seen["events"] if e["kind"] == "escalated"]
    assert len(escalated) == 1 and (escalated[0]["who"], escalated[0]["how"]) == ("Person 1", "key")
    assert seen["state"] == "triggered" and (seen["round"], seen["step"]) == (0, 1)
    assert seen["pages"][0]["people"][0]["outcome"] == "declined"


async def test_an_acknowledgement_ends_the_others_answered_page_calls(
    tmp_path: Path, database_url: str
) -> None:
    # At twice real time: an answered page plays for seconds, so the other is still on the line at the ack
    runner, service = await start_service(make_settings(tmp_path, database_url, announcer_sandbox_speed=2.0))
    try:
        integration, _ = await setup_paging(service, steps=[([ON_CALL, THIRD], 600)])
        status, answer = await send(service, integration, am_payload())
        assert status == 200, answer
        other = await rung(service, THIRD)
        await other.wait_for_media(20)
        call = await rung(service, ON_CALL)
        await call.wait_for_mark("end:", 30)
        await call.press("1")
        await other.wait_ended(20)
        assert other.status == "completed"

        async def settled() -> bool:
            pages = (await incident(service, answer["incident_id"]))["pages"]
            return all(p["outcome"] is not None for p in pages[0]["people"])

        await eventually(settled, timeout=20)
        seen = await incident(service, answer["incident_id"])
        outcomes = {p["phone"]: p["outcome"] for p in seen["pages"][0]["people"]}
        assert outcomes[ON_CALL] == "confirmed" and outcomes[THIRD] in ("hung_up_early", "canceled"), outcomes
        assert seen["state"] == "acknowledged" and seen["acknowledged_by"] == "Person 1"
    finally:
        await runner.cleanup()


async def test_two_services_on_one_database_page_each_step_once(
    service: Service, tmp_path: Path, database_url: str
) -> None:
    """Two escalators race for the same due incidents: each step is paged once, by one of them."""
    runner, other = await start_service(make_settings(tmp_path / "other", database_url))
    try:
        integration, _ = await setup_paging(service, steps=[([ON_CALL], 600)])
        incidents = []
        for i in range(8):
            target = service if i % 2 else other
            status, answer = await send(target, integration, am_payload(key=f"group-{i}"))
            assert status == 200 and answer["action"] == "opened", answer
            incidents.append(answer["incident_id"])

        def placed() -> int:
            return len(calls_to(service, ON_CALL)) + len(calls_to(other, ON_CALL))

        async def all_placed() -> bool:
            return placed() >= len(incidents)

        await eventually(all_placed, timeout=30)
        await passes_after(service, time.time())
        await passes_after(other, time.time())
        for incident_id in incidents:
            seen = await incident(service, incident_id)
            assert [(p["round"], p["step"]) for p in seen["pages"]] == [(0, 0)], seen["pages"]
            assert len(seen["pages"][0]["people"]) == 1
            assert [e["kind"] for e in seen["events"]].count("paged") == 1
        if USE_PG:  # SQLite is one process's database: two dispatchers on it may both dial a delivery
            assert placed() == len(incidents)
    finally:
        await runner.cleanup()


@dataclass
class FakeAlertmanager:
    """Alertmanager's silences API as the test sees it: what was posted, and what to answer."""

    url: str
    posted: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def fake_alertmanager() -> AsyncIterator[FakeAlertmanager]:
    fake = FakeAlertmanager(url="")

    async def silences(request: web.Request) -> web.Response:
        fake.posted.append(await request.json())
        fake.arrived.set()
        if fake.status != 200:
            return web.json_response({"error": "down"}, status=fake.status)
        return web.json_response({"silenceID": f"silence-{len(fake.posted)}"})

    app = web.Application()
    app.router.add_post("/api/v2/silences", silences)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def test_an_acknowledgement_silences_the_group_at_its_alertmanager(
    tmp_path: Path, database_url: str, fake_alertmanager: FakeAlertmanager
) -> None:
    # the outbound policy lets the service reach the fake Alertmanager on the loopback address
    runner, service = await start_service(make_settings(tmp_path, database_url, **RECEIVER_ALLOWED))
    try:
        integration, _ = await setup_paging(service, steps=[([ON_CALL], 600)])
        status, patched = await api(
            service, "PATCH", f"/v1/integrations/{integration['id']}", {"silence_s": 3600}
        )
        assert status == 200, patched
        body = {**am_payload(), "externalURL": fake_alertmanager.url + "/"}
        status, answer = await send(service, integration, body)
        assert status == 200, answer
        incident_id = answer["incident_id"]
        status, refused = await api(service, "POST", f"/v1/incidents/{incident_id}/ack", {"by": ""})
        assert status == 422 and refused["problems"][0]["field"] == "by", refused
        status, acked = await api(service, "POST", f"/v1/incidents/{incident_id}/ack", {"by": "Grace"})
        assert status == 200 and acked["state"] == "acknowledged"
        assert acked["acknowledged_by"] == "Grace"

        async def silenced() -> bool:
            return "silenced" in [e["kind"] for e in (await incident(service, incident_id))["events"]]

        await eventually(silenced, timeout=10)
        (posted,) = fake_alertmanager.posted
        assert posted["matchers"] == [
            {"name": "alertname", "value": "DiskFull", "isRegex": False, "isEqual": True}
        ]
        assert posted["createdBy"] == "announcer" and incident_id in posted["comment"]
        span = datetime.fromisoformat(posted["endsAt"]) - datetime.fromisoformat(posted["startsAt"])
        assert span.total_seconds() == 3600
        event = next(e for e in (await incident(service, incident_id))["events"] if e["kind"] == "silenced")
        assert event["detail"]["silence_id"] == "silence-1"
        # an Alertmanager that fails: recorded, and the acknowledgement stands all the same
        fake_alertmanager.status = 500
        status, answer = await send(service, integration, {**body, "groupKey": "other"})
        status, acked = await api(service, "POST", f"/v1/incidents/{answer['incident_id']}/ack")
        assert status == 200 and acked["state"] == "acknowledged"

        async def failed() -> bool:
            events = (await incident(service, answer["incident_id"]))["events"]
            return "silence_failed" in [e["kind"] for e in events]

        await eventually(failed, timeout=10)
    finally:
        await runner.cleanup()


# --- SIGKILL between two steps ------------------------------------------------------------------------------


async def _serve(tmp: Path, database_url: str, port: int) -> asyncio.subprocess.Process:
    """`announcer serve` (sandbox mode: no credentials) in its own process, once it answers /healthz."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in Settings.model_fields
        and not k.startswith(("TWILIO_", "ELEVENLABS_", "ANNOUNCER_"))
    }
    env.update(
        PORT=str(port),
        DATABASE_URL=database_url,
        ANNOUNCER_DATA_DIR=str(tmp / "data"),
        ANNOUNCER_API_TOKEN=API_TOKEN,
        ANNOUNCER_SANDBOX_SPEED="25",
        TWILIO_CPS="50",
    )
    proc = await spawn(env, cwd=tmp)
    await wait_healthy(f"http://127.0.0.1:{port}", running(proc, "announcer serve"))
    return proc


async def test_sigkill_between_two_steps_pages_the_next_step_once(
    tmp_path: Path, own_database_url: str
) -> None:
    port = free_port()
    here = Service(app=web.Application(), base_url=f"http://127.0.0.1:{port}", settings=None)  # type: ignore[arg-type]
    first = await _serve(tmp_path, own_database_url, port)
    try:
        db = Database(own_database_url)
        oncall = OncallStore(db.sessions)
        one = await oncall.create_person(name="Ada", phone=ON_CALL)
        two = await oncall.create_person(name="Bo", phone=SECOND)
        policy = await oncall.create_policy(
            name="ops",
            steps=[
                {"delay_s": 3, "targets": [{"type": "person", "id": one.id}]},
                {"delay_s": 600, "targets": [{"type": "person", "id": two.id}]},
            ],
        )
        await db.dispose()
        status, integration = await api(
            here, "POST", "/v1/integrations", {"name": "prod", "kind": "alertmanager", "policy_id": policy.id}
        )
        assert status == 201, integration
        status, answer = await send(here, integration, am_payload())
        assert status == 200, answer
        incident_id = answer["incident_id"]

        async def first_paged() -> bool:
            pages = (await incident(here, incident_id))["pages"]
            return bool(pages) and pages[0]["alert_id"] is not None

        await eventually(first_paged, timeout=20)
    finally:
        await kill(first)  # SIGKILL: no clean-up of any kind
    second = await _serve(tmp_path, own_database_url, port)
    try:

        async def second_heard() -> bool:
            pages = (await incident(here, incident_id))["pages"]
            return (
                len(pages) == 2 and pages[1]["people"] != [] and pages[1]["people"][0]["outcome"] is not None
            )

        await eventually(second_heard, timeout=60)
        seen = await incident(here, incident_id)
        assert [(p["round"], p["step"]) for p in seen["pages"]] == [(0, 0), (0, 1)]
        assert [e["kind"] for e in seen["events"]].count("paged") == 2
        assert [p["phone"] for p in seen["pages"][1]["people"]] == [SECOND]
        assert seen["pages"][1]["people"][0]["outcome"] == "heard"
        assert seen["state"] == "triggered" and (seen["round"], seen["step"]) == (0, 1)
    finally:
        await stop(second)


def test_next_step_walks_the_steps_then_the_rounds() -> None:
    assert next_step(0, -1, 2, 1) == (0, 0)  # none paged yet: the first step
    assert next_step(0, 0, 2, 1) == (0, 1)
    assert next_step(0, 1, 2, 1) == (1, 0)  # the last step: the policy again (repeat 1)
    assert next_step(1, 1, 2, 1) is None  # spent
    assert next_step(0, 0, 1, 0) is None
    assert next_step(0, -1, 0, 3) is None  # no steps at all


# The real Alertmanager in front: tests/test_paging_alertmanager.py.


async def test_a_rotation_target_pages_whoever_is_on_call_now(service: Service) -> None:
    """A step's rotation target is resolved when the step is paged: the person whose shift it is."""
    oncall = OncallStore(service.app[DATABASE].sessions)
    ada = await oncall.create_person(name="Ada", phone=ON_CALL)
    bo = await oncall.create_person(name="Bo", phone=SECOND)
    today = datetime.now(UTC).date()
    # weekly shifts from a week ago: Ada's shift is over, Bo's is now (hand-off at midnight UTC)
    rotation = await oncall.create_rotation(
        name="primary",
        timezone="UTC",
        shift_length=1,
        shift_unit="weeks",
        handoff_time="00:00",
        start_date=today - timedelta(days=7),
        members=[ada.id, bo.id],
    )
    policy = await oncall.create_policy(
        name="rotating", steps=[{"delay_s": 600, "targets": [{"type": "rotation", "id": rotation.id}]}]
    )
    status, integration = await api(
        service, "POST", "/v1/integrations", {"name": "p", "kind": "json", "policy_id": policy.id}
    )
    assert status == 201, integration
    status, answer = await send(service, integration, {"title": "Disk", "dedup_key": "disk"})
    assert status == 200, answer
    await rung(service, SECOND)
    seen = await incident(service, answer["incident_id"])
    assert [p["name"] for p in seen["pages"][0]["people"]] == ["Bo"]
    assert not calls_to(service, ON_CALL)
