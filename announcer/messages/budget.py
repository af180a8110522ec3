"""The work one render may do: a CPU deadline, loop turns, steps and characters made, counted by the
sandbox's hooks (calls, lookups, checked operators, every turn of a loop) as the template runs.

A render runs in one thread from start to end, so the budget in force is kept per thread: the hooks find
it without it being passed through Jinja. Outside a render (Jinja folding constants while it compiles)
there is none, and only the size checks apply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from announcer.messages.limits import (
    MAX_LOOP_ITERATIONS,
    MAX_MACRO_DEPTH,
    MAX_PRODUCED_CHARS,
    MAX_STEPS,
    RENDER_CPU_S,
    LimitExceeded,
)


class _Local(threading.local):
    budget: Budget | None = None


_local = _Local()


# A render that has run this long (wall clock) sleeps for PAUSE_S before it goes on. The event loop
# shares the interpreter with the render thread: without a pause it gets the interpreter back only when
# Python forces a switch (every 5 ms, once per system call the loop makes), and a live call's next frame
# waits behind the render. Ordinary renders take ~20 microseconds and never pause; an expensive one
# (refused at its CPU limit) takes about a third longer in wall time, none longer in CPU time.
RUN_S = 0.002
PAUSE_S = 0.001


class Budget:
    """What is left of one render's allowance. Cheap to check: every hook calls `step`."""

    __slots__ = (
        "_cpu_check_at",
        "_cpu_deadline",
        "_next_at",
        "_pause_at",
        "cpu_s",
        "iterations",
        "macro_depth",
        "produced",
        "steps",
    )

    def __init__(self, cpu_s: float = RENDER_CPU_S, cpu_now: float | None = None) -> None:
        """`cpu_now`: this thread's CPU time (`time.thread_time()`), when the caller has it at hand."""
        self.cpu_s = cpu_s
        self.steps = 0
        self.iterations = 0
        self.produced = 0
        self.macro_depth = 0
        self._cpu_deadline = (time.thread_time() if cpu_now is None else cpu_now) + cpu_s
        # Reading the thread's CPU clock is a system call; the wall clock is not. CPU time never runs
        # ahead of wall time, so the CPU clock is read only once the wall clock says it may be due.
        now = time.perf_counter()
        self._cpu_check_at = now + cpu_s
        self._pause_at = now + RUN_S
        self._next_at = min(self._cpu_check_at, self._pause_at)

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise LimitExceeded(
                "steps", f"the template does too much work: more than {MAX_STEPS:,} calls and lookups"
            )
        if time.perf_counter() >= self._next_at:
            self._due()

    def _due(self) -> None:
        """The wall clock passed the next pause or the next look at the CPU clock."""
        if time.perf_counter() >= self._pause_at:
            time.sleep(PAUSE_S)
            self._pause_at = time.perf_counter() + RUN_S
        now = time.perf_counter()
        if now >= self._cpu_check_at:
            left = self._cpu_deadline - time.thread_time()
            if left <= 0:
                raise LimitExceeded(
                    "cpu time", f"the template takes more than {self.cpu_s * 1000:.0f} ms of CPU to render"
                )
            self._cpu_check_at = now + left
        self._next_at = min(self._cpu_check_at, self._pause_at)

    def produce(self, size: int) -> None:
        """An operation made a value of `size` characters (or items)."""
        self.produced += size
        if self.produced > MAX_PRODUCED_CHARS:
            raise LimitExceeded(
                "characters made",
                f"the template makes more than {MAX_PRODUCED_CHARS:,} characters in all while rendering",
            )
        self.step()

    def turns(self, count: int) -> None:
        """`count` more loop turns."""
        self.iterations += count
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise LimitExceeded(
                "loop iterations",
                f"the template's loops run more than {MAX_LOOP_ITERATIONS:,} times in all",
            )

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """`iterable`, each turn counted and the deadline checked (a loop body may call nothing)."""
        try:
            size = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:  # known up front: refuse before the first turn rather than after 20,000
            if self.iterations + size > MAX_LOOP_ITERATIONS:
                self.turns(size)
        for item in iterable:
            self.turns(1)
            self.step()
            yield item

    @contextmanager
    def macro_call(self) -> Iterator[None]:
        self.macro_depth += 1
        try:
            if self.macro_depth > MAX_MACRO_DEPTH:
                raise LimitExceeded(
                    "macro depth", f"macros call each other more than {MAX_MACRO_DEPTH} deep (recursion?)"
                )
            yield
        finally:
            self.macro_depth -= 1


def current() -> Budget | None:
    """The budget of the render running in this thread, if any."""
    return _local.budget


def swap(budget: Budget | None) -> Budget | None:
    """Make `budget` the one the sandbox's hooks charge in this thread; returns the one it replaces
    (restore it when the render ends). A plain function: it runs twice per render."""
    outer = _local.budget
    _local.budget = budget
    return outer
