"""Jinja filters that turn numbers, times and dates into text that reads well aloud."""

from __future__ import annotations

import re
from collections.abc import Callable
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


def digits(value: object, required: bool = False) -> str:
    """Read a number digit by digit ("+1 555 0100" -> "one, five five five, zero one zero zero").

    Only digits are read; letters and symbols are dropped. With `required`, a value without any digit
    is a ValueError instead of an empty string (a ticket or call-back number that cannot be read).
    """
    groups = re.findall(r"\d+", str(value))
    if required and not groups:
        raise ValueError(f"digits: {value!r} has no digits to read")
    return ", ".join(" ".join(_ONES[int(d)] for d in g) for g in groups)


_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ].+")


def _as_time(value: object) -> time:
    """A time of day from a time, a datetime, "HH:MM", "H:MM", "HH:MM:SS" or an ISO datetime string."""
    if isinstance(value, datetime):
        return value.time()
    if isinstance(value, time):
        return value
    text = str(value).strip()
    if _DATETIME.fullmatch(text):
        try:
            return datetime.fromisoformat(text).time()
        except ValueError as err:
            raise ValueError(f"spoken_time: {value!r} is not a valid date and time ({err})") from err
    m = _TIME.fullmatch(text)
    if not m:
        raise ValueError(f"spoken_time: {value!r} is not a time like 14:30")
    hour, minute, second = int(m[1]), int(m[2]), int(m[3] or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"spoken_time: {value!r} is not a time of day (00:00 to 23:59)")
    return time(hour, minute)


def _day_part(hour: int) -> str:
    if hour < 12:
        return "at night" if hour == 0 else "in the morning"
    if hour < 18:
        return "in the afternoon"
    return "in the evening" if hour < 22 else "at night"


def spoken_time(value: object, style: str = "am_pm") -> str:
    """A time of day as said aloud.

    style "am_pm" (the default): 14:30 -> "two thirty p.m.", 09:05 -> "nine oh five a.m.".
    style "words": 14:30 -> "two thirty in the afternoon", 09:05 -> "nine oh five in the morning",
    22:15 -> "ten fifteen at night". No abbreviation, so a sentence can end right after it.
    Both: 12:00 -> "twelve noon", 00:00 -> "midnight".
    Note that "am_pm" ends in a period: a template must not put a full stop right after it.
    """
    if style not in ("am_pm", "words"):
        raise ValueError(f"spoken_time: unknown style {style!r} (am_pm or words)")
    t = _as_time(value)
    if t.hour == 12 and t.minute == 0:
        return "twelve noon"
    if t.hour == 0 and t.minute == 0:
        return "midnight"
    hour = t.hour % 12 or 12
    am_pm = "a.m." if t.hour < 12 else "p.m."
    suffix = _day_part(t.hour) if style == "words" else am_pm
    if t.minute == 0:
        minutes = ""
    elif t.minute < 10:
        minutes = " oh " + _ONES[t.minute]
    else:
        minutes = " " + number_words(t.minute)
    return f"{number_words(hour)}{minutes} {suffix}"


def _as_date(value: object) -> date:
    """A calendar date from a date, a datetime, "YYYY-MM-DD" or an ISO datetime string."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    if _DATETIME.fullmatch(text):
        try:
            return datetime.fromisoformat(text).date()
        except ValueError as err:
            raise ValueError(f"spoken_date: {value!r} is not a valid date and time ({err})") from err
    m = _DATE.fullmatch(text)
    if not m:
        raise ValueError(f"spoken_date: {value!r} is not a date like 2026-12-03")
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError as err:
        raise ValueError(f"spoken_date: {value!r} is not a valid date ({err})") from err


def spoken_date(value: object, style: str = "month_first") -> str:
    """A date as said aloud, with its weekday.

    style "month_first" (the default): 2026-12-03 -> "Thursday, December third".
    style "day_first": 2026-12-03 -> "Thursday, the third of December".
    """
    if style not in ("month_first", "day_first"):
        raise ValueError(f"spoken_date: unknown style {style!r} (month_first or day_first)")
    d = _as_date(value)
    weekday, month, day = _DAYS[d.weekday()], _MONTHS[d.month - 1], ordinal_words(d.day)
    if style == "day_first":
        return f"{weekday}, the {day} of {month}"
    return f"{weekday}, {month} {day}"


_STOPS = re.compile(r"[.!?\u2026]+$")


def sentence(value: object) -> str:
    """Text as one spoken sentence: trimmed, ending in exactly one stop ("." unless it has . ! or ?).

    Use it on free text placed at the end of a sentence, so "Disk full." never becomes "Disk full..";
    a run of stops ("Down...", "Down?!") ends in one.
    """
    text = " ".join(str(value).split())
    stops = _STOPS.search(text)
    end = "."
    if stops:
        end = "?" if "?" in stops[0] else "!" if "!" in stops[0] else "."
        text = text[: stops.start()]
    text = text.rstrip(" ,;:-")
    return text + end if text else ""


_KEY_NAMES = {"*": "the star key", "#": "the hash key"}


def key_name(value: object) -> str:
    """A telephone keypad key as said aloud: "2" -> "two", "*" -> "the star key", "#" -> "the hash key"."""
    key = str(value).strip()
    if len(key) == 1 and key in "0123456789":
        return _ONES[int(key)]
    if key in _KEY_NAMES:
        return _KEY_NAMES[key]
    raise ValueError(f"key_name: {value!r} is not a keypad key (0-9, * or #)")


_TITLE = re.compile(r"(?:doctor|dr)\b\.?\s*", re.IGNORECASE)


def without_title(value: object) -> str:
    """A name without a leading doctor's title ("Dr. Weber" -> "Weber"): the template says "Doctor"."""
    text = " ".join(str(value).split())
    bare = _TITLE.sub("", text, count=1) if _TITLE.match(text) else text
    return bare or text


def time_of_day(hour: int) -> str:
    """The part of the day a greeting names ("morning" before noon, ...)."""
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 18:
        return "afternoon"
    return "evening"


FILTERS: dict[str, Callable[..., str]] = {
    "digits": digits,
    "words": number_words,  # a count said as words: 3 -> "three"
    "spoken_time": spoken_time,
    "spoken_date": spoken_date,
    "sentence": sentence,
    "key_name": key_name,
    "without_title": without_title,
}
