"""From an alert's recipients to deliveries: every recipient rendered and every number normalised before
anything is accepted (a missing variable is an error before any call, never a half-spoken sentence).

All problems are collected, not just the first: a caller fixing a 500-row list wants every bad row at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from announcer.deliveries.egress import EgressPolicy
from announcer.messages.destinations import DestinationPolicy
from announcer.messages.limits import RENDER_CPU_S, REQUEST_RENDER_CPU_S
from announcer.messages.phones import BadNumber
from announcer.messages.render import MessageRenderer, PreparedTemplate, RenderError
from announcer.options import AlertOptions
from announcer.store.deliveries import NewDelivery  # what the store takes: planned, then stored as is
from announcer.telephony.callflow import CONFIRM_KEY, DECLINE_KEY, OPT_OUT_KEY, REPEAT_KEY, SNOOZE_KEY


@dataclass(frozen=True)
class Problem:
    """One reason a request cannot be accepted: `field` is a path into the request body."""

    field: str
    reason: str
    index: int | None = None  # the recipient's index, when the problem is one recipient's

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "reason": self.reason}
        if self.index is not None:
            out["index"] = self.index
        return out


class PlanError(Exception):
    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{p.field}: {p.reason}" for p in self.problems[:5]))


@dataclass(frozen=True)
class RecipientIn:
    phone: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    timezone: str | None = None


@dataclass(frozen=True)
class Limits:
    max_recipients: int
    max_text_chars: int
    destinations: DestinationPolicy  # which numbers may be called (and the region of ones without +)
    agent: bool = False  # an agent is configured: calls may be handed to it (agent mode)
    # What an options.callback_url may reach; the default refuses every internal host and plain http.
    callbacks: EgressPolicy = field(default_factory=EgressPolicy)


def agent_problems(wants_agent: bool, limits: Limits) -> list[Problem]:
    """An `agent` option is refused up front where no agent is configured, not at the call."""
    if wants_agent and not limits.agent:
        return [Problem("options.agent", "agent mode needs ELEVENLABS_AGENT_ID (an ElevenLabs agent)")]
    return []


# The keys a call listens for, and what each does (telephony/callflow.py, deliveries/script.py). Each key an
# alert or a schedule uses must do one thing: a key that both repeats and hands over did only one of them.


def key_problems(
    *, confirm: bool, reminder: bool, repeat_key: str | None, agent_key: str | None
) -> list[Problem]:
    """Every clash between the keys of one alert's or schedule's options, naming both fields."""
    reminder_keys = reminder and confirm
    taken: dict[str, str] = {OPT_OUT_KEY: f"{OPT_OUT_KEY} (opt out, always)"}
    if confirm:
        taken[CONFIRM_KEY] = f"{CONFIRM_KEY} (confirm, with options.confirm)"
    if reminder_keys:
        taken[DECLINE_KEY] = f"{DECLINE_KEY} (cancel, a reminder's with options.confirm)"
        taken[SNOOZE_KEY] = f"{SNOOZE_KEY} (call again later, a reminder's with options.confirm)"
    else:
        taken[REPEAT_KEY] = f"{REPEAT_KEY} (repeat the message, always)"
    problems: list[Problem] = []
    for where, key in (("options.repeat_key", repeat_key), ("options.agent.key", agent_key)):
        if key is None:
            continue
        if key in taken:
            # repeat_key "2" on an alert only names the key that repeats anyway
            if not (where == "options.repeat_key" and key == REPEAT_KEY and not reminder_keys):
                problems.append(Problem(where, f'"{key}" is already key {taken[key]}'))
        else:
            taken[key] = f"{key} ({where})"
    return problems


def option_key_problems(options: AlertOptions, *, reminder: bool) -> list[Problem]:
    """`key_problems` of an alert's or a schedule's options."""
    agent = options.agent
    return key_problems(
        confirm=options.confirm,
        reminder=reminder,
        repeat_key=options.repeat_key,
        agent_key=agent.key if agent is not None and agent.after == "key" else None,
    )


def machine_problems(options: AlertOptions) -> list[Problem]:
    """What can only happen with machine detection, asked for without it: an outcome that never comes to
    retry, a machine to hang up on that is never known."""
    if options.machine_detection:
        return []
    without = "only known with machine detection (options.machine_detection is false)"
    problems = [
        Problem("options.retry_on", f'"{outcome}" is {without}')
        for outcome in ("machine", "voicemail_left")
        if outcome in options.retry_on
    ]
    if options.on_machine == "hang_up":
        problems.append(Problem("options.on_machine", f"a machine is {without}"))
    return problems


def callback_problems(url: str | None, limits: Limits) -> list[Problem]:
    """A callback_url the outbound policy refuses by its look is refused at acceptance, not found at the
    first outcome; where its host resolves is judged at each send."""
    reason = limits.callbacks.url_problem(url) if url is not None else None
    return [Problem("options.callback_url", reason)] if reason else []


def prepare_template(
    renderer: MessageRenderer, template: str | None, template_text: str | None
) -> PreparedTemplate:
    """The alert's template, loaded once; PlanError naming the field when it is missing or broken."""
    if (template is None) == (template_text is None):
        raise PlanError([Problem("template", "give exactly one of template and template_text")])
    try:
        return renderer.prepare(name=template, source=template_text)
    except RenderError as err:
        raise PlanError(
            [Problem("template" if template is not None else "template_text", str(err))]
        ) from None


def plan(
    renderer: MessageRenderer,
    template: str | None,
    template_text: str | None,
    shared: Mapping[str, Any],
    recipients: Sequence[RecipientIn],
    limits: Limits,
) -> list[NewDelivery]:
    """`prepare_template` then `plan_deliveries`: the whole of it is CPU work, run in the render thread
    (messages.workers), never on the event loop."""
    return plan_deliveries(prepare_template(renderer, template, template_text), shared, recipients, limits)


def plan_deliveries(
    prepared: PreparedTemplate,
    shared: Mapping[str, Any],
    recipients: Sequence[RecipientIn],
    limits: Limits,
) -> list[NewDelivery]:
    """Render every recipient; raise PlanError with every problem found.

    A render over a limit of the sandbox (messages.limits) stops planning at once, with that one problem
    naming the limit: on the template's field when no recipient before rendered (the template is the
    problem), else on the recipient's variables (the template works, these variables take it over). So
    does a request whose renders together take more than REQUEST_RENDER_CPU_S of CPU (the template's)."""
    template_field = "template_text" if prepared.inline else "template"
    started = time.thread_time()
    rendered = False  # a recipient before this one rendered within the limits
    problems: list[Problem] = []
    if not recipients:
        raise PlanError([Problem("recipients", "at least one recipient is required")])
    if len(recipients) > limits.max_recipients:
        raise PlanError(
            [
                Problem(
                    "recipients", f"{len(recipients)} recipients; at most {limits.max_recipients} per alert"
                )
            ]
        )
    seen: dict[str, int] = {}
    planned: list[NewDelivery] = []
    for index, recipient in enumerate(recipients):
        where = f"recipients[{index}]"
        try:
            phone = limits.destinations.check(recipient.phone)
        except BadNumber as err:
            problems.append(Problem(f"{where}.phone", str(err), index))
            phone = None
        if phone is not None:
            first = seen.setdefault(phone, index)
            if first != index:
                problems.append(
                    Problem(f"{where}.phone", f"duplicate of recipients[{first}] ({phone})", index)
                )
        if recipient.timezone is not None:
            try:
                ZoneInfo(recipient.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                problems.append(Problem(f"{where}.timezone", "unknown time zone", index))
        # The recipient's own variables win over the alert's; name and phone are there unless given.
        variables: dict[str, Any] = {"name": recipient.name, "phone": phone or recipient.phone}
        variables.update(shared)
        variables.update(recipient.variables)
        # the last renders get what is left of the request's CPU budget, not a whole render's
        now = time.thread_time()
        cpu_s = min(RENDER_CPU_S, REQUEST_RENDER_CPU_S - (now - started))
        try:
            said = prepared.speech(variables, cpu_s, now)
        except RenderError as err:
            if err.limit == "cpu time" and cpu_s < RENDER_CPU_S:
                spent = f"rendering every recipient takes more than {REQUEST_RENDER_CPU_S:g} s of CPU"
                reason = f"{prepared.name}: {spent} (limit: request cpu time)"
                raise PlanError([Problem(template_field, reason, index)]) from None
            if err.limit is not None:
                culprit = f"{where}.variables" if rendered else template_field
                raise PlanError([Problem(culprit, str(err), index)]) from None
            problems.append(Problem(f"{where}.variables", str(err), index))
            continue
        rendered = True
        text, voicemail = said.text, said.voicemail
        too_long = [
            f"the {what} is {len(words)} characters; at most {limits.max_text_chars}"
            for what, words in (("message", text), ("voicemail", voicemail or ""))
            if len(words) > limits.max_text_chars
        ]
        if too_long:
            problems += [Problem(f"{where}.variables", reason, index) for reason in too_long]
            continue
        if phone is not None:
            planned.append(
                NewDelivery(
                    position=index,
                    phone=phone,
                    name=recipient.name,
                    timezone=recipient.timezone,
                    variables=dict(recipient.variables),
                    text=text,
                    voicemail_text=voicemail,
                )
            )
    if problems:
        raise PlanError(problems)
    return planned
