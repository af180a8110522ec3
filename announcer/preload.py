"""SDK modules kept off the way to listening (a start imports only what serving needs), loaded later in a
worker thread: the event loop keeps serving while they import, and every user waits for the one load."""

from __future__ import annotations

import asyncio
import importlib


class Preload:
    """`await preload()` returns once `modules` are imported: the first call starts the import in a thread,
    later ones wait for that same import (an import error is raised to each of them)."""

    def __init__(self, *modules: str) -> None:
        self._modules = modules
        self._task: asyncio.Task[None] | None = None
        self.done = False

    async def __call__(self) -> None:
        if self.done:
            return
        if self._task is None:
            self._task = asyncio.create_task(self._load(), name=f"preload-{self._modules[0]}")
        await asyncio.shield(self._task)  # one waiter cancelled leaves the load to the others

    async def _load(self) -> None:
        for name in self._modules:
            await asyncio.to_thread(importlib.import_module, name)
        self.done = True
