"""When a schedule fires: one moment (`at`) or a cron expression in a time zone, checked into an
APScheduler trigger; and quiet hours, the part of a recipient's day nobody is called in.

Daylight-saving time follows the zone's rules, and APScheduler's cron arithmetic on wall-clock time:
- spring forward: a time that does not exist that day (02:30 in Europe/Berlin on the last Sunday of
  March) fires when the clock has jumped past it, one gap later (03:30 local);
- fall back: a time that happens twice that day fires once, at the first of the two (APScheduler
  alone fires both; `WallClockCron` drops the repeat, also for a schedule armed inside the repeated hour).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from announcer.deliveries import quiet_hours
from announcer.deliveries.plan import PlanError, Problem
from announcer.deliveries.quiet_hours import QuietHours


class WallClockCron(CronTrigger):  # type: ignore[misc]
    """A cron trigger that fires once per wall-clock time: on the night the clocks fall back, the
    repeated hour's second pass is skipped (a daily 02:30 reminder rings once, not twice).

    Told by the time itself (PEP 495's `fold`), not by comparing with the previous fire: arming at a
    start, a catch-up and an edit ask with no previous fire in hand, and a start inside the repeated
    hour was otherwise armed for its second pass and rang again."""

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        while fire is not None and _second_pass(fire):
            # Asked again from just after it, in UTC: wall-clock arithmetic on a second-pass time drops its
            # fold and lands back in the first pass.
            fire = super().get_next_fire_time(None, fire.astimezone(UTC) + timedelta(microseconds=1))
        return fire


def _second_pass(moment: datetime) -> bool:
    """Whether `moment` is the later of two instants sharing its wall-clock time (clocks fell back). In
    a gap (spring forward) fold=1 is the earlier instant instead, and not a second pass."""
    first = moment.replace(fold=0)
    return first.utcoffset() != moment.utcoffset() and first.astimezone(UTC) < moment.astimezone(UTC)


class DeferredTrigger(BaseTrigger):  # type: ignore[misc]
    """A trigger made when first asked. A job armed with its next run time given asks its trigger
    nothing until that run, and making a cron trigger compiles its line (60 us: a start arming 10,000
    schedules with distinct lines spent 0.4 s there, most of them for fires an hour away)."""

    __slots__ = ("_made", "_make")

    def __init__(self, make: Callable[[], BaseTrigger]) -> None:
        self._make = make
        self._made: BaseTrigger | None = None

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if self._made is None:
            self._made = self._make()
        fire: datetime | None = self._made.get_next_fire_time(previous_fire_time, now)
        return fire


@dataclass(frozen=True)
class When:
    at: datetime | None  # a one-shot (aware)
    cron: str | None
    timezone: str
    start: datetime | None
    end: datetime | None

    def trigger(self) -> BaseTrigger:
        zone = zone_info(self.timezone)
        if self.at is not None:
            return DateTrigger(run_date=self.at, timezone=zone)
        assert self.cron is not None
        return _cron_trigger(self.cron, self.timezone, self.start, self.end)

    def deferred_trigger(self) -> BaseTrigger:
        """The trigger, made when it is first asked for a time (for a job armed with its next run)."""
        return DeferredTrigger(self.trigger)

    def fires(self, after: datetime) -> Iterator[datetime]:
        """Fire times after `after`, in order, until the schedule ends."""
        trigger = self.trigger()
        previous: datetime | None = None
        now = after + timedelta(microseconds=1)
        while (fire := trigger.get_next_fire_time(previous, now)) is not None:
            yield fire
            previous, now = fire, fire + timedelta(microseconds=1)

    def next_times(self, after: datetime, count: int) -> list[datetime]:
        """The next `count` fire times after `after` (fewer when the schedule ends)."""
        return list(itertools.islice(self.fires(after), count))

    def local(self, moment: datetime) -> datetime:
        """`moment` as the schedule reads it: with the offset its `at` was given with, else in its zone
        (what its trigger gives; the database gives UTC)."""
        return moment.astimezone(self.at.tzinfo if self.at is not None else zone_info(self.timezone))

    def first_after(self, after: datetime) -> datetime | None:
        """The first fire time after `after` (None: the schedule will not fire again)."""
        return next(self.fires(after), None)

    def times_between(self, after: datetime, until: datetime, limit: int = 1000) -> list[datetime]:
        """Fire times in (after, until]: the fires missed while the service was down. Stops at the first
        one past `until` (most schedules at a start have missed nothing: one trigger step each)."""
        return list(itertools.islice(itertools.takewhile(lambda t: t <= until, self.fires(after)), limit))

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"timezone": self.timezone}
        if self.at is not None:
            out["at"] = self.at.isoformat()
        if self.cron is not None:
            out["cron"] = self.cron
        if self.start is not None:
            out["start"] = self.start.isoformat()
        if self.end is not None:
            out["end"] = self.end.isoformat()
        return out


@functools.lru_cache(maxsize=1024)
def zone_info(name: str) -> ZoneInfo:
    """ZoneInfo keeps only 8 zones it is not handed back for: the rest are read from disk again each time
    (20 us; a listing of 10,000 schedules in 500 zones spent 0.2 s there). Every zone there is, held."""
    return ZoneInfo(name)


@functools.lru_cache(maxsize=4096)
def _cron_trigger(cron: str, zone: str, start: datetime | None, end: datetime | None) -> WallClockCron:
    """Shared by every schedule with the same line, zone and bounds (thousands of "0 8 * * mon-fri"
    in a few zones): a trigger only computes times, it keeps no state of its own."""
    return WallClockCron(**_cron_fields(cron), timezone=zone_info(zone), start_date=start, end_date=end)


_CRON_NAMES = ("minute", "hour", "day", "month", "day_of_week")


_CRON_SPACE = re.compile(r"[ \t]+")  # between fields: what the API document's cron pattern says


def _cron_fields(expression: str) -> dict[str, str]:
    """A standard 5-field crontab line as CronTrigger fields. CronTrigger.from_crontab would do the
    same, but day-of-week numbers differ: crontab's 0 is Sunday, APScheduler's 0 is Monday; only names
    mean the same to both, so numbers (ASCII digits: "²" is no number there) are refused with a clear
    reason. Fields are apart by spaces and tabs, as in a crontab."""
    parts = _CRON_SPACE.split(expression.strip(" \t"))
    if len(parts) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month day-of-week), got {len(parts)}")
    fields = dict(zip(_CRON_NAMES, parts, strict=True))
    if any("0" <= ch <= "9" for ch in fields["day_of_week"]):
        raise ValueError("give days of the week by name (mon-fri, sun), not by number")
    return fields


def _zone(name: str | None, field: str, problems: list[Problem]) -> ZoneInfo | None:
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(Problem(field, f"unknown time zone {name!r}"))
        return None


def _moment(
    value: str | None, zone: ZoneInfo | None, field: str, problems: list[Problem], *, zone_named: bool = False
) -> datetime | None:
    """ISO-8601 with an offset, or local time read in `zone`. `zone_named`: a zone was given, and is
    unknown (a problem already): a local time then has nothing more wrong with it to report."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        problems.append(Problem(field, "not an ISO-8601 date and time"))
        return None
    if moment.tzinfo is None:
        if zone is None:
            if not zone_named:
                problems.append(Problem(field, "no UTC offset: add one (+01:00) or give `when.timezone`"))
            return None
        moment = moment.replace(tzinfo=zone)
    return moment


def parse_when(raw: dict[str, Any], now: datetime) -> When:
    """Check a schedule's `when` and make it a When; PlanError names every bad field."""
    problems: list[Problem] = []
    at, cron = raw.get("at"), raw.get("cron")
    zone_name = raw.get("timezone")
    zone = _zone(zone_name, "when.timezone", problems)
    if (at is None) == (cron is None):
        raise PlanError([Problem("when", "give either `at` (one time) or `cron` (repeating)")])
    if at is not None:
        if raw.get("start") is not None or raw.get("end") is not None:
            problems.append(Problem("when", "`start` and `end` belong to a cron schedule"))
        moment = _moment(at, zone, "when.at", problems, zone_named=zone_name is not None)
        if moment is not None and moment <= now:
            problems.append(Problem("when.at", f"{moment.isoformat()} is in the past"))
        if problems:
            raise PlanError(problems)
        assert moment is not None
        # Given with an offset only: the moment is exact; quiet hours then read recipients' own zones.
        return When(moment, None, zone_name or "UTC", None, None)
    if zone is None and not problems:
        problems.append(Problem("when.timezone", "a cron schedule needs its time zone (e.g. Europe/Berlin)"))
    start = _moment(raw.get("start"), zone, "when.start", problems, zone_named=zone_name is not None)
    end = _moment(raw.get("end"), zone, "when.end", problems, zone_named=zone_name is not None)
    if start is not None and end is not None and end <= start:
        problems.append(Problem("when.end", "is not after `when.start`"))
    if end is not None and end <= now:
        problems.append(Problem("when.end", f"{end.isoformat()} is in the past"))
    try:
        fields = _cron_fields(str(cron))
        CronTrigger(**fields, timezone=zone or ZoneInfo("UTC"))
    except ValueError as err:
        problems.append(Problem("when.cron", f"invalid cron expression: {err}"))
    if problems:
        raise PlanError(problems)
    when = When(None, str(cron), str(zone_name), start, end)
    if not when.next_times(now, 1):
        raise PlanError([Problem("when", "this schedule would never fire")])
    return when


def when_from_json(raw: dict[str, Any]) -> When:
    """A stored When (already checked when it was accepted)."""

    def moment(key: str) -> datetime | None:
        value = raw.get(key)
        return datetime.fromisoformat(value) if value else None

    return When(moment("at"), raw.get("cron"), raw["timezone"], moment("start"), moment("end"))


def parse_quiet_hours(raw: dict[str, Any] | None) -> QuietHours | None:
    """Quiet hours as given in a schedule's options; PlanError names the bad field."""
    try:
        return quiet_hours.parse_quiet_hours(raw)
    except quiet_hours.QuietHoursError as err:
        raise PlanError([Problem(err.field, err.reason)]) from None
