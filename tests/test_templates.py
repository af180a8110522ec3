"""The shipped templates, rendered as the voice will say them, and the filters that make them speakable."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from typing import Any

import pytest

from announcer.config import DEFAULT_TEMPLATES_DIR
from announcer.messages.render import MessageRenderer, RenderError
from announcer.messages.speakable import (
    digits,
    key_name,
    sentence,
    spoken_date,
    spoken_time,
    without_title,
)

ALERT_FULL = {
    "name": "Ada",
    "system": "the billing server",
    "summary": "Payments are failing for all customers",
    "severity": "CRITICAL",
    "since": "09:30",
    "ticket": "INC-4217",
}
REMINDER_FULL = {
    "name": "Ada",
    "clinic": "Acme Clinic",
    "doctor": "Dr. Weber",
    "address": "Linden Street twelve, Berlin.",
    "phone_back": "+49 30 1234 5678",
    "date": "2026-03-03",
    "time": "10:30",
}

# (template, variables, exactly what the voice says)
RENDERED: list[tuple[str, dict[str, Any], str]] = [
    (
        "alert.j2",
        ALERT_FULL,
        "Hello Ada. This is a critical alert about the billing server. "
        "Payments are failing for all customers. It started at nine thirty in the morning. "
        "The ticket number is four two one seven.",
    ),
    (
        "alert.j2",
        {"system": "the billing server", "summary": "Payments are failing."},
        "Hello. This is an alert about the billing server. Payments are failing.",
    ),
    (
        # what the delivery plan passes for a recipient without a name; empty optionals are left out
        "alert.j2",
        {
            "name": None,
            "system": "the mail relay",
            "summary": "The queue is growing...",
            "severity": "error",
            "since": datetime(2026, 3, 3, 23, 5, tzinfo=UTC),
            "ticket": "",
        },
        "Hello. This is an error alert about the mail relay. The queue is growing. "
        "It started at eleven oh five at night.",
    ),
    (
        "appointment_reminder.j2",
        REMINDER_FULL,
        "Hello Ada. This is a reminder of your appointment with Doctor Weber at Acme Clinic "
        "on Tuesday, the third of March, at ten thirty in the morning. "
        "The address is Linden Street twelve, Berlin. "
        "If you cannot come, please call us on four nine, three zero, one two three four, "
        "five six seven eight. Thank you.",
    ),
    (
        "appointment_reminder.j2",
        {"date": "2026-03-03", "time": "9:05"},
        "Hello. This is a reminder of your appointment on Tuesday, the third of March, "
        "at nine oh five in the morning. Thank you.",
    ),
    (
        "appointment_reminder.j2",
        {"date": date(2026, 12, 21), "time": time(12, 0), "doctor": "Weber", "name": ""},
        "Hello. This is a reminder of your appointment with Doctor Weber "
        "on Monday, the twenty-first of December, at twelve noon. Thank you.",
    ),
    (
        "appointment_reminder.j2",
        {"date": datetime(2026, 7, 1, 16, 45), "time": datetime(2026, 7, 1, 16, 45), "clinic": "Acme Clinic"},
        "Hello. This is a reminder of your appointment at Acme Clinic on Wednesday, the first of July, "
        "at four forty-five in the afternoon. Thank you.",
    ),
    (
        "confirm_prompt.j2",
        {},
        "Press one to confirm. Press two to hear this message again. "
        "Press nine if you do not want to receive these calls.",
    ),
    (
        "confirm_prompt.j2",
        {"repeat_key": "3"},
        "Press one to confirm. Press two, or press three, to hear this message again. "
        "Press nine if you do not want to receive these calls.",
    ),
    (
        "confirm_prompt.j2",
        {"repeat_key": "*"},
        "Press one to confirm. Press two, or press the star key, to hear this message again. "
        "Press nine if you do not want to receive these calls.",
    ),
    (
        "confirm_prompt.j2",
        {"repeat_key": "2"},
        "Press one to confirm. Press two to hear this message again. "
        "Press nine if you do not want to receive these calls.",
    ),
    (
        "confirm_prompt.j2",
        {"repeat_key": None},
        "Press one to confirm. Press two to hear this message again. "
        "Press nine if you do not want to receive these calls.",
    ),
    (
        "reminder_prompt.j2",
        {},
        "Press one to confirm. Press two to cancel. Press three to be called again later. "
        "Press nine if you do not want to receive these calls.",
    ),
    (
        "reminder_prompt.j2",
        {"repeat_key": "*"},
        "Press one to confirm. Press two to cancel. Press three to be called again later. "
        "Press the star key to hear this message again. "
        "Press nine if you do not want to receive these calls.",
    ),
    (
        "reminder_prompt.j2",
        {"repeat_key": "2"},  # 2 cancels a reminder: not offered as a repeat key
        "Press one to confirm. Press two to cancel. Press three to be called again later. "
        "Press nine if you do not want to receive these calls.",
    ),
    (
        "page_prompt.j2",
        {},
        "Press one to acknowledge. Press two to hear this again. Press three to escalate to the next person.",
    ),
    (
        "page_prompt.j2",
        {"repeat_key": "#"},
        "Press one to acknowledge. Press two, or press the hash key, to hear this again. "
        "Press three to escalate to the next person.",
    ),
    (
        "page_prompt.j2",
        {"repeat_key": "3"},  # 3 escalates a page: not offered as a repeat key
        "Press one to acknowledge. Press two to hear this again. Press three to escalate to the next person.",
    ),
    (
        "greeting.j2",
        {"org_name": "Acme Clinic", "time_of_day": "morning", "caller": "", "caller_name": ""},
        "Good morning, and thank you for calling Acme Clinic. "
        "Our team will call you back as soon as possible. Goodbye.",
    ),
    (
        "greeting.j2",
        {"org_name": "Acme Clinic", "time_of_day": "evening", "caller": "+15550100000", "caller_name": "Ada"},
        "Good evening, Ada, and thank you for calling Acme Clinic. "
        "We see you are calling from one five five five zero one zero zero zero zero zero. "
        "Our team will call you back as soon as possible. Goodbye.",
    ),
    (
        # the line hands the caller to the agent (GREETING_AGENT=1): no goodbye before the agent's hello
        "greeting.j2",
        {
            "org_name": "Acme Clinic",
            "time_of_day": "morning",
            "caller": "",
            "caller_name": "",
            "hands_over": True,
        },
        "Good morning, and thank you for calling Acme Clinic. Our assistant will take your call now.",
    ),
    (
        "page.j2",
        {
            "name": "Alice",
            "alertname": "HighLatency",
            "summary": "Requests to the api are slow",
            "severity": "critical",
            "alert_count": 3,
            "firing_for_s": 420,
        },
        "Hello Alice. This is an on-call page. A critical alert is firing: HighLatency. "
        "Requests to the api are slow. Three alerts are firing in this group. "
        "It has been firing for seven minutes.",
    ),
    (
        "page.j2",
        {"name": None, "alertname": "DiskFull", "summary": "Disk almost full", "firing_for_s": 10},
        "Hello. This is an on-call page. An alert is firing: DiskFull. Disk almost full. "
        "It started less than a minute ago.",
    ),
]


@pytest.fixture
def renderer() -> MessageRenderer:
    return MessageRenderer(DEFAULT_TEMPLATES_DIR)


def assert_speakable(text: str) -> None:
    assert ".." not in text, text
    assert "{{" not in text and "{%" not in text and "}}" not in text, text
    assert not re.search(r"\d", text), f"numerals are not spoken naturally: {text}"
    assert "a.m." not in text and "p.m." not in text and "Dr." not in text, text


def test_every_shipped_template_is_covered() -> None:
    shipped = {p.name for p in DEFAULT_TEMPLATES_DIR.glob("*.j2")}
    assert {"alert.j2", "appointment_reminder.j2", "confirm_prompt.j2", "greeting.j2"} <= shipped
    assert shipped <= {name for name, _, _ in RENDERED}


@pytest.mark.parametrize(("name", "variables", "expected"), RENDERED)
def test_rendered_text(
    renderer: MessageRenderer, name: str, variables: dict[str, Any], expected: str
) -> None:
    text = renderer.render(name, variables)
    assert text == expected
    assert_speakable(text)


def test_a_prepared_template_renders_the_same(renderer: MessageRenderer) -> None:
    prepared = renderer.prepare(name="alert.j2")
    assert prepared.render(ALERT_FULL) == RENDERED[0][2]


@pytest.mark.parametrize(
    ("name", "variables", "missing"),
    [
        ("alert.j2", {"summary": "Payments are failing."}, "system"),
        ("alert.j2", {"name": "Ada", "system": "the billing server"}, "summary"),
        ("appointment_reminder.j2", {"time": "10:30"}, "date"),
        ("appointment_reminder.j2", {"date": "2026-03-03", "name": "Ada"}, "time"),
    ],
)
def test_missing_required_variable_names_the_template(
    renderer: MessageRenderer, name: str, variables: dict[str, Any], missing: str
) -> None:
    with pytest.raises(RenderError) as err:
        renderer.render(name, variables)
    assert err.value.template == name
    assert missing in err.value.reason
    assert err.value.line is not None
    assert str(err.value).startswith(f"{name}, line ")


@pytest.mark.parametrize(
    ("name", "variables", "reason"),
    [
        ("appointment_reminder.j2", {**REMINDER_FULL, "date": "2026-02-30"}, "not a valid date"),
        ("appointment_reminder.j2", {**REMINDER_FULL, "date": "03/03/2026"}, "not a date like"),
        ("appointment_reminder.j2", {**REMINDER_FULL, "time": "10.30"}, "not a time like"),
        ("appointment_reminder.j2", {**REMINDER_FULL, "time": "24:00"}, "not a time of day"),
        ("appointment_reminder.j2", {**REMINDER_FULL, "phone_back": "ask reception"}, "no digits"),
        ("alert.j2", {**ALERT_FULL, "since": "half past nine"}, "not a time like"),
        ("alert.j2", {**ALERT_FULL, "ticket": "ABC"}, "no digits"),
        ("confirm_prompt.j2", {"repeat_key": "x"}, "not a keypad key"),
    ],
)
def test_bad_values_are_render_errors(
    renderer: MessageRenderer, name: str, variables: dict[str, Any], reason: str
) -> None:
    with pytest.raises(RenderError) as err:
        renderer.render(name, variables)
    assert err.value.template == name
    assert reason in err.value.reason
    assert err.value.line is not None


def test_no_time_of_day_ends_a_sentence_with_two_stops(renderer: MessageRenderer) -> None:
    for minute_of_day in range(24 * 60):
        hh, mm = divmod(minute_of_day, 60)
        text = renderer.render_text("It starts at {{ t | spoken_time('words') }}.", {"t": f"{hh}:{mm:02d}"})
        assert_speakable(text)


# --- filters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words", "am_pm"),
    [
        ("14:30", "two thirty in the afternoon", "two thirty p.m."),
        ("9:05", "nine oh five in the morning", "nine oh five a.m."),
        ("09:05:59", "nine oh five in the morning", "nine oh five a.m."),
        ("00:30", "twelve thirty at night", "twelve thirty a.m."),
        ("00:00", "midnight", "midnight"),
        ("12:00", "twelve noon", "twelve noon"),
        ("12:15", "twelve fifteen in the afternoon", "twelve fifteen p.m."),
        ("18:00", "six in the evening", "six p.m."),
        ("22:45", "ten forty-five at night", "ten forty-five p.m."),
        (time(7, 0), "seven in the morning", "seven a.m."),
        (datetime(2026, 3, 3, 19, 10, tzinfo=UTC), "seven ten in the evening", "seven ten p.m."),
        ("2026-03-03T08:20:00+01:00", "eight twenty in the morning", "eight twenty a.m."),
    ],
)
def test_spoken_time(value: object, words: str, am_pm: str) -> None:
    assert spoken_time(value, "words") == words
    assert spoken_time(value) == am_pm  # the default is unchanged (inline templates rely on it)


@pytest.mark.parametrize(
    "bad",
    ["25:00", "12:60", "930", "9.30", "", "noon", "9:5", None, 930, date(2026, 3, 3), "2026-03-03T25:00"],
)
def test_spoken_time_refuses_what_is_not_a_time(bad: object) -> None:
    with pytest.raises(ValueError, match="spoken_time: "):
        spoken_time(bad)


def test_spoken_time_refuses_an_unknown_style() -> None:
    with pytest.raises(ValueError, match="unknown style"):
        spoken_time("10:00", "military")


@pytest.mark.parametrize(
    ("value", "day_first", "month_first"),
    [
        ("2026-03-03", "Tuesday, the third of March", "Tuesday, March third"),
        ("2026-12-03", "Thursday, the third of December", "Thursday, December third"),
        (date(2026, 12, 21), "Monday, the twenty-first of December", "Monday, December twenty-first"),
        (datetime(2026, 4, 30, 23, 0), "Thursday, the thirtieth of April", "Thursday, April thirtieth"),
        ("2026-02-22T10:00:00Z", "Sunday, the twenty-second of February", "Sunday, February twenty-second"),
        (" 2026-01-12 ", "Monday, the twelfth of January", "Monday, January twelfth"),
    ],
)
def test_spoken_date(value: object, day_first: str, month_first: str) -> None:
    assert spoken_date(value, "day_first") == day_first
    assert spoken_date(value) == month_first


@pytest.mark.parametrize(
    "bad", ["2026-02-30", "2026-13-01", "03/03/2026", "20260303", "tomorrow", "", None, 3]
)
def test_spoken_date_refuses_what_is_not_a_date(bad: object) -> None:
    with pytest.raises(ValueError, match="spoken_date: "):
        spoken_date(bad)


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("Disk full", "Disk full."),
        ("Disk full.", "Disk full."),
        ("Disk full...", "Disk full."),
        ("  Disk\n full ,", "Disk full."),
        ("Is it down?!", "Is it down?"),
        ("It is down!", "It is down!"),
        ("since nine a.m.", "since nine a.m."),
        ("", ""),
        ("...", ""),
    ],
)
def test_sentence(text: str, spoken: str) -> None:
    assert sentence(text) == spoken


def test_key_name_digits_and_title() -> None:
    assert [key_name(k) for k in ("0", "2", "*", "#", 7)] == [
        "zero",
        "two",
        "the star key",
        "the hash key",
        "seven",
    ]
    for bad in ("", "12", "x", "²"):
        with pytest.raises(ValueError, match="not a keypad key"):
            key_name(bad)
    assert digits("INC-4217", required=True) == "four two one seven"
    assert digits("none") == ""
    with pytest.raises(ValueError, match="no digits"):
        digits("none", required=True)
    assert [without_title(n) for n in ("Dr. Weber", "dr Weber", "Doctor Ada Weber", "Drake", "Dr.")] == [
        "Weber",
        "Weber",
        "Ada Weber",
        "Drake",
        "Dr.",
    ]


# --- every sentence is heard as one --------------------------------------------------------------------

# Per shipped template: the variables it needs, and each optional one with a representative value and how
# a caller leaves it out (absent, None or ""). Every combination of present and left out is rendered.
_ABSENT = object()  # the variable is not passed at all
SENTENCE_CASES: dict[str, tuple[dict[str, Any], dict[str, tuple[Any, Any]]]] = {
    "alert.j2": (
        {"system": "the billing server", "summary": "Payments are failing for all customers"},
        {
            "name": ("Ada", None),
            "severity": ("critical", _ABSENT),
            "since": ("09:30", ""),
            "ticket": ("INC-4217", _ABSENT),
        },
    ),
    "appointment_reminder.j2": (
        {"date": "2026-03-03", "time": "10:30"},
        {
            "name": ("Ada", ""),
            "doctor": ("Dr. Weber", _ABSENT),
            "clinic": ("Acme Clinic", _ABSENT),
            "address": ("Linden Street twelve, Berlin", None),
            "phone_back": ("+49 30 1234 5678", _ABSENT),
        },
    ),
    "confirm_prompt.j2": ({}, {"repeat_key": ("3", _ABSENT)}),
    "page.j2": (
        {"alertname": "HighLatency", "summary": "Requests to the api are slow"},
        {
            "name": ("Ada", None),
            "severity": ("critical", _ABSENT),
            "alert_count": (4, 1),
            "firing_for_s": (7300, _ABSENT),
        },
    ),
    "reminder_prompt.j2": ({}, {"repeat_key": ("*", None)}),
    "page_prompt.j2": ({}, {"repeat_key": ("*", None)}),
    "greeting.j2": (
        {"org_name": "Acme Clinic", "time_of_day": "morning"},
        {
            "caller": ("+15550100000", ""),  # the number the bug was heard with: "...zero zero zero.Our"
            "caller_name": ("Ada Lovelace", ""),
            "hands_over": (True, _ABSENT),
        },
    ),
}

# A full stop, question or exclamation mark, maybe behind a closing quote or bracket, with a letter right
# after it: two sentences the voice runs together ("zero.Our team"). "2.5" (a digit follows) is no
# sentence end; initials and abbreviations ("a.m.", "e.g.", "U.S.") are told apart by their one letter.
_GLUED = re.compile(r"(?P<before>\w+)[.!?\u2026]+[\"')\]\u201d\u2019]*(?=(?P<after>[^\W\d_]\w*))")
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "st", "no", "vs", "etc"}


def glued_sentences(text: str) -> list[str]:
    """Each place in `text` where a sentence's end runs into the next word with no space."""
    found = []
    for match in _GLUED.finditer(text):
        before = match.group("before")
        if len(before) == 1 or before.lower() in _ABBREVIATIONS:
            continue
        found.append(match.group(0) + match.group("after"))
    return found


@pytest.mark.parametrize(
    ("text", "glued"),
    [
        ("We see you are calling from one two zero.Our team will call.", ["zero.Our"]),
        ("Goodbye!See you.", ["Goodbye!See"]),
        ('He said "stop."Then left.', ['stop."Then']),
        ("It is 2.5 percent. Dr. Weber, at nine a.m. today, e.g. now.", []),
        ("One sentence. Another one.\nA third one.", []),
    ],
)
def test_glued_sentences_finds_runs_together(text: str, glued: list[str]) -> None:
    assert glued_sentences(text) == glued


def _combinations(name: str) -> list[dict[str, Any]]:
    required, optional = SENTENCE_CASES[name]
    combos = []
    for mask in range(2 ** len(optional)):
        variables = dict(required)
        for bit, (key, (present, absent)) in enumerate(optional.items()):
            value = present if mask >> bit & 1 else absent
            if value is not _ABSENT:
                variables[key] = value
        combos.append(variables)
    return combos


def test_every_shipped_template_has_sentence_cases() -> None:
    assert sorted(p.name for p in DEFAULT_TEMPLATES_DIR.glob("*.j2")) == sorted(SENTENCE_CASES)


@pytest.mark.parametrize("name", sorted(SENTENCE_CASES))
def test_every_sentence_ends_before_the_next_begins(renderer: MessageRenderer, name: str) -> None:
    """With and without each optional variable, no sentence of a shipped template runs into the next:
    the voice would read "zero.Our" as one word, with no pause."""
    for variables in _combinations(name):
        text = renderer.render(name, variables)
        assert glued_sentences(text) == [], (variables, text)


@pytest.mark.parametrize(
    "source",
    [
        # a condition around one sentence, closed at the end of its line
        "{% if caller %}We see you are calling from {{ caller }}.{% endif %}\nOur team will call you back.",
        "Hello.{% if caller %} Caller {{ caller }}.{% endif %}\nGoodbye.",
        "{% set who = caller %}We see {{ who }}.{% if caller %}{% endif %}\nThat is all.",
    ],
)
def test_a_line_break_after_a_tag_still_parts_the_sentences(renderer: MessageRenderer, source: str) -> None:
    """A line break in a template is a word break in speech, also right after a block tag: Jinja's
    `trim_blocks` would eat it and run the two lines' sentences together."""
    text = renderer.render_text(source, {"caller": "Ada"})
    assert glued_sentences(text) == [], text
