"""The media sessions live in this process, by call SID: where machine detection's verdict is delivered.

Twilio posts the verdict (`POST /twilio/amd`) to any process, at any moment of the call: often before the
stream's `start` (a listener is `human` at the answer), sometimes after the stream ended. A verdict for a
call with no session here is kept for `EARLY_TTL_S`, for a session that starts later; the store has it
for everything else (the call's `answered_by`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from announcer.telephony.callflow import MachineVerdict

EARLY_TTL_S = 120.0  # longer than a stream takes to start after the answer
MAX_EARLY = 10_000  # a flood of verdicts for calls that never stream cannot grow this without bound

Deliver = Callable[[MachineVerdict], None]


class LiveCalls:
    def __init__(self) -> None:
        self._sessions: dict[str, Deliver] = {}
        self._early: dict[str, tuple[float, MachineVerdict]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def join(self, call_sid: str, deliver: Deliver) -> MachineVerdict | None:
        """A session for `call_sid` started here: verdicts go to `deliver` from now on. Returns the verdict
        that came before it, if one did."""
        self._sessions[call_sid] = deliver
        early = self._early.pop(call_sid, None)
        return early[1] if early is not None and early[0] >= time.monotonic() else None

    def leave(self, call_sid: str, deliver: Deliver) -> None:
        # `==`, not `is`: `deliver` is a bound method, a new object at each access (`session._verdict is
        # session._verdict` is False), so `is` never matched and every call's session stayed here for good.
        if self._sessions.get(call_sid) == deliver:  # not a later session's (a second stream on the call)
            del self._sessions[call_sid]

    def verdict(self, call_sid: str, verdict: MachineVerdict) -> bool:
        """Deliver `verdict` to the call's session; True when one is live here."""
        deliver = self._sessions.get(call_sid)
        if deliver is not None:
            deliver(verdict)
            return True
        now = time.monotonic()
        if len(self._early) >= MAX_EARLY:
            self._early = {sid: kept for sid, kept in self._early.items() if kept[0] >= now}
            while len(self._early) >= MAX_EARLY:
                del self._early[next(iter(self._early))]  # the oldest
        self._early[call_sid] = (now + EARLY_TTL_S, verdict)
        return False
