"""Handing a live call to a conversational agent: what the media session offers and expects.

The session (telephony) decides when a call is handed over and what happens when the conversation
ends; the agent package (above telephony, design.md's import order) does the conversation. This module
is the contract between the two, so the session needs nothing from the agent package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from announcer.options import StoredOptions


class After(StrEnum):
    START = "start"  # from the first second of the call (POST /outbound-call)
    ANNOUNCEMENT = "announcement"  # once the message has played to the end
    KEY = "key"  # when the caller presses the offer's key


@dataclass(frozen=True)
class AgentOffer:
    after: After
    key: str = "0"
    prompt: str | None = None
    first_message: str | None = None

    @classmethod
    def from_options(cls, options: StoredOptions | None) -> AgentOffer | None:
        """An alert's `agent` (a request's option, a schedule's, or /outbound-call's from the start)."""
        agent = options.agent if options is not None else None
        if agent is None:
            return None
        return cls(
            after=After(agent.after), key=agent.key, prompt=agent.prompt, first_message=agent.first_message
        )


class EndKind(StrEnum):
    AGENT_ENDED = "agent_ended"  # the agent closed the conversation normally
    FAILED = "failed"  # unreachable, refused, wrong audio format, dropped mid-call
    TIME_LIMIT = "time_limit"  # the longest conversation allowed was reached


@dataclass(frozen=True)
class AgentEnd:
    kind: EndKind
    reason: str
    connected: bool  # whether the conversation had started (the agent's metadata had arrived)


@dataclass(frozen=True)
class Handoff:
    """One call being handed over, and the session's side of the link."""

    call_id: int
    call_kind: str
    heard_text: str  # what the caller heard before the agent ("" when the agent starts the call)
    offer: AgentOffer
    stream_sid: str
    send: Callable[[str], Awaitable[None]]  # a message to Twilio, on the call's media socket
    record: Callable[..., None]  # an event on the call's trail
    on_connected: Callable[[str], Awaitable[None]]  # the conversation id
    on_end: Callable[[AgentEnd], Awaitable[None]]  # not called when the session closed it


class Conversation(Protocol):
    def start(self) -> None: ...

    async def user_audio(self, raw: str) -> None:
        """A Twilio `media` message, as received (hot path)."""

    def mark_played(self, name: str) -> None:
        """An echoed mark whose name starts with MARK_PREFIX."""

    async def close(self, reason: str) -> None:
        """The call is over: close the agent's socket now."""


StartAgent = Callable[[Handoff], Conversation]
MARK_PREFIX = "agent:"
