"""An alert's and a schedule's options: what the API accepts, what a row holds, and every default, here
once. A leaf like config.py (pydantic only): the API validates request bodies with these models, the store
reads its rows into them (store/models.py `OptionsJSON`), and the scheduler, the delivery policy, the call
script and the media session read their fields. Nothing passes options around as a dict.

* `AlertOptions` / `ScheduleOptions`: a request's options (strict: unknown fields refused, no coercion). The
  descriptions below are the API's documentation of each option (the OpenAPI document is made from them).
* `StoredOptions`: an alert's options as its row holds them: the options the alert was accepted with and,
  for a schedule's fire, where it came from (`schedule_id`, `planned_at`, `timezone`). An /outbound-call's
  agent speaks from the start (`StoredAgent.after == "start"`), which no request may ask for.

Old rows load as they behaved (`load`): every row any version wrote holds every option it was accepted with
(its defaults written out), so a later default never changes what an accepted alert does. Rows are read
leniently: a rule added after a row was written (`retry_on` a set) reads the row as it was meant, and a
value that no longer reads falls back to its default, logged, rather than stopping a call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

log = logging.getLogger(__name__)

Digit = Annotated[str, Field(pattern=r"^[0-9*#]$")]
# The outcomes an alert may call again. Not `fax` (a fax line answers as a fax again), nor the outcomes a
# person chose (heard, confirmed, hung up early, opted out...). `machine`: an answering machine took the call
# and no message was left (`on_machine: hang_up`, a full mailbox); `voicemail_left`: for an alert that
# must reach a person, whose message on a machine does not count.
RetryOn = Literal["busy", "no_answer", "failed", "machine", "voicemail_left"]
Start = Literal["after_hello", "on_answer"]
OnMachine = Literal["leave_message", "hang_up"]
TIME_OF_DAY = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
# The keys 1 (confirm) and 9 (opt out) are never another option's (deliveries/plan.py key_problems).
NOT_RESERVED_KEY: dict[str, Any] = {"not": {"enum": ["1", "9"]}}
MAX_PROMPT_CHARS = 10_000
MAX_FIRST_MESSAGE_CHARS = 1_000
# Passed as the validation context when a row is read (see `load`).
_STORED = {"stored": True}


def _whole(value: Any) -> Any:
    """2.0 is the integer 2 to JSON Schema (and to the document): taken as 2, where strict mode would refuse
    every float. A string or a bool stays refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole)]
# A moment written as Python's isoformat writes it ("+00:00", never "Z"): as rows have always held it.
Moment = Annotated[datetime, PlainSerializer(lambda m: m.isoformat(), return_type=str, when_used="json")]


def _not_reserved(value: str | None) -> str | None:
    if value in ("1", "9"):
        raise ValueError("1 confirms and 9 opts out; choose another key")
    return value


class Strict(BaseModel):
    """A request body's model: unknown fields refused, no coercion, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AgentOption(Strict):
    after: Literal["announcement", "key"] = Field(
        default="announcement", description="hand over when the message has played, or on a key"
    )
    key: Digit = Field(
        default="0",
        description='with after="key": the key that hands over',
        json_schema_extra=NOT_RESERVED_KEY,
    )
    prompt: str | None = Field(
        default=None, min_length=1, max_length=MAX_PROMPT_CHARS, description="overrides the agent's prompt"
    )
    first_message: str | None = Field(
        default=None, min_length=1, max_length=MAX_FIRST_MESSAGE_CHARS, description="the agent's first words"
    )

    @field_validator("key")
    @classmethod
    def _free_key(cls, value: str) -> str:
        _not_reserved(value)
        return value


def _default_retry_on() -> list[RetryOn]:
    return ["busy", "no_answer"]


# Without machine detection no machine is ever known: a machine's outcome to retry, or to hang up on, is
# refused (deliveries/plan.py machine_problems), and the document states it.
MACHINE_ONLY: dict[str, Any] = {
    "anyOf": [
        {"properties": {"machine_detection": {"const": True}}},
        {
            "properties": {
                "retry_on": {"items": {"not": {"enum": ["machine", "voicemail_left"]}}},
                "on_machine": {"not": {"const": "hang_up"}},
            }
        },
    ]
}


class AlertOptions(Strict):
    model_config = ConfigDict(json_schema_extra=MACHINE_ONLY)

    max_attempts: WholeNumber = Field(default=1, ge=1, le=10, description="calls per recipient at most")
    retry_on: list[RetryOn] = Field(
        default_factory=_default_retry_on,
        max_length=len(get_args(RetryOn)),
        json_schema_extra={"uniqueItems": True},
        description="the outcomes that are called again (a set: each at most once)",
    )
    retry_backoff_s: float = Field(default=60.0, ge=0, le=86_400, description="doubles with each attempt")
    confirm: bool = Field(default=False, description='ask "press 1 to confirm, 2 to hear it again"')
    repeat_key: Digit | None = Field(
        default=None, description="another key that repeats the message", json_schema_extra=NOT_RESERVED_KEY
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://",
        description="signed outcome webhooks go here (https, a public host, unless settings allow more)",
    )
    agent: AgentOption | None = Field(
        default=None, description="hand the call to the conversational agent (agent mode)"
    )
    machine_detection: bool = Field(
        default=True,
        description="ask Twilio who answered (a person, an answering machine, a fax): the outcome says so",
    )
    start: Start = Field(
        default="after_hello",
        description="start the message when the callee's hello ends (or after hello_timeout_ms of "
        "silence), or at once on answer",
    )
    hello_timeout_ms: WholeNumber = Field(
        default=1500, ge=300, le=10_000, description='with start="after_hello": silence that starts it'
    )
    on_machine: OnMachine = Field(
        default="leave_message",
        description="an answering machine: leave the message after its greeting, or hang up (`machine`)",
    )

    @field_validator("retry_on")
    @classmethod
    def _a_set(cls, value: list[RetryOn], info: ValidationInfo) -> list[RetryOn]:
        if len(set(value)) != len(value):
            if info.context == _STORED:
                return list(dict.fromkeys(value))  # a row from before the rule: it meant the set
            raise ValueError("each outcome at most once (a set)")
        return value

    @field_validator("repeat_key")
    @classmethod
    def _free_repeat_key(cls, value: str | None) -> str | None:
        return _not_reserved(value)


class QuietHours(Strict):
    start: str = Field(pattern=TIME_OF_DAY, description='local time of day, "21:00"')
    end: str = Field(pattern=TIME_OF_DAY, description='local time of day, "08:00"; may wrap midnight')


class ScheduleOptions(AlertOptions):
    quiet_hours: QuietHours | None = Field(
        default=None, description="nobody is called then, in their own time zone (else the schedule's)"
    )
    misfire: Literal["run", "skip"] = Field(
        default="run", description="a fire missed while the service was down: run it once, or skip it"
    )
    misfire_grace_s: float = Field(default=300.0, ge=1, le=7 * 86_400, description="how late `run` may be")
    presynthesize_s: float = Field(default=600.0, ge=0, le=86_400, description="speech made this early")
    snooze_s: float = Field(default=900.0, ge=60, le=86_400, description="key 3 calls again after this")


# --- what an alert's row holds ------------------------------------------------------------------------


class StoredAgent(AgentOption):
    """An alert's agent as stored: a request's `agent` option, or an /outbound-call's agent, which speaks
    from the first second of the call (`after="start"`; its key means nothing)."""

    model_config = ConfigDict(extra="ignore", strict=False)

    after: Literal["start", "announcement", "key"] = "announcement"  # type: ignore[assignment]

    @model_serializer(mode="wrap")
    def _as_stored(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.after == "start":
            data.pop("key", None)  # as /outbound-call has always written it
        return data


class PageRef(BaseModel):
    """A page: the alert an incident's escalation step sent (paging/). Its call asks for the pager's keys (1
    acknowledge, 2 repeat, 3 escalate now) and is never retried: the next step is the retry."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    incident_id: str
    round: int
    step: int


# The options that are a reminder's own, and where a fire came from: in the row of a schedule's fire only.
_FIRE_ONLY = (frozenset(ScheduleOptions.model_fields) - frozenset(AlertOptions.model_fields)) | {
    "schedule_id",
    "planned_at",
    "timezone",
}


class StoredOptions(ScheduleOptions):
    """An alert's options as its row holds them (see the module docstring). An alert that is not a
    schedule's fire holds an alert's options only; it reads a reminder's own (quiet hours, snooze) as
    their defaults: no quiet hours, and no key that snoozes."""

    model_config = ConfigDict(extra="ignore", strict=False)

    agent: StoredAgent | None = None
    schedule_id: str | None = None  # a schedule's fire: the schedule
    planned_at: Moment | None = None  # ... and the time it was planned for
    timezone: str | None = None  # ... and its zone: the quiet hours of recipients without their own
    page: PageRef | None = None  # an incident's page (paging/): the escalation step that sent it

    @classmethod
    def accepted(cls, options: AlertOptions) -> StoredOptions:
        """An alert's options as accepted (every default written out)."""
        return cls.model_validate(options.model_dump())

    @classmethod
    def fired(
        cls, options: ScheduleOptions, *, schedule_id: str, planned_at: datetime, timezone: str
    ) -> StoredOptions:
        """A schedule's fire: the schedule's options, and where the alert came from."""
        given = options.model_dump()
        return cls.model_validate(
            {**given, "schedule_id": schedule_id, "planned_at": planned_at, "timezone": timezone}
        )

    @classmethod
    def outbound(cls, *, prompt: str, first_message: str) -> StoredOptions:
        """POST /outbound-call: an alert's defaults, and the agent from the first second: it greets, so the
        call starts on answer (machine detection stays: the outcome says whether a person took it)."""
        agent = StoredAgent(after="start", prompt=prompt, first_message=first_message)
        return cls.model_validate({**AlertOptions().model_dump(), "agent": agent, "start": "on_answer"})

    @model_validator(mode="before")
    @classmethod
    def _agent_from_the_start(cls, data: Any) -> Any:
        """An /outbound-call's row from before `start` existed started on answer (its agent greets)."""
        if isinstance(data, Mapping) and "start" not in data:
            agent = data.get("agent")
            after = agent.get("after") if isinstance(agent, Mapping) else getattr(agent, "after", None)
            if after == "start":
                return {**data, "start": "on_answer"}
        return data

    @property
    def reminder(self) -> bool:
        """A schedule's fire with `confirm`: its keys are a reminder's (confirm, cancel, later)."""
        return self.schedule_id is not None and self.confirm

    @model_serializer(mode="wrap")
    def _as_stored(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.schedule_id is None:
            for name in _FIRE_ONLY:
                data.pop(name, None)
        if self.page is None:
            data.pop("page", None)  # rows other than pages hold what they always held
        return data


M = TypeVar("M", bound=BaseModel)


def load(model: type[M], raw: Mapping[str, Any] | None) -> M:
    """A row's options as `model`: leniently (no strict types, the stored context), and a value that no
    longer reads is read as its default (logged, without the value: it may hold a phone number or a
    prompt). Raises nothing: an unreadable row must not stop a call."""
    data = dict(raw or {})
    while True:
        try:
            return model.model_validate(data, strict=False, context=_STORED)
        except ValidationError as err:
            bad = {str(e["loc"][0]) for e in err.errors() if e["loc"]} & data.keys()
            if not bad:
                log.warning("stored options unreadable (%s); read as the defaults", err.error_count())
                return model.model_validate({}, context=_STORED)
            log.warning("stored options: %s unreadable; read as the default", ", ".join(sorted(bad)))
            data = {k: v for k, v in data.items() if k not in bad}
