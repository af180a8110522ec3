"""`announcer schedule add | list | pause | resume | rm` as a user meets them: a real subprocess talking to
the whole service (sandbox mode) over HTTP, while the service keeps running on the test's event loop. The
exit status is 0 when the service did what was asked and 2 when it refused (or nothing could be asked).
Fires are a few seconds ahead of real time and waited for as conditions, never with a fixed sleep."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from announcer.cli import CommandError, _at, _moment_text, _schedule_table
from tests.conftest import Service, eventually, free_port, run_cli
from tests.test_alerts import finished, get, post
from tests.test_schedules import schedule_body, soon

HEARER = "+15550100001"
OTHER = "+15550100002"
CREATED = re.compile(r"^schedule (\S+): (\S+), (.*)$", re.MULTILINE)
WEEKDAYS_AT_8 = ("--cron", "0 8 * * mon-fri", "--timezone", "Europe/Berlin")


def row_of(listing: str, schedule_id: str) -> list[str]:
    """The cells of `schedule_id`'s row in `schedule list`'s table (columns apart by two spaces or more)."""
    rows = [line for line in listing.splitlines() if line.startswith(schedule_id + " ")]
    assert len(rows) == 1, listing
    return re.split(r"\s{2,}", rows[0])


async def add(service: Service, tmp_path: Path, *args: str) -> str:
    """A schedule made with the CLI; its id."""
    code, out, err = await run_cli(tmp_path, service.base_url, "schedule", "add", *args)
    assert code == 0, (out, err)
    match = CREATED.search(out)
    assert match, out
    return match.group(1)


async def test_add_a_one_shot_it_is_listed_then_fires(service: Service, tmp_path: Path) -> None:
    at = (datetime.now(UTC) + timedelta(seconds=4)).isoformat()
    code, out, err = await run_cli(
        tmp_path,
        service.base_url,
        "schedule",
        "add",
        "--text",
        "Hello {{ name }}, your appointment is at {{ time }}.",
        "--to",
        HEARER,
        "--recipient-name",
        "Alice",
        "--var",
        "time=10:30",
        "--at",
        at,
        "--name",
        "dentist reminder",
        "--misfire",
        "skip",
    )
    assert code == 0, (out, err)
    match = CREATED.search(out)
    assert match, out
    schedule_id = match.group(1)
    assert match.group(2) == "active" and match.group(3) == f"next run {_moment_text(at)}", out
    status, view = await get(service, f"/v1/schedules/{schedule_id}")
    assert status == 200 and view["name"] == "dentist reminder"
    assert view["options"]["misfire"] == "skip"

    code, out, err = await run_cli(tmp_path, service.base_url, "schedule", "list")
    assert code == 0, (out, err)
    assert out.splitlines()[0].split() == ["ID", "NAME", "STATUS", "NEXT", "RUN", "WHEN"]
    cells = row_of(out, schedule_id)
    assert cells[1] == "dentist reminder" and cells[4] == f"once at {_moment_text(at)} (UTC)", out
    # a slow machine may have taken the 4 s to start the two commands: then it has fired already
    assert cells[2:4] in (["active", _moment_text(at)], ["ended", "-"]), out

    async def fired() -> bool:
        _, view = await get(service, f"/v1/schedules/{schedule_id}")
        return bool(view["status"] == "ended" and view["occurrences"])

    await eventually(fired, timeout=30)
    _, view = await get(service, f"/v1/schedules/{schedule_id}")
    alert = await finished(service, view["occurrences"][0]["alert_id"])
    assert alert["counts"] == {"heard": 1}
    _, page = await get(service, f"/v1/alerts/{alert['id']}/deliveries")
    assert [d["text"] for d in page["deliveries"]] == ["Hello Alice, your appointment is at 10:30."]

    code, out, err = await run_cli(tmp_path, service.base_url, "schedule", "list")
    assert code == 0, (out, err)
    assert row_of(out, schedule_id)[2:4] == ["ended", "-"], out


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        (("--cron", "61 8 * * *", "--timezone", "Europe/Berlin"), r"when\.cron: invalid cron .*\[--cron\]"),
        (("--cron", "0 8 * * 1-5", "--timezone", "Europe/Berlin"), r"when\.cron: .*by name.*\[--cron\]"),
        (("--cron", "0 8 * * mon", "--timezone", "Mars/Olympus"), r"when\.timezone: .*\[--timezone\]"),
        (("--at", "2020-01-01T09:00", "--timezone", "Europe/Berlin"), r"when\.at: .*in the past.*\[--at\]"),
    ],
)
async def test_refused_add_exits_2_naming_the_field_and_stores_nothing(
    service: Service, tmp_path: Path, when: tuple[str, ...], problem: str
) -> None:
    _, before = await get(service, "/v1/schedules")
    code, out, err = await run_cli(
        tmp_path, service.base_url, "schedule", "add", "--text", "Hello.", "--to", HEARER, *when
    )
    assert code == 2, (out, err)
    assert err.startswith("error: the service answered 422"), err
    assert re.search(rf"^{problem}$", err, re.MULTILINE), err
    assert out == ""
    _, after = await get(service, "/v1/schedules")
    assert after == before


async def test_refused_add_names_the_recipient_and_the_missing_variable(
    service: Service, tmp_path: Path
) -> None:
    people = tmp_path / "people.csv"
    people.write_text(f"phone,name\n{HEARER},Alice\n")
    code, out, err = await run_cli(
        tmp_path,
        service.base_url,
        "schedule",
        "add",
        "--text",
        "Hello {{ name }}, see you at {{ time }}.",
        "--file",
        str(people),
        "--to",
        OTHER,
        *WEEKDAYS_AT_8,
    )
    assert code == 2, (out, err)
    assert re.search(r"^recipients\[0\]\.variables: .*time.*\[people\.csv line 2\]$", err, re.MULTILINE), err
    assert re.search(rf"^recipients\[1\]\.variables: .*\[--to {re.escape(OTHER)}\]$", err, re.MULTILINE), err


async def test_cron_without_a_zone_is_refused_before_any_request(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would say "cannot reach"
    code, out, err = await run_cli(
        tmp_path, url, "schedule", "add", "--text", "Hello.", "--to", HEARER, "--cron", "0 8 * * mon-fri"
    )
    assert code == 2, (out, err)
    assert err.strip().splitlines() == [
        "error: --cron needs --timezone ZONE (an IANA zone, e.g. Europe/Berlin): "
        "8 o'clock is not the same moment everywhere"
    ]
    assert out == ""


async def test_pause_resume_and_rm(service: Service, tmp_path: Path) -> None:
    schedule_id = await add(
        service, tmp_path, "--text", "Stand-up now.", "--to", HEARER, "--name", "stand-up", *WEEKDAYS_AT_8
    )
    _, view = await get(service, f"/v1/schedules/{schedule_id}")
    next_run = view["next_run_at"]
    assert view["status"] == "active" and next_run is not None

    code, out, err = await run_cli(tmp_path, service.base_url, "schedule", "pause", schedule_id)
    assert (code, out, err) == (0, f"schedule {schedule_id}: paused\n", "")
    _, view = await get(service, f"/v1/schedules/{schedule_id}")
    assert view["status"] == "paused" and view["next_run_at"] is None
    code, out, err = await run_cli(tmp_path, service.base_url, "schedule", "list")
    assert code == 0, (out, err)
    cells = row_of(out, schedule_id)
    assert cells[1:] == ["stand-up", "paused", "-", "cron 0 8 * * mon-fri (Europe/Berlin)"], out

    code, out, err = await run_cli(tmp_path, service.base_url, "schedule", "resume", schedule_id)
    assert (code, out, err) == (0, f"schedule {schedule_id}: active, next run {_moment_text(next_run)}\n", "")
    _, view = await get(service, f"/v1/schedules/{schedule_id}")
    assert view["status"] == "active" and view["next_run_at"] == next_run

    code, out, err = await run_cli(tmp_path, service.base_url, "schedule", "rm", schedule_id)
    assert (code, out, err) == (0, f"schedule {schedule_id}: deleted\n", "")
    status, _ = await get(service, f"/v1/schedules/{schedule_id}")
    assert status == 404
    code, out, err = await run_cli(tmp_path, service.base_url, "schedule", "list")
    assert code == 0 and schedule_id not in out, (out, err)


@pytest.mark.parametrize("command", ["pause", "resume", "rm"])
async def test_unknown_id_exits_2_with_one_line_naming_it(
    service: Service, tmp_path: Path, command: str
) -> None:
    code, out, err = await run_cli(tmp_path, service.base_url, "schedule", command, "sc_nosuchschedule")
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: schedule sc_nosuchschedule: the service answered 404"), err
    assert "no such schedule" in lines[0]
    assert out == ""


async def test_resuming_a_schedule_that_ended_is_refused_naming_the_field(
    service: Service, tmp_path: Path
) -> None:
    # Made through the API, not the CLI: the CLI's own start-up (1-3 s on a loaded machine) would make
    # an instant two seconds ahead a past one, refused.
    status, made = await post(service, "/v1/schedules", schedule_body({"at": soon(2)}))
    assert status == 201, made
    schedule_id = made["id"]

    async def ended() -> bool:
        _, view = await get(service, f"/v1/schedules/{schedule_id}")
        return bool(view["status"] == "ended")

    await eventually(ended, timeout=30)
    code, out, err = await run_cli(tmp_path, service.base_url, "schedule", "resume", schedule_id)
    assert code == 2, (out, err)
    assert err.startswith(f"error: schedule {schedule_id}: the service answered 422"), err
    assert re.search(r"^status: this schedule has ended", err, re.MULTILINE), err


async def test_list_of_an_unreachable_service_exits_2_with_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli(tmp_path, url, "schedule", "list")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0] and url in lines[0], err
    assert out == ""


def test_list_table_columns_line_up() -> None:
    table = _schedule_table(
        [
            {
                "id": "sc_1",
                "name": "a\tlong\nname",
                "status": "active",
                "next_run_at": "2026-11-30T09:00:00+01:00",
                "when": {"at": "2026-11-30T09:00:00+01:00", "timezone": "Europe/Berlin"},
            },
            {
                "id": "sc_22",
                "name": None,
                "status": "paused",
                "next_run_at": None,
                "when": {
                    "cron": "0 8 * * mon-fri",
                    "timezone": "Europe/Berlin",
                    "end": "2027-01-01T00:00:00+01:00",
                },
            },
        ]
    )
    assert table == [
        "ID     NAME         STATUS  NEXT RUN                WHEN",
        "sc_1   a long name  active  2026-11-30 09:00+01:00  once at 2026-11-30 09:00+01:00 (Europe/Berlin)",
        "sc_22  -            paused  -                       "
        "cron 0 8 * * mon-fri (Europe/Berlin) until 2027-01-01 00:00+01:00",
    ]


def test_at_today_or_tomorrow_is_that_days_date_in_the_zone() -> None:
    day = date(2026, 12, 31)
    assert _at("tomorrow 09:00", "Europe/Berlin", day) == "2027-01-01T09:00"
    assert _at("Today 7:05", "Europe/Berlin", day) == "2026-12-31T07:05"
    assert _at("2026-11-30T09:00", "Europe/Berlin", day) == "2026-11-30T09:00"  # ISO: as given
    # without a zone: the time on this machine's clock, with its offset
    local = datetime.fromisoformat(_at("tomorrow 09:00", None, day))
    assert (local.date(), local.hour, local.minute) == (
        date(2027, 1, 1),
        9,
        0,
    ) and local.utcoffset() is not None
    with pytest.raises(CommandError, match="no such time of day"):
        _at("tomorrow 25:00", "Europe/Berlin", day)


async def test_add_at_tomorrow_is_accepted(service: Service, tmp_path: Path) -> None:
    code, out, err = await run_cli(
        tmp_path,
        service.base_url,
        "schedule",
        "add",
        "--text",
        "Hello.",
        "--to",
        HEARER,
        "--at",
        "tomorrow 09:00",
        "--timezone",
        "Europe/Berlin",
    )
    assert code == 0, (out, err)
    tomorrow = (datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(days=1)).date().isoformat()
    assert f"next run {tomorrow} 09:00+01:00" in out or f"next run {tomorrow} 09:00+02:00" in out, out
