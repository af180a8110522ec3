"""What an announcement call does after its message: the confirmation prompt (from a template) and which
keys repeat the message. Read once per call, while the message plays.

Three menus: an alert's (1 confirm, 2 repeat, 9 opt out), a reminder's (1 confirm, 2 cancel, 3 later, 9
opt out) and a page's (an incident's escalation step: 1 acknowledge, 2 repeat, 3 escalate now). A page has
no opt-out key: 9 opts a number out of every call for good, and an on-call pager's number that opted out
of its own pages would drop out of every escalation unseen; leaving the rotation is the rotation's
business. The escalator reads a page's outcome: `confirmed` acknowledges, `declined` escalates now."""

from __future__ import annotations

import logging
from collections.abc import Callable

from announcer.messages.render import MessageRenderer, RenderError
from announcer.store.calls import StreamGrant
from announcer.store.deliveries import DeliveryStore
from announcer.telephony.callflow import (
    CONFIRM_KEY,
    DECLINE_KEY,
    ESCALATE_KEY,
    REPEAT_KEY,
    SNOOZE_KEY,
    WINDOW_S,
    CallScript,
)
from announcer.telephony.handoff import AgentOffer

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "confirm_prompt.j2"
REMINDER_PROMPT_TEMPLATE = "reminder_prompt.j2"  # a scheduled reminder's: confirm, cancel, later
PAGE_PROMPT_TEMPLATE = "page_prompt.j2"  # a page's: acknowledge, repeat, escalate now
# Said when the template cannot be rendered: the caller still gets a working prompt.
FALLBACK_PROMPT = "Press 1 to confirm. Press 2 to hear this message again."
FALLBACK_REMINDER_PROMPT = "Press 1 to confirm. Press 2 to cancel. Press 3 to be called again later."
FALLBACK_PAGE_PROMPT = (
    "Press 1 to acknowledge. Press 2 to hear this again. Press 3 to escalate to the next person."
)


def check_prompts(renderer: MessageRenderer) -> None:
    """Render the prompts an alert's and a page's calls play, once at start: a broken template stops the
    service, not a call (a pager's call at night least of all). Raises RenderError."""
    renderer.render(PROMPT_TEMPLATE, {"repeat_key": None})
    renderer.render(PAGE_PROMPT_TEMPLATE, {"repeat_key": None})


class CallScripts:
    def __init__(self, store: DeliveryStore, renderer: MessageRenderer, window_s: float = WINDOW_S) -> None:
        self._store = store
        self._renderer = renderer
        self._window_s = window_s

    def check(self) -> None:
        """Render the prompts once at start, so a broken template stops the service, not a call."""
        self.prompt(None)
        self.reminder_prompt(None)
        self.page_prompt(None)

    def prompt(self, repeat_key: str | None) -> str:
        return self._renderer.render(PROMPT_TEMPLATE, {"repeat_key": repeat_key})

    def reminder_prompt(self, repeat_key: str | None) -> str:
        return self._renderer.render(REMINDER_PROMPT_TEMPLATE, {"repeat_key": repeat_key})

    def page_prompt(self, repeat_key: str | None) -> str:
        return self._renderer.render(PAGE_PROMPT_TEMPLATE, {"repeat_key": repeat_key})

    async def for_grant(self, grant: StreamGrant) -> CallScript | None:
        options = (
            grant.options if grant.options is not None else await self._store.call_options(grant.call_id)
        )
        if options is None:
            return None
        repeat_key = options.repeat_key
        agent = AgentOffer.from_options(options)
        if options.page is not None:
            return self._page(repeat_key)
        if options.reminder:
            # A reminder: 2 cancels and 3 asks for a later call; only its own repeat key repeats.
            return CallScript(
                prompt=self._or_fallback(self.reminder_prompt, repeat_key, FALLBACK_REMINDER_PROMPT),
                repeat_keys=frozenset({repeat_key} - {DECLINE_KEY, SNOOZE_KEY} if repeat_key else set()),
                window_s=self._window_s,
                decline_key=DECLINE_KEY,
                snooze_key=SNOOZE_KEY,
                agent=agent,
            )
        keys = frozenset({"2", repeat_key} if repeat_key else {"2"})
        if not options.confirm:
            return CallScript(prompt=None, repeat_keys=keys, window_s=self._window_s, agent=agent)
        prompt = self._or_fallback(self.prompt, repeat_key, FALLBACK_PROMPT)
        return CallScript(prompt=prompt, repeat_keys=keys, window_s=self._window_s, agent=agent)

    def _page(self, repeat_key: str | None) -> CallScript:
        """A page's keys: 1 acknowledges (`confirmed`), 2 repeats, 3 escalates now (`declined`), and no
        opt-out (module docstring). Never an agent: a page asks for a key, not a conversation. A page
        today has no repeat key of its own (AlertService.page); one would be offered beside 2."""
        return CallScript(
            prompt=self._or_fallback(self.page_prompt, repeat_key, FALLBACK_PAGE_PROMPT),
            repeat_keys=frozenset(
                {REPEAT_KEY} | ({repeat_key} - {CONFIRM_KEY, ESCALATE_KEY} if repeat_key else set())
            ),
            window_s=self._window_s,
            decline_key=ESCALATE_KEY,
            confirms="acknowledge",
            declines="escalate now",
            opt_out=False,
        )

    @staticmethod
    def _or_fallback(render: Callable[[str | None], str], repeat_key: str | None, fallback: str) -> str:
        """A prompt from its template, or the built-in one when the template cannot be rendered (the call
        still gets a working prompt; the start-up check makes this rare)."""
        try:
            return render(repeat_key)
        except RenderError as err:
            log.error("prompt: %s; using the built-in one", err)  # err names the template
            return fallback
