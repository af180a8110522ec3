"""Who is on call in a rotation at an instant, from when until when, and who is next: pure, no I/O.

A rotation hands its members on, in order, one shift each. The first shift (members[0]) starts on
`start_date` at `handoff_time` in the rotation's zone; before that nobody is on call (unless an override
says otherwise), and `next` is members[0] from that first hand-off.

- `days` and `weeks` are wall-clock: every hand-off is at `handoff_time` local, DST or not, so the shift
  over a change is 23 or 25 hours long.
- `hours` are elapsed time from the first hand-off instant: a 12-hour shift is 12 real hours, and its
  hand-offs move on the wall clock across a change.
- A hand-off time that does not exist that day (02:30 on a spring-forward day) happens at the first valid
  instant after it: the moment the clocks jump (03:00 in Berlin). zoneinfo's fold=0 would say 03:30 (the
  time read with the old offset); we hand off at the jump instead, the earliest moment that is after the
  missing time, so the outgoing shift is not stretched by the gap. An ambiguous one (02:30 on a fall-back
  day) happens at its first occurrence (fold=0).
- An override (a person, from `starts_at` until `ends_at`) replaces the scheduled person in its window;
  where overrides overlap, the one created last wins.

Every boundary is a change: each hand-off starts a new shift (even A to A in a rotation of one), and each
override's start and end. A stretch of the same override (or the same shift) is one stretch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

UNIT_DAYS = {"days": 1, "weeks": 7}
_TICK = timedelta(microseconds=1)  # the finest datetime step: no two boundaries are closer than this


@dataclass(frozen=True)
class RotationSpec:
    timezone: str  # IANA
    shift_length: int  # >= 1
    shift_unit: str  # "hours" | "days" | "weeks"
    handoff_time: str  # "HH:MM", local
    start_date: date
    members: Sequence[str]  # person ids, in order (may repeat)


@dataclass(frozen=True)
class Override:
    id: int
    person_id: str
    starts_at: datetime  # aware
    ends_at: datetime  # aware, after starts_at
    created_at: datetime  # aware; the latest created wins an overlap (then the higher id)


@dataclass(frozen=True)
class Stretch:
    """One person's time on call (or nobody's): `since` None is since always, `until` None is for good."""

    person_id: str | None
    since: datetime | None
    until: datetime | None
    override: bool


# A stretch's identity: ("override", id), ("shift", k) or ("nobody",) — equal on both sides of a boundary
# means no change there.
_State = tuple[str, int] | tuple[str]


def local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """`at` on `day` in `zone` as a UTC instant: a time the day skips (spring forward) is the jump's
    moment; a time the day has twice (fall back) its first occurrence."""
    first = datetime.combine(day, at, tzinfo=zone)  # fold=0: the first occurrence of an ambiguous time
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == first.replace(tzinfo=None):
        return instant
    # In the gap: fold=0 read it with the old offset (after the jump), fold=1 with the new (before it).
    # The jump lies between the two: find the first instant carrying the new offset.
    new_offset = first.replace(fold=1).utcoffset()
    low, high = first.replace(fold=1).astimezone(UTC), instant
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == new_offset:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


class Shifts:
    """A rotation and its overrides, asked about instants."""

    def __init__(self, spec: RotationSpec, overrides: Sequence[Override] = ()) -> None:
        if spec.shift_unit not in ("hours", *UNIT_DAYS):
            raise ValueError(f"unknown shift unit {spec.shift_unit!r}")
        if spec.shift_length < 1:
            raise ValueError("shift_length must be at least 1")
        self.spec = spec
        self.zone = ZoneInfo(spec.timezone)
        hour, minute = (int(part) for part in spec.handoff_time.split(":"))
        self.handoff = time(hour, minute)
        self.first = local_instant(spec.start_date, self.handoff, self.zone)
        self.overrides = sorted(overrides, key=lambda o: (o.created_at, o.id))
        self.members = list(spec.members)

    # --- the schedule --------------------------------------------------------------------------------------

    def handoff_at(self, k: int) -> datetime:
        """The k-th hand-off (k >= 0; the 0th is the first shift's start)."""
        if self.spec.shift_unit == "hours":
            return self.first + timedelta(hours=k * self.spec.shift_length)
        days = k * self.spec.shift_length * UNIT_DAYS[self.spec.shift_unit]
        return local_instant(self.spec.start_date + timedelta(days=days), self.handoff, self.zone)

    def shift_index(self, at: datetime) -> int:
        """The shift `at` falls in; -1 before the first hand-off."""
        if at < self.first:
            return -1
        if self.spec.shift_unit == "hours":
            return (at - self.first) // timedelta(hours=self.spec.shift_length)
        period = self.spec.shift_length * UNIT_DAYS[self.spec.shift_unit]
        k = max(0, ((at.astimezone(self.zone).date() - self.spec.start_date).days) // period)
        while self.handoff_at(k) > at:  # the day's hand-off is still to come
            k -= 1
        while self.handoff_at(k + 1) <= at:
            k += 1
        return k

    def scheduled(self, k: int) -> str | None:
        return self.members[k % len(self.members)] if k >= 0 and self.members else None

    # --- overrides over it ---------------------------------------------------------------------------------

    def _override_at(self, at: datetime) -> Override | None:
        winner = None
        for o in self.overrides:  # in creation order: the last one covering `at` wins
            if o.starts_at <= at < o.ends_at:
                winner = o
        return winner

    def _state(self, at: datetime) -> tuple[_State, str | None]:
        o = self._override_at(at)
        if o is not None:
            return ("override", o.id), o.person_id
        k = self.shift_index(at)
        person = self.scheduled(k)
        return (("shift", k) if person is not None else ("nobody",)), person

    def _previous_boundary(self, at: datetime) -> datetime | None:
        """The latest instant <= `at` where something may change."""
        found = [b for o in self.overrides for b in (o.starts_at, o.ends_at) if b <= at]
        if self.members:
            k = self.shift_index(at)
            if k >= 0:
                found.append(self.handoff_at(k))
        return max(found, default=None)

    def _next_boundary(self, at: datetime) -> datetime | None:
        """The earliest instant > `at` where something may change."""
        found = [b for o in self.overrides for b in (o.starts_at, o.ends_at) if b > at]
        if self.members:
            found.append(self.handoff_at(self.shift_index(at) + 1))
        return min(found, default=None)

    def stretch(self, at: datetime) -> Stretch:
        """Who is on call at `at` (an override first), since when and until when."""
        state, person = self._state(at)
        since: datetime | None = None
        probe = at
        while (boundary := self._previous_boundary(probe)) is not None:
            if self._state(boundary - _TICK)[0] != state:
                since = boundary
                break
            probe = boundary - _TICK
        until: datetime | None = None
        probe = at
        while (boundary := self._next_boundary(probe)) is not None:
            if self._state(boundary)[0] != state:
                until = boundary
                break
            probe = boundary
        return Stretch(person, since, until, state[0] == "override")

    def now_and_next(self, at: datetime) -> tuple[Stretch, Stretch | None]:
        """The stretch at `at` and the one after it (None: nothing ever changes again)."""
        now = self.stretch(at)
        return now, (self.stretch(now.until) if now.until is not None else None)

    def on_call(self, at: datetime) -> str | None:
        return self._state(at)[1]
