"""Scheduled reminders: validation, one-shot fires, pause/resume/delete, a restart's misfire policy, and
the DST rules of repeating schedules. Fires are a second or two ahead of real time and waited for as
events (a placed call, a recorded occurrence); the DST rules are checked on the triggers themselves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from announcer.deliveries.plan import PlanError
from announcer.scheduling.when import parse_quiet_hours, parse_when
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


async def test_a_one_shot_fires_once_at_its_time(service: Service) -> None:
    at = soon(1.5)
    status, created = await post(service, "/v1/schedules", schedule_body({"at": at}))
    assert status == 201, created
    assert created["next_run_at"] == datetime.fromisoformat(at).isoformat()
    call = await placed_call(service, HEARER)
    lateness = call.placed_at  # monotonic: compared below through the occurrence's wall-clock time
    [occurrence] = await occurrences(service, created["id"])
    assert (
        occurrence["status"] == "fired" and occurrence["planned_at"] == datetime.fromisoformat(at).isoformat()
    )
    alert = await finished(service, occurrence["alert_id"])
    assert alert["counts"] == {"heard": 1}
    _, view = await get(service, f"/v1/schedules/{created['id']}")
    assert view["status"] == "ended" and view["next_run_at"] is None
    assert [c.to for c in service.sandbox.calls.values()].count(HEARER) == 1
    assert lateness > 0


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


async def test_a_missing_variable_is_refused_before_anything_is_stored(service: Service) -> None:
    body = schedule_body({"at": soon(3600)})
    body["variables"] = {}
    _, before = await get(service, "/v1/schedules")
    status, answer = await post(service, "/v1/schedules", body)
    assert status == 422
    assert answer["problems"][0]["field"] == "recipients[0].variables"
    _, after = await get(service, "/v1/schedules")
    assert after == before


async def test_pause_resume_and_delete(service: Service) -> None:
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
    # A one-shot deleted before its time never calls; a later one proves the clock went past it.
    status, doomed = await post(service, "/v1/schedules", schedule_body({"at": soon(1.0)}, "+15550130001"))
    assert status == 201
    assert await delete(service, f"/v1/schedules/{doomed['id']}") == 204
    assert (await get(service, f"/v1/schedules/{doomed['id']}"))[0] == 404
    status, later = await post(service, "/v1/schedules", schedule_body({"at": soon(1.5)}, "+15550130002"))
    assert status == 201
    await placed_call(service, "+15550130002")
    assert "+15550130001" not in [c.to for c in service.sandbox.calls.values()]
    [occurrence] = await occurrences(service, later["id"])
    await finished(service, occurrence["alert_id"])
    assert await delete(service, f"/v1/schedules/{sid}") == 204
    _, listing = await get(service, "/v1/schedules")
    assert sid not in [s["id"] for s in listing["schedules"]]


@pytest.mark.parametrize(
    ("policy", "grace_s", "expected"),
    [("run", 300, "fired"), ("skip", 300, "missed"), ("run", 1, "missed")],  # the last: later than its grace
)
async def test_a_fire_missed_while_down_follows_the_misfire_policy_once(
    tmp_path: Path, database_url: str, policy: str, grace_s: int, expected: str
) -> None:
    settings = make_settings(tmp_path, database_url)
    runner, svc = await start_service(settings)
    try:
        at = soon(1.0)
        body = schedule_body({"at": at}, misfire=policy, misfire_grace_s=grace_s)
        status, created = await post(svc, "/v1/schedules", body)
        assert status == 201
    finally:
        await runner.cleanup()  # down across the fire time
    planned = datetime.fromisoformat(at)

    async def past() -> bool:
        return datetime.now(UTC) > planned + timedelta(seconds=0.2 if grace_s > 1 else 1.5)

    await eventually(past)
    for restart in range(2):  # the second start must not run it again
        runner, svc = await start_service(make_settings(tmp_path, database_url))
        try:
            [occurrence] = await occurrences(svc, created["id"])
            assert occurrence["status"] == expected, occurrence
            if expected == "fired":
                await finished(svc, occurrence["alert_id"])
                placed = [c.to for c in svc.sandbox.calls.values()]
                assert placed.count(HEARER) == (1 if restart == 0 else 0)
            else:
                assert svc.sandbox.calls == {} or HEARER not in [c.to for c in svc.sandbox.calls.values()]
        finally:
            await runner.cleanup()


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


def test_quiet_hours_wrap_midnight_and_refuse_the_whole_day() -> None:
    quiet = parse_quiet_hours({"start": "21:00", "end": "08:00"})
    assert quiet is not None
    assert quiet.contains(datetime(2027, 1, 1, 22, 0).time()) and quiet.contains(
        datetime(2027, 1, 1, 7, 59).time()
    )
    assert not quiet.contains(datetime(2027, 1, 1, 8, 0).time())
    with pytest.raises(PlanError):
        parse_quiet_hours({"start": "09:00", "end": "09:00"})


async def test_quiet_hours_defer_to_the_window_end_in_each_recipients_zone(service: Service) -> None:
    now = datetime.now(UTC)
    quiet = {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=1)).strftime("%H:%M"),
    }
    sleeper, awake = "+15550140001", "+15550140002"
    body = schedule_body({"at": soon(1.0)}, sleeper, awake, quiet_hours=quiet)
    body["recipients"][0]["timezone"] = "UTC"  # inside the window
    body["recipients"][1]["timezone"] = "Etc/GMT-12"  # twelve hours ahead: outside it
    status, created = await post(service, "/v1/schedules", body)
    assert status == 201, created
    [occurrence] = await occurrences(service, created["id"])
    await placed_call(service, awake)

    async def deferred() -> dict[str, Any] | None:
        _, page = await get(service, f"/v1/alerts/{occurrence['alert_id']}/deliveries")
        first = page["deliveries"][0]
        kinds = [h["kind"] for h in first["history"]]
        return first if "deferred" in kinds else None

    await eventually(lambda: _truthy(deferred()))
    first = await deferred()
    assert first is not None and first["state"] == "pending" and first["call_sid"] is None
    [event] = [h for h in first["history"] if h["kind"] == "deferred"]
    until = datetime.fromisoformat(event["until"])
    assert until.strftime("%H:%M") == quiet["end"] and until > now  # the window's end, not dropped
    assert sleeper not in [c.to for c in service.sandbox.calls.values()]

    async def awake_heard() -> bool:
        _, page = await get(service, f"/v1/alerts/{occurrence['alert_id']}/deliveries")
        return bool(page["deliveries"][1]["state"] == "heard")

    await eventually(awake_heard, timeout=20)


async def _truthy(value: Any) -> bool:
    return bool(await value)


async def test_reminder_keys_confirm_decline_and_snooze(service: Service) -> None:
    yes, no, later = "+15550150001", "+15550150002", "+15550150003"
    body = schedule_body({"at": soon(1.0)}, yes, no, later, confirm=True, snooze_s=120)
    status, created = await post(service, "/v1/schedules", body)
    assert status == 201, created
    for phone, key in ((yes, "1"), (no, "2"), (later, "3")):
        call = await placed_call(service, phone)
        await call.wait_for_mark("prompt:", 20)
        await call.press(key)
    [occurrence] = await occurrences(service, created["id"])

    async def settled() -> bool:
        _, alert = await get(service, f"/v1/alerts/{occurrence['alert_id']}")
        return bool(alert["counts"] == {"confirmed": 1, "declined": 1, "snoozed": 1, "pending": 1})

    await eventually(settled, timeout=20)
    _, page = await get(service, f"/v1/alerts/{occurrence['alert_id']}/deliveries")
    [again] = [d for d in page["deliveries"] if d["state"] == "pending"]
    assert again["phone"] == later and again["call_sid"] is None
    [snoozed] = [d for d in page["deliveries"] if d["state"] == "snoozed"]
    due = datetime.fromisoformat(again["history"][-1]["due"])
    assert (
        timedelta(seconds=110) < due - datetime.fromisoformat(snoozed["updated_at"]) <= timedelta(seconds=121)
    )
    _, alert = await get(service, f"/v1/alerts/{occurrence['alert_id']}")
    assert alert["status"] == "active"  # the snoozed reminder is still owed


async def test_speech_is_made_before_the_fire_and_a_tts_failure_shows_first(service: Service) -> None:
    # Made ahead: the TTS request for the reminder ends before its call is placed.
    body = schedule_body({"at": soon(2.0)}, "+15550160001")
    body["template_text"] = "Presynthesis check for {{ name }}, appointment at {{ at | spoken_time }}."
    status, created = await post(service, "/v1/schedules", body)
    assert status == 201

    async def ready() -> bool:
        _, view = await get(service, f"/v1/schedules/{created['id']}")
        return any(o["detail"].get("presynthesis") == "ready" for o in view["occurrences"])

    await eventually(ready, timeout=10)
    call = await placed_call(service, "+15550160001")
    [request] = [r for r in service.tts.requests if "Presynthesis check" in r.text]
    assert request.finished_at is not None and request.finished_at < call.placed_at
    [occurrence] = await occurrences(service, created["id"])
    assert occurrence["status"] == "fired" and occurrence["detail"]["presynthesis"] == "ready"

    # A failing TTS is retried, and shows on the occurrence before the call time.
    service.tts.fail_next("server_error", times=100)
    body = schedule_body({"at": soon(3.0)}, "+15550160002")
    body["template_text"] = "Failing synthesis for {{ name }} at {{ at | spoken_time }}."
    status, failing = await post(service, "/v1/schedules", body)
    assert status == 201

    async def failed_ahead() -> bool:
        _, view = await get(service, f"/v1/schedules/{failing['id']}")
        return any(
            o["status"] == "upcoming" and o["detail"].get("presynthesis") == "failed"
            for o in view["occurrences"]
        )

    await eventually(failed_ahead, timeout=10)
    assert "+15550160002" not in [c.to for c in service.sandbox.calls.values()]  # before anyone is dialed
    # At the time, the call still goes out, spoken by the fallback voice.
    [occurrence] = await occurrences(service, failing["id"])
    assert occurrence["status"] == "fired" and occurrence["detail"]["attempts"] >= 1
    alert = await finished(service, occurrence["alert_id"])
    assert alert["counts"] == {"heard": 1}


async def test_two_processes_on_one_postgresql_fire_each_occurrence_once(
    tmp_path: Path, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several processes share a database on PostgreSQL; SQLite is one process's file")
    from announcer.app import SCHEDULES

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
    runner, svc = await start_service(
        make_settings(tmp_path, database_url, announcer_schedule_horizon_s=HORIZON_S)
    )
    try:
        scheduler = schedules_of(svc).scheduler
        await eventually(_started(scheduler))
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
    finally:
        await runner.cleanup()


async def test_a_fire_stores_the_next_run_and_hands_a_far_one_back_to_the_table(
    tmp_path: Path, database_url: str
) -> None:
    runner, svc = await start_service(
        make_settings(tmp_path, database_url, announcer_schedule_horizon_s=HORIZON_S)
    )
    try:
        scheduler = schedules_of(svc).scheduler
        await eventually(_started(scheduler))
        phone = "+15550180002"
        body = schedule_body({"cron": "0 8 * * *", "timezone": "Europe/Berlin"}, phone, presynthesize_s=0)
        status, created = await post(svc, "/v1/schedules", body)
        assert status == 201
        sid, tomorrow = created["id"], created["next_run_at"]
        assert scheduler.armed_for(sid) is None
        # A cron's next time is up to a day away: its stored next run is moved 2 s ahead instead (as a
        # change through another process would); the leader arms it at its next sync.
        planned = datetime.now(UTC) + timedelta(seconds=2)
        store = schedules_of(svc).store
        await store.change(sid, next_run_at=planned)
        [occurrence] = await occurrences(svc, sid)
        assert occurrence["status"] == "fired" and occurrence["planned_at"] == planned.isoformat()
        await placed_call(svc, phone)

        async def advanced() -> bool:
            _, view = await get(svc, f"/v1/schedules/{sid}")
            return bool(view["next_run_at"] == tomorrow)

        await eventually(advanced)  # the trigger's next time after the fire: 08:00 Berlin
        _, view = await get(svc, f"/v1/schedules/{sid}")
        assert view["status"] == "active"
        assert scheduler.armed_for(sid) is None  # beyond the horizon again: off APScheduler
        await finished(svc, occurrence["alert_id"])
        assert [c.to for c in svc.sandbox.calls.values()].count(phone) == 1
    finally:
        await runner.cleanup()


async def test_a_start_arms_what_is_near_and_computes_unknown_next_runs(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, announcer_schedule_horizon_s=HORIZON_S)
    runner, svc = await start_service(settings)
    try:
        store = schedules_of(svc).store
        far_cron = schedule_body({"cron": "0 8 * * *", "timezone": "Europe/Berlin"}, presynthesize_s=0)
        _, far = await post(svc, "/v1/schedules", far_cron)
        # Made ahead: held (and armed) from 600 s before its time, far beyond the horizon.
        _, spoken = await post(svc, "/v1/schedules", schedule_body({"at": soon(120)}, "+15550180003"))
        _, unknown = await post(svc, "/v1/schedules", far_cron)
        # As a row from before migration 0006 stands: no next run stored.
        await store.set_next_runs([(unknown["id"], None, {})])
        _, view = await get(svc, f"/v1/schedules/{unknown['id']}")
        assert view["status"] == "active" and view["next_run_at"] is None
    finally:
        await runner.cleanup()
    runner, svc = await start_service(
        make_settings(tmp_path, database_url, announcer_schedule_horizon_s=HORIZON_S)
    )
    try:
        scheduler = schedules_of(svc).scheduler
        await eventually(_started(scheduler))
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
    finally:
        await runner.cleanup()


def _started(scheduler: Any) -> Any:
    async def started() -> bool:
        return bool(scheduler.started.is_set())

    return started
