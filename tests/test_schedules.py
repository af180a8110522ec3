"""Scheduled reminders: validation, fires through the whole service (scheduler -> occurrence -> alert ->
dispatcher -> sandbox call) on a wall clock the test moves (tests/clock.py): one-shots, cron schedules
on each matching time of simulated days across DST changes, pause/resume/delete, quiet hours, speech
made ahead, keys pressed during a reminder (a snoozed one rings again), and a restart's misfire policy and
DST night. Two processes sharing PostgreSQL keep the real clock (a fire a few seconds ahead): the test
clock moves one process's time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from announcer.app import SCHEDULES
from announcer.deliveries.plan import PlanError
from announcer.sandbox.twilio_call import SandboxCall
from announcer.scheduling.when import parse_quiet_hours, parse_when
from announcer.store.db import Database
from announcer.store.schedules import ScheduleStore
from tests.clock import Clock
from tests.conftest import AUTH, Service, eventually, make_settings, start_service
from tests.test_alerts import HEARER, finished, get, placed_call, post


def soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def schedule_body(when: dict[str, Any], *phones: str, **options: Any) -> dict[str, Any]:
    return {
        "name": "appointment reminder",
        "template_text": "Hello {{ name }}, your appointment is at {{ at | spoken_time }}.",
        "variables": {"at": "10:30"},
        "recipients": [{"phone": p, "name": f"Person {i}"} for i, p in enumerate(phones or (HEARER,))],
        "when": when,
        "options": options,
    }


async def patch(service: Service, path: str, body: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.patch(service.base_url + path, json=body, headers=AUTH) as resp,
    ):
        return resp.status, await resp.json()


async def delete(service: Service, path: str) -> int:
    async with aiohttp.ClientSession() as http, http.delete(service.base_url + path, headers=AUTH) as resp:
        return resp.status


async def occurrences(service: Service, schedule_id: str, n: int = 1) -> list[dict[str, Any]]:
    """The schedule's occurrences once `n` of them have happened (an `upcoming` one has not yet)."""

    async def happened() -> list[dict[str, Any]]:
        _, view = await get(service, f"/v1/schedules/{schedule_id}")
        return [o for o in view["occurrences"] if o["status"] != "upcoming"]

    async def recorded() -> bool:
        return len(await happened()) >= n

    await eventually(recorded, timeout=20)
    return await happened()


def calls_to(service: Service, phone: str) -> list[SandboxCall]:
    return sorted((c for c in service.sandbox.calls.values() if c.to == phone), key=lambda c: c.date_created)


async def heard_fires(service: Service, schedule_id: str) -> list[datetime]:
    """The planned times of a schedule's occurrences, oldest first, once each one's alert is over; each
    must have fired and been heard."""
    _, view = await get(service, f"/v1/schedules/{schedule_id}")
    done = [o for o in view["occurrences"] if o["status"] != "upcoming"]
    for o in done:
        assert o["status"] == "fired", o
        assert (await finished(service, o["alert_id"]))["counts"] == {"heard": 1}
    return sorted(datetime.fromisoformat(o["planned_at"]) for o in done)


def at(*times: str) -> list[datetime]:
    """Wall-clock times with their UTC offsets ("2027-03-28T03:30+02:00"): what a fire must be planned at."""
    return [datetime.fromisoformat(t) for t in times]


async def test_a_one_shot_far_ahead_fires_once_at_its_time_and_not_before(clock: Clock) -> None:
    service = await clock.start(datetime(2027, 6, 10, 10, tzinfo=UTC))  # noon in Berlin
    when = {"at": "2027-06-11T09:00", "timezone": "Europe/Berlin"}
    status, created = await post(service, "/v1/schedules", schedule_body(when))
    assert status == 201, created
    [planned] = at("2027-06-11T09:00+02:00")
    assert datetime.fromisoformat(created["next_run_at"]) == planned
    await clock.advance_to(planned - timedelta(seconds=1))
    _, view = await get(service, f"/v1/schedules/{created['id']}")
    assert [o["status"] for o in view["occurrences"]] == ["upcoming"]  # its speech is made; no fire yet
    assert calls_to(service, HEARER) == []
    await clock.advance_to(planned)
    assert await heard_fires(service, created["id"]) == [planned]
    assert [c.date_created for c in calls_to(service, HEARER)] == [planned]  # dialed at its time
    await clock.advance(timedelta(days=2))
    assert len(calls_to(service, HEARER)) == 1
    _, view = await get(service, f"/v1/schedules/{created['id']}")
    assert view["status"] == "ended" and view["next_run_at"] is None and len(view["occurrences"]) == 1


@pytest.mark.parametrize(
    ("when", "options", "field"),
    [
        ({"cron": "61 8 * * *", "timezone": "Europe/Berlin"}, {}, "when.cron"),
        ({"cron": "0 8 * * 1-5", "timezone": "Europe/Berlin"}, {}, "when.cron"),
        ({"cron": "0 8 * * mon-fri", "timezone": "Mars/Olympus"}, {}, "when.timezone"),
        ({"at": "2020-01-01T09:00:00+01:00"}, {}, "when.at"),
        ({"at": "2099-01-01T09:00:00"}, {}, "when.at"),
        (
            {"cron": "0 8 * * *", "timezone": "UTC", "start": "2099-02-01T00:00", "end": "2099-01-01T00:00"},
            {},
            "when.end",
        ),
        ({"at": soon(3600)}, {"quiet_hours": {"start": "08:00", "end": "08:00"}}, "options.quiet_hours"),
        ({"at": soon(3600), "cron": "0 8 * * *"}, {}, "when"),
    ],
)
async def test_bad_schedules_are_refused_naming_the_field(
    service: Service, when: dict[str, Any], options: dict[str, Any], field: str
) -> None:
    _, before = await get(service, "/v1/schedules")
    status, body = await post(service, "/v1/schedules", schedule_body(when, **options))
    assert status == 422, body
    assert field in [p["field"] for p in body["problems"]], body
    _, after = await get(service, "/v1/schedules")
    assert after == before  # nothing stored


@pytest.mark.parametrize(
    "when",
    [
        {"at": "2099-01-01T09:00", "timezone": "Mars/Olympus"},
        {"cron": "0 8 * * *", "timezone": "Mars/Olympus", "start": "2099-01-01T00:00"},
    ],
)
async def test_a_local_time_in_an_unknown_zone_is_refused_for_the_zone_alone(
    service: Service, when: dict[str, Any]
) -> None:
    # The zone was given: "no UTC offset: ... or give `when.timezone`" would send the caller the wrong way.
    status, body = await post(service, "/v1/schedules", schedule_body(when))
    assert status == 422 and [p["field"] for p in body["problems"]] == ["when.timezone"], body


async def test_a_missing_variable_is_refused_before_anything_is_stored(service: Service) -> None:
    body = schedule_body({"at": soon(3600)})
    body["variables"] = {}
    _, before = await get(service, "/v1/schedules")
    status, answer = await post(service, "/v1/schedules", body)
    assert status == 422
    assert answer["problems"][0]["field"] == "recipients[0].variables"
    _, after = await get(service, "/v1/schedules")
    assert after == before


async def test_pause_resume_move_and_delete_change_the_next_run(service: Service) -> None:
    # The times below are the armed ones: wait for the scheduler to run (it starts once the server
    # accepts connections, a moment after the fixture returns).
    await asyncio.wait_for(service.app[SCHEDULES].scheduler.started.wait(), 30)
    status, created = await post(
        service, "/v1/schedules", schedule_body({"cron": "0 8 * * mon-fri", "timezone": "Europe/Berlin"})
    )
    assert status == 201 and created["next_run_at"] is not None
    sid = created["id"]
    status, paused = await patch(service, f"/v1/schedules/{sid}", {"status": "paused"})
    assert status == 200 and paused["status"] == "paused" and paused["next_run_at"] is None
    resumed_at = datetime.now(UTC)
    status, resumed = await patch(service, f"/v1/schedules/{sid}", {"status": "active"})
    assert status == 200 and resumed["next_run_at"] == created["next_run_at"]
    # Nothing of the pause is owed: a restart's catch-up starts at the resume, as for a new schedule.
    row = await schedules_of(service).store.get(sid)
    assert row.last_planned_at >= resumed_at
    assert row.next_run_at == datetime.fromisoformat(resumed["next_run_at"])  # the same instant, in UTC
    assert datetime.fromisoformat(resumed["next_run_at"]).astimezone(ZoneInfo("Europe/Berlin")).hour == 8
    _, view = await get(service, f"/v1/schedules/{sid}")
    assert len(view["next_run_times"]) == 5
    status, moved = await patch(
        service, f"/v1/schedules/{sid}", {"when": {"cron": "30 9 * * sat", "timezone": "Europe/Berlin"}}
    )
    assert status == 200, moved
    berlin = datetime.fromisoformat(moved["next_run_at"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (berlin.weekday(), berlin.hour, berlin.minute) == (5, 9, 30)
    status, refused = await patch(
        service, f"/v1/schedules/{sid}", {"when": {"cron": "0 25 * * *", "timezone": "UTC"}}
    )
    assert status == 422 and refused["problems"][0]["field"] == "when.cron"
    assert await delete(service, f"/v1/schedules/{sid}") == 204
    _, listing = await get(service, "/v1/schedules")
    assert sid not in [s["id"] for s in listing["schedules"]]


async def test_a_patch_changes_the_message_and_the_options_or_names_what_is_wrong(service: Service) -> None:
    body = schedule_body({"cron": "0 8 * * mon-fri", "timezone": "Europe/Berlin"}, confirm=True)
    status, created = await post(service, "/v1/schedules", body)
    assert status == 201, created
    sid = created["id"]
    store = schedules_of(service).store
    before = await store.get(sid)
    refused = [
        ({"template": "alert.j2", "template_text": "Hi"}, "template"),
        ({"template_text": "Hello {{ nobody }}"}, "recipients[0].variables"),
        ({"options": {"snooze_s": 5}}, "options.snooze_s"),
        ({"options": {"repeat_key": "3", "confirm": True}}, "options.repeat_key"),
        ({"options": {"quiet_hours": {"start": "21:00"}}}, "options.quiet_hours.end"),
        ({"options": {"machine_detection": False, "on_machine": "hang_up"}}, "options.on_machine"),
    ]
    for patch_body, field in refused:
        status, answer = await patch(service, f"/v1/schedules/{sid}", patch_body)
        assert status == 422, (patch_body, answer)
        assert field in [p["field"] for p in answer["problems"]], (patch_body, answer)
    assert await store.get(sid) == before
    new = {"template_text": "Bye {{ name }}.", "options": {"presynthesize_s": 60, "misfire": "skip"}}
    status, changed = await patch(service, f"/v1/schedules/{sid}", new)
    assert status == 200, changed
    row = await store.get(sid)
    assert (row.template, row.template_text) == (None, "Bye {{ name }}.")
    # options as a whole: `confirm`, not given, is back to its default
    assert (row.options.misfire, row.options.confirm) == ("skip", False)
    assert row.next_run_at == before.next_run_at  # not re-timed, only held by the new presynthesize_s
    assert row.when == before.when and row.recipients == before.recipients


async def test_pause_resume_and_delete_take_effect_between_fires(clock: Clock) -> None:
    service = await clock.start(datetime(2027, 6, 9, 22, tzinfo=UTC))  # midnight in Berlin
    when = {"cron": "0 8 * * *", "timezone": "Europe/Berlin"}
    status, daily = await post(service, "/v1/schedules", schedule_body(when))
    assert status == 201, daily
    sid = daily["id"]
    one_shot = {"at": "2027-06-13T09:00", "timezone": "Europe/Berlin"}
    status, doomed = await post(service, "/v1/schedules", schedule_body(one_shot, "+15550130001"))
    assert status == 201, doomed
    await clock.advance_to(datetime(2027, 6, 10, 12, tzinfo=UTC))
    assert await heard_fires(service, sid) == at("2027-06-10T08:00+02:00")
    status, paused = await patch(service, f"/v1/schedules/{sid}", {"status": "paused"})
    assert status == 200 and paused["next_run_at"] is None
    await clock.advance_to(datetime(2027, 6, 11, 12, tzinfo=UTC))  # past the 11th's 08:00
    assert await heard_fires(service, sid) == at("2027-06-10T08:00+02:00")
    status, resumed = await patch(service, f"/v1/schedules/{sid}", {"status": "active"})
    # The next time from now on: the fire missed while paused is not owed.
    assert status == 200 and datetime.fromisoformat(resumed["next_run_at"]) == at("2027-06-12T08:00+02:00")[0]
    await clock.advance_to(datetime(2027, 6, 12, 12, tzinfo=UTC))
    assert await heard_fires(service, sid) == at("2027-06-10T08:00+02:00", "2027-06-12T08:00+02:00")
    assert await delete(service, f"/v1/schedules/{sid}") == 204
    assert await delete(service, f"/v1/schedules/{doomed['id']}") == 204  # before its time
    await clock.advance_to(datetime(2027, 6, 15, 12, tzinfo=UTC))
    assert [c.date_created for c in calls_to(service, HEARER)] == at(
        "2027-06-10T08:00+02:00", "2027-06-12T08:00+02:00"
    )
    assert calls_to(service, "+15550130001") == []


@pytest.mark.parametrize(
    ("policy", "grace_s", "expected"),
    [("run", 300, "fired"), ("skip", 300, "missed"), ("run", 60, "missed")],  # the last: later than its grace
)
async def test_a_fire_missed_while_down_follows_the_misfire_policy_once(
    clock: Clock, policy: str, grace_s: int, expected: str
) -> None:
    service = await clock.start(datetime(2027, 6, 10, 6, tzinfo=UTC))
    when = {"at": "2027-06-10T09:00", "timezone": "Europe/Berlin"}
    status, created = await post(
        service, "/v1/schedules", schedule_body(when, misfire=policy, misfire_grace_s=grace_s)
    )
    assert status == 201
    await clock.stop(service)
    await clock.advance_to(datetime(2027, 6, 10, 7, 2, tzinfo=UTC))  # down across the fire: back 2 min late
    for restart in range(2):  # the second start must not run it again
        service = await clock.start()
        [occurrence] = await occurrences(service, created["id"])
        assert occurrence["status"] == expected, occurrence
        assert datetime.fromisoformat(occurrence["planned_at"]) == at("2027-06-10T09:00+02:00")[0]
        if expected == "fired":
            await finished(service, occurrence["alert_id"])
            assert len(calls_to(service, HEARER)) == (1 if restart == 0 else 0)
        else:
            assert calls_to(service, HEARER) == []
        await clock.stop(service)


def test_cron_follows_the_zone_across_dst() -> None:
    now = datetime(2027, 3, 1, tzinfo=UTC)
    daily = parse_when({"cron": "30 2 * * *", "timezone": "Europe/Berlin"}, now)
    spring = daily.next_times(datetime(2027, 3, 26, 12, tzinfo=UTC), 4)
    # 02:30 does not exist on 28 March: it rings when the clock has jumped past it, at 03:30 CEST.
    assert [t.astimezone(UTC).strftime("%d %H:%M") for t in spring] == [
        "27 01:30",
        "28 01:30",
        "29 00:30",
        "30 00:30",
    ]
    autumn = daily.next_times(datetime(2027, 10, 29, 12, tzinfo=UTC), 3)
    # 02:30 happens twice on 31 October: once only, at the first.
    assert [t.astimezone(UTC).strftime("%d %H:%M") for t in autumn] == ["30 00:30", "31 00:30", "01 01:30"]
    # Armed with its next run given, a job's trigger is made when APScheduler first asks it, after that
    # fire: the same rule (the repeat skipped).
    fired = autumn[1]
    asked = daily.deferred_trigger().get_next_fire_time(fired, fired + timedelta(microseconds=1))
    assert asked == autumn[2]
    weekdays = parse_when({"cron": "0 8 * * mon-fri", "timezone": "America/New_York"}, now)
    local = [t.astimezone(ZoneInfo("America/New_York")) for t in weekdays.next_times(now, 10)]
    assert all(t.hour == 8 and t.weekday() < 5 for t in local)


@pytest.mark.parametrize(
    ("cron", "zone", "start", "expected"),
    [
        # Spring forward: 02:30 does not exist on 28 March (Berlin) or 14 March (New York); it rings when
        # the clock has jumped past it, one gap later, at 03:30 summer time.
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2027-03-26T12:00Z",
            ["2027-03-27T02:30+01:00", "2027-03-28T03:30+02:00", "2027-03-29T02:30+02:00"],
        ),
        (
            "30 2 * * *",
            "America/New_York",
            "2027-03-12T12:00Z",
            ["2027-03-13T02:30-05:00", "2027-03-14T03:30-04:00", "2027-03-15T02:30-04:00"],
        ),
        # Fall back: 02:30 (Berlin, 31 October) and 01:30 (New York, 7 November) happen twice: one call,
        # at the first.
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2027-10-29T12:00Z",
            ["2027-10-30T02:30+02:00", "2027-10-31T02:30+02:00", "2027-11-01T02:30+01:00"],
        ),
        (
            "30 1 * * *",
            "America/New_York",
            "2027-11-05T12:00Z",
            ["2027-11-06T01:30-04:00", "2027-11-07T01:30-04:00", "2027-11-08T01:30-05:00"],
        ),
    ],
)
async def test_a_daily_cron_fires_once_on_each_day_across_a_dst_change(
    clock: Clock, cron: str, zone: str, start: str, expected: list[str]
) -> None:
    service = await clock.start(datetime.fromisoformat(start))
    status, created = await post(service, "/v1/schedules", schedule_body({"cron": cron, "timezone": zone}))
    assert status == 201, created
    await clock.advance(timedelta(days=3))
    assert await heard_fires(service, created["id"]) == at(*expected)
    assert [c.date_created for c in calls_to(service, HEARER)] == at(*expected)  # each dialed at its time
    _, view = await get(service, f"/v1/schedules/{created['id']}")
    assert view["status"] == "active" and datetime.fromisoformat(view["next_run_at"]) > clock.now()


@pytest.mark.parametrize("back_at", ["2027-10-31T02:45+02:00", "2027-10-31T02:45+01:00"])
async def test_a_restart_on_the_night_clocks_fall_back_does_not_ring_the_repeated_time_again(
    clock: Clock, back_at: str
) -> None:
    """Down after the first 02:30 (Berlin, 31 October) and back in the repeated hour, before or after the
    second 02:30: the scheduler arms, or catches up, from the last fire, with no previous fire time in
    hand; the second pass is still not a fire of its own."""
    service = await clock.start(datetime(2027, 10, 30, 12, tzinfo=UTC))
    body = schedule_body({"cron": "30 2 * * *", "timezone": "Europe/Berlin"})
    status, created = await post(service, "/v1/schedules", body)
    assert status == 201, created
    await clock.advance_to(at("2027-10-31T02:30+02:00")[0])
    await clock.stop(service)
    await clock.advance_to(datetime.fromisoformat(back_at))
    service = await clock.start()
    _, view = await get(service, f"/v1/schedules/{created['id']}")
    assert datetime.fromisoformat(view["next_run_at"]) == at("2027-11-01T02:30+01:00")[0]
    assert [datetime.fromisoformat(t) for t in view["next_run_times"][:1]] == at("2027-11-01T02:30+01:00")
    await clock.advance_to(datetime(2027, 11, 1, 12, tzinfo=UTC))
    expected = at("2027-10-31T02:30+02:00", "2027-11-01T02:30+01:00")
    assert await heard_fires(service, created["id"]) == expected  # nothing missed, nothing twice
    assert [c.date_created for c in calls_to(service, HEARER)] == expected[1:]  # this process's calls


async def test_a_weekday_cron_rings_at_eight_local_in_two_zones_across_a_dst_change(clock: Clock) -> None:
    """Friday to Tuesday over Berlin's spring forward (Sunday 28 March 2027), New York already on summer
    time: 08:00 on each weekday in each zone, nothing on the weekend."""
    service = await clock.start(datetime(2027, 3, 26, 0, tzinfo=UTC))
    berlin, new_york = "+15550180001", "+15550180002"
    ids = {}
    for phone, zone in ((berlin, "Europe/Berlin"), (new_york, "America/New_York")):
        body = schedule_body({"cron": "0 8 * * mon-fri", "timezone": zone}, phone)
        status, created = await post(service, "/v1/schedules", body)
        assert status == 201, created
        ids[phone] = created["id"]
    await clock.advance_to(datetime(2027, 3, 30, 23, tzinfo=UTC))
    expected = {
        berlin: at("2027-03-26T08:00+01:00", "2027-03-29T08:00+02:00", "2027-03-30T08:00+02:00"),
        new_york: at("2027-03-26T08:00-04:00", "2027-03-29T08:00-04:00", "2027-03-30T08:00-04:00"),
    }
    for phone, times in expected.items():
        assert await heard_fires(service, ids[phone]) == times
        assert [c.date_created for c in calls_to(service, phone)] == times


def test_a_cron_within_the_hour_rings_each_wall_clock_time_of_the_repeated_hour_once() -> None:
    every_20 = parse_when(
        {"cron": "*/20 * * * *", "timezone": "Europe/Berlin"}, datetime(2027, 10, 1, tzinfo=UTC)
    )
    times = every_20.next_times(datetime(2027, 10, 30, 23, 50, tzinfo=UTC), 6)
    # In UTC: a time in a fold never equals one of another zone (PEP 495)
    assert [t.astimezone(UTC) for t in times] == at(
        "2027-10-31T02:00+02:00",
        "2027-10-31T02:20+02:00",
        "2027-10-31T02:40+02:00",
        "2027-10-31T03:00+01:00",  # 02:00, 02:20 and 02:40 again (+01:00) are the same wall-clock times
        "2027-10-31T03:20+01:00",
        "2027-10-31T03:40+01:00",
    )


def test_quiet_hours_wrap_midnight_and_refuse_the_whole_day() -> None:
    quiet = parse_quiet_hours({"start": "21:00", "end": "08:00"})
    assert quiet is not None
    assert quiet.contains(datetime(2027, 1, 1, 22, 0).time()) and quiet.contains(
        datetime(2027, 1, 1, 7, 59).time()
    )
    assert not quiet.contains(datetime(2027, 1, 1, 8, 0).time())
    with pytest.raises(PlanError):
        parse_quiet_hours({"start": "09:00", "end": "09:00"})


async def test_quiet_hours_defer_a_fire_to_their_end_in_each_recipients_zone(clock: Clock) -> None:
    service = await clock.start(datetime(2027, 6, 10, 12, tzinfo=UTC))
    sleeper, awake = "+15550140001", "+15550140002"
    when = {"at": "2027-06-11T07:00", "timezone": "Europe/Berlin"}
    body = schedule_body(when, sleeper, awake, quiet_hours={"start": "21:00", "end": "08:00"})
    body["recipients"][0]["timezone"] = "Europe/Berlin"  # 07:00 there: inside 21:00-08:00
    body["recipients"][1]["timezone"] = "Asia/Tokyo"  # 14:00 there: called at once
    status, created = await post(service, "/v1/schedules", body)
    assert status == 201, created
    [fire, window_end] = at("2027-06-11T07:00+02:00", "2027-06-11T08:00+02:00")
    await clock.advance_to(fire)
    [occurrence] = await occurrences(service, created["id"])
    assert [c.date_created for c in calls_to(service, awake)] == [fire]
    _, page = await get(service, f"/v1/alerts/{occurrence['alert_id']}/deliveries")
    first = page["deliveries"][0]
    assert first["state"] == "pending" and first["call_sid"] is None
    [event] = [h for h in first["history"] if h["kind"] == "deferred"]
    assert datetime.fromisoformat(event["until"]) == window_end  # 08:00 in the recipient's zone
    await clock.advance_to(window_end - timedelta(seconds=1))
    assert calls_to(service, sleeper) == []
    await clock.advance_to(window_end + timedelta(hours=1))
    assert [c.date_created for c in calls_to(service, sleeper)] == [window_end]  # dialed when it ends
    alert = await finished(service, occurrence["alert_id"])
    assert alert["counts"] == {"heard": 2}


async def answering(moving: Awaitable[None], service: Service, keys: dict[str, tuple[int, str]]) -> None:
    """Await a move of the clock while the people it calls press keys ({phone: (n-th call, key)}): the
    move's stop lasts until their calls end, and each call waits for its key."""
    move = asyncio.ensure_future(moving)
    try:
        for phone, (n, key) in keys.items():
            call = await placed_call(service, phone, n)
            await call.wait_for_mark("prompt:", 20)
            await call.press(key)
        await move
    finally:
        if not move.done():  # a call that never came: stop the move before the service goes
            move.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await move


async def test_reminder_keys_confirm_decline_and_snooze_and_the_snoozed_one_rings_again(clock: Clock) -> None:
    service = await clock.start(datetime(2027, 6, 10, 12, tzinfo=UTC))
    yes, no, later = "+15550150001", "+15550150002", "+15550150003"
    when = {"at": "2027-06-10T15:00", "timezone": "Europe/Berlin"}
    status, created = await post(
        service, "/v1/schedules", schedule_body(when, yes, no, later, confirm=True, snooze_s=120)
    )
    assert status == 201, created
    [fire] = at("2027-06-10T15:00+02:00")
    await answering(clock.advance_to(fire), service, {yes: (1, "1"), no: (1, "2"), later: (1, "3")})
    [occurrence] = await occurrences(service, created["id"])
    _, alert = await get(service, f"/v1/alerts/{occurrence['alert_id']}")
    assert alert["counts"] == {"confirmed": 1, "declined": 1, "snoozed": 1, "pending": 1}
    assert alert["status"] == "active"  # the snoozed reminder is still owed
    _, page = await get(service, f"/v1/alerts/{occurrence['alert_id']}/deliveries")
    [again] = [d for d in page["deliveries"] if d["state"] == "pending"]
    assert again["phone"] == later and again["call_sid"] is None
    assert datetime.fromisoformat(again["history"][-1]["due"]) == fire + timedelta(seconds=120)
    await answering(clock.advance_to(fire + timedelta(minutes=5)), service, {later: (2, "1")})
    assert [c.date_created for c in calls_to(service, later)] == [fire, fire + timedelta(seconds=120)]
    alert = await finished(service, occurrence["alert_id"])
    assert alert["counts"] == {"confirmed": 2, "declined": 1, "snoozed": 1}


async def test_a_reminder_snoozed_after_its_alert_was_canceled_is_not_called_again(clock: Clock) -> None:
    service = await clock.start(datetime(2027, 6, 10, 12, tzinfo=UTC))
    later = "+15550150011"
    when = {"at": "2027-06-10T15:00", "timezone": "Europe/Berlin"}
    status, created = await post(
        service, "/v1/schedules", schedule_body(when, later, confirm=True, snooze_s=120)
    )
    assert status == 201, created
    [fire] = at("2027-06-10T15:00+02:00")
    move = asyncio.ensure_future(clock.advance_to(fire))
    try:
        call = await placed_call(service, later)
        await call.wait_for_mark("prompt:", 20)
        [occurrence] = await occurrences(service, created["id"])
        status, canceled = await post(service, f"/v1/alerts/{occurrence['alert_id']}/cancel", {})
        assert status == 200 and canceled["status"] == "canceled", canceled
        await call.press("3")  # "call me again later", once nobody is to be called any more
        await move
    finally:
        if not move.done():
            move.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await move
    _, page = await get(service, f"/v1/alerts/{occurrence['alert_id']}/deliveries")
    assert [d["state"] for d in page["deliveries"]] == ["snoozed"], page  # and no new delivery owed
    await clock.advance(timedelta(minutes=5))
    assert len(calls_to(service, later)) == 1


def tts_requests(service: Service, text: str) -> list[Any]:
    return [r for r in service.tts.requests if text in r.text]


async def test_speech_is_made_presynthesize_s_before_the_fire_and_a_tts_failure_shows_first(
    clock: Clock,
) -> None:
    service = await clock.start(datetime(2027, 6, 10, 12, tzinfo=UTC))
    body = schedule_body({"at": "2027-06-11T09:00", "timezone": "Europe/Berlin"}, presynthesize_s=300)
    body["template_text"] = "Presynthesis check for {{ name }}, appointment at {{ at | spoken_time }}."
    status, created = await post(service, "/v1/schedules", body)
    assert status == 201, created
    [fire] = at("2027-06-11T09:00+02:00")
    await clock.advance_to(fire - timedelta(seconds=301))
    assert tts_requests(service, "Presynthesis check") == []
    await clock.advance_to(fire - timedelta(seconds=300))
    [request] = tts_requests(service, "Presynthesis check")
    assert request.outcome == "completed"
    [upcoming] = (await get(service, f"/v1/schedules/{created['id']}"))[1]["occurrences"]
    assert upcoming["status"] == "upcoming" and upcoming["detail"]["presynthesis"] == "ready"
    assert calls_to(service, HEARER) == []
    await clock.advance_to(fire)
    assert [c.date_created for c in calls_to(service, HEARER)] == [fire]
    assert len(tts_requests(service, "Presynthesis check")) == 1  # the call spoke what was made ahead
    [occurrence] = await occurrences(service, created["id"])
    assert occurrence["status"] == "fired" and occurrence["detail"]["presynthesis"] == "ready"

    # A failing TTS shows on the occurrence before anyone is dialed; at the time, the call still goes out,
    # spoken by the fallback voice.
    service.tts.fail_next("server_error", times=100)
    body = schedule_body({"at": "2027-06-11T10:00", "timezone": "Europe/Berlin"}, "+15550160002")
    body["template_text"] = "Failing synthesis for {{ name }} at {{ at | spoken_time }}."
    status, failing = await post(service, "/v1/schedules", body)
    assert status == 201
    [later] = at("2027-06-11T10:00+02:00")
    await clock.advance_to(later - timedelta(seconds=1))
    [upcoming] = (await get(service, f"/v1/schedules/{failing['id']}"))[1]["occurrences"]
    assert upcoming["status"] == "upcoming" and upcoming["detail"]["presynthesis"] == "failed"
    assert calls_to(service, "+15550160002") == []
    await clock.advance_to(later)
    [occurrence] = await occurrences(service, failing["id"])
    assert occurrence["status"] == "fired" and occurrence["detail"]["attempts"] >= 1
    assert (await finished(service, occurrence["alert_id"]))["counts"] == {"heard": 1}


async def test_two_processes_on_one_postgresql_fire_each_occurrence_once(
    tmp_path: Path, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several processes share a database on PostgreSQL; SQLite is one process's file")
    services = [await start_service(make_settings(tmp_path / name, database_url)) for name in ("a", "b")]
    runners = [r for r, _ in services]
    try:

        async def one_leads() -> bool:
            return [svc.app[SCHEDULES].scheduler.leading for _, svc in services].count(True) == 1

        await eventually(one_leads)
        leader, follower = sorted(
            (svc for _, svc in services), key=lambda s: not s.app[SCHEDULES].scheduler.leading
        )
        phone = "+15550170001"
        status, created = await post(follower, "/v1/schedules", schedule_body({"at": soon(5.0)}, phone))
        assert status == 201  # through the process that does not lead: the leader arms it when it syncs
        [occurrence] = await occurrences(leader, created["id"])
        await finished(leader, occurrence["alert_id"])
        placed = [c.to for _, svc in services for c in svc.sandbox.calls.values()]
        assert placed.count(phone) == 1
        # The leader stops: the other process takes over and fires what comes next.
        await runners[[svc for _, svc in services].index(leader)].cleanup()
        runners.remove(runners[[svc for _, svc in services].index(leader)])

        async def took_over() -> bool:
            return bool(follower.app[SCHEDULES].scheduler.leading)

        await eventually(took_over, timeout=15)
        status, second = await post(
            follower, "/v1/schedules", schedule_body({"at": soon(2.0)}, "+15550170002")
        )
        assert status == 201
        await placed_call(follower, "+15550170002")
        [occurrence] = await occurrences(follower, second["id"])
        assert occurrence["status"] == "fired"
        await finished(follower, occurrence["alert_id"])
    finally:
        for runner in runners:
            await runner.cleanup()


# --- the horizon: only what is near is armed ------------------------------------------------------------

HORIZON_S = 4.0  # the least allowed (two syncs): a schedule a few seconds ahead starts beyond it


def schedules_of(service: Service) -> Any:
    """The service's schedules dependencies (its scheduler, its store)."""
    from announcer.app import SCHEDULES

    return service.app[SCHEDULES]


async def test_a_schedule_beyond_the_horizon_is_armed_when_it_comes_near_and_fires_once(
    tmp_path: Path, database_url: str
) -> None:
    async with horizon_service(tmp_path, database_url) as (svc, scheduler):
        at = soon(9.0)
        phone = "+15550180001"
        status, created = await post(
            svc, "/v1/schedules", schedule_body({"at": at}, phone, presynthesize_s=0)
        )
        assert status == 201 and created["next_run_at"] == datetime.fromisoformat(at).isoformat()
        assert scheduler.armed_for(created["id"]) is None  # beyond the horizon: held by the table only
        _, view = await get(svc, f"/v1/schedules/{created['id']}")
        assert view["next_run_at"] == created["next_run_at"]

        async def armed() -> bool:
            return scheduler.armed_for(created["id"]) is not None

        await eventually(armed, timeout=10)
        assert datetime.now(UTC) < datetime.fromisoformat(at)  # armed before its time, by a sync
        await placed_call(svc, phone)
        [occurrence] = await occurrences(svc, created["id"])
        assert occurrence["status"] == "fired"
        assert occurrence["planned_at"] == datetime.fromisoformat(at).isoformat()
        await finished(svc, occurrence["alert_id"])
        _, view = await get(svc, f"/v1/schedules/{created['id']}")
        assert view["status"] == "ended" and view["next_run_at"] is None
        assert [c.to for c in svc.sandbox.calls.values()].count(phone) == 1


async def test_a_fire_stores_the_next_run_and_hands_a_far_one_back_to_the_table(clock: Clock) -> None:
    # 06:00 UTC on a Monday: the cron's 08:00 Berlin (07:00 UTC) is an hour away, beyond the horizon.
    svc = await clock.start(datetime(2026, 3, 2, 6, 0, tzinfo=UTC), announcer_schedule_horizon_s=HORIZON_S)
    scheduler = schedules_of(svc).scheduler
    phone = "+15550180002"
    body = schedule_body({"cron": "0 8 * * *", "timezone": "Europe/Berlin"}, phone, presynthesize_s=0)
    status, created = await post(svc, "/v1/schedules", body)
    assert status == 201
    sid, first = created["id"], created["next_run_at"]
    assert first == "2026-03-02T08:00:00+01:00"
    assert scheduler.armed_for(sid) is None
    # Its stored next run is moved 2 s ahead (as a change through another process would); the leader
    # arms it at its next sync, and it fires then, on the test's clock.
    planned = clock.now() + timedelta(seconds=2)
    await schedules_of(svc).store.change(sid, next_run_at=planned)
    await clock.advance(timedelta(seconds=1))  # a sync on the way arms it, before its time

    async def armed() -> bool:
        return scheduler.armed_for(sid) is not None

    await eventually(armed)
    await clock.advance(timedelta(seconds=1))
    [occurrence] = await occurrences(svc, sid)
    assert occurrence["status"] == "fired" and occurrence["planned_at"] == planned.isoformat()
    await placed_call(svc, phone)

    async def advanced() -> bool:
        _, view = await get(svc, f"/v1/schedules/{sid}")
        return bool(view["next_run_at"] == first)

    await eventually(advanced)  # the trigger's next time after the fire: 08:00 Berlin
    _, view = await get(svc, f"/v1/schedules/{sid}")
    assert view["status"] == "active"
    assert scheduler.armed_for(sid) is None  # beyond the horizon again: off APScheduler
    await finished(svc, occurrence["alert_id"])
    assert [c.to for c in svc.sandbox.calls.values()].count(phone) == 1


async def test_a_schedule_made_elsewhere_moments_before_its_time_still_fires(clock: Clock) -> None:
    # The leader sees a schedule made through another process only at its next sync (every 2 s): one
    # whose time falls before that sync fires then, late by the sync's lag, within its grace.
    svc = await clock.start(datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
    scheduler = schedules_of(svc).scheduler
    phone = "+15550180004"
    body = schedule_body({"at": "2026-03-02T06:00:01+00:00"}, phone, presynthesize_s=0)
    status, created = await post(svc, "/v1/schedules", body)
    assert status == 201
    scheduler.remove(created["id"])  # as made elsewhere: in the table, not armed in this process
    await clock.advance(timedelta(seconds=2))  # the sync comes after its time
    [occurrence] = await occurrences(svc, created["id"])
    assert occurrence["status"] == "fired"
    await placed_call(svc, phone)
    await finished(svc, occurrence["alert_id"])
    assert [c.to for c in svc.sandbox.calls.values()].count(phone) == 1


async def test_a_start_arms_what_is_near_and_computes_unknown_next_runs(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, announcer_schedule_horizon_s=HORIZON_S)
    runner, svc = await start_service(settings)
    try:
        far_cron = schedule_body({"cron": "0 8 * * *", "timezone": "Europe/Berlin"}, presynthesize_s=0)
        _, far = await post(svc, "/v1/schedules", far_cron)
        # Made ahead: held (and armed) from 600 s before its time, far beyond the horizon.
        _, spoken = await post(svc, "/v1/schedules", schedule_body({"at": soon(120)}, "+15550180003"))
        _, unknown = await post(svc, "/v1/schedules", far_cron)
    finally:
        await runner.cleanup()
    # As a row from before migration 0006 stands: no next run stored. Written with the service stopped
    # (its scheduler's sync would store the next run of a schedule changed a moment ago again).
    database = Database(database_url)
    try:
        store = ScheduleStore(database.sessions)
        await store.set_next_runs([(unknown["id"], None, {})])
        [row] = [r for r in await store.listing() if r.id == unknown["id"]]
        assert row.status == "active" and row.next_run_at is None
    finally:
        await database.dispose()
    async with horizon_service(tmp_path, database_url) as (svc, scheduler):
        assert scheduler.armed_for(far["id"]) is None
        assert scheduler.armed_for(spoken["id"]) is not None
        assert scheduler.armed_for(unknown["id"]) is None
        for created in (far, spoken, unknown):
            _, view = await get(svc, f"/v1/schedules/{created['id']}")
            assert view["next_run_at"] == (far if created is unknown else created)["next_run_at"], view

        async def made_ahead() -> bool:
            _, view = await get(svc, f"/v1/schedules/{spoken['id']}")
            return any(o["detail"].get("presynthesis") == "ready" for o in view["occurrences"])

        await eventually(made_ahead, timeout=20)


@contextlib.asynccontextmanager
async def horizon_service(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[Service, Any]]:
    """A service whose scheduler arms only the next HORIZON_S seconds, once that scheduler runs."""
    runner, svc = await start_service(
        make_settings(tmp_path, database_url, announcer_schedule_horizon_s=HORIZON_S)
    )
    try:
        scheduler = schedules_of(svc).scheduler
        await eventually(_started(scheduler))
        yield svc, scheduler
    finally:
        await runner.cleanup()


def _started(scheduler: Any) -> Any:
    async def started() -> bool:
        return bool(scheduler.started.is_set())

    return started
