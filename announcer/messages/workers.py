"""The thread that renders templates for API requests and schedule fires, off the event loop.

Rendering is CPU work in Python: on the event loop, one expensive template (or a 10,000-recipient
alert) would hold every live call's audio. One worker thread is enough, and better than more: Python
runs one thread at a time, so a second worker would not render faster, only take the interpreter from
the event loop twice as often. Twenty abusive requests at once therefore queue here, each stopped by its
own budget (`limits.RENDER_CPU_S`), instead of competing with the calls.

The thread also yields to the event loop: a long render pauses every few milliseconds (`budget.RUN_S`),
and the thread runs at a lower CPU priority than the rest of the process (RENDER_NICE), so on a busy
machine the loop, and with it every live call's next frame, gets a core first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

RENDER_THREADS = 1
RENDER_NICE = 10  # added to the render thread's nice value (Linux: per thread)
# The longest a request waits for its turn and its render (wall clock). The render itself stops within
# its CPU budget; this bounds the wait behind others when the thread is busy.
RENDER_WAIT_S = 30.0


class RenderBusy(Exception):
    """The render thread did not get to this work within RENDER_WAIT_S."""


class RenderPool:
    """Owned by the application's lifecycle (app.py): made at start, shut down at the end."""

    def __init__(self, threads: int = RENDER_THREADS, wait_s: float = RENDER_WAIT_S) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="render", initializer=_lower_priority
        )
        self._wait_s = wait_s

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in the render thread; its exception is raised here."""
        future = self._executor.submit(fn, *args, **kwargs)
        try:
            async with asyncio.timeout(self._wait_s):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            future.cancel()  # dropped if it has not started; a running render ends by its own budget
            raise RenderBusy(f"no render thread was free within {self._wait_s:.0f} s") from None

    async def close(self) -> None:
        """Wait for the work in hand (each piece ends within its budget); drop what has not started."""
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


def _lower_priority() -> None:
    """In the render thread, when it starts: on Linux a thread's nice value is its own; elsewhere this
    may be refused (or apply to the whole process: then it is not done), and renders run as they are."""
    if not hasattr(os, "setpriority") or threading.get_native_id() == os.getpid():
        return
    with contextlib.suppress(OSError):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + RENDER_NICE)
