"""Paging with the real Alertmanager in front (tests/alertmanager.py: Debian's prometheus-alertmanager,
started by each test; skipped, saying why, where the binary is missing). Alerts are posted to
Alertmanager's own API; its one receiver is the sandbox service's webhook for an integration made through
our API, with that integration's secret as its Bearer credentials. The on-call person is a rotation's
(the rotation is resolved at each page), the phones are the sandbox's. Every wait is on a condition with a
timeout; delays are a few seconds."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from announcer.sandbox.twilio_call import Callee, PhoneBehavior, SandboxCall
from tests.alertmanager import Alertmanager, AlertmanagerFactory, alert
from tests.conftest import Service, eventually, make_settings, start_service
from tests.test_alerts import RECEIVER_ALLOWED
from tests.test_paging_escalation import at, passes_after, rung
from tests.test_paging_ingest import api, calls_to, incident

OFF_DUTY = "+15550180001"  # the rotation's member whose shift was last week
ON_CALL = "+15550180002"  # the rotation's member on call this week
SECOND = "+15550180003"  # step 2
THIRD = "+15550180004"  # step 3
LABELS = {"alertname": "DiskFull", "instance": "db1", "severity": "critical", "team": "storage"}
GROUP_BY = ("alertname", "team")
SLACK_S = 0.05  # a page's created_at is stamped just after the instant its step's delay counts from


@pytest.fixture
async def service(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """The sandbox service, allowed to reach Alertmanager on the loopback address (the silences)."""
    runner, svc = await start_service(make_settings(tmp_path, database_url, **RECEIVER_ALLOWED))
    try:
        yield svc
    finally:
        await runner.cleanup()


@dataclass
class Paging:
    integration: dict[str, Any]
    webhook_url: str
    people: dict[str, str]  # phone -> the person's name


async def created(service: Service, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await api(service, "POST", path, body)
    assert status == 201, (path, answer)
    made: dict[str, Any] = answer
    return made


async def setup_paging(service: Service, delays: list[int], *, silence_s: int | None = None) -> Paging:
    """Through the API: four people; a weekly rotation [OFF_DUTY, ON_CALL] that started a week ago, so
    ON_CALL has this week's shift; a policy whose step 1 pages the rotation and steps 2 and 3 SECOND and
    THIRD (as many steps as `delays`); an Alertmanager integration with it."""
    names = {OFF_DUTY: "Off Duty", ON_CALL: "Ona Call", SECOND: "Sec Ond", THIRD: "Thi Rd"}
    ids = {
        phone: (await created(service, "/v1/people", {"name": name, "phone": phone}))["id"]
        for phone, name in names.items()
    }
    week_ago = datetime.now(UTC).date() - timedelta(days=7)
    rotation = await created(
        service,
        "/v1/rotations",
        {
            "name": "storage",
            "timezone": "UTC",
            "shift_length": 1,
            "shift_unit": "weeks",
            "handoff_time": "00:00",
            "start_date": week_ago.isoformat(),
            "members": [ids[OFF_DUTY], ids[ON_CALL]],
        },
    )
    targets = [
        {"type": "rotation", "id": rotation["id"]},
        {"type": "person", "id": ids[SECOND]},
        {"type": "person", "id": ids[THIRD]},
    ]
    policy = await created(
        service,
        "/v1/escalation-policies",
        {
            "name": "storage",
            "steps": [{"delay_s": d, "targets": [t]} for d, t in zip(delays, targets, strict=False)],
        },
    )
    body: dict[str, Any] = {"name": "prod", "kind": "alertmanager", "policy_id": policy["id"]}
    if silence_s is not None:
        body["silence_s"] = silence_s
    integration = await created(service, "/v1/integrations", body)
    status, oncall = await api(service, "GET", "/v1/oncall")
    assert status == 200, oncall
    (now,) = [r["now"] for r in oncall["rotations"] if r["id"] == rotation["id"]]
    assert now["person"]["id"] == ids[ON_CALL], oncall
    url = f"{service.base_url}/v1/integrations/alertmanager/{integration['id']}"
    return Paging(integration, url, names)


def start(
    alertmanager: AlertmanagerFactory, paging: Paging, **options: Any
) -> AbstractAsyncContextManager[Alertmanager]:
    """Alertmanager posting to the integration's webhook with its secret; a group flushes fast."""
    options = {
        "group_by": GROUP_BY,
        "group_wait": 0.2,
        "group_interval": 1.0,
        "repeat_interval": 3600.0,
    } | options
    return alertmanager(paging.webhook_url, paging.integration["secret"], **options)


async def opened(service: Service, timeout: float = 20) -> dict[str, Any]:
    """The one incident Alertmanager's first notification opened."""

    async def there() -> bool:
        status, listed = await api(service, "GET", "/v1/incidents")
        return status == 200 and len(listed["incidents"]) >= 1

    await eventually(there, timeout=timeout)
    _, listed = await api(service, "GET", "/v1/incidents")
    (one,) = listed["incidents"]
    return await incident(service, one["id"])


async def fire(am: Alertmanager) -> list[dict[str, Any]]:
    alerts = [alert(LABELS, {"summary": "The disk is nearly full"})]
    await am.post_alerts(alerts)
    return alerts


async def in_state(service: Service, incident_id: str, state: str, timeout: float = 20) -> dict[str, Any]:
    async def reached() -> bool:
        return bool((await incident(service, incident_id))["state"] == state)

    await eventually(reached, timeout=timeout)
    return await incident(service, incident_id)


def created_at(call: SandboxCall) -> float:
    return call.date_created.timestamp()


def pages_of(seen: dict[str, Any]) -> list[tuple[int, int]]:
    return [(p["round"], p["step"]) for p in seen["pages"]]


async def test_the_on_call_person_presses_1_and_nobody_else_is_called(
    alertmanager: AlertmanagerFactory, service: Service
) -> None:
    paging = await setup_paging(service, [3, 3])
    async with start(alertmanager, paging) as am:
        await fire(am)
        call = await rung(service, ON_CALL)
        seen = await opened(service)
        assert seen["title"] and seen["dedup_key"]
        await call.wait_for_mark("end:", 20)
        await call.press("1")
        seen = await in_state(service, seen["id"], "acknowledged")
        (ack,) = [e for e in seen["events"] if e["kind"] == "acknowledged"]
        assert (ack["who"], ack["how"]) == (paging.people[ON_CALL], "key")
        assert seen["acknowledged_by"] == paging.people[ON_CALL]
        # past step 1's delay, nobody else is paged
        await passes_after(service, at(seen["acknowledged_at"]) + 3 + 0.5)
        seen = await incident(service, seen["id"])
        assert pages_of(seen) == [(0, 0)]
        assert [p["phone"] for p in seen["pages"][0]["people"]] == [ON_CALL]
        assert seen["pages"][0]["people"][0]["outcome"] == "confirmed"
        assert len(calls_to(service, ON_CALL)) == 1
        assert not calls_to(service, OFF_DUTY) and not calls_to(service, SECOND)


async def test_no_answer_pages_the_next_step_after_its_delay(
    alertmanager: AlertmanagerFactory, service: Service
) -> None:
    delay_s = 3
    service.sandbox.set_behavior(ON_CALL, PhoneBehavior(answer="no-answer"))
    paging = await setup_paging(service, [delay_s, 600])
    async with start(alertmanager, paging) as am:
        await fire(am)
        first = await rung(service, ON_CALL)
        second = await rung(service, SECOND, timeout=30)
        seen = await opened(service)
        assert pages_of(seen) == [(0, 0), (0, 1)]
        first_page = at(seen["pages"][0]["created_at"])
        # due at the first page + delay_s (the page row is stamped a few ms after the moment the delay
        # counts from: SLACK_S)
        assert created_at(second) >= first_page + delay_s - SLACK_S, (created_at(second), first_page)
        assert created_at(second) >= created_at(first)
        await second.wait_for_mark("end:", 20)
        await second.press("1")
        seen = await in_state(service, seen["id"], "acknowledged")
        assert seen["acknowledged_by"] == paging.people[SECOND]
        assert seen["pages"][0]["people"][0]["outcome"] == "no_answer"
        assert [len(calls_to(service, p)) for p in (ON_CALL, SECOND, OFF_DUTY)] == [1, 1, 0]


async def test_a_voicemail_is_no_acknowledgement(alertmanager: AlertmanagerFactory, service: Service) -> None:
    delay_s = 2
    service.sandbox.set_behavior(ON_CALL, PhoneBehavior(callee=Callee.MACHINE))
    paging = await setup_paging(service, [delay_s, 600])
    async with start(alertmanager, paging) as am:
        await fire(am)
        await rung(service, ON_CALL)
        second = await rung(service, SECOND, timeout=30)
        seen = await opened(service)
        assert created_at(second) >= at(seen["pages"][0]["created_at"]) + delay_s - SLACK_S
        await second.wait_for_mark("end:", 20)
        await second.press("1")
        seen = await in_state(service, seen["id"], "acknowledged")
        assert pages_of(seen) == [(0, 0), (0, 1)]
        outcome = seen["pages"][0]["people"][0]["outcome"]
        assert outcome in ("voicemail_left", "machine", "heard"), outcome
        assert [e["kind"] for e in seen["events"]].count("acknowledged") == 1
        assert seen["acknowledged_by"] == paging.people[SECOND]


async def test_a_resolve_from_alertmanager_resolves_and_stops_the_escalation(
    alertmanager: AlertmanagerFactory, service: Service
) -> None:
    # step 2 is due long enough after step 1 that Alertmanager's resolve (its next group flush) comes first
    delay_s = 8
    service.sandbox.set_behavior(ON_CALL, PhoneBehavior(answer="no-answer", ring_s=2000))
    paging = await setup_paging(service, [delay_s, 600])
    async with start(alertmanager, paging) as am:
        alerts = await fire(am)
        ringing = await rung(service, ON_CALL)
        await ringing.wait_for_status("ringing", 20)
        seen = await opened(service)
        due = at(seen["next_step_at"])
        await am.resolve(alerts)
        seen = await in_state(service, seen["id"], "resolved")
        (resolved,) = [e for e in seen["events"] if e["kind"] == "resolved"]
        assert resolved["how"] == "alertmanager" and resolved["who"] is None
        assert at(seen["resolved_at"]) < due, "the resolve came after step 2 was due: the test is too slow"
        await ringing.wait_for_status("canceled", 10)  # the page call stops ringing
        # past the moment step 2 was due, nobody else has been paged
        await passes_after(service, due + 0.5)
        seen = await incident(service, seen["id"])
        assert pages_of(seen) == [(0, 0)] and seen["next_step_at"] is None
        assert not calls_to(service, SECOND) and len(calls_to(service, ON_CALL)) == 1


async def test_alertmanagers_repeat_notifications_page_nobody_twice(
    alertmanager: AlertmanagerFactory, service: Service
) -> None:
    delay_s = 2
    service.sandbox.set_behavior(ON_CALL, PhoneBehavior(answer="no-answer"))
    service.sandbox.set_behavior(SECOND, PhoneBehavior(answer="no-answer"))
    paging = await setup_paging(service, [delay_s, delay_s, 600])
    # an unchanged group is sent again every 1-2 s: several repeats while the escalation runs
    async with start(alertmanager, paging, group_interval=1.0, repeat_interval=1.0) as am:
        await fire(am)
        seen = await opened(service)
        third = await rung(service, THIRD, timeout=30)

        async def repeated_twice() -> bool:
            events = (await incident(service, seen["id"]))["events"]
            return [e["kind"] for e in events].count("repeated") >= 2

        await eventually(repeated_twice, timeout=20)
        await third.wait_for_mark("end:", 20)
        await third.press("1")
        seen = await in_state(service, seen["id"], "acknowledged")
        kinds = [e["kind"] for e in seen["events"]]
        assert kinds.count("triggered") == 1 and kinds.count("paged") == 3, kinds
        assert pages_of(seen) == [(0, 0), (0, 1), (0, 2)]
        assert [len(calls_to(service, p)) for p in (ON_CALL, SECOND, THIRD, OFF_DUTY)] == [1, 1, 1, 0]
        status, listed = await api(service, "GET", "/v1/incidents")
        assert status == 200 and len(listed["incidents"]) == 1


async def test_an_acknowledgement_silences_the_group_at_alertmanager(
    alertmanager: AlertmanagerFactory, service: Service
) -> None:
    paging = await setup_paging(service, [600], silence_s=3600)
    async with start(alertmanager, paging) as am:
        await fire(am)
        call = await rung(service, ON_CALL)
        seen = await opened(service)
        assert seen["source_url"].rstrip("/") == am.base_url
        await call.wait_for_mark("end:", 20)
        acked_before = time.time()
        await call.press("1")
        await in_state(service, seen["id"], "acknowledged")

        async def silenced() -> bool:
            return any(e["kind"] == "silenced" for e in (await incident(service, seen["id"]))["events"])

        await eventually(silenced, timeout=20)
        event = next(e for e in (await incident(service, seen["id"]))["events"] if e["kind"] == "silenced")
        (silence,) = [s for s in await am.silences() if s["id"] == event["detail"]["silence_id"]]
        assert silence["status"]["state"] == "active"
        matchers = {
            (m["name"], m["value"], m["isRegex"], m.get("isEqual", True)) for m in silence["matchers"]
        }
        assert matchers == {(k, LABELS[k], False, True) for k in GROUP_BY}
        assert silence["createdBy"] == "announcer" and seen["id"] in silence["comment"]
        span = datetime.fromisoformat(silence["endsAt"]) - datetime.fromisoformat(silence["startsAt"])
        assert abs(span.total_seconds() - 3600) < 5
        assert datetime.fromisoformat(silence["startsAt"]).timestamp() >= acked_before - 5

        # Alertmanager applies it: the firing alert is now silenced
        async def muted() -> bool:
            alerts = await am.alerts()
            return bool(alerts) and all(a["status"]["state"] == "suppressed" for a in alerts)

        await eventually(muted, timeout=10)
