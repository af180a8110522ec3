"""What an announcement call does after its message: the confirmation prompt (from a template) and which
keys repeat the message. Read once per call, while the message plays."""

from __future__ import annotations

import logging

from announcer.messages.render import MessageRenderer, RenderError
from announcer.store.calls import StreamGrant
from announcer.store.deliveries import DeliveryStore
from announcer.telephony.callflow import DECLINE_KEY, SNOOZE_KEY, WINDOW_S, CallScript
from announcer.telephony.handoff import AgentOffer

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "confirm_prompt.j2"
REMINDER_PROMPT_TEMPLATE = "reminder_prompt.j2"  # a scheduled reminder's: confirm, cancel, later
# Said when the template cannot be rendered: the caller still gets a working prompt.
FALLBACK_PROMPT = "Press 1 to confirm. Press 2 to hear this message again."
FALLBACK_REMINDER_PROMPT = "Press 1 to confirm. Press 2 to cancel. Press 3 to be called again later."


class CallScripts:
    def __init__(self, store: DeliveryStore, renderer: MessageRenderer, window_s: float = WINDOW_S) -> None:
        self._store = store
        self._renderer = renderer
        self._window_s = window_s

    def check(self) -> None:
        """Render the prompts once at start, so a broken template stops the service, not a call."""
        self.prompt(None)
        self.reminder_prompt(None)

    def prompt(self, repeat_key: str | None) -> str:
        return self._renderer.render(PROMPT_TEMPLATE, {"repeat_key": repeat_key})

    def reminder_prompt(self, repeat_key: str | None) -> str:
        return self._renderer.render(REMINDER_PROMPT_TEMPLATE, {"repeat_key": repeat_key})

    async def for_grant(self, grant: StreamGrant) -> CallScript | None:
        options = (
            grant.options if grant.options is not None else await self._store.call_options(grant.call_id)
        )
        if options is None:
            return None
        repeat_key = options.repeat_key
        agent = AgentOffer.from_options(options)
        if options.reminder:
            # A reminder: 2 cancels and 3 asks for a later call; only its own repeat key repeats.
            try:
                prompt = self.reminder_prompt(repeat_key)
            except RenderError as err:
                log.error("reminder prompt: %s; using the built-in one", err)
                prompt = FALLBACK_REMINDER_PROMPT
            return CallScript(
                prompt=prompt,
                repeat_keys=frozenset({repeat_key} - {DECLINE_KEY, SNOOZE_KEY} if repeat_key else set()),
                window_s=self._window_s,
                decline_key=DECLINE_KEY,
                snooze_key=SNOOZE_KEY,
                agent=agent,
            )
        keys = frozenset({"2", repeat_key} if repeat_key else {"2"})
        if not options.confirm:
            return CallScript(prompt=None, repeat_keys=keys, window_s=self._window_s, agent=agent)
        try:
            prompt = self.prompt(repeat_key)
        except RenderError as err:
            log.error("confirmation prompt: %s; using the built-in one", err)
            prompt = FALLBACK_PROMPT
        return CallScript(prompt=prompt, repeat_keys=keys, window_s=self._window_s, agent=agent)
