"""Admission control for commands: at most N run at once across the process.

The rest wait in arrival order, and each waiter is told how many commands are
ahead of it whenever that changes, so a reply can show it is queued instead of
looking stuck. Nothing is dropped: a waiter leaves the queue only when it gets
its turn or its turn is cancelled.
"""
from __future__ import annotations

import asyncio
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable


class _Waiter:
    __slots__ = ("admitted", "wake")

    def __init__(self) -> None:
        self.admitted = False
        self.wake: asyncio.Future[None] | None = None


class CommandGate:
    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.running = 0
        self._queue: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def ahead(self, waiter: _Waiter) -> int:
        return self.running + self._queue.index(waiter)

    @asynccontextmanager
    async def slot(self, on_wait: Callable[[int], None] | None = None) -> AsyncIterator[None]:
        """Hold one of the `limit` slots.

        While queued, `on_wait(n)` hears "n commands ahead" each time n changes, and
        `on_wait(0)` once when the wait is over; a command that never waited hears nothing.
        """
        await self._acquire(on_wait)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, on_wait: Callable[[int], None] | None) -> None:
        if self.running < self.limit and not self._queue:
            self.running += 1
            return
        waiter = _Waiter()
        self._queue.append(waiter)
        loop = asyncio.get_running_loop()
        told = None
        try:
            while not waiter.admitted:
                ahead = self.ahead(waiter)
                if on_wait is not None and ahead != told:
                    on_wait(ahead)
                    told = ahead
                waiter.wake = loop.create_future()
                await waiter.wake
            if on_wait is not None:
                on_wait(0)  # its turn: nothing ahead any more
        except BaseException:
            if waiter.admitted:  # admitted, then cancelled before it could run: pass the slot on
                self._release()
            else:
                self._queue.remove(waiter)
                self._wake_all()
            raise

    def _release(self) -> None:
        self.running -= 1
        while self.running < self.limit and self._queue:
            waiter = self._queue.popleft()
            waiter.admitted = True
            self.running += 1
            _wake(waiter)
        self._wake_all()  # everyone still waiting moved up

    def _wake_all(self) -> None:
        for waiter in self._queue:
            _wake(waiter)


def _wake(waiter: _Waiter) -> None:
    if waiter.wake is not None and not waiter.wake.done():
        waiter.wake.set_result(None)
