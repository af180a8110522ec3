"""Templates: strict rendering, errors that name the template and line, speakable filters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from announcer.config import DEFAULT_TEMPLATES_DIR
from announcer.messages.greeting import Greeting
from announcer.messages.render import MessageRenderer, RenderError
from announcer.messages.speakable import digits, spoken_date, spoken_time


@pytest.fixture
def renderer() -> MessageRenderer:
    return MessageRenderer(DEFAULT_TEMPLATES_DIR)


def test_greeting_uses_caller_time_of_day_and_org(renderer: MessageRenderer) -> None:
    greeting = Greeting(renderer, "greeting.j2", "Acme Clinic", ZoneInfo("Europe/Berlin"))
    text = greeting.render("+15550100123", None, now=datetime(2026, 11, 25, 7, 0, tzinfo=UTC))
    assert text.startswith("Good morning, and thank you for calling Acme Clinic.")
    assert "one five five five zero one zero zero one two three" in text
    evening = greeting.render("anonymous", "Ada", now=datetime(2026, 11, 25, 19, 0, tzinfo=UTC))
    assert evening.startswith("Good evening, Ada,") and "calling from" not in evening


def test_missing_variable_names_template_and_line(renderer: MessageRenderer) -> None:
    with pytest.raises(RenderError) as err:
        renderer.render("greeting.j2", {"time_of_day": "morning", "caller": "", "caller_name": ""})
    assert err.value.template == "greeting.j2"
    assert "org_name" in err.value.reason
    assert err.value.line is not None


def test_sandbox_blocks_unsafe_attribute_access(renderer: MessageRenderer) -> None:
    with pytest.raises(RenderError):
        renderer.render_text("{{ x.__class__.__mro__ }}", {"x": 1})


def test_syntax_error_and_unknown_template(tmp_path: Path) -> None:
    (tmp_path / "broken.j2").write_text("Hello\n{% if %}\n")
    renderer = MessageRenderer(tmp_path)
    with pytest.raises(RenderError, match=r"broken.j2, line 2"):
        renderer.render("broken.j2", {})
    with pytest.raises(RenderError, match="no such template"):
        renderer.render("nope.j2", {})


def test_speakable_filters() -> None:
    assert spoken_time("14:30") == "two thirty p.m."
    assert spoken_time("09:05") == "nine oh five a.m."
    assert spoken_time("12:00") == "twelve noon"
    assert spoken_date("2026-12-03") == "Thursday, December third"
    assert digits("+1 (555) 0100") == "one, five five five, zero one zero zero"
    with pytest.raises(ValueError):
        spoken_time("25:00")
