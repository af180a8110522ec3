"""The alert service (deliveries/alerts.py): what it holds an Idempotency-Key to is what the API held it to
before the service, so a request repeated across an upgrade is a replay, not a conflict."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from announcer.api.alerts import alert_request
from announcer.api.schemas import AlertBody, OutboundCallBody
from announcer.app import ALERT_SERVICE
from tests.conftest import Service


def hash_as_before(body: Any) -> str:
    """The request hash api/alerts.py and api/calls.py computed before the service (main at 6b8832b)."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize(
    "raw",
    [
        {"template_text": "Hello {{ name }}.", "recipients": [{"phone": "+14155550100"}]},
        {
            "template": "outage.j2",
            "variables": {"system": "billing", "n": 3, "ratio": 0.5, "tags": ["a", "ü"], "x": None},
            "recipients": [
                {"phone": "+14155550100", "name": "Ada", "timezone": "Europe/Berlin", "variables": {"k": 1}},
                {"phone": "(415) 555-0101", "variables": {"nested": {"b": [1, 2.5]}}},
            ],
            "options": {
                "confirm": True,
                "max_attempts": 3.0,
                "retry_on": ["no_answer"],
                "callback_url": "https://example.com/hook",
                "agent": {"after": "key", "key": "0", "prompt": "Be brief."},
            },
        },
    ],
)
def test_an_alerts_request_hash_is_the_one_the_api_computed(raw: dict[str, Any]) -> None:
    body = AlertBody.model_validate(raw)
    assert alert_request(body).request_hash() == hash_as_before(body)


async def test_an_outbound_calls_request_hash_is_the_one_the_api_computed(service: Service) -> None:
    raw = {"number": "+1 415 555 0100", "prompt": "You are kind.", "first_message": "Hello!"}
    checked = service.app[ALERT_SERVICE].outbound(raw["number"], raw["prompt"], raw["first_message"])
    assert checked.number == "+14155550100"
    assert checked.request_hash == hash_as_before(OutboundCallBody.model_validate(raw))
