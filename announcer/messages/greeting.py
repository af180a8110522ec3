"""The greeting line's message: the caller's variables, rendered from the greeting template."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from announcer.messages.phones import BadNumber, to_e164
from announcer.messages.render import MessageRenderer
from announcer.messages.speakable import time_of_day

SAMPLE_CALLER = "+15550100123"


def e164_or_empty(number: str) -> str:
    """The caller's number in E.164, or "" when withheld or not a phone number (e.g. "anonymous")."""
    try:
        return to_e164(number)
    except BadNumber:
        return ""


class Greeting:
    """`hands_over`: the line hands every caller to the agent once the greeting has played
    (GREETING_AGENT), so the greeting must not take its leave: the template is told, as `hands_over`."""

    def __init__(
        self,
        renderer: MessageRenderer,
        template: str,
        org_name: str,
        zone: ZoneInfo,
        hands_over: bool = False,
    ) -> None:
        self.renderer = renderer
        self.template = template
        self.org_name = org_name
        self.zone = zone
        self.hands_over = hands_over

    def variables(self, caller: str, caller_name: str | None, now: datetime | None = None) -> dict[str, Any]:
        local = (now or datetime.now(UTC)).astimezone(self.zone)
        return {
            "org_name": self.org_name,
            "time_of_day": time_of_day(local.hour),
            "caller": e164_or_empty(caller),
            "caller_name": (caller_name or "").strip(),
            "hands_over": self.hands_over,
        }

    def render(self, caller: str, caller_name: str | None = None, now: datetime | None = None) -> str:
        return self.renderer.render(self.template, self.variables(caller, caller_name, now))

    def check(self) -> str:
        """Render once with sample variables, so a broken template stops start-up, not a live call."""
        return self.render(SAMPLE_CALLER, "Ada")
