"""The "More options" part of the Send and Schedules forms: every option POST /v1/alerts (and, for a
schedule, POST /v1/schedules) takes in `options`, read from the form as typed into the `options` object
of the API's body. Only what a form cannot say itself is checked here (a number field holding a number);
whether a value is allowed is the API's body model's and the alert service's call, whose problems name
`options.xxx` and are shown next to the field of that name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, get_args

from multidict import MultiDictProxy

from announcer.deliveries.plan import Problem
from announcer.options import AlertOptions, RetryOn, ScheduleOptions

RETRY_ON: tuple[str, ...] = get_args(RetryOn)
# Fields typed as text and given to the API only when filled in (empty: the API's default).
WHOLE = ("max_attempts", "hello_timeout_ms")
DECIMAL = ("retry_backoff_s",)
SCHEDULE_DECIMAL = ("misfire_grace_s", "presynthesize_s", "snooze_s")
TEXT = ("repeat_key", "callback_url", "start", "on_machine")
AGENT_TEXT = ("agent_key", "agent_prompt", "agent_first_message")
FIELDS = WHOLE + DECIMAL + SCHEDULE_DECIMAL + TEXT + AGENT_TEXT + ("agent_after", "machine_detection")


@dataclass
class OptionsForm:
    """The options as typed (strings), so a form shown again keeps them."""

    values: dict[str, str] = field(default_factory=lambda: dict.fromkeys(FIELDS, ""))
    retry_on: list[str] = field(default_factory=lambda: list(AlertOptions().retry_on))
    confirm: bool = False

    @classmethod
    def read(cls, form: MultiDictProxy[Any]) -> OptionsForm:
        """`form`: the posted MultiDict. Without the options' marker field (a form made before "More
        options", or a client posting by hand) retry_on is the API's default, not "none checked"."""
        values = {name: _text(form, name).strip() for name in FIELDS}
        retry_on: list[str] = list(AlertOptions().retry_on)
        if _text(form, "options_shown") == "1":
            retry_on = [v for v in form.getall("retry_on", []) if isinstance(v, str)]
        return cls(values, retry_on, _text(form, "confirm") == "1")

    @classmethod
    def of(cls, options: ScheduleOptions) -> OptionsForm:
        """A stored schedule's options as the form shows them (every value written out)."""
        data = options.model_dump(mode="json")
        values = dict.fromkeys(FIELDS, "")
        for name in WHOLE + DECIMAL + SCHEDULE_DECIMAL + TEXT:
            if data.get(name) is not None:
                values[name] = _number(data[name])
        values["machine_detection"] = "yes" if data["machine_detection"] else "no"
        agent = data.get("agent")
        if agent:
            values["agent_after"] = agent["after"]
            values["agent_key"] = agent.get("key") or ""
            values["agent_prompt"] = agent.get("prompt") or ""
            values["agent_first_message"] = agent.get("first_message") or ""
        return cls(values, list(data["retry_on"]), bool(data["confirm"]))

    def options(self, *, schedule: bool = False) -> dict[str, Any]:
        """The `options` object of the API's body; FormError-style problems as a list (empty: none)."""
        out: dict[str, Any] = {"retry_on": list(self.retry_on)}
        problems: list[Problem] = []
        if self.confirm:
            out["confirm"] = True
        for name in WHOLE:
            if self.values[name]:
                try:
                    out[name] = int(self.values[name])
                except ValueError:
                    problems.append(Problem(f"options.{name}", "expected a whole number"))
        for name in DECIMAL + (SCHEDULE_DECIMAL if schedule else ()):
            if self.values[name]:
                try:
                    out[name] = float(self.values[name])
                except ValueError:
                    problems.append(Problem(f"options.{name}", "expected a number (seconds)"))
        for name in TEXT:
            if self.values[name]:
                out[name] = self.values[name]
        if self.values["machine_detection"] in ("yes", "no"):
            out["machine_detection"] = self.values["machine_detection"] == "yes"
        if self.values["agent_after"]:
            agent = {"after": self.values["agent_after"]}
            for name in AGENT_TEXT:
                if self.values[name]:
                    agent[name.removeprefix("agent_")] = self.values[name]
            out["agent"] = agent
        if problems:
            raise OptionsError(problems)
        return out


class OptionsError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.reason}" for p in problems))
        self.problems = problems


def _text(form: MultiDictProxy[Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _number(value: Any) -> str:
    """2.0 shown as "2": what a person would have typed."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
