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


class AlertOptions(Strict):
    max_attempts: int = Field(default=1, ge=1, le=10, description="calls per recipient at most")
    retry_on: list[RetryOn] = Field(default_factory=_default_retry_on)
    retry_backoff_s: float = Field(default=60.0, ge=0, le=86_400, description="doubles with each attempt")
    confirm: bool = Field(default=False, description='ask "press 1 to confirm, 2 to hear it again"')
    repeat_key: Digit | None = Field(default=None, description="another key that repeats the message")
    callback_url: str | None = Field(
        default=None, max_length=2048, description="signed outcome webhooks go here"
    )

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
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
