"""Jinja filters that turn numbers, times and dates into text that reads well aloud."""

from __future__ import annotations

import re
from datetime import date, datetime, time

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def number_words(n: int) -> str:
    """0..9999 in words (enough for times, dates and counts read aloud)."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 10:
        return _ONES[n]
    if n < 20:
        return _TEENS[n - 10]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("-" + _ONES[ones] if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + (" and " + number_words(rest) if rest else "")
    thousands, rest = divmod(n, 1000)
    return (
        number_words(thousands)
        + " thousand"
        + ((" " if rest >= 100 else " and ") + number_words(rest) if rest else "")
    )


def ordinal_words(n: int) -> str:
    words = number_words(n)
    head, sep, last = words.rpartition("-") if "-" in words else words.rpartition(" ")
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def digits(value: object) -> str:
    """Read a number digit by digit ("+1 555 0100" -> "one, five five five, zero one zero zero")."""
    groups = re.findall(r"\d+", str(value))
    return ", ".join(" ".join(_ONES[int(d)] for d in g) for g in groups)


def _as_time(value: object) -> time:
    if isinstance(value, datetime):
        return value.time()
    if isinstance(value, time):
        return value
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::\d{2})?\s*", str(value))
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ValueError(f"spoken_time: {value!r} is not a time like 14:30")
    return time(int(m[1]), int(m[2]))


def spoken_time(value: object) -> str:
    """14:30 -> "two thirty p.m.", 09:05 -> "nine oh five a.m.", 12:00 -> "twelve noon"."""
    t = _as_time(value)
    if t.hour == 12 and t.minute == 0:
        return "twelve noon"
    if t.hour == 0 and t.minute == 0:
        return "midnight"
    hour = t.hour % 12 or 12
    suffix = "a.m." if t.hour < 12 else "p.m."
    if t.minute == 0:
        minutes = ""
    elif t.minute < 10:
        minutes = " oh " + _ONES[t.minute]
    else:
        minutes = " " + number_words(t.minute)
    return f"{number_words(hour)}{minutes} {suffix}"


def spoken_date(value: object) -> str:
    """2026-12-03 -> "Thursday, December third"."""
    if isinstance(value, datetime):
        d = value.date()
    elif isinstance(value, date):
        d = value
    else:
        try:
            d = date.fromisoformat(str(value).strip())
        except ValueError as err:
            raise ValueError(f"spoken_date: {value!r} is not a date like 2026-12-03") from err
    return f"{_DAYS[d.weekday()]}, {_MONTHS[d.month - 1]} {ordinal_words(d.day)}"


def time_of_day(hour: int) -> str:
    """The part of the day a greeting names ("morning" before noon, ...)."""
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 18:
        return "afternoon"
    return "evening"


FILTERS = {"digits": digits, "spoken_time": spoken_time, "spoken_date": spoken_date}
