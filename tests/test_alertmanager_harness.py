"""The real Alertmanager harness (tests/alertmanager.py) against a loopback receiver: what Alertmanager
0.25 sends for a firing group, its resolution and its repeats, with our Bearer credentials, and its
silences API. The payloads it sends are checked against tests/data/alertmanager_*.json, the recorded
fixtures the service's own tests use; ANNOUNCER_RECORD_ALERTMANAGER=1 records them anew."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.alertmanager import (
    MISSING,
    AlertmanagerError,
    AlertmanagerFactory,
    WebhookReceiver,
    alert,
    alertmanager_path,
)

DATA = Path(__file__).resolve().parent / "data"
SECRET = "am-test-secret"
RECORDED_EXTERNAL_URL = "http://127.0.0.1:9093"
RECORD = os.environ.get("ANNOUNCER_RECORD_ALERTMANAGER") == "1"


def _disk_full() -> list[dict[str, Any]]:
    """A group of two: the same alertname on two instances."""
    return [
        alert(
            {"alertname": "DiskFull", "severity": "critical", "instance": f"db-{n}.example.com:9100"},
            {"summary": f"Disk almost full on db-{n}", "runbook_url": "https://runbooks.example.com/disk"},
        )
        for n in (1, 2)
    ]


def _shape(value: Any) -> Any:
    """A payload's structure with the values left out: keys, nesting and JSON types."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def _check_fixture(name: str, headers: dict[str, str], body: dict[str, Any]) -> None:
    """The recorded fixture has the structure (keys, nesting, JSON types) of what Alertmanager sent now;
    recorded anew when asked, with this run's port in externalURL replaced by Alertmanager's default."""
    path = DATA / name
    recorded = {
        "headers": {k: v for k, v in sorted(headers.items()) if k.lower() not in ("content-length", "host")},
        "body": {**body, "externalURL": RECORDED_EXTERNAL_URL},
    }
    if RECORD:
        path.write_text(json.dumps(recorded, indent=2) + "\n")
        return
    fixture = json.loads(path.read_text())
    assert _shape(fixture["body"]) == _shape(body), f"{name} no longer matches what Alertmanager sends"
    assert sorted(fixture["headers"]) == sorted(recorded["headers"])


async def test_firing_group_then_resolved(alertmanager: AlertmanagerFactory) -> None:
    async with (
        WebhookReceiver() as receiver,
        alertmanager(receiver.url, SECRET, group_wait=0.5, group_interval=1, repeat_interval=3600) as am,
    ):
        alerts = _disk_full()
        await am.post_alerts(alerts)

        firing = await receiver.wait_for(lambda w: w.body["status"] == "firing")
        assert firing.headers["Authorization"] == f"Bearer {SECRET}"
        assert firing.headers["Content-Type"] == "application/json"
        body = firing.body
        assert body["version"] == "4"
        assert body["receiver"] == "announcer"
        assert body["groupKey"] == '{}:{alertname="DiskFull"}'
        assert body["groupLabels"] == {"alertname": "DiskFull"}
        assert body["commonLabels"] == {"alertname": "DiskFull", "severity": "critical"}
        assert body["externalURL"] == am.base_url
        assert body["truncatedAlerts"] == 0
        assert sorted(a["labels"]["instance"] for a in body["alerts"]) == [
            "db-1.example.com:9100",
            "db-2.example.com:9100",
        ]
        assert {a["status"] for a in body["alerts"]} == {"firing"}
        assert {a["endsAt"] for a in body["alerts"]} == {"0001-01-01T00:00:00Z"}
        assert len({a["fingerprint"] for a in body["alerts"]}) == 2
        _check_fixture("alertmanager_firing.json", firing.headers, body)

        await am.resolve(alerts)
        resolved = await receiver.wait_for(lambda w: w.body["status"] == "resolved")
        assert resolved.headers["Authorization"] == f"Bearer {SECRET}"
        assert resolved.body["groupKey"] == body["groupKey"]
        assert {a["status"] for a in resolved.body["alerts"]} == {"resolved"}
        assert {a["fingerprint"] for a in resolved.body["alerts"]} == {
            a["fingerprint"] for a in body["alerts"]
        }
        assert all(a["endsAt"] != "0001-01-01T00:00:00Z" for a in resolved.body["alerts"])
        _check_fixture("alertmanager_resolved.json", resolved.headers, resolved.body)
        # one firing, one resolved: nothing sent twice
        assert [w.body["status"] for w in receiver.received] == ["firing", "resolved"]


async def test_repeat_notifications_keep_the_group_key(alertmanager: AlertmanagerFactory) -> None:
    async with (
        WebhookReceiver() as receiver,
        alertmanager(receiver.url, SECRET, group_wait=0.2, group_interval=0.5, repeat_interval=1.5) as am,
    ):
        await am.post_alerts([alert({"alertname": "Backlog", "queue": "billing"})])
        first = await receiver.wait_for(lambda w: True)
        repeat = await receiver.wait_for(lambda w: True, after=1)
        assert repeat.body["groupKey"] == first.body["groupKey"] == '{}:{alertname="Backlog"}'
        assert repeat.body["status"] == "firing"
        assert repeat.body["alerts"][0]["fingerprint"] == first.body["alerts"][0]["fingerprint"]
        assert repeat.body["alerts"][0]["startsAt"] == first.body["alerts"][0]["startsAt"]
        # a repeat, not a retry: it waited for repeat_interval (less a tick's slack)
        assert repeat.at - first.at >= 1.5 - 0.5


async def test_groups_by_the_configured_labels(alertmanager: AlertmanagerFactory) -> None:
    async with (
        WebhookReceiver() as receiver,
        alertmanager(
            receiver.url, SECRET, group_by=["alertname", "team"], group_wait=0.2, repeat_interval=3600
        ) as am,
    ):
        await am.post_alerts(
            [alert({"alertname": "Down", "team": team, "instance": "a"}) for team in ("red", "blue")]
        )
        keys = set()
        for n in range(2):
            keys.add((await receiver.wait_for(lambda w: True, after=n)).body["groupKey"])
        assert keys == {'{}:{alertname="Down", team="blue"}', '{}:{alertname="Down", team="red"}'}


async def test_silence_is_listed_and_the_process_stops(alertmanager: AlertmanagerFactory) -> None:
    async with WebhookReceiver() as receiver, alertmanager(receiver.url, SECRET) as am:
        assert await am.silences() == []
        silence_id = await am.silence({"alertname": "DiskFull"}, comment="maintenance window")
        (listed,) = await am.silences()
        assert listed["id"] == silence_id
        assert listed["status"]["state"] == "active"
        assert listed["comment"] == "maintenance window"
        assert listed["matchers"] == [
            {"name": "alertname", "value": "DiskFull", "isRegex": False, "isEqual": True}
        ]
    assert am.process.returncode == 0  # stopped by SIGTERM, cleanly


async def test_a_refused_configuration_fails_with_alertmanagers_log(
    alertmanager: AlertmanagerFactory,
) -> None:
    with pytest.raises(AlertmanagerError, match="duplicated label") as failure:
        async with alertmanager("http://127.0.0.1:9/hook", SECRET, group_by=["alertname", "alertname"]):
            pass
    assert "exited" in str(failure.value)


def test_a_missing_binary_is_a_skip_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANNOUNCER_TEST_ALERTMANAGER", str(tmp_path / "no-such-binary"))
    assert alertmanager_path() is None
    assert "apt-get install prometheus-alertmanager" in MISSING


async def test_a_restart_keeps_the_silences(alertmanager: AlertmanagerFactory) -> None:
    async with WebhookReceiver() as receiver:
        async with alertmanager(receiver.url, SECRET) as am:
            silence_id = await am.silence({"alertname": "DiskFull"})
        async with alertmanager(receiver.url, SECRET) as again:
            assert [s["id"] for s in await again.silences()] == [silence_id]
