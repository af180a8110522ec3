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


# --- the voicemail block (issue 14) ------------------------------------------------------------------


def test_a_voicemail_block_is_left_out_of_the_message_and_is_the_voicemail(renderer: MessageRenderer) -> None:
    source = (
        "Hello {{ name }}, your {{ what }} is ready."
        "{% block voicemail %} Sorry we missed you, {{ name }}: your {{ what }} is ready.{% endblock %}"
        " Goodbye."
    )
    said = renderer.prepare(source=source).speech({"name": "Ada", "what": "prescription"})
    assert said.text == "Hello Ada, your prescription is ready. Goodbye."
    assert said.voicemail == "Sorry we missed you, Ada: your prescription is ready."
    # rendering it the plain way (the CLI's render, the greeting line) never speaks the block either
    assert renderer.render_text(source, {"name": "Ada", "what": "prescription"}) == said.text
    # without the block, a machine is told the message itself
    plain = renderer.prepare(source="Hello {{ name }}.").speech({"name": "Ada"})
    assert (plain.text, plain.voicemail) == ("Hello Ada.", None)
    blank = renderer.prepare(source="Hello.{% block voicemail %} {% endblock %}").speech({})
    assert (blank.text, blank.voicemail) == ("Hello.", None)


def test_a_voicemail_block_sees_what_the_message_sees_and_its_errors_are_the_messages(
    renderer: MessageRenderer,
) -> None:
    # the {% set %}s in force where it stands, even where the render never went
    hidden = (
        "{% set office = 'the clinic' %}Hi."
        "{% if false %}{% block voicemail %}Call {{ office }}.{% endblock %}{% endif %}"
    )
    assert renderer.prepare(source=hidden).speech({}).voicemail == "Call the clinic."
    for source in (
        "Hello {{ name }}.{% block voicemail %}Call {{ missing }} back.{% endblock %}",
        "Hi.{% if false %}{% block voicemail %}{{ missing }}{% endblock %}{% endif %}",
    ):
        with pytest.raises(RenderError) as err:
            renderer.prepare(source=source).speech({"name": "Ada"})
        assert "missing variable" in err.value.reason and "missing" in err.value.reason
    with pytest.raises(RenderError, match="a voicemail block is not part of the message"):
        renderer.prepare(source="{% block voicemail %}Only this.{% endblock %}").speech({})


def test_a_voicemail_block_in_a_server_template_and_its_parent(tmp_path: Path) -> None:
    (tmp_path / "base.j2").write_text(
        "Your order is ready, {{ name }}.\n{% block voicemail %}Order ready for {{ name }}.{% endblock %}\n"
    )
    (tmp_path / "inherits.j2").write_text('{% extends "base.j2" %}\n')
    (tmp_path / "overrides.j2").write_text(
        '{% extends "base.j2" %}\n{% block voicemail %}Sorry we missed you. {{ super() }}{% endblock %}\n'
    )
    own = MessageRenderer(tmp_path)
    speech = {
        name: own.prepare(name=name).speech({"name": "Ada"})
        for name in ("base.j2", "inherits.j2", "overrides.j2")
    }
    assert {s.text for s in speech.values()} == {"Your order is ready, Ada."}
    assert speech["base.j2"].voicemail == speech["inherits.j2"].voicemail == "Order ready for Ada."
    assert speech["overrides.j2"].voicemail == "Sorry we missed you. Order ready for Ada."


def test_the_shipped_templates_have_no_voicemail_of_their_own(renderer: MessageRenderer) -> None:
    variables = {"name": "Ada", "date": "2027-06-10", "time": "09:30", "system": "the billing server"}
    variables |= {"summary": "It is down.", "repeat_key": None}
    for name in ("alert.j2", "appointment_reminder.j2", "confirm_prompt.j2", "reminder_prompt.j2"):
        assert renderer.prepare(name=name).speech(variables).voicemail is None
