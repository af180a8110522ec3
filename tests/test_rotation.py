"""Rotation math (announcer/shifts.py): hand-offs across DST changes, hours against days and
weeks, what happens before the start, and overrides inside and across a hand-off."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from announcer.shifts import Override, RotationSpec, Shifts, Stretch


def z(text: str) -> datetime:
    """A UTC instant written as 2026-03-29T07:00."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def rotation(
    zone: str,
    start: str,
    handoff: str = "09:00",
    *,
    unit: str = "days",
    length: int = 1,
    members: tuple[str, ...] = ("a", "b"),
    overrides: tuple[Override, ...] = (),
) -> Shifts:
    spec = RotationSpec(zone, length, unit, handoff, date.fromisoformat(start), members)
    return Shifts(spec, overrides)


def handoffs(r: Shifts, count: int) -> list[datetime]:
    return [r.handoff_at(k) for k in range(count)]


# --- hand-offs across DST: wall-clock days ----------------------------------------------------------------


def test_berlin_spring_forward_at_nine_is_a_23_hour_shift() -> None:
    r = rotation("Europe/Berlin", "2026-03-27")
    assert handoffs(r, 4) == [
        z("2026-03-27T08:00"),
        z("2026-03-28T08:00"),
        z("2026-03-29T07:00"),
        z("2026-03-30T07:00"),
    ]
    now, after = r.now_and_next(z("2026-03-28T12:00"))
    assert now == Stretch("b", z("2026-03-28T08:00"), z("2026-03-29T07:00"), False)
    assert now.until is not None and now.since is not None and now.until - now.since == timedelta(hours=23)
    assert after == Stretch("a", z("2026-03-29T07:00"), z("2026-03-30T07:00"), False)


def test_berlin_fall_back_at_nine_is_a_25_hour_shift() -> None:
    r = rotation("Europe/Berlin", "2026-10-24")
    now = r.stretch(z("2026-10-25T01:30"))  # inside the repeated hour
    assert now == Stretch("a", z("2026-10-24T07:00"), z("2026-10-25T08:00"), False)
    assert r.stretch(z("2026-10-25T08:00")).person_id == "b"  # the hand-off instant is the new shift's


def test_berlin_half_past_two_on_spring_forward_hands_off_when_the_clocks_jump() -> None:
    r = rotation("Europe/Berlin", "2026-03-28", "02:30")
    # 02:30 CET; 02:30 does not exist on the 29th: 03:00 CEST (01:00 UTC), the jump; then 02:30 CEST.
    assert handoffs(r, 3) == [z("2026-03-28T01:30"), z("2026-03-29T01:00"), z("2026-03-30T00:30")]
    assert r.on_call(z("2026-03-29T00:59:59")) == "a"
    assert r.on_call(z("2026-03-29T01:00")) == "b"


def test_berlin_half_past_two_on_fall_back_hands_off_at_its_first_occurrence() -> None:
    r = rotation("Europe/Berlin", "2026-10-24", "02:30")
    # 02:30 CEST, then 02:30 CEST again (the first of the two), then 02:30 CET
    assert handoffs(r, 3) == [z("2026-10-24T00:30"), z("2026-10-25T00:30"), z("2026-10-26T01:30")]
    assert r.stretch(z("2026-10-25T01:00")) == Stretch(
        "b", z("2026-10-25T00:30"), z("2026-10-26T01:30"), False
    )


def test_new_york_at_nine_across_both_changes() -> None:
    spring = rotation("America/New_York", "2026-03-07")
    assert handoffs(spring, 3) == [z("2026-03-07T14:00"), z("2026-03-08T13:00"), z("2026-03-09T13:00")]
    fall = rotation("America/New_York", "2026-10-31")
    assert handoffs(fall, 3) == [z("2026-10-31T13:00"), z("2026-11-01T14:00"), z("2026-11-02T14:00")]
    assert fall.stretch(z("2026-11-01T06:30")) == Stretch(
        "a", z("2026-10-31T13:00"), z("2026-11-01T14:00"), False
    )


def test_new_york_half_past_two_and_the_repeated_half_past_one() -> None:
    spring = rotation("America/New_York", "2026-03-07", "02:30")
    # 02:30 EST; on the 8th 02:30 does not exist: 03:00 EDT (07:00 UTC); then 02:30 EDT
    assert handoffs(spring, 3) == [z("2026-03-07T07:30"), z("2026-03-08T07:00"), z("2026-03-09T06:30")]
    fall = rotation("America/New_York", "2026-10-31", "02:30")
    assert handoffs(fall, 3) == [z("2026-10-31T06:30"), z("2026-11-01T07:30"), z("2026-11-02T07:30")]
    twice = rotation("America/New_York", "2026-10-31", "01:30")
    # 01:30 happens twice on 1 November: EDT (05:30 UTC) first
    assert handoffs(twice, 3) == [z("2026-10-31T05:30"), z("2026-11-01T05:30"), z("2026-11-02T06:30")]


# --- hours are elapsed time; weeks are wall-clock ---------------------------------------------------------


def test_hours_are_elapsed_time_across_a_change() -> None:
    r = rotation("Europe/Berlin", "2026-03-28", "21:00", unit="hours", length=12, members=("a", "b", "c"))
    # 21:00 CET, then 12 real hours later: 10:00 CEST on the wall clock, not 09:00
    assert handoffs(r, 3) == [z("2026-03-28T20:00"), z("2026-03-29T08:00"), z("2026-03-29T20:00")]
    now, after = r.now_and_next(z("2026-03-29T07:59"))
    assert now == Stretch("a", z("2026-03-28T20:00"), z("2026-03-29T08:00"), False)
    assert after == Stretch("b", z("2026-03-29T08:00"), z("2026-03-29T20:00"), False)
    assert r.on_call(z("2026-03-31T08:00")) == "c"  # 60 hours in: shift 5 (a b c a b c)


def test_weeks_hand_off_on_the_same_weekday_and_wall_clock_time() -> None:
    r = rotation("America/New_York", "2026-03-02", unit="weeks", members=("a", "b", "c"))
    assert handoffs(r, 4) == [
        z("2026-03-02T14:00"),
        z("2026-03-09T13:00"),
        z("2026-03-16T13:00"),
        z("2026-03-23T13:00"),
    ]
    assert r.stretch(z("2026-03-08T12:00")) == Stretch(
        "a", z("2026-03-02T14:00"), z("2026-03-09T13:00"), False
    )
    assert [r.on_call(z(t)) for t in ("2026-03-10T00:00", "2026-03-17T00:00", "2026-03-24T00:00")] == [
        "b",
        "c",
        "a",
    ]
    two = rotation("Europe/Berlin", "2026-03-23", unit="weeks", length=2)
    assert two.stretch(z("2026-04-01T00:00")) == Stretch(
        "a", z("2026-03-23T08:00"), z("2026-04-06T07:00"), False
    )


def test_before_the_start_nobody_is_on_call_and_the_first_member_is_next() -> None:
    r = rotation("Europe/Berlin", "2026-12-10")
    now, after = r.now_and_next(z("2026-12-01T00:00"))
    assert now == Stretch(None, None, z("2026-12-10T08:00"), False)
    assert after == Stretch("a", z("2026-12-10T08:00"), z("2026-12-11T08:00"), False)


def test_a_rotation_without_members_has_nobody_for_good() -> None:
    r = rotation("UTC", "2026-01-01", members=())
    assert r.now_and_next(z("2026-06-01T00:00")) == (Stretch(None, None, None, False), None)


def test_a_rotation_of_one_still_hands_off_each_shift() -> None:
    r = rotation("UTC", "2026-01-01", members=("a",))
    now, after = r.now_and_next(z("2026-06-01T12:00"))
    assert now == Stretch("a", z("2026-06-01T09:00"), z("2026-06-02T09:00"), False)
    assert after == Stretch("a", z("2026-06-02T09:00"), z("2026-06-03T09:00"), False)


# --- overrides ---------------------------------------------------------------------------------------------

CREATED = z("2026-01-01T00:00")


def override(i: int, person: str, start: str, end: str, created: int = 0) -> Override:
    return Override(i, person, z(start), z(end), CREATED + timedelta(minutes=created))


def test_an_override_inside_a_shift() -> None:
    r = rotation("UTC", "2026-06-01", overrides=(override(1, "x", "2026-06-02T12:00", "2026-06-02T15:00"),))
    # 2 June is b's shift (a has the 1st)
    now, after = r.now_and_next(z("2026-06-02T10:00"))
    assert now == Stretch("b", z("2026-06-02T09:00"), z("2026-06-02T12:00"), False)
    assert after == Stretch("x", z("2026-06-02T12:00"), z("2026-06-02T15:00"), True)
    now, after = r.now_and_next(z("2026-06-02T13:00"))
    assert now == Stretch("x", z("2026-06-02T12:00"), z("2026-06-02T15:00"), True)
    assert after == Stretch("b", z("2026-06-02T15:00"), z("2026-06-03T09:00"), False)


def test_an_override_across_a_hand_off_is_one_stretch() -> None:
    r = rotation("UTC", "2026-06-01", overrides=(override(1, "x", "2026-06-02T08:00", "2026-06-02T10:00"),))
    assert r.stretch(z("2026-06-02T08:30")) == Stretch(
        "x", z("2026-06-02T08:00"), z("2026-06-02T10:00"), True
    )
    assert r.stretch(z("2026-06-02T09:30")) == Stretch(
        "x", z("2026-06-02T08:00"), z("2026-06-02T10:00"), True
    )
    assert r.stretch(z("2026-06-02T07:00")) == Stretch(
        "a", z("2026-06-01T09:00"), z("2026-06-02T08:00"), False
    )
    # after it, the shift that began under it: b, since the override ended
    assert r.stretch(z("2026-06-02T11:00")) == Stretch(
        "b", z("2026-06-02T10:00"), z("2026-06-03T09:00"), False
    )


def test_overlapping_overrides_the_latest_created_wins() -> None:
    earlier = override(1, "x", "2026-06-02T10:00", "2026-06-02T14:00", created=5)
    later = override(2, "y", "2026-06-02T11:00", "2026-06-02T12:00", created=10)
    hidden = override(3, "w", "2026-06-02T12:30", "2026-06-02T13:00", created=1)  # under x: never on
    r = rotation("UTC", "2026-06-01", overrides=(later, hidden, earlier))
    assert r.stretch(z("2026-06-02T10:30")) == Stretch(
        "x", z("2026-06-02T10:00"), z("2026-06-02T11:00"), True
    )
    assert r.stretch(z("2026-06-02T11:30")) == Stretch(
        "y", z("2026-06-02T11:00"), z("2026-06-02T12:00"), True
    )
    assert r.stretch(z("2026-06-02T12:45")) == Stretch(
        "x", z("2026-06-02T12:00"), z("2026-06-02T14:00"), True
    )


def test_an_override_before_the_start_and_of_an_empty_rotation() -> None:
    r = rotation("UTC", "2026-06-10", overrides=(override(1, "x", "2026-06-01T00:00", "2026-06-02T00:00"),))
    assert r.now_and_next(z("2026-05-31T00:00")) == (
        Stretch(None, None, z("2026-06-01T00:00"), False),
        Stretch("x", z("2026-06-01T00:00"), z("2026-06-02T00:00"), True),
    )
    assert r.stretch(z("2026-06-05T00:00")) == Stretch(
        None, z("2026-06-02T00:00"), z("2026-06-10T09:00"), False
    )
    empty = rotation(
        "UTC", "2026-06-10", members=(), overrides=(override(1, "x", "2026-06-01T00:00", "2026-06-02T00:00"),)
    )
    assert empty.now_and_next(z("2026-06-01T05:00")) == (
        Stretch("x", z("2026-06-01T00:00"), z("2026-06-02T00:00"), True),
        Stretch(None, z("2026-06-02T00:00"), None, False),
    )


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"])
def test_every_instant_of_a_year_is_in_the_shift_its_hand_offs_bound(zone: str) -> None:
    """A walk through 2026 in 7-hour steps: the shift found always began at or before the instant and ends
    after it, at the next hand-off (half-hour DST on Lord Howe included)."""
    r = rotation(zone, "2026-01-01", "02:30", members=("a", "b", "c"))
    at = z("2026-01-02T00:00")
    while at < z("2027-01-01T00:00"):
        k = r.shift_index(at)
        assert r.handoff_at(k) <= at < r.handoff_at(k + 1)
        assert r.on_call(at) == "abc"[k % 3]
        at += timedelta(hours=7)
