"""Outcome webhooks: signing, and delivery to a real local receiver with retries, timeouts and shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from ipaddress import IPv4Network
from typing import Any

import pytest
from aiohttp import web

from announcer.deliveries import callbacks
from announcer.deliveries.callbacks import WebhookSender, sign, verify
from announcer.deliveries.egress import EgressPolicy

SECRET = "whsec_test_0123456789"
# The receiver is on 127.0.0.1 over http: both allowed explicitly, as an operator would (egress.py).
LOCAL_RECEIVER = EgressPolicy(allow_http=True, allow_networks=(IPv4Network("127.0.0.1/32"),))
PAYLOAD: dict[str, Any] = {"event": "delivery.completed", "alert_id": "al_1", "outcome": "answered", "n": 1}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # hold the request open until the test ends


@dataclass(frozen=True)
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook endpoint on 127.0.0.1: each path answers from its script (the last reply repeats) and
    every request is recorded before it is answered."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.hits: list[Hit] = []
        self.url = ""
        self.released = asyncio.Event()
        self._changed = asyncio.Condition()

    def script(self, path: str, *replies: Reply) -> str:
        self.scripts[path] = list(replies)
        return self.url + path

    def hits_for(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]

    async def wait_hits(self, path: str, count: int, timeout: float = 5.0) -> list[Hit]:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.hits_for(path)) >= count)
        return self.hits_for(path)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self._changed:
            self.hits.append(Hit(request.path, dict(request.headers), body))
            self._changed.notify_all()
        script = self.scripts[request.path]
        reply = script.pop(0) if len(script) > 1 else script[0]
        if reply.hang:
            await self.released.wait()
        return web.Response(status=reply.status, headers=reply.headers)


class MaxRandom(random.Random):
    """Jitter that always draws the ceiling: makes the exponential schedule visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        # Hung handlers are let go first, or cleanup would wait for them.
        rec.released.set()
        await runner.cleanup()


SenderFactory = Callable[..., WebhookSender]


@pytest.fixture
async def make_sender(receiver: Receiver) -> AsyncIterator[SenderFactory]:
    made: list[WebhookSender] = []

    def make(*, start: bool = True, **knobs: Any) -> WebhookSender:
        options: dict[str, Any] = {
            "egress": LOCAL_RECEIVER,
            "backoff_s": 0.01,
            "max_backoff_s": 0.05,
            "timeout_s": 5.0,
        }
        options.update(knobs)
        sender = WebhookSender(SECRET, **options)
        if start:
            sender.start()
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close(drain_timeout_s=0)


def expected_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


# --- signing ---------------------------------------------------------------------------------------


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    mac = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, body, 1700000000) == f"t=1700000000,v1={mac}"


def test_verify_accepts_fresh_and_rejects_wrong_tampered_stale_or_malformed() -> None:
    body = b'{"a":1}'
    t = 1700000000
    header = sign(SECRET, body, t)
    assert verify(SECRET, body, header, now=t + 10)
    assert not verify("another-secret", body, header, now=t)
    assert not verify(SECRET, b'{"a":2}', header, now=t)
    assert not verify(SECRET, body, header, now=t + 301)
    assert not verify(SECRET, body, header, now=t - 301)
    assert verify(SECRET, body, header, now=t + 1000, tolerance_s=1000)
    mac = header.split("v1=")[1]
    for malformed in [
        "",
        "garbage",
        f"v1={mac}",
        f"t={t}",
        f"t=abc,v1={mac}",
        f"t=-{t},v1={mac}",
        f"t={t},t={t},v1={mac}",
        f"t={t},v1={mac.upper()}",
        f"t={t},v1=é{mac[1:]}",
        f"t={t},v1={mac},",
    ]:
        assert not verify(SECRET, body, malformed, now=t), malformed


def test_verify_accepts_any_of_several_v1_entries_for_rotation() -> None:
    body = b"{}"
    t = 1700000000
    old = sign("old-secret", body, t).split("v1=")[1]
    new = sign(SECRET, body, t).split("v1=")[1]
    rotating = f"t={t},v1={old},v1={new},v0=ignored"
    assert verify(SECRET, body, rotating, now=t)
    assert verify("old-secret", body, rotating, now=t)
    assert not verify("third-secret", body, rotating, now=t)


async def test_backoff_doubles_with_full_jitter_and_is_capped(make_sender: SenderFactory) -> None:
    short = make_sender(start=False, backoff_s=1.0, max_backoff_s=10.0).backoff
    assert [short.delay_s(n, MaxRandom()) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    backoff = make_sender(start=False, backoff_s=1.0, max_backoff_s=300.0).backoff
    assert backoff.delay_s(10_000, MaxRandom()) == 300.0
    rng = random.Random(7)
    delays = [backoff.delay_s(4, rng) for _ in range(200)]
    assert all(0.0 <= d <= 8.0 for d in delays) and len(set(delays)) > 1
    assert min(backoff.delay_s(4, rng) for _ in range(2000)) < 0.5  # full jitter: down to nothing


# --- delivery --------------------------------------------------------------------------------------


async def test_receiver_verifies_signature_and_headers(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    url = receiver.script("/hook", Reply(200))
    sender = make_sender()
    before = time.time()
    sender.send(url, "evt_1", PAYLOAD)
    await sender.wait_idle(5)

    [hit] = receiver.hits
    assert hit.body == expected_body(PAYLOAD)
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["User-Agent"] == "announcer-webhooks/1"
    assert hit.headers["X-Announcer-Event-Id"] == "evt_1"
    header = hit.headers["X-Announcer-Signature"]
    assert verify(SECRET, hit.body, header)
    assert not verify("wrong-secret", hit.body, header)
    assert not verify(SECRET, hit.body.replace(b"answered", b"voicemail"), header)
    assert not verify(SECRET, hit.body, header, now=before + 301 + 5)
    assert sender.delivered == 1 and sender.failed == 0 and sender.dropped == 0
    assert [(a.event_id, a.url, a.status, a.error) for a in sender.attempts] == [("evt_1", url, 200, None)]


async def test_500_twice_then_200_takes_three_identical_attempts(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    url = receiver.script("/flaky", Reply(500), Reply(500), Reply(200))
    sender = make_sender()
    sender.send(url, "evt_flaky", PAYLOAD)
    await sender.wait_idle(5)

    hits = receiver.hits_for("/flaky")
    assert len(hits) == 3
    assert {h.headers["X-Announcer-Event-Id"] for h in hits} == {"evt_flaky"}
    assert {h.body for h in hits} == {expected_body(PAYLOAD)}
    assert all(verify(SECRET, h.body, h.headers["X-Announcer-Signature"]) for h in hits)
    assert [a.status for a in sender.attempts] == [500, 500, 200]
    assert sender.delivered == 1 and sender.failed == 0


async def test_400_is_permanent(receiver: Receiver, make_sender: SenderFactory) -> None:
    url = receiver.script("/bad", Reply(400), Reply(200))
    sender = make_sender()
    sender.send(url, "evt_bad", PAYLOAD)
    await sender.wait_idle(5)
    assert len(receiver.hits_for("/bad")) == 1
    assert sender.failed == 1 and sender.delivered == 0


async def test_redirect_is_permanent_and_not_followed(receiver: Receiver, make_sender: SenderFactory) -> None:
    url = receiver.script("/moved", Reply(302, {"Location": "/elsewhere"}))
    receiver.script("/elsewhere", Reply(200))
    sender = make_sender()
    sender.send(url, "evt_moved", PAYLOAD)
    await sender.wait_idle(5)
    assert len(receiver.hits_for("/moved")) == 1 and receiver.hits_for("/elsewhere") == []
    assert sender.failed == 1


@pytest.mark.parametrize(
    ("retry_after", "max_backoff_s"),
    [("0", 300.0), ("3600", 0.05), ("http-date-in-the-past", 300.0)],
)
async def test_429_honours_retry_after_over_backoff(
    receiver: Receiver, make_sender: SenderFactory, retry_after: str, max_backoff_s: float
) -> None:
    if retry_after == "http-date-in-the-past":
        retry_after = formatdate(time.time() - 60, usegmt=True)
    url = receiver.script("/busy", Reply(429, {"Retry-After": retry_after}), Reply(200))
    # The backoff alone would wait 30 s (the jitter draws its ceiling), and 3600 s must be capped at
    # max_backoff_s: only an honoured, capped Retry-After lets the retry land within the wait below.
    sender = make_sender(backoff_s=30.0, max_backoff_s=max_backoff_s, rng=MaxRandom())
    sender.send(url, "evt_busy", PAYLOAD)
    await sender.wait_idle(5)
    assert [a.status for a in sender.attempts] == [429, 200]
    assert sender.delivered == 1


async def test_hanging_receiver_times_out_is_retried_then_given_up(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    url = receiver.script("/hang", Reply(200, hang=True))
    sender = make_sender(timeout_s=0.3, max_attempts=3)
    sender.send(url, "evt_hang", PAYLOAD)
    await sender.wait_idle(10)
    assert len(receiver.hits_for("/hang")) == 3
    assert [a.error for a in sender.attempts] == ["timeout"] * 3
    assert {h.headers["X-Announcer-Event-Id"] for h in receiver.hits} == {"evt_hang"}
    assert sender.failed == 1 and sender.delivered == 0


async def test_connection_refused_is_retried_then_given_up(make_sender: SenderFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = make_sender(max_attempts=4)
    sender.send(f"http://127.0.0.1:{port}/hook", "evt_refused", PAYLOAD)
    await sender.wait_idle(5)
    assert len(sender.attempts) == 4
    assert all(a.status is None and a.error for a in sender.attempts)
    assert sender.failed == 1


async def test_unusable_url_is_permanent(make_sender: SenderFactory) -> None:
    sender = make_sender()
    sender.send("ftp://example.invalid/hook", "evt_ftp", PAYLOAD)
    await sender.wait_idle(5)
    assert len(sender.attempts) == 1 and sender.failed == 1


async def test_send_does_not_await_the_network(receiver: Receiver, make_sender: SenderFactory) -> None:
    assert not inspect.iscoroutinefunction(WebhookSender.send)
    url = receiver.script("/slow", Reply(200, hang=True))
    sender = make_sender()
    for i in range(50):
        assert sender.send(url, f"evt_{i}", PAYLOAD) is None  # type: ignore[func-returns-value]
    # send never yielded to the loop, so no request can have reached the receiver yet.
    assert receiver.hits == []
    await receiver.wait_hits("/slow", 32)
    with pytest.raises(TimeoutError):
        await sender.wait_idle(0.05)


async def test_slow_receiver_does_not_delay_another_url(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    slow = receiver.script("/slow", Reply(200, hang=True))
    fast = receiver.script("/fast", Reply(200))
    sender = make_sender()
    sender.send(slow, "evt_slow", PAYLOAD)
    await receiver.wait_hits("/slow", 1)
    sender.send(fast, "evt_fast", PAYLOAD)
    await receiver.wait_hits("/fast", 1, timeout=2)
    async with asyncio.timeout(2):
        while sender.delivered < 1:  # noqa: ASYNC110 - the counter has no event of its own
            await asyncio.sleep(0.005)
    assert [a.event_id for a in sender.attempts] == ["evt_fast"]
    assert sender.outstanding == 1  # the slow one is still in flight


async def test_queue_full_drops_are_counted(
    receiver: Receiver, make_sender: SenderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = receiver.script("/hook", Reply(200))
    sender = make_sender(start=False, max_queue=2)
    with caplog.at_level(logging.ERROR, logger=callbacks.__name__):
        for i in range(5):
            sender.send(url, f"evt_{i}", PAYLOAD)
    assert sender.dropped == 3
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 3
    # Events accepted before the worker started are delivered once it runs.
    sender.start()
    await sender.wait_idle(5)
    assert sender.delivered == 2
    assert sorted(h.headers["X-Announcer-Event-Id"] for h in receiver.hits) == ["evt_0", "evt_1"]


async def test_close_drains_work_that_finishes_in_time(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    url = receiver.script("/flaky", Reply(503), Reply(200))
    sender = make_sender()
    sender.send(url, "evt_drain", PAYLOAD)
    await sender.close(drain_timeout_s=5)
    assert sender.delivered == 1 and sender.dropped == 0
    sender.send(url, "evt_late", PAYLOAD)
    assert sender.dropped == 1


async def test_close_with_pending_work_returns_within_drain_timeout(
    receiver: Receiver, make_sender: SenderFactory
) -> None:
    url = receiver.script("/hang", Reply(200, hang=True))
    sender = make_sender(concurrency=1)
    for i in range(3):
        sender.send(url, f"evt_{i}", PAYLOAD)
    await receiver.wait_hits("/hang", 1)
    started = time.monotonic()
    await sender.close(drain_timeout_s=0.2)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 1.5
    assert sender.dropped == 3 and sender.outstanding == 0
    await sender.wait_idle(0)


async def test_close_without_start_drops_queued_events(make_sender: SenderFactory) -> None:
    sender = make_sender(start=False)
    sender.send("http://127.0.0.1:9/hook", "evt_never", PAYLOAD)
    await sender.close(drain_timeout_s=5)
    assert sender.dropped == 1 and sender.outstanding == 0


async def test_attempt_log_is_bounded(
    receiver: Receiver, make_sender: SenderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callbacks, "ATTEMPT_LOG_SIZE", 3)
    url = receiver.script("/hook", Reply(500), Reply(500), Reply(500), Reply(200))
    sender = make_sender()
    sender.send(url, "evt_log", PAYLOAD)
    await sender.wait_idle(5)
    assert [a.status for a in sender.attempts] == [500, 500, 200]


async def test_logs_name_event_and_host_but_not_secret_or_payload(
    receiver: Receiver, make_sender: SenderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "patient-name-do-not-log"
    flaky = receiver.script("/flaky", Reply(500), Reply(200)) + "?token=query-secret"
    bad = receiver.script("/bad", Reply(400))
    sender = make_sender()
    with caplog.at_level(logging.DEBUG, logger=callbacks.__name__):
        sender.send(flaky, "evt_a", {**PAYLOAD, "name": marker})
        sender.send(bad, "evt_b", {**PAYLOAD, "name": marker})
        await sender.wait_idle(5)
    text = caplog.text
    assert "evt_a" in text and "evt_b" in text and "127.0.0.1" in text
    assert "500" in text and "400" in text
    assert SECRET not in text and marker not in text and "query-secret" not in text


async def test_wait_idle_times_out_while_busy(receiver: Receiver, make_sender: SenderFactory) -> None:
    url = receiver.script("/hang", Reply(200, hang=True))
    sender = make_sender()
    await sender.wait_idle(0)
    sender.send(url, "evt_busy", PAYLOAD)
    with pytest.raises(TimeoutError):
        await sender.wait_idle(0.05)


def test_constructor_rejects_empty_secret() -> None:
    with pytest.raises(ValueError):
        WebhookSender("", egress=LOCAL_RECEIVER)
