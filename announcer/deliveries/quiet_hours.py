"""Quiet hours: the part of a recipient's day nobody is called in, in their own time zone. A delivery
due inside them waits for the window's end (checked as deliveries are claimed, right before dialing:
deliveries/policy.py decides, the claim asks it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any


@dataclass(frozen=True)
class QuietHours:
    """[start, end) of local time in which nobody is called; it may wrap midnight (21:00-08:00)."""

    start: time
    end: time

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def window_end(self, moment: datetime) -> datetime:
        """The end of the quiet window `moment` (aware, local) falls in: when calling may resume."""
        end = moment.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        if end <= moment:
            end += timedelta(days=1)
        return end

    def as_json(self) -> dict[str, str]:
        return {"start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}


class QuietHoursError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def parse_quiet_hours(raw: dict[str, Any] | None) -> QuietHours | None:
    """`{"start": "21:00", "end": "08:00"}` (as stored in an alert's options) or None."""
    if raw is None:
        return None
    bounds: dict[str, time] = {}
    for key in ("start", "end"):
        try:
            bounds[key] = time.fromisoformat(str(raw.get(key)))
        except ValueError:
            raise QuietHoursError(
                f"options.quiet_hours.{key}", 'expected a time of day like "21:00"'
            ) from None
    if bounds["start"] == bounds["end"]:
        raise QuietHoursError(
            "options.quiet_hours", "start and end are the same: that is the whole day or none of it"
        )
    return QuietHours(bounds["start"], bounds["end"])
