"""Paging's way in, end to end through the sandbox: the sources' webhooks (Alertmanager's, Grafana's, the
plain form) open, repeat and resolve incidents, authenticated by each integration's own secret; a wrong
secret or a malformed payload changes nothing. The payload readers are checked alone too."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from announcer.app import DATABASE
from announcer.paging.payloads import PayloadError, parse
from announcer.store.oncall import OncallStore
from tests.conftest import AUTH, Service, eventually

ON_CALL = "+15550170001"
SECOND = "+15550170002"


def am_payload(
    status: str = "firing", *, key: str = '{}:{alertname="DiskFull"}', firing: int = 2
) -> dict[str, Any]:
    """Alertmanager's webhook body (notify/webhook/webhook.go: template.Data, version, groupKey,
    truncatedAlerts), as it sends it."""
    start = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    alerts = [
        {
            "status": status,
            "labels": {"alertname": "DiskFull", "instance": f"db{i}", "severity": "critical"},
            "annotations": {"summary": "The disk is nearly full"},
            "startsAt": start,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example/graph",
            "fingerprint": f"abc{i}",
        }
        for i in range(firing)
    ]
    return {
        "receiver": "announcer",
        "status": status,
        "alerts": alerts,
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {"alertname": "DiskFull", "severity": "critical"},
        "commonAnnotations": {"summary": "The disk is nearly full"},
        "externalURL": "http://alertmanager.example:9093",
        "version": "4",
        "groupKey": key,
        "truncatedAlerts": 0,
    }


def grafana_payload(status: str = "firing") -> dict[str, Any]:
    body = am_payload(status, key='{}/{}:{alertname="HighLatency"}', firing=1)
    body["alerts"][0]["labels"] = {"alertname": "HighLatency", "grafana_folder": "ops"}
    body["alerts"][0].update(
        silenceURL="http://grafana/silence", dashboardURL="", panelURL="", values={"A": 3}
    )
    body.update(
        version="1",
        orgId=1,
        title="[FIRING:1] HighLatency",
        state="alerting",
        message="Latency is high",
        groupLabels={"alertname": "HighLatency"},
        commonLabels={"alertname": "HighLatency"},
        commonAnnotations={},
        externalURL="http://grafana.example/",
    )
    return body


async def request(
    service: Service, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, service.base_url + path, json=body, headers=headers) as resp,
    ):
        return resp.status, (await resp.json() if resp.content_type == "application/json" else None)


async def api(service: Service, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return await request(service, method, path, body, **AUTH)


async def setup_paging(
    service: Service,
    kind: str = "alertmanager",
    *,
    steps: list[tuple[list[str], int]] | None = None,
    repeat: int = 0,
) -> tuple[dict[str, Any], list[str]]:
    """People (one per phone), a policy of `steps` ((phones, delay_s) each) and an integration of `kind`:
    (the integration as created, with its secret; the people's ids)."""
    oncall = OncallStore(service.app[DATABASE].sessions)
    steps = steps or [([ON_CALL], 60), ([SECOND], 60)]
    phones = sorted({p for phones, _ in steps for p in phones})
    people = {p: await oncall.create_person(name=f"Person {p[-1]}", phone=p) for p in phones}
    policy = await oncall.create_policy(
        name="ops",
        steps=[
            {"delay_s": delay, "targets": [{"type": "person", "id": people[p].id} for p in phones]}
            for phones, delay in steps
        ],
        repeat=repeat,
    )
    status, integration = await api(
        service, "POST", "/v1/integrations", {"name": "prod", "kind": kind, "policy_id": policy.id}
    )
    assert status == 201, integration
    return integration, [people[p].id for p in phones]


async def send(
    service: Service, integration: dict[str, Any], body: Any, secret: str | None = None
) -> tuple[int, Any]:
    path = f"/v1/integrations/{integration['kind']}/{integration['id']}"
    token = integration["secret"] if secret is None else secret
    return await request(service, "POST", path, body, Authorization=f"Bearer {token}")


def calls_to(service: Service, phone: str) -> list[Any]:
    return [c for c in service.sandbox.calls.values() if c.to == phone]


async def incident(service: Service, incident_id: str) -> dict[str, Any]:
    status, body = await api(service, "GET", f"/v1/incidents/{incident_id}")
    assert status == 200, body
    return body


async def test_an_alertmanager_group_opens_an_incident_and_rings_the_on_call_phone(service: Service) -> None:
    integration, _ = await setup_paging(service)
    assert len(integration["secret"]) >= 40
    status, answer = await send(service, integration, am_payload())
    assert status == 200 and answer["action"] == "opened", answer
    incident_id = answer["incident_id"]

    async def rung() -> bool:
        return bool(calls_to(service, ON_CALL))

    await eventually(rung, timeout=20)
    call = calls_to(service, ON_CALL)[0]
    await call.wait_for_mark("end:", 20)
    seen = await incident(service, incident_id)
    assert (seen["state"], seen["title"], seen["severity"], seen["alert_count"]) == (
        "triggered",
        "DiskFull",
        "critical",
        2,
    )
    assert seen["summary"] == "The disk is nearly full"
    assert [e["kind"] for e in seen["events"]][:2] == ["triggered", "paged"]
    assert seen["events"][0]["how"] == "alertmanager"
    assert seen["pages"][0]["people"][0]["phone"] == ON_CALL
    # Alertmanager's repeat notification of the same group pages nobody again
    status, again = await send(service, integration, am_payload(firing=3))
    assert (status, again["action"], again["incident_id"]) == (200, "repeated", incident_id)
    seen = await incident(service, incident_id)
    assert seen["alert_count"] == 3 and "repeated" in [e["kind"] for e in seen["events"]]
    assert len(calls_to(service, ON_CALL)) == 1 and not calls_to(service, SECOND)
    # the list, filtered by state
    status, listed = await api(service, "GET", "/v1/incidents?state=triggered")
    assert status == 200 and [i["id"] for i in listed["incidents"]] == [incident_id]
    status, none = await api(service, "GET", "/v1/incidents?state=resolved")
    assert status == 200 and none["incidents"] == []
    # resolved by Alertmanager: the escalation stops, the page call is canceled or ended
    status, resolved = await send(service, integration, am_payload("resolved"))
    assert (status, resolved["action"]) == (200, "resolved"), resolved
    seen = await incident(service, incident_id)
    assert seen["state"] == "resolved" and seen["next_step_at"] is None
    assert seen["events"][-1]["kind"] == "resolved" and seen["events"][-1]["how"] == "alertmanager"
    status, conflict = await api(service, "POST", f"/v1/incidents/{incident_id}/resolve")
    assert status == 409 and conflict["error"] == "incident_state"
    # a new firing of the group is a new incident
    status, fresh = await send(service, integration, am_payload())
    assert fresh["action"] == "opened" and fresh["incident_id"] != incident_id


async def test_grafana_and_the_plain_form_open_and_resolve(service: Service) -> None:
    grafana, _ = await setup_paging(service, "grafana", steps=[([ON_CALL], 60)])
    status, answer = await send(service, grafana, grafana_payload())
    assert status == 200 and answer["action"] == "opened", answer
    seen = await incident(service, answer["incident_id"])
    assert (seen["title"], seen["summary"], seen["alert_count"]) == ("HighLatency", "Latency is high", 1)
    assert seen["details"]["state"] == "alerting"
    status, done = await send(service, grafana, grafana_payload("resolved"))
    assert (
        done["action"] == "resolved"
        and (await incident(service, answer["incident_id"]))["state"] == "resolved"
    )

    plain, _ = await setup_paging(service, "json", steps=[([SECOND], 60)])
    body = {"title": "Backups failed", "summary": "Last night's backup did not run", "severity": "warning"}
    status, answer = await send(service, plain, {**body, "dedup_key": "backups"})
    assert status == 200 and answer["action"] == "opened", answer
    seen = await incident(service, answer["incident_id"])
    assert (seen["title"], seen["severity"], seen["dedup_key"]) == ("Backups failed", "warning", "backups")
    status, again = await send(service, plain, {**body, "dedup_key": "backups", "status": "trigger"})
    assert again["action"] == "repeated"
    status, done = await send(service, plain, {"dedup_key": "backups", "status": "resolve"})
    assert done["action"] == "resolved"
    status, nothing = await send(service, plain, {"dedup_key": "backups", "status": "resolved"})
    assert (status, nothing["action"]) == (200, "ignored")


async def test_a_wrong_secret_or_kind_is_401_and_a_malformed_payload_422_and_nothing_is_stored(
    service: Service,
) -> None:
    integration, _ = await setup_paging(service)
    for secret in ("wrong", ""):
        status, answer = await send(service, integration, am_payload(), secret=secret)
        assert status == 401 and answer["error"] == "unauthorized"
    path = f"/v1/integrations/alertmanager/{integration['id']}"
    status, _ = await request(service, "POST", path, am_payload())  # no Authorization at all
    assert status == 401
    status, _ = await request(service, "POST", path, am_payload(), **AUTH)  # the API token is not its secret
    assert status == 401
    status, _ = await send(service, {**integration, "kind": "grafana"}, grafana_payload())
    assert status == 401
    status, _ = await send(service, {**integration, "id": "in_nope"}, am_payload())
    assert status == 401
    broken = am_payload()
    broken["alerts"][1]["startsAt"] = "yesterday"
    del broken["groupKey"]
    status, answer = await send(service, integration, broken)
    assert status == 422, answer
    assert {p["field"] for p in answer["problems"]} == {"groupKey", "alerts[1].startsAt"}
    status, answer = await send(service, integration, {**am_payload(), "version": "3"})
    assert status == 422 and answer["problems"][0]["field"] == "version"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            service.base_url + path,
            data=b"x" * (2**20 + 1),
            headers={"Authorization": f"Bearer {integration['secret']}"},
        ) as resp,
    ):
        assert resp.status == 413
    status, listed = await api(service, "GET", "/v1/incidents")
    assert status == 200 and listed["incidents"] == []
    assert not service.sandbox.calls


async def test_integrations_api_shows_the_secret_once_and_rotates_it(service: Service) -> None:
    integration, _ = await setup_paging(service)
    status, got = await api(service, "GET", f"/v1/integrations/{integration['id']}")
    assert status == 200 and "secret" not in got and got["kind"] == "alertmanager"
    status, listed = await api(service, "GET", "/v1/integrations")
    assert [i["id"] for i in listed["integrations"]] == [integration["id"]]
    status, patched = await api(
        service, "PATCH", f"/v1/integrations/{integration['id']}", {"silence_s": 3600}
    )
    assert status == 200 and patched["silence_s"] == 3600
    status, bad = await api(service, "PATCH", f"/v1/integrations/{integration['id']}", {"silence_s": 5})
    assert status == 422 and bad["problems"][0]["field"] == "silence_s"
    status, bad = await api(
        service, "POST", "/v1/integrations", {"name": "x", "kind": "json", "policy_id": "ep_no"}
    )
    assert status == 422 and bad["problems"][0]["field"] == "policy_id"
    status, rotated = await api(service, "POST", f"/v1/integrations/{integration['id']}/rotate-secret")
    assert status == 200 and rotated["secret"] != integration["secret"]
    status, _ = await send(service, integration, am_payload())
    assert status == 401  # the old secret no longer works
    status, answer = await send(service, integration, am_payload(), secret=rotated["secret"])
    assert status == 200 and answer["action"] == "opened"
    status, _ = await api(service, "DELETE", f"/v1/integrations/{integration['id']}")
    assert status == 409  # its incident keeps it
    other, _ = await setup_paging(service, "json")
    status, _ = await api(service, "DELETE", f"/v1/integrations/{other['id']}")
    assert status == 204
    status, _ = await api(service, "GET", f"/v1/integrations/{other['id']}")
    assert status == 404


# --- the payload readers alone ------------------------------------------------------------------------------


def test_alertmanager_payload_reads_title_summary_severity_count_and_start() -> None:
    body = am_payload(firing=3)
    body["truncatedAlerts"] = 2
    body["alerts"][2]["startsAt"] = "2026-12-07T20:00:00.123456789Z"
    signal = parse("alertmanager", body)
    assert (signal.title, signal.summary, signal.severity, signal.alert_count) == (
        "DiskFull",
        "The disk is nearly full",
        "critical",
        5,
    )
    assert signal.firing and signal.firing_since == datetime(2026, 12, 7, 20, 0, 0, 123456, tzinfo=UTC)
    assert signal.source_url == "http://alertmanager.example:9093"
    assert signal.group_labels == {"alertname": "DiskFull"}


@pytest.mark.parametrize(
    ("kind", "body", "fields"),
    [
        ("alertmanager", [], {"body"}),
        ("alertmanager", {**am_payload(), "status": "burning"}, {"status"}),
        ("alertmanager", {**am_payload(), "alerts": "many"}, {"alerts"}),
        ("alertmanager", {**am_payload(), "groupLabels": {"a": 1}}, {"groupLabels.a"}),
        ("alertmanager", {**am_payload(), "truncatedAlerts": -1}, {"truncatedAlerts"}),
        ("grafana", {**grafana_payload(), "groupKey": ""}, {"groupKey"}),
        ("json", {"dedup_key": "x"}, {"title"}),
        ("json", {"title": "t", "dedup_key": "x", "status": "open"}, {"status"}),
        ("json", {"title": "t", "dedup_key": "x", "urgency": "high"}, {"urgency"}),
        ("json", {"title": "t"}, {"dedup_key"}),
    ],
)
def test_each_malformed_payload_names_its_field(kind: str, body: Any, fields: set[str]) -> None:
    with pytest.raises(PayloadError) as caught:
        parse(kind, body)
    assert {p.field for p in caught.value.problems} == fields


async def test_concurrent_notifications_of_one_group_open_one_incident(service: Service) -> None:
    integration, _ = await setup_paging(service, steps=[([ON_CALL], 600)])
    answers = await asyncio.gather(*(send(service, integration, am_payload()) for _ in range(8)))
    assert all(status == 200 for status, _ in answers), answers
    actions = sorted(a["action"] for _, a in answers)
    assert actions == ["opened"] + ["repeated"] * 7
    assert len({a["incident_id"] for _, a in answers}) == 1
    await eventually(lambda: _rung(service), timeout=20)
    seen = await incident(service, answers[0][1]["incident_id"])
    assert len(seen["pages"]) == 1 and len(calls_to(service, ON_CALL)) == 1


async def _rung(service: Service) -> bool:
    return bool(calls_to(service, ON_CALL))


@pytest.mark.parametrize(
    ("name", "firing"), [("alertmanager_firing.json", True), ("alertmanager_resolved.json", False)]
)
def test_what_the_real_alertmanager_sent_is_read(name: str, firing: bool) -> None:
    """The payloads recorded from Debian's Alertmanager (test_alertmanager_harness.py keeps them true)."""
    body = json.loads((Path(__file__).resolve().parent / "data" / name).read_text())["body"]
    signal = parse("alertmanager", body)
    assert signal.firing is firing and signal.dedup_key == '{}:{alertname="DiskFull"}'
    assert (signal.title, signal.severity) == ("DiskFull", "critical")
    assert signal.alert_count == (2 if firing else 0)
    assert signal.source_url == body["externalURL"] and signal.group_labels == {"alertname": "DiskFull"}
    if firing:
        assert signal.firing_since is not None
