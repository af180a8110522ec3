"""Request bodies of the /v1 API as pydantic models: strict types, unknown fields refused. The same models
give the OpenAPI document its schemas, so the document cannot drift from what the handlers accept."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from announcer.deliveries.plan import Problem

Digit = Annotated[str, Field(pattern=r"^[0-9*#]$")]
RetryOn = Literal["busy", "no_answer", "failed"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RecipientBody(Strict):
    phone: str = Field(max_length=40, description="E.164 (+14155550100) or national with a region")
    variables: dict[str, Any] = Field(default_factory=dict, description="this recipient's template variables")
    name: str | None = Field(default=None, max_length=200)
    timezone: str | None = Field(
        default=None, max_length=64, description="IANA time zone, e.g. Europe/Berlin"
    )


def _default_retry_on() -> list[RetryOn]:
    return ["busy", "no_answer"]


MAX_PROMPT_CHARS = 10_000
MAX_FIRST_MESSAGE_CHARS = 1_000


class AgentOption(Strict):
    after: Literal["announcement", "key"] = Field(
        default="announcement", description="hand over when the message has played, or on a key"
    )
    key: Digit = Field(default="0", description='with after="key": the key that hands over')
    prompt: str | None = Field(
        default=None, min_length=1, max_length=MAX_PROMPT_CHARS, description="overrides the agent's prompt"
    )
    first_message: str | None = Field(
        default=None, min_length=1, max_length=MAX_FIRST_MESSAGE_CHARS, description="the agent's first words"
    )

    @field_validator("key")
    @classmethod
    def _free_key(cls, value: str) -> str:
        if value in ("1", "9"):
            raise ValueError("1 confirms and 9 opts out; choose another key")
        return value


class AlertOptions(Strict):
    max_attempts: int = Field(default=1, ge=1, le=10, description="calls per recipient at most")
    retry_on: list[RetryOn] = Field(
        default_factory=_default_retry_on,
        max_length=3,
        json_schema_extra={"uniqueItems": True},
        description="the outcomes that are called again (a set: each at most once)",
    )
    retry_backoff_s: float = Field(default=60.0, ge=0, le=86_400, description="doubles with each attempt")
    confirm: bool = Field(default=False, description='ask "press 1 to confirm, 2 to hear it again"')
    repeat_key: Digit | None = Field(default=None, description="another key that repeats the message")
    # Judged by the outbound policy (deliveries/egress.py) in the handler: what it allows is the settings'.
    callback_url: str | None = Field(
        default=None, max_length=2048, description="signed outcome webhooks go here (https, a public host)"
    )
    agent: AgentOption | None = Field(
        default=None, description="hand the call to the conversational agent (agent mode)"
    )

    @field_validator("retry_on")
    @classmethod
    def _a_set(cls, value: list[RetryOn]) -> list[RetryOn]:
        if len(set(value)) != len(value):
            raise ValueError("each outcome at most once (a set)")
        return value

    @field_validator("repeat_key")
    @classmethod
    def _free_key(cls, value: str | None) -> str | None:
        if value in ("1", "9"):
            raise ValueError("1 confirms and 9 opts out; choose another key")
        return value


class AlertBody(Strict):
    template: str | None = Field(default=None, max_length=255, description="a template in templates/")
    template_text: str | None = Field(default=None, max_length=20_000, description="or inline Jinja text")
    variables: dict[str, Any] = Field(default_factory=dict, description="shared by every recipient")
    recipients: list[RecipientBody]
    options: AlertOptions = Field(default_factory=AlertOptions)


class QuietHoursBody(Strict):
    start: str = Field(max_length=5, description='local time of day, "21:00"')
    end: str = Field(max_length=5, description='local time of day, "08:00"; may wrap midnight')


class ScheduleOptions(AlertOptions):
    quiet_hours: QuietHoursBody | None = Field(
        default=None, description="nobody is called then, in their own time zone (else the schedule's)"
    )
    misfire: Literal["run", "skip"] = Field(
        default="run", description="a fire missed while the service was down: run it once, or skip it"
    )
    misfire_grace_s: float = Field(default=300.0, ge=1, le=7 * 86_400, description="how late `run` may be")
    presynthesize_s: float = Field(default=600.0, ge=0, le=86_400, description="speech made this early")
    snooze_s: float = Field(default=900.0, ge=60, le=86_400, description="key 3 calls again after this")


class WhenBody(Strict):
    at: str | None = Field(default=None, max_length=64, description="ISO-8601, with an offset or local")
    cron: str | None = Field(default=None, max_length=120, description='crontab, e.g. "0 8 * * mon-fri"')
    timezone: str | None = Field(default=None, max_length=64, description="IANA zone, e.g. Europe/Berlin")
    start: str | None = Field(default=None, max_length=64, description="cron only: not before")
    end: str | None = Field(default=None, max_length=64, description="cron only: not after")


class ScheduleBody(Strict):
    name: str | None = Field(default=None, max_length=200)
    template: str | None = Field(default=None, max_length=255, description="a template in templates/")
    template_text: str | None = Field(default=None, max_length=20_000, description="or inline Jinja text")
    variables: dict[str, Any] = Field(default_factory=dict, description="shared by every recipient")
    recipients: list[RecipientBody]
    when: WhenBody
    options: ScheduleOptions = Field(default_factory=ScheduleOptions)


class SchedulePatch(Strict):
    status: Literal["active", "paused"] | None = Field(default=None, description="pause or resume")
    name: str | None = Field(default=None, max_length=200)
    variables: dict[str, Any] | None = None
    recipients: list[RecipientBody] | None = None
    when: WhenBody | None = None


class OutboundCallBody(Strict):
    """The reference example's body (ElevenLabs' Twilio outbound guide), validated."""

    number: str = Field(max_length=40, description="who to call: E.164, or national with a region")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="the agent's prompt")
    first_message: str = Field(
        min_length=1, max_length=MAX_FIRST_MESSAGE_CHARS, description="what the agent says first"
    )


class PreviewBody(Strict):
    template: str | None = Field(default=None, max_length=255)
    template_text: str | None = Field(default=None, max_length=20_000)
    variables: dict[str, Any] = Field(default_factory=dict)
    recipient: RecipientBody


def problems_of(err: ValidationError) -> list[Problem]:
    """pydantic's errors as API problems: `recipients[3].phone: Field required`."""
    problems = []
    for e in err.errors(include_url=False):
        path = ""
        index = None
        for part in e["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
                if path.startswith("recipients[") and index is None:
                    index = part
            else:
                path += f".{part}" if path else str(part)
        problems.append(Problem(path or "body", str(e["msg"]), index))
    return problems
