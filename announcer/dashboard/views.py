"""The dashboard's Jinja environment: HTML templates from announcer/dashboard/templates/, autoescaped
(recipient names, template texts and transcripts are user data). The message templates' sandboxed
environment (messages/render.py) is another thing: it renders speech, never HTML."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


def when(value: datetime | None) -> str:
    """A stored time as the page shows it: UTC, to the second."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(value: datetime | None) -> str:
    """A moment within a call: UTC time of day to the millisecond."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def seconds(ms: int | None) -> str:
    """Milliseconds as seconds with one decimal ("12.3 s")."""
    if ms is None:
        return "—"
    return f"{ms / 1000:.1f} s"


def make_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("announcer.dashboard", "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
        undefined=StrictUndefined,  # a misspelt variable is an error in the tests, not a blank on a page
        trim_blocks=True,
        lstrip_blocks=True,
        enable_async=False,
    )
    env.filters["when"] = when
    env.filters["seconds"] = seconds
    env.filters["clock"] = clock
    return env


VIEWS = web.AppKey("dashboard_views", Environment)
