"""Paging's measures in `GET /metrics`, end to end through the sandbox: `announcer_incidents` by state (a
count read at each scrape), `announcer_incident_time_to_acknowledge_seconds` (observed at a key 1 and at
the API's acknowledgement), `announcer_pages_total` by outcome (page calls only: an ordinary alert's
outcome is not a page; a page call canceled before it was dialed counts as canceled)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from announcer.sandbox.twilio_call import PhoneBehavior
from tests.conftest import Service, eventually, make_settings, start_service
from tests.test_alerts import alert_body, finished, post
from tests.test_metrics import Samples, scrape, value
from tests.test_paging_escalation import rung
from tests.test_paging_ingest import ON_CALL, SECOND, am_payload, api, incident, send, setup_paging

HEARER = "+15550170009"
ACK = "announcer_incident_time_to_acknowledge_seconds"


def incidents(samples: Samples) -> dict[str, float]:
    return {
        state: value(samples, "announcer_incidents", state=state)
        for state in ("triggered", "acknowledged", "resolved")
    }


async def test_incidents_time_to_acknowledge_and_pages_move_end_to_end(service: Service) -> None:
    before = await scrape(service)
    assert incidents(before) == {"triggered": 0, "acknowledged": 0, "resolved": 0}  # every state, from 0
    assert value(before, "announcer_pages_total", outcome="confirmed") == 0
    assert value(before, f"{ACK}_count") == 0

    integration, _ = await setup_paging(service, steps=[([ON_CALL], 600)])
    opened = time.monotonic()
    status, answer = await send(service, integration, am_payload())
    assert status == 200, answer
    first = answer["incident_id"]
    assert incidents(await scrape(service))["triggered"] == 1

    # key 1 on the page call: acknowledged (observed once), the page's outcome counted as confirmed
    call = await rung(service, ON_CALL)
    await call.wait_for_mark("end:", 20)
    await call.press("1")

    async def counted() -> bool:
        samples = await scrape(service)
        return (
            value(samples, "announcer_pages_total", outcome="confirmed") == 1
            and incidents(samples)["acknowledged"] == 1
        )

    await eventually(counted, timeout=20)
    waited = time.monotonic() - opened
    samples = await scrape(service)
    assert value(samples, f"{ACK}_count") == 1
    assert 0 <= value(samples, f"{ACK}_sum") <= waited + 1
    assert value(samples, f"{ACK}_bucket", le="3600.0") == 1
    seen = await incident(service, first)
    assert seen["acknowledged_by"] == "Person 1"

    # an ordinary alert's outcome is a delivery, not a page
    status, alert = await post(service, "/v1/alerts", alert_body(HEARER))
    assert status == 202, alert
    assert (await finished(service, alert["id"]))["status"] == "completed"
    samples = await scrape(service)
    assert sum(v for (name, _), v in samples.items() if name == "announcer_pages_total") == 1

    # the API's acknowledgement is observed too; resolutions move the gauge
    status, answer = await send(service, integration, am_payload(key='{}:{alertname="CpuHot"}'))
    assert status == 200, answer
    second = answer["incident_id"]
    assert incidents(await scrape(service)) == {"triggered": 1, "acknowledged": 1, "resolved": 0}
    status, body = await api(service, "POST", f"/v1/incidents/{second}/ack")
    assert status == 200, body
    assert value(await scrape(service), f"{ACK}_count") == 2
    for incident_id in (first, second):
        status, body = await api(service, "POST", f"/v1/incidents/{incident_id}/resolve")
        assert status == 200, body
    assert incidents(await scrape(service)) == {"triggered": 0, "acknowledged": 0, "resolved": 2}


@pytest.fixture
async def one_line(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """One call at a time: a step's second page call waits, undialed, while the first rings."""
    runner, svc = await start_service(make_settings(tmp_path, database_url, max_concurrent_calls=1))
    try:
        yield svc
    finally:
        await runner.cleanup()


async def test_a_page_never_dialed_is_counted_canceled_when_its_incident_is_acknowledged(
    one_line: Service,
) -> None:
    service = one_line
    for phone in (ON_CALL, SECOND):
        service.sandbox.set_behavior(phone, PhoneBehavior(answer="no-answer", ring_s=2000))
    integration, _ = await setup_paging(service, steps=[([ON_CALL, SECOND], 600)])
    status, answer = await send(service, integration, am_payload())
    assert status == 200, answer
    ringing = await rung(service, ON_CALL)
    await ringing.wait_for_status("ringing", 20)
    status, body = await api(service, "POST", f"/v1/incidents/{answer['incident_id']}/ack")
    assert status == 200, body

    async def both_counted() -> bool:
        samples = await scrape(service)
        return sum(v for (name, _), v in samples.items() if name == "announcer_pages_total") == 2

    await eventually(both_counted, timeout=20)
    samples = await scrape(service)
    assert value(samples, "announcer_pages_total", outcome="canceled") >= 1  # the one never dialed
    assert not [c for c in service.sandbox.calls.values() if c.to == SECOND]
