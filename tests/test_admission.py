"""Admission control (deliveries/admission.py): the dialing rate follows what the process can serve.

The controller is tested pure (samples in, a rate out); the measures on a real event loop and playout
clock; and the whole service with `TWILIO_CPS` far above what this machine can serve: every call is
heard, none hung up early, and the rate it found is printed."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from announcer.app import DATABASE
from announcer.deliveries.admission import (
    BACKLOG_HIGH_S,
    CUT_EVERY,
    DECREASE,
    LAG_HIGH_S,
    LAG_LOW_S,
    MIN_RATE,
    START_RATE,
    Controller,
    LagSampler,
    Sample,
)
from announcer.sandbox.twilio_call import PhoneBehavior
from announcer.store.models import CallEvent
from announcer.telephony.playout import LATE_RELEASE_S, PlayoutClock
from tests.conftest import AUTH, USE_PG, eventually, make_settings, start_service

CALM = Sample(lag_s=0.002, late_frames=0, pending_starts=0)
LAGGING = Sample(lag_s=LAG_HIGH_S * 3, late_frames=0, pending_starts=0)


# --- the controller -----------------------------------------------------------------------------------


def test_a_calm_process_climbs_to_twilio_cps_and_stays_there() -> None:
    controller = Controller(ceiling=60.0)
    assert controller.rate == START_RATE and controller.decision.limited_by == "headroom"
    rates = [controller.step(CALM).rate for _ in range(100)]
    assert rates == sorted(rates)  # never down without a reason
    assert rates[-1] == 60.0 and controller.decision.limited_by == "twilio_cps"


def test_a_low_twilio_cps_is_the_limit_from_the_start() -> None:
    controller = Controller(ceiling=5.0)
    assert controller.rate == 5.0 and controller.decision.limited_by == "twilio_cps"
    assert Controller(ceiling=0.5).step(LAGGING).rate == 0.5  # the floor never lifts it above the account's


def test_lag_brings_the_rate_down_and_it_recovers_when_the_lag_goes() -> None:
    controller = Controller(ceiling=1000.0)
    for _ in range(60):
        controller.step(CALM)
    high = controller.rate
    assert high > 5 * START_RATE
    down = [controller.step(LAGGING).rate for _ in range(4 * CUT_EVERY)]
    # cut at once, then once every CUT_EVERY windows while the lag lasts; never up meanwhile
    assert down[0] == pytest.approx(high * DECREASE) and down == sorted(down, reverse=True)
    assert down[-1] == pytest.approx(high * DECREASE**4)
    d = controller.decision
    assert d.limited_by == "headroom" and "event loop" in d.why and "ms late" in d.why
    for _ in range(200):
        controller.step(LAGGING)
    assert controller.rate == MIN_RATE  # a floor: a process that dials nothing learns nothing
    up = [controller.step(CALM).rate for _ in range(80)]
    assert up == sorted(up) and up[-1] > 10 * MIN_RATE


def test_some_lag_holds_the_rate() -> None:
    controller = Controller(ceiling=1000.0)
    before = controller.rate
    assert controller.step(Sample((LAG_LOW_S + LAG_HIGH_S) / 2, 0, 0)).rate == before
    assert "holding" in controller.decision.why


def test_late_frames_and_a_write_backlog_bring_it_down_and_waiting_streams_hold_it() -> None:
    controller = Controller(ceiling=1000.0)
    before = controller.rate
    assert controller.step(Sample(0.001, late_frames=3, pending_starts=0)).rate < before
    assert "late" in controller.decision.why
    for _ in range(CUT_EVERY):
        controller.step(Sample(0.03, 0, 0))  # held: room for the next cut
    before = controller.rate
    assert controller.step(Sample(0.001, 0, 0, backlog_s=BACKLOG_HIGH_S * 2)).rate < before
    assert "database writes" in controller.decision.why
    before = controller.rate
    assert controller.step(Sample(0.001, 0, pending_starts=1000)).rate == before
    assert "streams waiting" in controller.decision.why


# --- the measures -------------------------------------------------------------------------------------


async def test_the_sampler_sees_a_blocked_loop() -> None:
    sampler = LagSampler(period_s=0.01)
    task = asyncio.create_task(sampler.run())
    try:
        await asyncio.sleep(0)  # the sampler asks for its wake-up
        time.sleep(0.2)  # noqa: ASYNC251 - the loop blocked: what a burst of CPU-bound work does to every call
        async with asyncio.timeout(5):
            while sampler.worst_s == 0:  # noqa: ASYNC110 - the sampler writes it on its next wake-up
                await asyncio.sleep(0.005)
        assert sampler.take_worst() >= 0.15
        assert sampler.worst_s == 0  # taken: the next window starts afresh
    finally:
        task.cancel()


async def test_the_playout_clock_counts_starting_streams_and_late_releases() -> None:
    clock = PlayoutClock()
    clock.start()
    try:
        a, b = clock.stream(), clock.stream()
        assert clock.pending_starts() == 2
        a.sent()
        assert clock.pending_starts() == 1
        b.sent()
        assert clock.pending_starts() == 0
        # A stream a second ahead waits for the clock; the loop blocks past its release time.
        for _ in range(60):
            a.sent()
        room = asyncio.ensure_future(a.room())
        await asyncio.sleep(0)
        due = a.play_end - clock.ahead_s + clock.refill_s
        time.sleep(due - time.monotonic() + LATE_RELEASE_S + 0.05)  # noqa: ASYNC251 - the blocked loop
        async with asyncio.timeout(5):
            await room
        assert clock.late_releases == 1
    finally:
        await clock.stop()


# --- the whole service, dialing far above what it can serve -------------------------------------------

# Enough to overload the code without admission control, measured on this 2-core machine: on SQLite
# (whose single writer slows the creates themselves) 0-58 of 100 hung up early, depending on the machine's
# other load, and the median call heard 3.4-7 s of silence after answering (300 still all answered, 2.7 s
# late); on PostgreSQL 200 were all heard 1.8 s late, and 275-289 of 300 hung up early.
RECIPIENTS = 300 if USE_PG else 100
TEXT = "The billing server is down since 09:30 today. Please check it."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_far_above_capacity_every_call_is_heard_and_none_hangs_up_early(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="announcer.deliveries.admission")
    # Speed 1: each call streams in real time, as on a real line (the tests' 25x would make every call's
    # audio 25 times as dense). The set-up cost per call is what overloads.
    settings = make_settings(
        tmp_path, database_url, twilio_cps=1000.0, max_concurrent_calls=1000, announcer_sandbox_speed=1.0
    )
    runner, service = await start_service(settings)
    try:
        phones = [f"+1555030{i:04d}" for i in range(RECIPIENTS)]
        body = {
            "template_text": TEXT,
            "recipients": [{"phone": p} for p in phones],
            # At once on answer: start -> first frame is then the service's own delay, nothing waited for.
            "options": {"start": "on_answer", "machine_detection": False},
        }
        healths: list[dict[str, Any]] = []
        async with aiohttp.ClientSession(headers=AUTH) as http:

            async def api(method: str, path: str, **kw: Any) -> Any:
                async with http.request(method, service.base_url + path, **kw) as resp:
                    assert resp.status < 300, await resp.text()
                    return await resp.json()

            t0 = time.monotonic()
            alert = await api("POST", "/v1/alerts", json=body)

            async def done() -> bool:
                healths.append((await api("GET", "/healthz"))["dialing"])
                return bool((await api("GET", f"/v1/alerts/{alert['id']}"))["status"] != "active")

            await eventually(done, timeout=240)
            wall = time.monotonic() - t0
            final = await api("GET", f"/v1/alerts/{alert['id']}")
        calls = list(service.sandbox.calls.values())
        creates = [
            r.at for r in service.sandbox.rest_log if r.method == "POST" and r.path.endswith("/Calls.json")
        ]
        async with service.app[DATABASE].sessions() as session:
            details = (
                await session.scalars(select(CallEvent.detail).where(CallEvent.kind == "speech_started"))
            ).all()
        first_frame_ms = [
            float((json.loads(d) if isinstance(d, str) else d)["first_frame_ms"]) for d in details
        ]
        # What the phone heard: silence from its answer to the first frame of the message.
        silence_s = [c.first_media_at - c.answered_at for c in calls if c.first_media_at and c.answered_at]
        headroom = [h for h in healths if h["limited_by"] == "headroom"]
        whys = Counter(re.sub(r"[\d.]+", "N", h["why"]) for h in healths)
        rates = [h["rate_per_s"] for h in healths]
        print(
            f"\nadmission at TWILIO_CPS=1000, {RECIPIENTS} recipients: {final['counts']} in {wall:.1f} s, "
            f"placed {len(creates) / (max(creates) - min(creates)):.1f} calls/s on average; rate found "
            f"{statistics.median(rates):.1f}/s median (min {min(rates)}, max {max(rates)}), "
            f"{len(headroom)} of {len(healths)} looks limited by headroom; last why: {healths[-1]['why']}\n"
            f"start -> first frame (service) p50 {percentile(first_frame_ms, 0.5):.1f} ms, p99 "
            f"{percentile(first_frame_ms, 0.99):.1f} ms; answer -> first frame (phone) p50 "
            f"{percentile(silence_s, 0.5) * 1000:.0f} ms, p99 {percentile(silence_s, 0.99) * 1000:.0f} ms, "
            f"max {max(silence_s) * 1000:.0f} ms\nwhy, at each look: {dict(whys.most_common())}"
        )
        assert final["counts"] == {"heard": RECIPIENTS}  # every call heard, none hung up early
        assert len(creates) == RECIPIENTS and sorted(c.to for c in calls) == phones  # each called once
        assert len(first_frame_ms) == len(silence_s) == RECIPIENTS
        # The rate found is this process's, not Twilio's: well below TWILIO_CPS, and headroom said so.
        assert headroom and max(rates) < 1000
        said = [r.getMessage() for r in caplog.records if r.name == "announcer.deliveries.admission"]
        assert any(m.startswith("dialing at") and "limited by headroom" in m for m in said), said
        # Without admission the calls heard had 1.5-10 s of silence first at the median.
        assert percentile(silence_s, 0.5) < 1.0
    finally:
        await runner.cleanup()


async def test_healthz_says_at_what_rate_it_dials_and_why(tmp_path: Path, database_url: str) -> None:
    runner, service = await start_service(
        make_settings(tmp_path, database_url, twilio_cps=5.0, max_concurrent_calls=1)
    )
    try:
        async with aiohttp.ClientSession(headers=AUTH) as http:

            async def dialing() -> dict[str, Any]:
                async with http.get(service.base_url + "/healthz") as resp:
                    return dict((await resp.json())["dialing"])

            idle: dict[str, Any] = {}

            async def at_cps() -> bool:
                # Start-up's own work (the SDKs' imports) may lag the loop and cut the rate for a moment.
                idle.update(await dialing())
                return bool(idle["limited_by"] == "twilio_cps")

            await eventually(at_cps)
            assert idle["rate_per_s"] == 5.0
            assert idle["twilio_cps"] == 5.0 and idle["in_flight"] == 0 and idle["max_concurrent_calls"] == 1
            assert {
                "loop_lag_ms",
                "db_backlog_ms",
                "pending_starts",
                "late_frame_waits",
                "why",
            } <= idle.keys()
            # One call ringing (10 s at the test's speed) fills MAX_CONCURRENT_CALLS: that is the limit now.
            ringing = "+15550300999"
            service.sandbox.set_behavior(ringing, PhoneBehavior(ring_s=250))
            body = {"template_text": TEXT, "recipients": [{"phone": ringing}]}
            async with http.post(service.base_url + "/v1/alerts", json=body) as resp:
                alert = await resp.json()

            async def full() -> bool:
                return (await dialing())["limited_by"] == "concurrency"

            await eventually(full)
            assert (await dialing())["in_flight"] == 1
            async with http.post(service.base_url + f"/v1/alerts/{alert['id']}/cancel") as resp:
                assert resp.status < 300
    finally:
        await runner.cleanup()
