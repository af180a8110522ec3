"""Templated alerts end to end: the API accepts, the dispatcher dials through the real twilio SDK, the
sandbox phones answer (or not), and every delivery ends in the outcome that really happened."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from announcer.deliveries.callbacks import verify
from announcer.sandbox.twilio_call import PhoneBehavior
from tests.clock import Clock
from tests.conftest import API_TOKEN, AUTH, Service, eventually, free_port, make_settings, start_service

HEARER = "+15550100001"
BUSY = "+15550100002"
AWAY = "+15550100003"


async def post(
    service: Service, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(service.base_url + path, json=body, headers={**AUTH, **(headers or {})}) as resp,
    ):
        return resp.status, await resp.json()


async def get(service: Service, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(service.base_url + path, headers=AUTH) as resp:
        return resp.status, await resp.json()


def alert_body(*phones: str, **options: Any) -> dict[str, Any]:
    return {
        "template_text": "Hello {{ name }}. The {{ system }} is down since {{ since | spoken_time }} today.",
        "variables": {"system": "billing server", "since": "09:30"},
        "recipients": [{"phone": p, "name": f"Person {i}"} for i, p in enumerate(phones)],
        "options": options,
    }


async def finished(service: Service, alert_id: str) -> dict[str, Any]:
    async def done() -> bool:
        status, body = await get(service, f"/v1/alerts/{alert_id}")
        return status == 200 and body["status"] != "active"

    await eventually(done, timeout=30)
    return (await get(service, f"/v1/alerts/{alert_id}"))[1]


async def test_everyone_is_called_and_each_outcome_is_known(service: Service) -> None:
    service.sandbox.set_behavior(BUSY, PhoneBehavior(answer="busy"))
    service.sandbox.set_behavior(AWAY, PhoneBehavior(answer="no-answer"))
    status, accepted = await post(service, "/v1/alerts", alert_body(HEARER, BUSY, AWAY))
    assert status == 202, accepted
    assert accepted["recipients"] == 3 and accepted["status"] == "active"
    alert = await finished(service, accepted["id"])
    assert alert["status"] == "completed"
    assert alert["counts"] == {"heard": 1, "busy": 1, "no_answer": 1}
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    by_phone = {d["phone"]: d for d in page["deliveries"]}
    heard = by_phone[HEARER]
    assert heard["text"] == "Hello Person 0. The billing server is down since nine thirty a.m. today."
    states = [h["state"] for h in heard["history"] if h["kind"] == "state"]
    assert states[0] == "pending" and states[-1] == "heard" and "dialing" in states
    # the phone heard the message (a real stream, real frames) and each number was called once
    calls = [c for c in service.sandbox.calls.values() if c.direction.value == "outbound-api"]
    assert sorted(c.to for c in calls) == sorted([HEARER, BUSY, AWAY])
    hearer_call = next(c for c in calls if c.to == HEARER)
    assert hearer_call.frames_received > 50 and hearer_call.marks_echoed


async def test_bad_recipients_are_refused_with_every_problem_and_nothing_is_stored(service: Service) -> None:
    body = alert_body(HEARER, "12", HEARER)
    body["template_text"] = "Hello {{ name }}, {{ missing }}."
    status, answer = await post(service, "/v1/alerts", body)
    assert status == 422
    fields = {(p["field"], p.get("index")) for p in answer["problems"]}
    assert ("recipients[1].phone", 1) in fields  # too short
    assert ("recipients[2].phone", 2) in fields  # a duplicate
    assert ("recipients[0].variables", 0) in fields  # 'missing' is undefined
    assert not service.sandbox.calls


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"template": "nope.j2", "recipients": [{"phone": HEARER}]}, "template"),
        ({"template_text": "Hi", "recipients": []}, "recipients"),
        ({"template_text": "Hi", "recipients": [{"phone": HEARER, "age": 3}]}, "recipients[0].age"),
        ({"template_text": "Hi", "recipients": [{"phone": 5550100}]}, "recipients[0].phone"),
        (
            {"template_text": "Hi", "recipients": [{"phone": HEARER}], "options": {"max_attempts": 0}},
            "options.max_attempts",
        ),
        ({"template_text": "{{ 1 / 0 }}", "recipients": [{"phone": HEARER}]}, "recipients[0].variables"),
    ],
)
async def test_each_bad_field_is_named(service: Service, body: dict[str, Any], field: str) -> None:
    status, answer = await post(service, "/v1/alerts", body)
    assert status == 422, answer
    assert field in {p["field"] for p in answer["problems"]}


async def test_malformed_unauthorised_and_unknown(service: Service) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(service.base_url + "/v1/alerts", json=alert_body(HEARER)) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
        async with http.post(
            service.base_url + "/v1/alerts",
            data=b"{not json",
            headers={**AUTH, "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "malformed_json"
        async with http.get(service.base_url + "/v1/alerts/al_nope", headers=AUTH) as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    assert not service.sandbox.calls


async def test_idempotency_key_replays_or_conflicts(service: Service) -> None:
    key = {"Idempotency-Key": "outage-42"}
    status, first = await post(service, "/v1/alerts", alert_body(HEARER), key)
    assert status == 202 and not first["replayed"]
    status, again = await post(service, "/v1/alerts", alert_body(HEARER), key)
    assert status == 202 and again["id"] == first["id"] and again["replayed"]
    status, clash = await post(service, "/v1/alerts", alert_body(BUSY), key)
    assert status == 409 and clash["field"] == "Idempotency-Key"
    await finished(service, first["id"])
    assert [c.to for c in service.sandbox.calls.values()] == [HEARER]  # called once


async def test_preview_renders_without_calling(service: Service) -> None:
    body = {"template_text": "Hi {{ name }}", "recipient": {"phone": HEARER, "name": "Ada"}}
    status, answer = await post(service, "/v1/preview", body)
    assert status == 200 and answer["text"] == "Hi Ada"
    assert not service.sandbox.calls


async def placed_call(service: Service, phone: str, n: int = 1) -> Any:
    """The n-th call the sandbox placed to `phone`, once it exists."""

    async def there() -> bool:
        return len([c for c in service.sandbox.calls.values() if c.to == phone]) >= n

    await eventually(there, timeout=20)
    return [c for c in service.sandbox.calls.values() if c.to == phone][n - 1]


async def test_keys_confirm_repeat_and_opt_out(service: Service) -> None:
    confirmer, repeater, leaver, silent = "+15550100011", "+15550100012", "+15550100013", "+15550100014"
    status, accepted = await post(
        service, "/v1/alerts", alert_body(confirmer, repeater, leaver, silent, confirm=True, repeat_key="*")
    )
    assert status == 202, accepted
    # 1 during the prompt confirms
    call = await placed_call(service, confirmer)
    await call.wait_for_mark("end:", 20)
    await call.press("1")
    # * (the alert's repeat key) during the message starts it over: the end mark comes later, once
    call = await placed_call(service, repeater)
    await call.wait_for_media(20)
    await call.press("*")
    await call.wait_for_mark("prompt:", 20)
    await call.press("1")
    # 9 opts out, for good
    call = await placed_call(service, leaver)
    await call.wait_for_media(20)
    await call.press("9")
    alert = await finished(service, accepted["id"])
    assert alert["counts"] == {"confirmed": 2, "opted_out": 1, "heard": 1}  # silent: heard, no key
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    by_phone = {d["phone"]: d for d in page["deliveries"]}
    assert by_phone[silent]["outcome"] == "heard"
    repeat_call = next(c for c in service.sandbox.calls.values() if c.to == repeater)
    call_id = await service.store.find_by_sid(repeat_call.sid)
    assert call_id is not None
    kinds = [e.kind for e in await service.store.events(call_id)]
    assert "repeat" in kinds and kinds.count("speech_sent") >= 3  # message, message again, prompt
    # the opted-out number is never called again by any alert
    status, second = await post(service, "/v1/alerts", alert_body(leaver, silent))
    assert status == 202
    alert = await finished(service, second["id"])
    assert alert["counts"] == {"opted_out": 1, "heard": 1}
    assert len([c for c in service.sandbox.calls.values() if c.to == leaver]) == 1
    # until the opt-out is removed
    async with (
        aiohttp.ClientSession() as http,
        http.delete(f"{service.base_url}/v1/opt-outs/{leaver}", headers=AUTH) as resp,
    ):
        assert resp.status == 200
    status, third = await post(service, "/v1/alerts", alert_body(leaver))
    alert = await finished(service, third["id"])
    assert alert["counts"] == {"heard": 1}


async def test_busy_is_retried_as_configured(service: Service) -> None:
    service.sandbox.set_behavior(BUSY, PhoneBehavior(answer="busy"))
    status, accepted = await post(
        service, "/v1/alerts", alert_body(BUSY, max_attempts=3, retry_on=["busy"], retry_backoff_s=0.05)
    )
    assert status == 202
    alert = await finished(service, accepted["id"])
    assert alert["counts"] == {"busy": 1}
    assert len([c for c in service.sandbox.calls.values() if c.to == BUSY]) == 3
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    (delivery,) = page["deliveries"]
    assert delivery["attempt"] == 3
    assert [h["kind"] for h in delivery["history"]].count("retry_scheduled") == 2


@dataclass
class Receiver:
    """A real HTTP endpoint for outcome webhooks: every body with whether its signature verified."""

    url: str
    received: list[tuple[dict[str, Any], bool]] = field(default_factory=list)
    completed: asyncio.Event = field(default_factory=asyncio.Event)  # the alert.completed event arrived


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    hooks = Receiver(f"http://127.0.0.1:{port}/hook")

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        hooks.received.append((body, verify(API_TOKEN, raw, request.headers["X-Announcer-Signature"])))
        if body["type"] == "alert.completed":
            hooks.completed.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield hooks
    finally:
        await runner.cleanup()


# The receiver listens on 127.0.0.1 over http: the operator's allowances for both (deliveries/egress.py).
RECEIVER_ALLOWED: dict[str, Any] = {
    "announcer_callback_allow_http": True,
    "announcer_callback_allow_hosts": "127.0.0.1",
}


@pytest.fixture
async def hooked_service(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """The service of the callback tests: it may post to the receiver."""
    runner, svc = await start_service(make_settings(tmp_path, database_url, **RECEIVER_ALLOWED))
    try:
        yield svc
    finally:
        await runner.cleanup()


async def test_outcomes_are_posted_signed_to_the_callback_url(
    hooked_service: Service, receiver: Receiver
) -> None:
    service = hooked_service
    service.sandbox.set_behavior(BUSY, PhoneBehavior(answer="busy"))
    status, accepted = await post(service, "/v1/alerts", alert_body(HEARER, BUSY, callback_url=receiver.url))
    assert status == 202
    async with asyncio.timeout(30):
        await receiver.completed.wait()
    received = receiver.received
    assert all(signed for _, signed in received)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for body, _ in received:
        by_type.setdefault(body["type"], []).append(body)
    outcomes = {b["delivery"]["phone"]: b["delivery"]["outcome"] for b in by_type["delivery.finished"]}
    assert outcomes == {HEARER: "heard", BUSY: "busy"}
    (done,) = by_type["alert.completed"]
    assert done["alert_id"] == accepted["id"] and done["counts"] == {"heard": 1, "busy": 1}


async def test_a_number_that_opts_out_before_its_retry_ends_its_delivery_and_completes_the_alert(
    hooked_service: Service, receiver: Receiver
) -> None:
    """Found opted out when its retry is claimed: an outcome like any other (the alert completes, the
    webhook goes out), not a delivery left out of its alert's end."""
    service = hooked_service
    leaver = "+15550100031"
    service.sandbox.set_behavior(leaver, PhoneBehavior(answer="busy"))
    body = alert_body(leaver, callback_url=receiver.url, max_attempts=2, retry_on=["busy"], retry_backoff_s=5)
    status, first = await post(service, "/v1/alerts", body)
    assert status == 202, first
    await placed_call(service, leaver)

    async def retry_waits() -> bool:
        page = (await get(service, f"/v1/alerts/{first['id']}/deliveries"))[1]["deliveries"]
        return [h["kind"] for h in page[0]["history"]].count("retry_scheduled") == 1

    await eventually(retry_waits, timeout=20)
    # Meanwhile another alert reaches them, and they press 9.
    service.sandbox.set_behavior(leaver, PhoneBehavior())
    status, second = await post(service, "/v1/alerts", alert_body(leaver))
    call = await placed_call(service, leaver, 2)
    await call.wait_for_media(20)
    await call.press("9")
    assert (await finished(service, second["id"]))["counts"] == {"opted_out": 1}
    # The retry is claimed: not dialed, finished opted out, and the alert with it.
    done = await finished(service, first["id"])
    assert done["status"] == "completed" and done["counts"] == {"opted_out": 1}
    assert len([c for c in service.sandbox.calls.values() if c.to == leaver]) == 2
    async with asyncio.timeout(30):
        await receiver.completed.wait()
    mine = [b for b, _ in receiver.received if b["alert_id"] == first["id"]]
    assert [(b["type"], b.get("delivery", {}).get("outcome")) for b in mine] == [
        ("delivery.finished", "opted_out"),
        ("alert.completed", None),
    ]


@pytest.fixture
async def slow_service(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """Twilio's default account limit: 1 call a second, and at most 2 calls at once."""
    runner, svc = await start_service(
        make_settings(tmp_path, database_url, twilio_cps=5.0, max_concurrent_calls=2)
    )
    try:
        yield svc
    finally:
        await runner.cleanup()


async def test_calls_per_second_and_concurrency_are_never_exceeded(slow_service: Service) -> None:
    phones = [f"+1555010{i:04d}" for i in range(12)]
    status, accepted = await post(slow_service, "/v1/alerts", alert_body(*phones))
    assert status == 202
    await finished(slow_service, accepted["id"])
    creates = sorted(
        r.at for r in slow_service.sandbox.rest_log if r.method == "POST" and r.path.endswith("/Calls.json")
    )
    assert len(creates) == 12
    # 5 a second, measured where Twilio would measure it: as the sandbox handles each create. The sandbox
    # shares the service's event loop, so on a loaded machine one request is handled up to ~20 ms late and
    # the gap after it is that much shorter; a late request does not make the next one later, so two gaps
    # in a row always span two intervals.
    gaps = [b - a for a, b in itertools.pairwise(creates)]
    jitter = 0.025
    assert min(gaps) >= 0.2 - jitter, gaps
    assert min(a + b for a, b in itertools.pairwise(gaps)) >= 0.4 - jitter, gaps
    # never more than 2 calls alive at once (from the sandbox's own call records)
    events = sorted(
        [(c.placed_at, 1) for c in slow_service.sandbox.calls.values()]
        + [(c.finished_at, -1) for c in slow_service.sandbox.calls.values()]
    )
    alive = peak = 0
    for _, step in events:
        alive += step
        peak = max(peak, alive)
    assert peak <= 2


async def test_cancel_stops_what_was_not_placed(slow_service: Service) -> None:
    ringer = "+15550109999"
    slow_service.sandbox.set_behavior(ringer, PhoneBehavior(answer="no-answer", ring_s=600))
    phones = [ringer] + [f"+1555011{i:04d}" for i in range(6)]
    status, accepted = await post(slow_service, "/v1/alerts", alert_body(*phones))
    assert status == 202
    call = await placed_call(slow_service, ringer)
    await call.wait_for_status("ringing", 20)

    async def known_sid() -> bool:  # the service knows which call to cancel
        _, page = await get(slow_service, f"/v1/alerts/{accepted['id']}/deliveries?limit=1")
        return page["deliveries"][0]["call_sid"] is not None

    await eventually(known_sid)
    status, canceled = await post(slow_service, f"/v1/alerts/{accepted['id']}/cancel", {})
    assert status == 200, canceled
    assert canceled["status"] == "canceled" and canceled["canceled"] >= 4
    assert canceled["ringing_canceled"] >= 1
    placed_before = len(slow_service.sandbox.calls)
    await call.wait_ended(20)
    _, alert = await get(slow_service, f"/v1/alerts/{accepted['id']}")
    assert alert["status"] == "canceled" and alert["counts"].get("canceled", 0) >= 5
    assert len(slow_service.sandbox.calls) == placed_before  # nothing new was dialed after the answer
    status, again = await post(slow_service, f"/v1/alerts/{accepted['id']}/cancel", {})
    assert status == 409 and again["error"] == "alert_finished"


async def test_cancel_withdraws_calls_claimed_but_not_yet_dialed(tmp_path: Path, database_url: str) -> None:
    """At one call a second the next delivery waits, claimed, for its turn: a cancel takes it back."""
    runner, svc = await start_service(
        make_settings(tmp_path, database_url, twilio_cps=1.0, max_concurrent_calls=10)
    )
    try:
        phones = [f"+1555012{i:04d}" for i in range(5)]
        for phone in phones:
            svc.sandbox.set_behavior(phone, PhoneBehavior(answer="no-answer", ring_s=600))
        status, accepted = await post(svc, "/v1/alerts", alert_body(*phones))
        assert status == 202
        first = await placed_call(svc, phones[0])
        await first.wait_for_status("ringing", 20)

        async def next_one_claimed() -> bool:  # claimed, waiting about a second for its turn
            _, page = await get(svc, f"/v1/alerts/{accepted['id']}/deliveries?limit=2")
            return bool(page["deliveries"][1]["state"] == "dialing")

        await eventually(next_one_claimed)
        status, canceled = await post(svc, f"/v1/alerts/{accepted['id']}/cancel", {})
        assert status == 200, canceled
        placed_at_answer = len(svc.sandbox.calls)
        assert canceled["canceled"] == 4 and canceled["status"] == "canceled"
        assert placed_at_answer == 1
        # The dispatcher dials in order: once a later alert's call is placed, anything still queued
        # before it would have been placed too.
        status, later = await post(svc, "/v1/alerts", alert_body(HEARER))
        assert status == 202
        await finished(svc, later["id"])
        dialed = sorted(c.to for c in svc.sandbox.calls.values())
        assert dialed == sorted([phones[0], HEARER]), dialed
    finally:
        await runner.cleanup()


async def test_openapi_document_matches_the_routes(service: Service) -> None:
    async with aiohttp.ClientSession() as http, http.get(service.base_url + "/v1/openapi.json") as resp:
        assert resp.status == 200  # public: no token needed to read the contract
        doc = await resp.json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    registered = {
        (r.method, r.resource.canonical)
        for r in service.app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith(("/v1/", "/outbound-call"))
        and r.method != "HEAD"
    }
    assert documented == registered
    alert = doc["components"]["schemas"]["AlertBody"]
    assert set(alert["properties"]) == {"template", "template_text", "variables", "recipients", "options"}
    assert alert.get("additionalProperties") is False  # unknown fields are refused, and documented so


async def test_late_duplicate_and_reordered_callbacks_change_no_outcome(service: Service) -> None:
    service.sandbox.set_behavior(BUSY, PhoneBehavior(answer="busy"))
    status, accepted = await post(service, "/v1/alerts", alert_body(HEARER, BUSY))
    assert status == 202
    before = await finished(service, accepted["id"])
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    url = service.base_url + "/twilio/status"
    validator = RequestValidator(service.providers.auth_token)
    async with aiohttp.ClientSession() as http:
        for d in page["deliveries"]:
            for seq, call_status in (
                (0, "ringing"),
                (1, "in-progress"),
                (9, "busy"),
                (9, "completed"),
                (2, "no-answer"),
            ):
                form = {
                    "CallSid": d["call_sid"],
                    "AccountSid": service.providers.account_sid,
                    "CallStatus": call_status,
                    "SequenceNumber": str(seq),
                }
                headers = {"X-Twilio-Signature": validator.compute_signature(url, form)}
                async with http.post(url, data=form, headers=headers) as resp:
                    assert resp.status == 204
    after = (await get(service, f"/v1/alerts/{accepted['id']}"))[1]
    assert after["counts"] == before["counts"] == {"heard": 1, "busy": 1}
    _, again = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    assert [d["outcome"] for d in again["deliveries"]] == [d["outcome"] for d in page["deliveries"]]


async def test_twilio_refusals_fail_with_the_code_or_are_retried(service: Service) -> None:
    forbidden, throttled = "+15550100021", "+15550100022"
    service.sandbox.set_behavior(forbidden, PhoneBehavior(refuse_code=21215))  # geo permissions
    service.sandbox.set_behavior(
        throttled, PhoneBehavior(refuse_code=20429, refuse_status=429, refuse_times=1)
    )
    status, accepted = await post(service, "/v1/alerts", alert_body(forbidden, throttled))
    assert status == 202
    alert = await finished(service, accepted["id"])
    assert alert["counts"] == {"failed": 1, "heard": 1}
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    by_phone = {d["phone"]: d for d in page["deliveries"]}
    assert by_phone[forbidden]["outcome_code"] == 21215
    # a 429 is Twilio's rate limit, not the person: retried without spending the only attempt
    assert by_phone[throttled]["attempt"] == 1
    assert "dial_retry" in [h["kind"] for h in by_phone[throttled]["history"]]


def dial_retries(delivery: dict[str, Any]) -> list[tuple[datetime, datetime]]:
    """(when refused, when due again) of each retried refusal in a delivery's history."""
    return [
        (datetime.fromisoformat(h["at"]), datetime.fromisoformat(h["retry_at"]))
        for h in delivery["history"]
        if h["kind"] == "dial_retry"
    ]


async def test_a_refusal_that_persists_backs_off_and_then_fails_with_the_last_code(clock: Clock) -> None:
    """Twilio answering 429 (or 5xx) again and again: dialed again ever later, up to a minute apart, never
    every 2 s, without spending an attempt; after an hour of refusals the delivery fails with Twilio's code
    and says why. An outage that ends before that is waited out."""
    service = await clock.start(datetime(2027, 6, 10, 6, tzinfo=UTC))
    throttled, broken = "+15550100041", "+15550100042"
    service.sandbox.set_behavior(throttled, PhoneBehavior(refuse_code=20429, refuse_status=429))
    service.sandbox.set_behavior(broken, PhoneBehavior(refuse_code=20500, refuse_status=500, refuse_times=10))
    status, accepted = await post(service, "/v1/alerts", alert_body(throttled, broken))
    assert status == 202, accepted
    await clock.advance(timedelta(minutes=2))
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    for delivery in page["deliveries"]:
        retries = dial_retries(delivery)
        # 2 s apart, as before, would be 60 refusals by now; backing off (at most 2, 4, 8, 16, 32, then 60 s,
        # each drawn from the upper half of that), 8 at most
        assert 3 <= len(retries) <= 8, retries
        waits = [(due - at).total_seconds() for at, due in retries]
        assert waits[:5] == sorted(waits[:5]) and waits[0] <= 2 and max(waits) <= 60, waits
        assert delivery["attempt"] == 0 and delivery["state"] == "pending"  # no attempt spent
    await clock.advance(timedelta(hours=1))
    alert = await finished(service, accepted["id"])
    assert alert["counts"] == {"failed": 1, "heard": 1}
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    by_phone = {d["phone"]: d for d in page["deliveries"]}
    assert by_phone[broken]["attempt"] == 1 and len(dial_retries(by_phone[broken])) == 10
    gave_up = by_phone[throttled]
    assert gave_up["outcome_code"] == 20429
    assert gave_up["outcome_reason"].startswith("Twilio kept refusing the call for 1 h"), gave_up
    retries = dial_retries(gave_up)
    waits = [(due - at).total_seconds() for at, due in retries]
    assert max(waits) <= 60 and min(waits[5:]) >= 30, waits  # capped at a minute, from its upper half
    assert retries[-1][1] - retries[0][0] <= timedelta(hours=1)  # given up within the hour
    assert len(retries) <= 130


async def test_message_is_synthesized_while_the_phone_rings(service: Service) -> None:
    slow_to_answer = "+15550100031"
    service.sandbox.set_behavior(slow_to_answer, PhoneBehavior(ring_s=25))  # one second at the test's speed
    status, accepted = await post(service, "/v1/alerts", alert_body(slow_to_answer))
    assert status == 202
    await finished(service, accepted["id"])
    call = next(c for c in service.sandbox.calls.values() if c.to == slow_to_answer)
    assert call.answered_at is not None and service.tts.requests
    first_request = min(r.received_at for r in service.tts.requests)
    assert first_request < call.answered_at  # the audio was being made before anyone picked up


async def test_pressing_2_then_hanging_up_is_hung_up_early(service: Service) -> None:
    leaver = "+15550100032"
    status, accepted = await post(service, "/v1/alerts", alert_body(leaver, confirm=True))
    assert status == 202
    call = await placed_call(service, leaver)
    await call.wait_for_media(20)
    await call.press("2")
    await call.hang_up()
    alert = await finished(service, accepted["id"])
    assert alert["counts"] == {"hung_up_early": 1}


async def test_oversized_body_is_413_json(service: Service) -> None:
    body = alert_body(HEARER)
    body["variables"]["padding"] = "x" * (service.settings.announcer_max_body_bytes + 1)
    status, answer = await post(service, "/v1/alerts", body)
    assert status == 413 and answer["error"] == "body_too_large"
    assert not service.sandbox.calls


async def test_twenty_recipients_each_end_in_what_happened(
    hooked_service: Service, receiver: Receiver
) -> None:
    """The issue's mixed list: answer, press 1, press 2 then hang up, no answer, busy, invalid number;
    retries as configured, and every outcome reported through the signed webhook."""
    service = hooked_service
    groups: dict[str, list[str]] = {
        "heard": [f"+155501020{i:02d}" for i in range(4)],
        "confirmed": [f"+155501021{i:02d}" for i in range(4)],
        "hung_up_early": [f"+155501022{i:02d}" for i in range(3)],
        "no_answer": [f"+155501023{i:02d}" for i in range(3)],
        "busy": [f"+155501024{i:02d}" for i in range(3)],
        "failed": [f"+155501025{i:02d}" for i in range(3)],
    }
    for phone in groups["no_answer"]:
        service.sandbox.set_behavior(phone, PhoneBehavior(answer="no-answer"))
    for phone in groups["busy"]:
        service.sandbox.set_behavior(phone, PhoneBehavior(answer="busy"))
    for phone in groups["failed"]:
        service.sandbox.set_behavior(phone, PhoneBehavior(refuse_code=21211))  # Twilio: invalid 'To'
    phones = [p for group in groups.values() for p in group]
    options = {
        "confirm": True,
        "max_attempts": 2,
        "retry_on": ["busy"],
        "retry_backoff_s": 0.05,
        "callback_url": receiver.url,
    }
    status, accepted = await post(service, "/v1/alerts", alert_body(*phones, **options))
    assert status == 202 and accepted["recipients"] == 20

    async def confirm(phone: str) -> None:
        call = await placed_call(service, phone)
        await call.wait_for_mark("prompt:", 20)
        await call.press("1")

    async def repeat_then_leave(phone: str) -> None:
        call = await placed_call(service, phone)
        await call.wait_for_media(20)
        await call.press("2")
        await call.hang_up()

    await asyncio.gather(
        *(confirm(p) for p in groups["confirmed"]),
        *(repeat_then_leave(p) for p in groups["hung_up_early"]),
    )
    alert = await finished(service, accepted["id"])
    async with asyncio.timeout(30):
        await receiver.completed.wait()
    assert all(signed for _, signed in receiver.received)
    received = [body for body, _ in receiver.received]
    assert alert["counts"] == {outcome: len(group) for outcome, group in groups.items()}
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    by_phone = {d["phone"]: d for d in page["deliveries"]}
    for outcome, group in groups.items():
        assert {by_phone[p]["outcome"] for p in group} == {outcome}
    assert {by_phone[p]["outcome_code"] for p in groups["failed"]} == {21211}
    placed = Counter(c.to for c in service.sandbox.calls.values())
    assert all(placed[p] == 2 for p in groups["busy"])  # retried once, as configured
    assert all(
        placed[p] == 1 for g in ("heard", "confirmed", "hung_up_early", "no_answer") for p in groups[g]
    )
    assert not any(placed[p] for p in groups["failed"])  # refused by Twilio: no call exists
    finals = {
        b["delivery"]["phone"]: b["delivery"]["outcome"] for b in received if b["type"] == "delivery.finished"
    }
    assert finals == {p: outcome for outcome, group in groups.items() for p in group}


async def call_sid_of(service: Service, alert_id: str) -> str:
    """The Call SID of the alert's (only) delivery, once recorded."""
    sid: str | None = None

    async def recorded() -> bool:
        nonlocal sid
        _, page = await get(service, f"/v1/alerts/{alert_id}/deliveries")
        sid = page["deliveries"][0]["call_sid"]
        return sid is not None

    await eventually(recorded, timeout=20)
    assert sid is not None
    return sid


@pytest.mark.parametrize(
    ("answered_by", "outcome"),
    [("human", "hung_up_early"), ("machine_end_beep", "machine"), ("fax", "fax")],
)
async def test_a_call_answered_elsewhere_and_completed_is_hung_up_early_not_no_answer(
    service: Service, answered_by: str, outcome: str
) -> None:
    """issue 15, a process that dies: the call's `in-progress` callback and its media stream went to a worker
    that was SIGKILLed, so nothing here knows it was answered; its `completed` reaches a process that lived.
    Twilio's CallDuration and AnsweredBy say it was answered: a person heard part of it (or none), which is
    `hung_up_early`, never `no_answer` (a machine's or a fax's verdict: what the media session's own rules
    make of them, `machine` and `fax`)."""
    ringing = "+15550100041"
    service.sandbox.set_behavior(ringing, PhoneBehavior(answer="no-answer", ring_s=600))
    status, accepted = await post(service, "/v1/alerts", alert_body(ringing))
    assert status == 202, accepted
    call = await placed_call(service, ringing)
    # Its own callbacks go nowhere (the dead worker): only what the test posts below reaches the service.
    call.status_callback = None
    await call_sid_of(service, accepted["id"])
    url = service.base_url + "/twilio/status"
    validator = RequestValidator(service.providers.auth_token)
    # What a process that lived receives: the `completed` after the lost `in-progress` (sequence 2).
    form = {
        "CallSid": call.sid,
        "AccountSid": service.providers.account_sid,
        "CallStatus": "completed",
        "SequenceNumber": "5",
        "CallDuration": "9",
        "AnsweredBy": answered_by,
    }
    async with aiohttp.ClientSession() as http:
        headers = {"X-Twilio-Signature": validator.compute_signature(url, form)}
        async with http.post(url, data=form, headers=headers) as resp:
            assert resp.status == 204
    alert = await finished(service, accepted["id"])
    assert alert["counts"] == {outcome: 1}, alert["counts"]


async def test_a_call_settled_by_asking_twilio_after_its_process_died_is_answered_as_twilio_says(
    tmp_path: Path, database_url: str
) -> None:
    """The same, when the `completed` was lost too: the reconciler asks Twilio about the quiet call, and
    Twilio's Call resource (status completed, a duration) says it was answered: `hung_up_early`. The call as
    the dead worker left it: a SID, no answer recorded. Its truth is a real sandbox call that was answered
    and ran three seconds with nobody told (no status callback, no stream)."""
    from sqlalchemy import update

    from announcer.app import TWILIO
    from announcer.store.models import Call, Delivery

    runner, service = await start_service(make_settings(tmp_path, database_url, announcer_claim_lease_s=1.0))
    try:
        ringing, answerer = "+15550100042", "+15550100043"
        service.sandbox.set_behavior(ringing, PhoneBehavior(answer="no-answer", ring_s=600))
        status, accepted = await post(service, "/v1/alerts", alert_body(ringing))
        assert status == 202, accepted
        dead_call = await placed_call(service, ringing)
        dead_call.status_callback = None  # nothing more of it reaches the service
        dead_sid = await call_sid_of(service, accepted["id"])
        twilio = service.app[TWILIO]
        truth = await twilio.create(
            to=answerer,
            from_=service.providers.phone_number,
            twiml="<Response><Pause length='3'/></Response>",
        )
        answered = service.sandbox.calls[truth.sid]
        await answered.wait_ended(20)
        assert answered.answered_at is not None and answered.duration_s, answered.duration_s
        # The attempt's call is the answered one (what the dead worker was carrying).
        async with service.store.sessions() as s:
            await s.execute(update(Call).where(Call.call_sid == dead_sid).values(call_sid=truth.sid))
            await s.execute(update(Delivery).where(Delivery.call_sid == dead_sid).values(call_sid=truth.sid))
            await s.commit()
        alert = await finished(service, accepted["id"])
        assert alert["counts"] == {"hung_up_early": 1}, alert["counts"]
        events = await service.store.events((await service.store.find_by_sid(truth.sid)) or 0)
        assert any(e.detail.get("source") == "reconciled with Twilio" for e in events), events
    finally:
        await runner.cleanup()
