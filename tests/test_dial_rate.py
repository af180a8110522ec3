"""One call rate for the Twilio account across the processes sharing a PostgreSQL database
(deliveries/dial_rate.py): the limiter's slots, and three services dialing one sandbox Twilio account at
TWILIO_CPS=10 measured where Twilio counts, as the sandbox receives each create."""

from __future__ import annotations

import asyncio
import gc
import itertools
import secrets
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from announcer.app import DISPATCHER, TWILIO
from announcer.deliveries.dial_rate import AccountRate, Slot
from announcer.sandbox.twilio_call import PhoneBehavior
from announcer.store.db import Database
from tests.conftest import USE_PG, free_port, make_settings, start_service
from tests.test_alerts import finished, get, post

pytestmark = pytest.mark.skipif(
    not USE_PG,
    reason="the account's rate is shared through PostgreSQL; SQLite is one process, paced by its own bucket",
)

CPS = 10.0
WINDOW_S = 1.01
PROCESSES = 3
PER_PROCESS = 30  # recipients of the alert posted to each process: 90 calls, about 9 s of dialing


def body(phones: list[str]) -> dict[str, Any]:
    """An alert whose text is the same for everyone: one synthesis per process, not one per call (the
    sandbox voice's CPU would share the loop with what is measured)."""
    return {"template_text": "The billing server is down.", "recipients": [{"phone": p} for p in phones]}


async def _migrated(url: str) -> Database:
    database = Database(url)
    await database.upgrade()
    return database


async def test_concurrent_takers_never_get_slots_closer_than_one_interval(database_url: str) -> None:
    database = await _migrated(database_url)
    account = "AC" + secrets.token_hex(16)
    # Two takers as two processes would be: each its own engine, so its own connection.
    other = Database(database_url)
    takers = [AccountRate(database.engine, account, CPS), AccountRate(other.engine, account, CPS)]
    try:

        async def take(rate: AccountRate, n: int) -> list[Slot]:
            return [await rate.reserve() for _ in range(n)]

        a, b = await asyncio.gather(take(takers[0], 40), take(takers[1], 40))
        interval = takers[0].interval
        assert interval > 1 / CPS  # a margin under the account's rate, never above it
        slots = sorted(s.db_at for s in a + b)
        gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
        assert min(gaps) >= 1 / CPS - 1e-6, min(gaps)
        # Back to back (asked faster than the rate), never a slot left unused between two.
        assert max(gaps) <= interval + 1e-6, max(gaps)

        # A taker that stops (a process that died) holds nothing: the other's next slot follows the last
        # one reserved by exactly one interval.
        last = max(slots)
        await takers[1].close()
        after = await takers[0].reserve()
        assert after.db_at - last == pytest.approx(interval, abs=1e-6)

        # A dial that left late keeps the slot a window after it that far from when it left; the ones
        # after that come one `gap` apart (never closer) until they are back on the rate's schedule.
        window, gap = takers[0].window, takers[0].gap
        first = await takers[0].reserve()
        between = [await takers[0].reserve()]  # reserved before the late dial is known, as by another
        await takers[0].left_late(first, 0.05)
        between += [await takers[0].reserve() for _ in range(int(CPS) - 2)]
        assert all(
            y.db_at - x.db_at == pytest.approx(interval, abs=1e-6) for x, y in itertools.pairwise(between)
        )
        later = await takers[0].reserve()
        assert later.db_at - first.db_at == pytest.approx(window + 0.05, abs=1e-6)
        catching_up = await takers[0].reserve()
        assert catching_up.db_at - later.db_at == pytest.approx(gap, abs=1e-6)
    finally:
        for taker in takers:
            await taker.close()
        await other.dispose()
        await database.dispose()


async def test_three_processes_keep_the_account_to_its_rate(tmp_path: Path, database_url: str) -> None:
    runners: list[web.AppRunner] = []
    try:
        first_runner, first = await start_service(
            make_settings(tmp_path / "p0", database_url, twilio_cps=CPS, max_concurrent_calls=60)
        )
        runners.append(first_runner)
        services = [first]
        p = first.providers
        for n in range(1, PROCESSES):  # the same Twilio account: the first's sandbox
            port = free_port()
            runner, svc = await start_service(
                make_settings(
                    tmp_path / f"p{n}",
                    database_url,
                    port=port,
                    public_url=f"http://127.0.0.1:{port}",
                    twilio_account_sid=p.account_sid,
                    twilio_auth_token=p.auth_token,
                    twilio_phone_number=p.phone_number,
                    twilio_api_base_url=p.twilio_base_url,
                    twilio_cps=CPS,
                    max_concurrent_calls=60,
                )
            )
            runners.append(runner)
            services.append(svc)
        # Every process warmed up first by a call of its own (the Twilio SDK's import and first request,
        # the first synthesis of the text): they stall the loop the processes share for tens of ms.
        await asyncio.gather(*(svc.app[TWILIO].warm() for svc in services))
        for n, svc in enumerate(services):
            warm_up = f"+1202556{n}000"
            first.sandbox.set_behavior(warm_up, PhoneBehavior(answer="busy"))
            status, accepted = await post(svc, "/v1/alerts", body([warm_up]))
            assert status == 202, accepted
            await finished(first, accepted["id"])
        # ... and the message's speech in each one's cache (the warm-up call was placed by any of them).
        _, page = await get(first, f"/v1/alerts/{accepted['id']}/deliveries")
        await asyncio.gather(*(svc.speaker.presynthesize(page["deliveries"][0]["text"]) for svc in services))
        # What starting three services left for the collector, collected now and frozen (conftest's
        # _quiet_collector does it before each test): a full collection over it stalled the shared loop.
        gc.collect()
        gc.freeze()
        measured_from = len(first.sandbox.rest_log)
        rates = [r for svc in services if (r := svc.app[DISPATCHER]._account_rate) is not None]
        assert len(rates) == PROCESSES  # PostgreSQL: the account's rate is shared
        slots_before = [len(rate.slots) for rate in rates]

        # An alert posted to each process, so that each is woken at once (not at its next poll). Numbers
        # valid for their country: the processes on real credentials hold them to it.
        alerts = []
        for n, svc in enumerate(services):
            phones = [f"+1202555{n}{i:03d}" for i in range(PER_PROCESS)]
            for phone in phones:  # fast calls: what is measured is the creates, not the conversations
                first.sandbox.set_behavior(phone, PhoneBehavior(answer="busy"))
            status, accepted = await post(svc, "/v1/alerts", body(phones))
            assert status == 202, accepted
            alerts.append(accepted["id"])
        for alert_id in alerts:
            done = await finished(first, alert_id)
            assert done["counts"] == {"busy": PER_PROCESS}, done

        creates = sorted(
            r.at
            for r in first.sandbox.rest_log[measured_from:]
            if r.method == "POST" and r.path.endswith("/Calls.json")
        )
        total = PROCESSES * PER_PROCESS
        assert len(creates) == total  # everyone called once
        placed = [svc.app[DISPATCHER].placed - 1 for svc in services]  # after its warm-up call
        assert sum(placed) == total
        assert min(placed) >= PER_PROCESS // 2, placed  # all three dialed, sharing the rate

        # What the limiter handed out: the slots the three reserved, on the database's clock. Held to the
        # account's limit exactly: at most CPS in any window of WINDOW_S (the (CPS+1)-th after any slot is
        # later), never two closer than 1 / CPS, never above CPS over the run. The rate it reaches is
        # printed (sustained: CPS over the median span of CPS + 1 slots in a row; overall: first to last)
        # and held only to 90 % of CPS: the three processes, the sandbox and the test share one event
        # loop on a machine shared with other work, whose stalls (hundreds of ms at a load of 7 on 2
        # cores) cost the rate their length. On a quiet machine both came within 2 % of CPS (9.85).
        n = int(CPS)
        mine = [list(rate.slots)[before:] for rate, before in zip(rates, slots_before, strict=True)]
        slots = sorted(s.db_at for own in mine for s in own)
        assert len(slots) == total  # a slot per call, none reserved in vain
        slot_spans = sorted(slots[i + n] - slots[i] for i in range(len(slots) - n))
        slot_gap = min(b - a for a, b in itertools.pairwise(slots))
        sustained = n / slot_spans[len(slot_spans) // 2]
        overall = (len(slots) - 1) / (slots[-1] - slots[0])

        # Where Twilio counts: the creates as the sandbox received them, each at or after its slot (a
        # process's creates and slots in the same order, on the same clock here). The way from a slot to
        # the sandbox crosses the shared loop, stalls included: its spread is printed with the windows
        # and the rate as the sandbox saw them.
        delays = []
        for svc, own in zip(services, mine, strict=True):
            own_url = f":{svc.settings.port}/"
            received = sorted(
                r.at
                for r in first.sandbox.rest_log[measured_from:]
                if r.method == "POST"
                and r.path.endswith("/Calls.json")
                and any(k == "StatusCallback" and own_url in v for k, v in r.form)
            )
            assert len(received) == len(own)
            delays += [c - s.at for c, s in zip(received, own, strict=True)]
        worst = min(creates[i + n] - creates[i] for i in range(len(creates) - n))
        at_sandbox = (len(creates) - 1) / (creates[-1] - creates[0])
        delays.sort()
        print(
            f"\n{total} calls placed by {placed} ({[r.late for r in rates]} dials late); slots: "
            f"{sustained:.3f}/s sustained, {overall:.3f}/s overall, {n + 1} in a row span >= "
            f"{slot_spans[0]:.4f} s, gaps >= {slot_gap:.4f} s; at the sandbox: {at_sandbox:.3f}/s, "
            f"{n + 1} creates in a row span >= {worst:.4f} s; slot -> sandbox {delays[0] * 1000:.1f} ms "
            f"min, {delays[len(delays) // 2] * 1000:.1f} ms p50, {delays[-1] * 1000:.1f} ms max"
        )
        assert slot_spans[0] > WINDOW_S, slot_spans[0]
        assert slot_gap >= 1 / CPS - 1e-6, slot_gap
        assert overall <= CPS and sustained <= CPS, (overall, sustained)
        assert sustained >= 0.9 * CPS, sustained
        assert delays[0] >= -0.001, delays[0]  # no call left before its slot
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
