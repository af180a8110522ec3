"""Request bodies of the /v1 API as pydantic models: strict types, unknown fields refused. The same models
give the OpenAPI document its schemas, so the document cannot drift from what the handlers accept. An
alert's and a schedule's `options` are announcer/options.py's models, the ones the service reads."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from announcer.deliveries.plan import Problem
from announcer.options import (
    MAX_FIRST_MESSAGE_CHARS,
    MAX_PROMPT_CHARS,
    TIME_OF_DAY,
    AlertOptions,
    ScheduleOptions,
    Strict,
)

# What a phone number may be written with: digits, an optional leading +, and the spaces, parentheses,
# dots and dashes of national layouts. Whether it can be dialed is the number library's call
# (messages/phones.py), a rule no pattern states.
PHONE_PATTERN = r"^\+?[0-9 ().-]+$"
PHONE_EXAMPLE = "+14155550100"
# A date and time as ISO-8601 writes it (date, "T" or a space, time, optional offset), a form
# datetime.fromisoformat reads; whether the day exists (no 30 February) is its call (scheduling/when.py).
_DAY = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]([.,][0-9]{1,6})?)?"
_OFFSET = r"(Z|[+-]([01][0-9]|2[0-3]):?[0-5][0-9])"
DATE_TIME = rf"^{_DAY}[T ]{_CLOCK}{_OFFSET}?$"
EXACT_TIME = rf"^{_DAY}[T ]{_CLOCK}{_OFFSET}$"  # with its offset: a moment
LOCAL_TIME = rf"^{_DAY}[T ]{_CLOCK}$"  # without: read in `when.timezone`
# Five fields (minute hour day month day-of-week), days of the week by name (scheduling/when.py); whether
# each field's values are in range is APScheduler's call.
CRON = r"^[ \t]*[^ \t]+([ \t]+[^ \t]+){3}[ \t]+[^ \t0-9]+[ \t]*$"


def _one_of(*names: str) -> dict[str, Any]:
    """`oneOf` for "exactly one of these properties is given" (a string): each branch requires its own
    property and calls the others absent or null, so a body with both or neither matches no branch."""
    return {
        "oneOf": [
            {
                "required": [name],
                "properties": {
                    name: {"type": "string"},
                    **{other: {"type": "null"} for other in names if other != name},
                },
            }
            for name in names
        ]
    }


# The either-or rules are checked where the values are used (deliveries/plan.py prepare_template,
# scheduling/when.py parse_when: also for what is stored); the document states them here, and the
# schemathesis run (tests/test_openapi_fuzz.py) holds the two together both ways.
ONE_TEMPLATE = _one_of("template", "template_text")
_ADA: dict[str, Any] = {"phone": PHONE_EXAMPLE, "name": "Ada"}
_TEXT_EXAMPLE = "Hello {{ name }}, the {{ system }} is down."


class RecipientBody(Strict):
    phone: str = Field(
        max_length=40,
        pattern=PHONE_PATTERN,
        description="E.164 (+14155550100) or national with a region",
        examples=[PHONE_EXAMPLE],
    )
    variables: dict[str, Any] = Field(default_factory=dict, description="this recipient's template variables")
    name: str | None = Field(default=None, max_length=200)
    timezone: str | None = Field(
        default=None, max_length=64, description="IANA time zone, e.g. Europe/Berlin"
    )


class AlertBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            **ONE_TEMPLATE,
            "examples": [
                {
                    "template_text": _TEXT_EXAMPLE,
                    "variables": {"system": "billing server"},
                    "recipients": [_ADA],
                    "options": {"confirm": True},
                }
            ],
        }
    )

    template: str | None = Field(
        default=None, min_length=1, max_length=255, description="a template in templates/"
    )
    template_text: str | None = Field(
        default=None, min_length=1, max_length=20_000, description="or inline Jinja text"
    )
    variables: dict[str, Any] = Field(default_factory=dict, description="shared by every recipient")
    recipients: list[RecipientBody] = Field(min_length=1)
    options: AlertOptions = Field(default_factory=AlertOptions)


class WhenBody(Strict):
    # Exactly one of `at` and `cron`. `at` without an offset is read in `timezone`, which it then needs;
    # `start` and `end` belong to `cron`, which needs its `timezone` too.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["at"],
                    "properties": {
                        "at": {"type": "string", "pattern": EXACT_TIME},
                        **{name: {"type": "null"} for name in ("cron", "start", "end")},
                    },
                },
                {
                    "required": ["at", "timezone"],
                    "properties": {
                        "at": {"type": "string", "pattern": LOCAL_TIME},
                        "timezone": {"type": "string"},
                        **{name: {"type": "null"} for name in ("cron", "start", "end")},
                    },
                },
                {
                    "required": ["cron", "timezone"],
                    "properties": {
                        "cron": {"type": "string"},
                        "timezone": {"type": "string"},
                        "at": {"type": "null"},
                    },
                },
            ]
        }
    )

    at: str | None = Field(
        default=None, pattern=DATE_TIME, description="ISO-8601, with an offset or local (in `timezone`)"
    )
    cron: str | None = Field(
        default=None, max_length=120, pattern=CRON, description='crontab, e.g. "0 8 * * mon-fri"'
    )
    timezone: str | None = Field(default=None, max_length=64, description="IANA zone, e.g. Europe/Berlin")
    start: str | None = Field(default=None, pattern=DATE_TIME, description="cron only: not before")
    end: str | None = Field(default=None, pattern=DATE_TIME, description="cron only: not after")


class ScheduleBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            **ONE_TEMPLATE,
            "examples": [
                {
                    "name": "weekday check-in",
                    "template_text": "Good morning {{ name }}.",
                    "recipients": [_ADA],
                    "when": {"cron": "0 8 * * mon-fri", "timezone": "Europe/Berlin"},
                }
            ],
        }
    )

    name: str | None = Field(default=None, max_length=200)
    template: str | None = Field(
        default=None, min_length=1, max_length=255, description="a template in templates/"
    )
    template_text: str | None = Field(
        default=None, min_length=1, max_length=20_000, description="or inline Jinja text"
    )
    variables: dict[str, Any] = Field(default_factory=dict, description="shared by every recipient")
    recipients: list[RecipientBody] = Field(min_length=1)
    when: WhenBody
    options: ScheduleOptions = Field(default_factory=ScheduleOptions)


class SchedulePatch(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "paused"}]})

    status: Literal["active", "paused"] | None = Field(default=None, description="pause or resume")
    name: str | None = Field(default=None, max_length=200)
    variables: dict[str, Any] | None = None
    recipients: list[RecipientBody] | None = Field(default=None, min_length=1)
    when: WhenBody | None = None
    template: str | None = Field(
        default=None, min_length=1, max_length=255, description="a new template (the text is dropped)"
    )
    template_text: str | None = Field(
        default=None,
        min_length=1,
        max_length=20_000,
        description="or new inline text (the template is dropped)",
    )
    options: ScheduleOptions | None = Field(
        default=None, description="new options, as a whole: an option not given takes its default"
    )


class OutboundCallBody(Strict):
    """The reference example's body (ElevenLabs' Twilio outbound guide), validated."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "number": PHONE_EXAMPLE,
                    "prompt": "You are the clinic's friendly receptionist.",
                    "first_message": "Hello, this is Acme Clinic. How can I help?",
                }
            ]
        }
    )

    number: str = Field(
        max_length=40,
        pattern=PHONE_PATTERN,
        description="who to call: E.164, or national with a region",
        examples=[PHONE_EXAMPLE],
    )
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="the agent's prompt")
    first_message: str = Field(
        min_length=1, max_length=MAX_FIRST_MESSAGE_CHARS, description="what the agent says first"
    )


class PreviewBody(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            **ONE_TEMPLATE,
            "examples": [
                {"template_text": _TEXT_EXAMPLE, "variables": {"system": "billing server"}, "recipient": _ADA}
            ],
        }
    )

    template: str | None = Field(default=None, min_length=1, max_length=255)
    template_text: str | None = Field(default=None, min_length=1, max_length=20_000)
    variables: dict[str, Any] = Field(default_factory=dict)
    recipient: RecipientBody


# What a value that does not match a pattern should have been, in words (pydantic would show the pattern).
PATTERN_REASONS = {
    PHONE_PATTERN: "not a phone number: digits, an optional leading +, spaces and ( ) . - only",
    TIME_OF_DAY: 'expected a time of day like "21:00"',
    DATE_TIME: "not an ISO-8601 date and time (2026-12-07T08:00, with an offset like +01:00 or without)",
    CRON: "expected 5 fields (minute hour day month day-of-week), days of the week by name (mon-fri)",
}


def problems_of(err: ValidationError) -> list[Problem]:
    """pydantic's errors as API problems: `recipients[3].phone: Field required`."""
    problems = []
    for e in err.errors(include_url=False):
        reason = str(e["msg"])
        if e["type"] == "string_pattern_mismatch":
            reason = PATTERN_REASONS.get(str((e.get("ctx") or {}).get("pattern")), reason)
        path = ""
        index = None
        for part in e["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
                if path.startswith("recipients[") and index is None:
                    index = part
            else:
                path += f".{part}" if path else str(part)
        problems.append(Problem(path or "body", reason, index))
    return problems
