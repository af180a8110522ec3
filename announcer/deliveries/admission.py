"""Admission control: the dispatcher places a call only when this process can serve it (design.md,
"Never dial more than we can speak to").

`TWILIO_CPS` says how fast the account may dial, not how fast this process can set calls up and speak to
them: each call costs CPU over its whole life (the create, three status callbacks, the stream, marks, the
hang-up), and a process dialing faster than it can pay answers people with silence. So the rate the
dispatcher dials at follows the process's measured headroom:

- the event loop's lag: a sampler task asks to wake every SAMPLE_S and measures how late it woke; every
  piece of work of every call waits that long for its turn;
- frames sent late: waits of the playout clock released later than LATE_RELEASE_S (telephony/playout.py);
- streams starting: media streams opened that have not spoken yet (their first frame is owed);
- the database's write backlog: how long what is queued for the store's journal waits to commit (a
  probe flushes it every window). A stream's token is checked there before it speaks, and every call's
  trail goes there: a backlog is a first frame that much later, or a stream that never starts.

`Controller` (pure: samples in, a rate out) is additive-increase / multiplicative-decrease: each
window of WINDOW_S it cuts the rate by DECREASE (at most once in CUT_EVERY windows) when the loop lagged
more than LAG_HIGH_S, a frame went out late or the writes waited more than BACKLOG_HIGH_S, holds it when
the lag was over LAG_LOW_S, the writes waited more than BACKLOG_LOW_S or too many streams wait for their
first frame, and otherwise raises it by INCREASE of itself (at least MIN_STEP). It never goes above
`TWILIO_CPS` (the account's limit) nor below MIN_RATE (a process that dials nothing learns nothing). A
cut halves the remaining room quickly; the slow rise finds the edge again without overshooting far,
since a call's cost arrives over the seconds after it is placed (ringing, then the stream).

`Admission` runs the sampler, feeds the controller, and is the dispatcher's gate: `admit()` returns when a
call may be placed at the allowed rate. `MAX_CONCURRENT_CALLS` stays the dispatcher's (it counts calls in
the database); `/healthz` reports which of the three limits holds the rate, and the log says when the rate
changes materially.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from announcer.store.journal import Journal
from announcer.telephony.playout import PlayoutClock

log = logging.getLogger(__name__)

SAMPLE_S = 0.02  # the lag sampler's period
WINDOW_S = 0.25  # the controller decides once per window, on the window's worst lag
LAG_HIGH_S = 0.05  # a loop this late is overloaded: a 20 ms frame waits longer than two frames
LAG_LOW_S = 0.02  # below this the process has room for more calls
BACKLOG_HIGH_S = 0.4  # writes committed this late: a stream's start waits as long for its token
BACKLOG_LOW_S = 0.15
DECREASE = 0.7
CUT_EVERY = 4  # windows: a cut shows in the measures only after the calls already placed have been
# served, so one overload is cut for once a second, not four times (as TCP cuts once a round trip)
INCREASE = 0.05  # of the current rate per window (~+20 % a second), at least MIN_STEP
MIN_STEP = 1.0
MIN_RATE = 1.0
START_RATE = 20.0  # a process starts here (or at TWILIO_CPS if lower) and climbs to what it can serve
PENDING_PER_RATE_S = 2.0  # streams waiting for a first frame beyond this many seconds of the rate: hold
PENDING_SLACK = 10
LOG_CHANGE = 0.25  # the log says when the rate moved by a quarter since it last said

LimitedBy = Literal["twilio_cps", "headroom"]


@dataclass(frozen=True)
class Sample:
    """What one window measured."""

    lag_s: float  # the worst lag of the loop in the window
    late_frames: int  # playout waits released late in the window
    pending_starts: int  # streams open that have not sent a frame yet (now)
    backlog_s: float = 0.0  # how long a write waited to commit (the worst probe of the window, or the
    # one still waiting)


@dataclass(frozen=True)
class Decision:
    rate: float
    limited_by: LimitedBy
    why: str


class Controller:
    """AIMD from the process's headroom to a dialing rate, never above `ceiling` (TWILIO_CPS)."""

    def __init__(self, ceiling: float, *, start: float = START_RATE) -> None:
        self.ceiling = ceiling
        self.rate = max(min(start, ceiling), min(MIN_RATE, ceiling))
        self._since_cut = CUT_EVERY
        self.decision = self._decide("starting")

    def _decide(self, why: str) -> Decision:
        at_ceiling = self.rate >= self.ceiling
        return Decision(
            self.rate, "twilio_cps" if at_ceiling else "headroom", "TWILIO_CPS" if at_ceiling else why
        )

    def step(self, sample: Sample) -> Decision:
        floor = min(MIN_RATE, self.ceiling)
        self._since_cut += 1
        if sample.lag_s > LAG_HIGH_S or sample.late_frames or sample.backlog_s > BACKLOG_HIGH_S:
            cut = self._since_cut >= CUT_EVERY
            if cut:
                self.rate = max(floor, self.rate * DECREASE)
                self._since_cut = 0
            if sample.late_frames:
                why = f"{sample.late_frames} frame waits released late"
            elif sample.backlog_s > BACKLOG_HIGH_S:
                why = f"database writes {sample.backlog_s * 1000:.0f} ms behind"
            else:
                why = f"event loop {sample.lag_s * 1000:.0f} ms late"
            if not cut:
                why += " (cut already)"
        elif sample.lag_s > LAG_LOW_S:
            why = f"event loop {sample.lag_s * 1000:.0f} ms late (holding)"
        elif sample.backlog_s > BACKLOG_LOW_S:
            why = f"database writes {sample.backlog_s * 1000:.0f} ms behind (holding)"
        elif sample.pending_starts > self.rate * PENDING_PER_RATE_S + PENDING_SLACK:
            why = f"{sample.pending_starts} streams waiting for their first frame (holding)"
        else:
            self.rate = min(self.ceiling, self.rate + max(MIN_STEP, self.rate * INCREASE))
            why = "room to grow"
        self.decision = self._decide(why)
        return self.decision


class LagSampler:
    """How late the event loop wakes a task that asked to wake every SAMPLE_S: the wait every other
    piece of work of the process sees too. Keeps the worst since it was last read."""

    def __init__(self, period_s: float = SAMPLE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self._clock = clock
        self.worst_s = 0.0
        self.last_s = 0.0

    def take_worst(self) -> float:
        worst, self.worst_s = self.worst_s, 0.0
        return worst

    async def run(self) -> None:
        while True:
            asked = self._clock()
            await asyncio.sleep(self.period_s)
            # libuv rounds timers to whole milliseconds: a millisecond late is on time
            self.last_s = max(0.0, self._clock() - asked - self.period_s)
            self.worst_s = max(self.worst_s, self.last_s)


class Admission:
    """Opened and closed by the app's lifecycle; the dispatcher awaits `admit()` before each create."""

    def __init__(self, cps: float, clock: PlayoutClock, journal: Journal | None = None) -> None:
        self.cps = cps
        self._clock = clock
        self._journal = journal
        self.backlog_s = 0.0  # the last window's
        self._worst_backlog_s = 0.0
        self._probe_since: float | None = None  # a flush under way since then
        self.controller = Controller(cps)
        self.sampler = LagSampler()
        self.lag_s = 0.0  # the last window's worst
        self.pending_starts = 0
        self._tokens = 1.0
        self._at = time.monotonic()
        self._late_seen = clock.late_releases
        self._logged_rate = self.controller.rate
        self._logged_by: LimitedBy = self.controller.decision.limited_by
        self._tasks: list[asyncio.Task[None]] = []
        self.admitted = 0

    @property
    def rate(self) -> float:
        return self.controller.rate

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.sampler.run(), name="admission-lag"),
            asyncio.create_task(self._control(), name="admission-control"),
        ]
        if self._journal is not None:
            self._tasks.append(asyncio.create_task(self._probe(self._journal), name="admission-backlog"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _probe(self, journal: Journal) -> None:
        """How long a write queued now waits to commit: a flush (at once when nothing is queued)."""
        while True:
            started = self._probe_since = time.monotonic()
            await journal.flush()
            self._probe_since = None
            self._worst_backlog_s = max(self._worst_backlog_s, time.monotonic() - started)
            await asyncio.sleep(WINDOW_S)

    def _take_backlog(self) -> float:
        worst, self._worst_backlog_s = self._worst_backlog_s, 0.0
        if self._probe_since is not None:  # still waiting: at least this far behind
            worst = max(worst, time.monotonic() - self._probe_since)
        return worst

    async def _control(self) -> None:
        while True:
            await asyncio.sleep(WINDOW_S)
            self.step()

    def step(self) -> Decision:
        """One window: measure, decide, and say so when the rate moved materially."""
        late = self._clock.late_releases - self._late_seen
        self._late_seen = self._clock.late_releases
        self.lag_s = self.sampler.take_worst()
        self.pending_starts = self._clock.pending_starts()
        self.backlog_s = self._take_backlog()
        decision = self.controller.step(Sample(self.lag_s, late, self.pending_starts, self.backlog_s))
        moved = abs(decision.rate - self._logged_rate) > LOG_CHANGE * self._logged_rate
        if moved or decision.limited_by != self._logged_by:
            log.info(
                "dialing at %.1f calls/s (TWILIO_CPS %g), limited by %s: %s",
                decision.rate,
                self.cps,
                decision.limited_by,
                decision.why,
            )
            self._logged_rate, self._logged_by = decision.rate, decision.limited_by
        return decision

    def _refill(self) -> None:
        now = time.monotonic()
        # One token saved at most: a rate cut holds at once, with no burst saved up while idle.
        self._tokens = min(1.0, self._tokens + (now - self._at) * self.controller.rate)
        self._at = now

    async def admit(self) -> None:
        """Return when one more call may be placed at the rate this process can serve; take its token."""
        while True:
            if self.controller.rate >= self.cps:
                return  # at the account's rate: the dispatcher's own pacing is the limit, not a second one
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                self.admitted += 1
                return
            # The rate may change while we wait: look again at least every window.
            await asyncio.sleep(min(WINDOW_S, (1 - self._tokens) / self.controller.rate))

    def status(self) -> dict[str, object]:
        """For /healthz: the rate found, what holds it, and the measures behind it."""
        d = self.controller.decision
        return {
            "rate_per_s": round(d.rate, 1),
            "twilio_cps": self.cps,
            "limited_by": d.limited_by,
            "why": d.why,
            "loop_lag_ms": round(self.lag_s * 1000, 1),
            "db_backlog_ms": round(self.backlog_s * 1000, 1),
            "pending_starts": self.pending_starts,
            "late_frame_waits": self._clock.late_releases,
        }
