"""Per-channel pacing with a controllable clock."""
from __future__ import annotations

import asyncio

import pytest

from bot.pacing import ChannelPacer

pytestmark = pytest.mark.asyncio


async def test_a_channel_gets_at_most_n_per_window_and_others_are_independent() -> None:
    pacer = ChannelPacer(per_window=3, window=0.5)
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    async def edit() -> None:
        await pacer.acquire(1)
        stamps.append(loop.time())

    start = loop.time()
    await asyncio.gather(*[edit() for _ in range(7)])
    for i in range(len(stamps) - 3):
        assert stamps[i + 3] - stamps[i] >= 0.5 - 0.01  # never four within one window
    assert stamps[-1] - start >= 1.0  # 7 edits at 3 per 0.5 s need at least two waits
    other = loop.time()
    await pacer.acquire(2)
    assert loop.time() - other < 0.05  # channel 2 was never throttled by channel 1


async def test_quiet_channels_are_forgotten() -> None:
    now = [0.0]
    pacer = ChannelPacer(per_window=4, window=5.0, clock=lambda: now[0])
    for channel in range(1000):
        await pacer.acquire(channel)
    assert pacer.tracked == 1000
    now[0] = 4.0  # still within the window: nothing may be forgotten yet
    await pacer.acquire(5000)
    assert pacer.tracked == 1001 and pacer.used(7) == 1
    now[0] = 8.5  # everyone but 5000 has been quiet for a whole window
    await pacer.acquire(1)
    assert pacer.tracked == 2 and pacer.used(1) == 1 and pacer.used(5000) == 1
