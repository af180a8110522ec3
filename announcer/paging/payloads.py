"""What an integration's webhook says, read strictly and reduced to one `Signal`: which group, firing or
resolved, and what a page call says of it. Pure: no I/O, no database.

Three shapes:

* Prometheus Alertmanager's webhook (notify/webhook/webhook.go: `template.Data` plus `version` "4",
  `groupKey` and `truncatedAlerts`): `receiver`, `status` (firing | resolved), `alerts[]` (each `status`,
  `labels`, `annotations`, `startsAt`, `endsAt`, `generatorURL`, `fingerprint`), `groupLabels`,
  `commonLabels`, `commonAnnotations`, `externalURL`.
* Grafana alerting's webhook contact point: the same shape (its `version` is "1") plus its own fields
  (`orgId`, `title`, `state`, `message`, and per alert `silenceURL`, `dashboardURL`, `values`...), which
  are kept in the details but not required.
* The plain form, for everything else: `{"title", "summary", "severity", "dedup_key", "status"}` where
  `status` is `trigger` (default; `firing` and `triggered` mean the same) or `resolve` (`resolved`).

Fields this module does not read are allowed in the first two (both sources add fields over time);
the plain form is ours and refuses unknown fields. Every problem names its field (`alerts[2].startsAt`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from announcer.deliveries.plan import Problem

MAX_KEY_CHARS = 4096  # a groupKey is the route's matchers and the group labels: long, not unbounded
MAX_TITLE_CHARS = 500  # Incident.title
MAX_SEVERITY_CHARS = 32  # Incident.severity
MAX_SUMMARY_CHARS = 2000  # what a page call speaks is short; the rest stays in the details
MAX_ALERTS_KEPT = 20  # alerts kept in an incident's details (all are counted)
TRIGGER = ("trigger", "triggered", "firing")
RESOLVE = ("resolve", "resolved")
PLAIN_FIELDS = frozenset({"title", "summary", "severity", "dedup_key", "status"})
# Go's time.Time in JSON: RFC 3339 with up to nine digits of fraction (Python reads six).
_FRACTION = re.compile(r"(\.\d{6})\d+")


class PayloadError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.reason}" for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Signal:
    """A webhook, read: the group it is about (`dedup_key`), whether it fires, and what to say of it."""

    dedup_key: str
    firing: bool
    title: str
    summary: str | None = None
    severity: str | None = None
    alert_count: int = 1  # alerts firing in the group (truncated ones included)
    firing_since: datetime | None = None  # the earliest startsAt of the firing alerts
    source_url: str | None = None  # Alertmanager's externalURL: where a silence is created
    group_labels: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # kept with the incident (trimmed)


class _Reader:
    """Collects every problem of a payload, each naming its field."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, where: str, reason: str) -> None:
        self.problems.append(Problem(where, reason))

    def text(
        self, data: Mapping[str, Any], name: str, where: str, *, required: bool, max_chars: int | None = None
    ) -> str | None:
        value = data.get(name)
        if value is None:
            if required:
                self.fail(where, "is required")
            return None
        if not isinstance(value, str):
            self.fail(where, "must be a string")
            return None
        if required and not value.strip():
            self.fail(where, "must not be empty")
            return None
        if max_chars is not None and len(value) > max_chars:
            self.fail(where, f"must be at most {max_chars} characters")
            return None
        return value

    def labels(self, data: Mapping[str, Any], name: str, where: str, *, required: bool) -> dict[str, str]:
        value = data.get(name)
        if value is None:
            if required:
                self.fail(where, "is required")
            return {}
        if not isinstance(value, dict):
            self.fail(where, "must be an object of strings")
            return {}
        for key, item in value.items():
            if not isinstance(item, str):
                self.fail(f"{where}.{key}", "must be a string")
                return {}
        return dict(value)

    def moment(self, data: Mapping[str, Any], name: str, where: str, *, required: bool) -> datetime | None:
        value = self.text(data, name, where, required=required)
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
        except ValueError:
            self.fail(where, "must be an RFC 3339 date and time")
            return None
        if moment.tzinfo is None:
            self.fail(where, "must have a time zone offset")
            return None
        return moment.astimezone(UTC)


def parse(kind: str, data: Any) -> Signal:
    """The `Signal` of a webhook of integration `kind` (alertmanager, grafana, json). Raises PayloadError
    with every problem found."""
    if not isinstance(data, dict):
        raise PayloadError([Problem("body", "must be a JSON object")])
    if kind == "json":
        return _plain(data)
    return _grouped(data, grafana=kind == "grafana")


def _grouped(data: dict[str, Any], *, grafana: bool) -> Signal:
    r = _Reader()
    version = r.text(data, "version", "version", required=not grafana)
    if version is not None and not grafana and version != "4":
        r.fail("version", 'must be "4" (Alertmanager\'s webhook version)')
    key = r.text(data, "groupKey", "groupKey", required=True, max_chars=MAX_KEY_CHARS)
    status = r.text(data, "status", "status", required=True)
    if status is not None and status not in ("firing", "resolved"):
        r.fail("status", "must be firing or resolved")
    r.text(data, "receiver", "receiver", required=not grafana)
    group = r.labels(data, "groupLabels", "groupLabels", required=True)
    common = r.labels(data, "commonLabels", "commonLabels", required=True)
    notes = r.labels(data, "commonAnnotations", "commonAnnotations", required=True)
    external = r.text(data, "externalURL", "externalURL", required=not grafana, max_chars=2048)
    truncated = data.get("truncatedAlerts", 0)
    if truncated is None:
        truncated = 0
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        r.fail("truncatedAlerts", "must be a whole number, 0 or more")
        truncated = 0
    raw_alerts = data.get("alerts")
    alerts: list[dict[str, Any]] = []
    if not isinstance(raw_alerts, list):
        r.fail("alerts", "is required: a list of alerts" if raw_alerts is None else "must be a list")
        raw_alerts = []
    firing_starts: list[datetime] = []
    firing_count = 0
    for i, alert in enumerate(raw_alerts):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            r.fail(where, "must be an object")
            continue
        a_status = r.text(alert, "status", f"{where}.status", required=True)
        if a_status is not None and a_status not in ("firing", "resolved"):
            r.fail(f"{where}.status", "must be firing or resolved")
        labels = r.labels(alert, "labels", f"{where}.labels", required=True)
        annotations = r.labels(alert, "annotations", f"{where}.annotations", required=False)
        starts = r.moment(alert, "startsAt", f"{where}.startsAt", required=True)
        r.moment(alert, "endsAt", f"{where}.endsAt", required=False)
        r.text(alert, "generatorURL", f"{where}.generatorURL", required=False)
        r.text(alert, "fingerprint", f"{where}.fingerprint", required=False)
        if a_status == "firing":
            firing_count += 1
            if starts is not None:
                firing_starts.append(starts)
        if len(alerts) < MAX_ALERTS_KEPT:
            alerts.append(
                {
                    "status": a_status,
                    "labels": labels,
                    "annotations": annotations,
                    "startsAt": alert.get("startsAt"),
                    "fingerprint": alert.get("fingerprint"),
                }
            )
    if r.problems:
        raise PayloadError(r.problems)
    assert key is not None and status is not None
    first_labels = alerts[0]["labels"] if alerts else {}
    title = (
        group.get("alertname")
        or common.get("alertname")
        or first_labels.get("alertname")
        or (data.get("title") if isinstance(data.get("title"), str) else None)
        or "alert"
    )
    summary = notes.get("summary") or notes.get("description")
    if summary is None and grafana and isinstance(data.get("message"), str):
        summary = data["message"]
    details: dict[str, Any] = {
        "receiver": data.get("receiver"),
        "groupLabels": group,
        "commonLabels": common,
        "commonAnnotations": notes,
        "alerts": alerts,
        "truncatedAlerts": truncated,
    }
    if grafana:
        for extra in ("orgId", "title", "state"):
            if isinstance(data.get(extra), str | int) and not isinstance(data.get(extra), bool):
                details[extra] = data[extra]
    return Signal(
        dedup_key=key,
        firing=status == "firing",
        title=title[:MAX_TITLE_CHARS],
        summary=summary[:MAX_SUMMARY_CHARS] if summary else None,
        severity=(common.get("severity") or group.get("severity") or first_labels.get("severity") or "")[
            :MAX_SEVERITY_CHARS
        ]
        or None,
        alert_count=firing_count + truncated if status == "firing" else firing_count,
        firing_since=min(firing_starts) if firing_starts else None,
        source_url=external or None,
        group_labels=group,
        details=details,
    )


def _plain(data: dict[str, Any]) -> Signal:
    r = _Reader()
    for name in sorted(set(data) - PLAIN_FIELDS):
        r.fail(name, f"is not a field of the plain form ({', '.join(sorted(PLAIN_FIELDS))})")
    status = r.text(data, "status", "status", required=False) or "trigger"
    if status not in TRIGGER + RESOLVE:
        r.fail("status", "must be trigger or resolve")
    firing = status in TRIGGER
    key = r.text(data, "dedup_key", "dedup_key", required=True, max_chars=MAX_KEY_CHARS)
    title = r.text(data, "title", "title", required=firing, max_chars=MAX_TITLE_CHARS)
    summary = r.text(data, "summary", "summary", required=False, max_chars=MAX_SUMMARY_CHARS)
    severity = r.text(data, "severity", "severity", required=False, max_chars=MAX_SEVERITY_CHARS)
    if r.problems:
        raise PayloadError(r.problems)
    assert key is not None
    return Signal(
        dedup_key=key,
        firing=firing,
        title=title or key[:MAX_TITLE_CHARS],
        summary=summary or None,
        severity=severity or None,
        details={"dedup_key": key},
    )
