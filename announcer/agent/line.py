"""The agent line: turns a session's `Handoff` into a running bridge (the `StartAgent` the app gives
the media sessions), with the context the agent is told about."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from announcer.agent.bridge import AgentBridge, AgentPlan
from announcer.agent.connect import AgentConnector
from announcer.agent.transcript import Transcript
from announcer.store.journal import Journal
from announcer.telephony.handoff import Handoff

# The recipient's variables of a call (its delivery's, the alert's shared ones under them); {} for none.
CallContext = Callable[[int], Awaitable[dict[str, Any]]]
MAX_VARIABLE_CHARS = 1000


def dynamic_variables(variables: dict[str, Any], heard: str) -> dict[str, str | int | float | bool]:
    """ElevenLabs' dynamic variables are flat scalars: anything else is passed as its JSON text."""
    out: dict[str, str | int | float | bool] = {}
    for name, value in variables.items():
        if value is None:
            continue
        if isinstance(value, str | int | float | bool):
            out[str(name)] = value[:MAX_VARIABLE_CHARS] if isinstance(value, str) else value
        else:
            out[str(name)] = json.dumps(value, default=str)[:MAX_VARIABLE_CHARS]
    if heard:
        out["announcement"] = heard[: MAX_VARIABLE_CHARS * 4]
    return out


class AgentLine:
    def __init__(
        self,
        connector: AgentConnector,
        agent_id: str,
        journal: Journal,
        context: CallContext,
        *,
        max_s: float,
    ) -> None:
        self._connector = connector
        self._agent_id = agent_id
        self._journal = journal
        self._context = context
        self._max_s = max_s

    def __call__(self, handoff: Handoff) -> AgentBridge:
        async def plan() -> AgentPlan:
            variables = await self._context(handoff.call_id)
            return AgentPlan(
                prompt=handoff.offer.prompt,
                first_message=handoff.offer.first_message,
                dynamic_variables=dynamic_variables(variables, handoff.heard_text),
            )

        return AgentBridge(
            self._connector,
            self._agent_id,
            handoff,
            plan,
            Transcript(self._journal, handoff.call_id),
            max_s=self._max_s,
        )
