"""A scripted caller: `PhoneBehavior.lines` said one after another, each as a reply, plus a barge-in.

Driven by the phone clock's tick (no task of its own once its lines are ready), so 200 calls cost no
more than before when nobody scripts them.  The far end's *turn* is what the phone plays: a turn starts
when audio plays after a quiet spell and ends when nothing but silence has played for
`reply_after_quiet_s` (sandbox seconds); then the next line is said.  The barge-in line is said
`after_s` into the far end's `turn`th turn, whether or not it is still talking.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from announcer.audio import SILENCE_FRAME
from announcer.sandbox.phone_voice import PhoneVoice, Utterance
from announcer.sandbox.twilio_call import BargeIn

if TYPE_CHECKING:
    from announcer.sandbox.phone import Phone

log = logging.getLogger(__name__)


class PhoneScript:
    def __init__(
        self, lines: tuple[str, ...], barge_in: BargeIn | None, quiet_s: float, speed: float
    ) -> None:
        self._lines = lines
        self._barge_in = barge_in
        self._quiet = quiet_s / speed  # real seconds
        self._barge_after = barge_in.after_s / speed if barge_in is not None else 0.0
        self._next = 0
        self._barged = barge_in is None
        self._last_heard_at: float | None = None
        self._turn_started_at: float | None = None
        self._far_turns = 0
        self._heard_since_line = False
        self._ready: dict[str, Utterance] = {}
        self._preparing: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self._next >= len(self._lines) and self._barged

    def prepare(self, voice: PhoneVoice) -> None:
        """Synthesize every line ahead (one short task), so each is said the moment it is due."""
        if self._preparing is not None:
            return
        texts = [*self._lines, *([self._barge_in.line] if self._barge_in is not None else [])]

        async def run() -> None:
            for text in texts:
                self._ready[text] = await voice.prepare(text)

        self._preparing = asyncio.get_running_loop().create_task(run(), name="sandbox-phone-script")
        self._preparing.add_done_callback(_log_crash)

    def cancel(self) -> None:
        if self._preparing is not None:
            self._preparing.cancel()

    def heard(self, frame: bytes, at: float) -> None:
        """A frame played at `at`; called for every frame while the script runs."""
        if frame == SILENCE_FRAME:
            return
        last = self._last_heard_at
        if last is None or at - last > self._quiet:
            self._far_turns += 1
            self._turn_started_at = at
        self._last_heard_at = at
        self._heard_since_line = True

    def tick(self, now: float, phone: Phone) -> None:
        if phone.speaking:
            # only what plays after our line counts as the far end's answer to it (what played
            # meanwhile, e.g. the tail of an interrupted turn, is not)
            self._heard_since_line = False
            return
        barge_in = self._barge_in
        if (
            not self._barged
            and barge_in is not None
            and self._far_turns >= barge_in.turn
            and self._turn_started_at is not None
            and now - self._turn_started_at >= self._barge_after
        ):
            utterance = self._ready.get(barge_in.line)
            if utterance is not None:
                self._barged = True
                self._heard_since_line = False
                phone.speak(utterance)
            return
        if self._next >= len(self._lines) or not self._heard_since_line:
            return
        if self._last_heard_at is None or now - self._last_heard_at < self._quiet:
            return
        utterance = self._ready.get(self._lines[self._next])
        if utterance is None:
            return  # still being synthesized: said on a later tick
        self._next += 1
        self._heard_since_line = False
        phone.speak(utterance)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("sandbox phone script failed to prepare its lines", exc_info=task.exception())
