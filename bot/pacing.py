"""Per-channel pacing of message sends and edits.

Discord allows about five message edits per five seconds in a channel, and
several replies may stream in one channel at once, so the budget belongs to the
channel, not to a message. Waiters are served in arrival order. A channel's
entry is dropped once it has been quiet for a whole window, so a bot in many
channels keeps only the busy ones in memory.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable

WINDOW = 5.0


class ChannelPacer:
    def __init__(self, per_window: int, window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_window = per_window
        self.window = window
        self.clock = clock
        self._stamps: dict[int, deque[float]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._swept = clock()

    async def acquire(self, channel_id: int) -> None:
        """Wait until this channel may take one more send or edit, and count it."""
        self._sweep()
        lock = self._locks.setdefault(channel_id, asyncio.Lock())
        async with lock:
            stamps = self._stamps.setdefault(channel_id, deque())
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
        return sum(1 for s in self._stamps.get(channel_id, ()) if now - s < self.window)

    @property
    def tracked(self) -> int:
        """Channels held in memory."""
        return len(self._locks)

    def _sweep(self) -> None:
        """Forget channels quiet for a whole window (at most once a window, so acquire stays O(1))."""
        now = self.clock()
        if now - self._swept < self.window:
            return
        self._swept = now
        for channel_id in list(self._locks):
            stamps = self._stamps.get(channel_id)
            if not self._locks[channel_id].locked() and (not stamps or now - stamps[-1] >= self.window):
                del self._locks[channel_id]
                self._stamps.pop(channel_id, None)
