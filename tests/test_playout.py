"""The shared playout clock: a stream runs at most `ahead_s` ahead of real time."""

from __future__ import annotations

import asyncio
import time

from announcer.telephony.playout import FRAME_S, PlayoutClock


async def test_first_window_goes_at_once_then_real_time() -> None:
    clock = PlayoutClock(ahead_s=0.2, refill_s=0.06, tick_s=0.005)
    clock.start()
    try:
        playout = clock.stream()
        t0 = time.monotonic()
        sent_at: list[float] = []
        for _ in range(30):  # 0.6 s of audio
            await playout.room()
            playout.sent()
            sent_at.append(time.monotonic() - t0)
        # the first 10 frames (0.2 s) leave without waiting
        assert sent_at[9] < 0.05
        # no faster than it plays: frame i leaves at (i * 20 ms) - ahead at the earliest
        for i, at in enumerate(sent_at):
            assert at >= i * FRAME_S - 0.2 - 0.005
        assert playout.frames_sent == 30
    finally:
        await clock.stop()


async def test_many_streams_share_one_clock() -> None:
    clock = PlayoutClock(ahead_s=0.1, refill_s=0.04, tick_s=0.005)
    clock.start()
    try:

        async def stream() -> int:
            playout = clock.stream()
            for _ in range(15):
                await playout.room()
                playout.sent()
            return playout.frames_sent

        results = await asyncio.wait_for(asyncio.gather(*(stream() for _ in range(200))), timeout=10)
        assert results == [15] * 200
    finally:
        await clock.stop()
