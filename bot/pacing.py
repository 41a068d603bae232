"""Per-channel pacing of message sends and edits.

Discord allows about five message edits per five seconds in a channel, and
several replies may stream in one channel at once, so the budget belongs to the
channel, not to a message. Waiters are served in arrival order.
"""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from typing import Callable

WINDOW = 5.0


class ChannelPacer:
    def __init__(self, per_window: int, window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_window = per_window
        self.window = window
        self.clock = clock
        self._stamps: dict[int, deque[float]] = defaultdict(deque)
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def acquire(self, channel_id: int) -> None:
        """Wait until this channel may take one more send or edit, and count it."""
        async with self._locks[channel_id]:
            stamps = self._stamps[channel_id]
            while True:
                now = self.clock()
                while stamps and now - stamps[0] >= self.window:
                    stamps.popleft()
                if len(stamps) < self.per_window:
                    stamps.append(now)
                    return
                await asyncio.sleep(self.window - (now - stamps[0]) + 0.001)

    def used(self, channel_id: int) -> int:
        now = self.clock()
        return sum(1 for s in self._stamps[channel_id] if now - s < self.window)
