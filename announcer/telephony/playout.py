"""One playout clock for every live call (design.md, "The hot path").

Twilio buffers the audio we send and plays it in order, so a stream may run ahead of real time. Each
stream keeps a virtual play-head (`play_end`: when its last sent frame will have played). A sender may
run up to `ahead_s` ahead; when it is that far ahead it waits until `refill_s` of audio has played and
then sends that much in one burst. Waits are released by ONE ticking task for all calls (not a
sleeping task per call), so 1,000 calls cost one timer, and each call wakes ~1/refill_s times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque

from announcer.audio import FRAME_MS

FRAME_S = FRAME_MS / 1000
# What admission control reads (deliveries/admission.py): a wait released this late means the process is
# behind its calls' audio; a stream not speaking this long after it opened no longer counts as starting
# (it was refused, or handed to an agent, or its call ended first).
LATE_RELEASE_S = 0.1
STARTING_FOR_S = 10.0


class PlayoutClock:
    def __init__(
        self, *, ahead_s: float = 1.0, refill_s: float = 0.2, tick_s: float = 0.01, speed: float = 1.0
    ) -> None:
        if not 0 < refill_s < ahead_s:
            raise ValueError("need 0 < refill_s < ahead_s")
        # speed > 1 only against the sandbox phone, whose clock tests may run faster than real time.
        self.speed = speed
        self.frame_s = FRAME_S / speed
        self.ahead_s = ahead_s
        self.refill_s = refill_s
        self.tick_s = tick_s
        self._due: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.late_releases = 0  # waits released LATE_RELEASE_S or more after they fell due
        self._starting: deque[tuple[float, Playout]] = deque()  # streams opened, in order

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="playout-clock")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, _, fut in self._due:
            fut.cancel()
        self._due.clear()

    def stream(self) -> Playout:
        playout = Playout(self)
        now = time.monotonic()
        self._prune(now)  # here too: a clock nobody asks about keeps no more than STARTING_FOR_S of streams
        self._starting.append((now, playout))
        return playout

    def _prune(self, now: float) -> None:
        since = now - STARTING_FOR_S
        starting = self._starting
        while starting and (starting[0][0] < since or starting[0][1].frames_sent):
            starting.popleft()

    def pending_starts(self) -> int:
        """Streams opened in the last STARTING_FOR_S that have not sent a frame yet."""
        self._prune(time.monotonic())
        return sum(1 for _, p in self._starting if not p.frames_sent)

    def _wait_until(self, when: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._due, (when, next(self._seq), fut))
        self._pending.set()
        return fut

    async def _run(self) -> None:
        while True:
            if not self._due:
                self._pending.clear()
                await self._pending.wait()
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                when, _, fut = heapq.heappop(self._due)
                if now - when >= LATE_RELEASE_S:
                    self.late_releases += 1
                if not fut.done():
                    fut.set_result(None)
            if self._due:
                # A new wait is always ~refill_s away, never before the earliest one: sleep until that,
                # but at least one tick so the waits that fall due together are released together.
                await asyncio.sleep(max(self.tick_s, self._due[0][0] - now))


class Playout:
    """The play-head of one outbound stream."""

    __slots__ = ("_clock", "frames_sent", "play_end")

    def __init__(self, clock: PlayoutClock) -> None:
        self._clock = clock
        self.play_end = 0.0
        self.frames_sent = 0

    def sent(self) -> None:
        """Account for one 20 ms frame handed to the socket."""
        now = time.monotonic()
        self.play_end = (self.play_end if self.play_end > now else now) + self._clock.frame_s
        self.frames_sent += 1

    def has_room(self) -> bool:
        """Under the window: the next frame may go now (a check that allocates nothing, for the hot path)."""
        return self.play_end - time.monotonic() < self._clock.ahead_s

    async def room(self) -> None:
        """Return at once while under the window; otherwise wait for the clock to make room."""
        ahead = self.play_end - time.monotonic()
        if ahead < self._clock.ahead_s:
            return
        await self._clock._wait_until(self.play_end - self._clock.ahead_s + self._clock.refill_s)

    def cleared(self) -> None:
        """Twilio dropped the buffered audio (`clear`): nothing is ahead any more."""
        self.play_end = 0.0
