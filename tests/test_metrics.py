"""`GET /metrics` (issue 16): after sandbox alerts whose phones behave differently, every counter moved by
exactly what happened, as the sandbox peers saw it (the calls Twilio placed, the requests ElevenLabs got,
the webhooks the receiver took); the exposition parses with prometheus_client's own parser; the auth
setting; and the Grafana dashboard asks only for series the service exposes."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from announcer.metrics.speech import reason_label
from announcer.sandbox.twilio_call import PhoneBehavior
from tests.conftest import AUTH, Service, eventually, free_port, make_settings, start_service
from tests.test_alerts import (
    RECEIVER_ALLOWED,
    Receiver,
    alert_body,
    finished,
    get,
    placed_call,
    post,
    receiver,
)

__all__ = ["receiver"]  # the fixture, shared with test_alerts

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "announcer.json"
HEARER, BUSY, AWAY, INVALID = "+15550190001", "+15550190002", "+15550190003", "+15550190004"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape_text(service: Service, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(service.base_url + "/metrics", headers=headers or {}) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(service: Service) -> Samples:
    status, _, text = await scrape_text(service)
    assert status == 200, text
    return parse(text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(
    before: Samples, after: Samples, prefix: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples named `prefix...` that changed, by how much (a new series counts from 0)."""
    return {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if key[0].startswith(prefix) and after[key] != before.get(key, 0.0)
    }


def series(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


@pytest.fixture
async def hooked(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """A service that may post outcome webhooks to the test's receiver (127.0.0.1, http)."""
    runner, svc = await start_service(make_settings(tmp_path, database_url, **RECEIVER_ALLOWED))
    try:
        yield svc
    finally:
        await runner.cleanup()


async def quiet(service: Service, receiver: Receiver | None = None, webhooks: int = 0) -> None:
    """Every sandbox call ended and every TTS request answered (and the webhooks in): nothing left that
    could still move a counter."""
    for call in list(service.sandbox.calls.values()):
        await call.wait_ended(30)
    await service.tts.wait_until(lambda: all(r.finished_at is not None for r in service.tts.requests), 30)
    if receiver is not None:

        async def all_in() -> bool:
            return len(receiver.received) >= webhooks

        await eventually(all_in, timeout=30)


async def test_an_alert_moves_each_counter_by_what_happened(hooked: Service, receiver: Receiver) -> None:
    service = hooked
    service.sandbox.set_behavior(BUSY, PhoneBehavior(answer="busy"))
    service.sandbox.set_behavior(AWAY, PhoneBehavior(answer="no-answer"))
    service.sandbox.set_behavior(INVALID, PhoneBehavior(refuse_code=21211))  # Twilio: invalid 'To' number
    before = await scrape(service)
    tts_before = len(service.tts.requests)

    status, accepted = await post(
        service, "/v1/alerts", alert_body(HEARER, BUSY, AWAY, INVALID, callback_url=receiver.url)
    )
    assert status == 202, accepted
    alert = await finished(service, accepted["id"])
    assert alert["counts"] == {"heard": 1, "busy": 1, "no_answer": 1, "failed": 1}
    # A delivery.finished event each, then alert.completed.
    await quiet(service, receiver, webhooks=5)
    placed = [c for c in service.sandbox.calls.values()]
    assert sorted(c.to for c in placed) == [HEARER, BUSY, AWAY]  # INVALID was refused, never placed
    requests = service.tts.requests[tts_before:]
    assert requests and all(r.status == 200 for r in requests)

    async def calls_ended() -> bool:
        # The last status callback (HEARER's completed) follows the hang-up, and the service closes its
        # side of the stream after the phone's.
        after = await scrape(service)
        ended = sum(moved(before, after, "announcer_calls_total").values()) == 3
        return ended and value(after, "announcer_live_media_streams") == 0

    await eventually(calls_ended, timeout=30)
    after = await scrape(service)

    assert moved(before, after, "announcer_calls_total") == {
        series("announcer_calls_total", direction="outbound", status="completed"): 1,
        series("announcer_calls_total", direction="outbound", status="busy"): 1,
        series("announcer_calls_total", direction="outbound", status="no-answer"): 1,
    }
    assert moved(before, after, "announcer_deliveries_total") == {
        series("announcer_deliveries_total", outcome=outcome): 1
        for outcome in ("heard", "busy", "no_answer", "failed")
    }
    assert moved(before, after, "announcer_calls_placed_total") == {series("announcer_calls_placed_total"): 3}
    assert moved(before, after, "announcer_twilio_refusals_total") == {
        series("announcer_twilio_refusals_total", code="21211"): 1
    }
    # Only HEARER answered: one stream, one first frame.
    first_audio = moved(before, after, "announcer_answer_to_first_audio_seconds_count")
    assert first_audio == {series("announcer_answer_to_first_audio_seconds_count"): 1}
    assert value(after, "announcer_answer_to_first_audio_seconds_sum") > value(
        before, "announcer_answer_to_first_audio_seconds_sum"
    )
    # What ElevenLabs (the sandbox's) received, character for character, each answered with audio.
    assert moved(before, after, "announcer_tts_characters_total") == {
        series("announcer_tts_characters_total", engine="elevenlabs"): sum(len(r.text) for r in requests)
    }
    assert moved(before, after, "announcer_tts_request_seconds_count") == {
        series("announcer_tts_request_seconds_count", engine="elevenlabs"): len(requests)
    }
    assert moved(before, after, "announcer_tts_errors_total") == {}
    # Each recipient's message (their own name) synthesized once, while their phone rang or was refused.
    assert moved(before, after, "announcer_tts_cache_misses_total") == {
        series("announcer_tts_cache_misses_total"): 4
    }
    assert moved(before, after, "announcer_outcome_webhooks_sent_total") == {
        series("announcer_outcome_webhooks_sent_total"): len(receiver.received)
    }
    assert len(receiver.received) == 5
    assert moved(before, after, "announcer_outcome_webhooks_failed_total") == {}
    assert value(after, "announcer_dial_queue_depth") == 0
    assert value(after, "announcer_live_media_streams") == 0

    # The same message again: played from the cache, no request to ElevenLabs.
    hits = value(after, "announcer_tts_cache_hits_total")
    status, again = await post(service, "/v1/alerts", alert_body(HEARER))
    assert status == 202, again
    assert (await finished(service, again["id"]))["counts"] == {"heard": 1}
    await quiet(service)

    async def second_call_ended() -> bool:
        later = await scrape(service)
        return (
            value(later, "announcer_calls_total", direction="outbound", status="completed")
            == value(after, "announcer_calls_total", direction="outbound", status="completed") + 1
        )

    await eventually(second_call_ended, timeout=30)
    later = await scrape(service)
    assert len(service.tts.requests) == tts_before + len(requests)
    assert value(later, "announcer_tts_cache_hits_total") == hits + 1
    assert moved(after, later, "announcer_tts_cache_misses_total") == {}
    assert moved(after, later, "announcer_tts_characters_total") == {}
    assert moved(after, later, "announcer_deliveries_total") == {
        series("announcer_deliveries_total", outcome="heard"): 1
    }


async def test_the_greeting_line_counts_an_inbound_call(service: Service) -> None:
    before = await scrape(service)
    call = await service.sandbox.call_in("+15550190099")
    await call.wait_ended(30)

    async def counted() -> bool:
        after = await scrape(service)
        return bool(moved(before, after, "announcer_calls_total")) and not value(
            after, "announcer_live_media_streams"
        )

    await eventually(counted, timeout=30)
    after = await scrape(service)
    assert moved(before, after, "announcer_calls_total") == {
        series("announcer_calls_total", direction="inbound", status="completed"): 1
    }
    assert moved(before, after, "announcer_answer_to_first_audio_seconds_count") == {
        series("announcer_answer_to_first_audio_seconds_count"): 1
    }
    assert moved(before, after, "announcer_deliveries_total") == {}  # no alert, no delivery


@pytest.fixture
async def one_line(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """One call at a time: while one phone rings, the rest of an alert waits in the dial queue."""
    runner, svc = await start_service(make_settings(tmp_path, database_url, max_concurrent_calls=1))
    try:
        yield svc
    finally:
        await runner.cleanup()


async def test_the_queue_depth_and_a_cancel_are_counted(one_line: Service) -> None:
    service = one_line
    ringer = "+15550190100"
    service.sandbox.set_behavior(ringer, PhoneBehavior(answer="no-answer", ring_s=600))
    waiting = [f"+155501902{i:02d}" for i in range(4)]
    before = await scrape(service)
    status, accepted = await post(service, "/v1/alerts", alert_body(ringer, *waiting))
    assert status == 202, accepted
    call = await placed_call(service, ringer)
    await call.wait_for_status("ringing", 20)

    async def queued() -> int:
        _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
        return sum(d["state"] in ("pending", "queued") for d in page["deliveries"])

    # The ringing call holds the only line: the others are due and (but for one the dispatcher may hold,
    # claimed, for its turn) not claimed. The gauge counts them as the database does.
    assert (await queued()) >= 3
    assert value(await scrape(service), "announcer_dial_queue_depth") == await queued()

    async def known_sid() -> bool:  # the service knows which call to cancel
        _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries?limit=1")
        return page["deliveries"][0]["call_sid"] is not None

    await eventually(known_sid)
    status, canceled = await post(service, f"/v1/alerts/{accepted['id']}/cancel", {})
    assert status == 200, canceled
    assert canceled["canceled"] == 4 and canceled["ringing_canceled"] == 1
    await call.wait_ended(20)

    async def counted() -> bool:  # the ringing call's `canceled` callback finishes its delivery
        after = await scrape(service)
        return value(after, "announcer_deliveries_total", outcome="canceled") == 5

    await eventually(counted, timeout=30)
    after = await scrape(service)
    assert moved(before, after, "announcer_deliveries_total") == {
        series("announcer_deliveries_total", outcome="canceled"): 5
    }
    assert moved(before, after, "announcer_calls_total") == {
        series("announcer_calls_total", direction="outbound", status="canceled"): 1
    }
    assert moved(before, after, "announcer_calls_placed_total") == {series("announcer_calls_placed_total"): 1}
    assert value(after, "announcer_dial_queue_depth") == 0


async def test_a_schedule_fire_observes_its_lag(service: Service) -> None:
    before = await scrape(service)
    body = {
        "name": "metrics",
        "template_text": "Hello {{ name }}, this is a reminder.",
        "recipients": [{"phone": HEARER, "name": "Ada"}],
        "when": {"at": (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()},
    }
    status, created = await post(service, "/v1/schedules", body)
    assert status == 201, created

    async def fired() -> bool:
        return value(await scrape(service), "announcer_scheduler_lag_seconds_count") == 1

    await eventually(fired, timeout=30)
    after = await scrape(service)
    lag = value(after, "announcer_scheduler_lag_seconds_sum") - value(
        before, "announcer_scheduler_lag_seconds_sum"
    )
    assert 0 <= lag < 10  # armed: it fired at its time, give or take a loaded machine
    assert value(after, "announcer_scheduler_lag_seconds_bucket", le="+Inf") == 1
    await (await placed_call(service, HEARER)).wait_ended(30)  # the reminder's call, before the teardown


async def test_opt_outs_are_counted_when_pressed_and_when_accepted(service: Service) -> None:
    opter, other = "+15550190300", "+15550190301"
    before = await scrape(service)
    status, first = await post(service, "/v1/alerts", alert_body(opter))
    assert status == 202, first
    call = await placed_call(service, opter)
    await call.wait_for_media(20)
    await call.press("9")  # opts out during the message (a move the dispatcher reports)
    assert (await finished(service, first["id"]))["counts"] == {"opted_out": 1}
    # The number is finished at acceptance in the next alert, without a call.
    status, second = await post(service, "/v1/alerts", alert_body(opter, other))
    assert status == 202, second
    assert (await finished(service, second["id"]))["counts"] == {"opted_out": 1, "heard": 1}
    await quiet(service)

    async def counted() -> bool:
        return value(await scrape(service), "announcer_deliveries_total", outcome="heard") == 1

    await eventually(counted, timeout=30)
    after = await scrape(service)
    assert moved(before, after, "announcer_deliveries_total") == {
        series("announcer_deliveries_total", outcome="opted_out"): 2,
        series("announcer_deliveries_total", outcome="heard"): 1,
    }
    assert moved(before, after, "announcer_calls_placed_total") == {series("announcer_calls_placed_total"): 2}


async def test_webhooks_retried_and_given_up_are_counted(tmp_path: Path, database_url: str) -> None:
    """A receiver that is unavailable once (503: retried), then gone (410: not retried)."""
    answers: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        answers.append(503 if not answers else 410)
        return web.Response(status=answers[-1])

    port = free_port()
    hooks = web.Application()
    hooks.router.add_post("/hook", hook)
    hooks_runner = web.AppRunner(hooks)
    await hooks_runner.setup()
    await web.TCPSite(hooks_runner, "127.0.0.1", port).start()
    settings = make_settings(tmp_path, database_url, announcer_webhook_backoff_s=0.01, **RECEIVER_ALLOWED)
    runner, service = await start_service(settings)
    try:
        before = await scrape(service)
        body = alert_body(HEARER, callback_url=f"http://127.0.0.1:{port}/hook")
        status, accepted = await post(service, "/v1/alerts", body)
        assert status == 202, accepted
        await finished(service, accepted["id"])

        async def given_up() -> bool:  # delivery.finished and alert.completed, each refused for good
            return value(await scrape(service), "announcer_outcome_webhooks_failed_total") == 2

        await eventually(given_up, timeout=30)
        await quiet(service)
        after = await scrape(service)
        assert answers == [503, 410, 410]
        assert moved(before, after, "announcer_outcome_webhook") == {
            series("announcer_outcome_webhook_retries_total"): 1,
            series("announcer_outcome_webhooks_failed_total"): 2,
        }
    finally:
        await runner.cleanup()
        await hooks_runner.cleanup()


async def test_tts_failures_are_counted_by_reason(service: Service) -> None:
    before = await scrape(service)
    service.tts.fail_next("rate_limited")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            service.base_url + "/v1/preview?audio=1",
            json={"template_text": "A preview that the engine refuses.", "recipient": {"phone": HEARER}},
            headers=AUTH,
        ) as resp,
    ):
        assert resp.status == 502, await resp.text()
    await quiet(service)
    after = await scrape(service)
    assert moved(before, after, "announcer_tts_errors_total") == {
        series("announcer_tts_errors_total", engine="elevenlabs", reason="http_429"): 1
    }
    # Refused before any audio: no latency observed; its characters were still sent.
    assert moved(before, after, "announcer_tts_request_seconds_count") == {}
    assert moved(before, after, "announcer_tts_characters_total") == {
        series("announcer_tts_characters_total", engine="elevenlabs"): sum(
            len(r.text) for r in service.tts.requests
        )
    }


async def test_the_exposition_parses_and_states_the_process_gauges(service: Service) -> None:
    status, content_type, text = await scrape_text(service)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in {
        "announcer_calls": "counter",
        "announcer_deliveries": "counter",
        "announcer_answer_to_first_audio_seconds": "histogram",
        "announcer_tts_request_seconds": "histogram",
        "announcer_scheduler_lag_seconds": "histogram",
        "announcer_live_media_streams": "gauge",
        "announcer_late_frame_waits": "counter",
        "announcer_event_loop_lag_seconds": "gauge",
        "announcer_dial_queue_depth": "gauge",
        "announcer_twilio_cps": "gauge",
        "announcer_admission_rate_calls_per_second": "gauge",
        "process_cpu_seconds": "counter",
    }.items():
        assert families[name].type == kind, name
    samples = parse(text)
    assert value(samples, "announcer_twilio_cps") == service.settings.twilio_cps
    assert 0 < value(samples, "announcer_admission_rate_calls_per_second") <= service.settings.twilio_cps
    # Every final status of each direction is there from the start, at zero: rate() sees the first call.
    assert value(samples, "announcer_calls_total", direction="inbound", status="busy") == 0
    assert (series("announcer_calls_total", direction="inbound", status="busy")) in samples
    # OpenMetrics when the scraper asks for it (Prometheus does).
    status, content_type, text = await scrape_text(
        service, {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")


async def test_metrics_are_open_by_default_and_ask_for_the_token_when_set(
    service: Service, tmp_path: Path, database_url: str
) -> None:
    assert (await scrape_text(service))[0] == 200
    settings = make_settings(tmp_path / "guarded", database_url, announcer_metrics_auth=True)
    runner, guarded = await start_service(settings)
    try:
        status, _, text = await scrape_text(guarded)
        assert status == 401
        assert json.loads(text)["error"] == "unauthorized"
        assert (await scrape_text(guarded, {"Authorization": "Bearer wrong"}))[0] == 401
        status, _, text = await scrape_text(guarded, AUTH)
        assert status == 200 and "announcer_calls_total" in text
    finally:
        await runner.cleanup()


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its own
    return [t["expr"] for p in panels for t in p.get("targets", [])]


async def test_the_grafana_dashboard_asks_only_for_what_is_exposed(service: Service) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = dashboard["templating"]["list"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables)
    exposed = set()
    _, _, text = await scrape_text(service)
    for family in text_string_to_metric_families(text):
        # A labelled family with no series yet (no refusal so far) is still declared, with its type.
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
            family.type, ("",)
        )
        exposed |= {family.name + suffix for suffix in suffixes}
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 12
    named = set()
    for expr in exprs:
        found = set(re.findall(r"\b(?:announcer|process)_[a-z_]+\b", expr))
        assert found, expr
        named |= found
    assert named - exposed == set()
    for variable in variables:
        if variable["type"] == "query":
            assert set(re.findall(r"\bannouncer_[a-z_]+\b", variable["definition"])) <= exposed
    # Every panel reads a series of its own data source: the variable, never a fixed one.
    for panel in dashboard["panels"]:
        if panel.get("type") != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("http 429 too_many_concurrent_requests", "http_429"),
        ("http 401 quota_exceeded", "http_401"),
        ("http 422 body.text: field required", "http_422"),
        ("http 500", "http_500"),
        ("timeout", "timeout"),
        ("connect failed", "connect_failed"),
        ("stream cut", "stream_cut"),
        ("http error DecodingError", "http_error"),
        ("elevenlabs: no audio", "no_audio"),
        ("local voice: espeak_Synth failed (2)", "other"),
    ],
)
def test_a_speech_error_reason_becomes_one_of_a_few_labels(reason: str, label: str) -> None:
    assert reason_label(reason) == label
