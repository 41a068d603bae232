"""Per-key asyncio locks that disappear when nobody holds or waits for them.

Sandboxes are locked by name and users by id; a dict of locks that kept every
key ever seen would grow with every conversation the bot has had.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Hashable


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._holders: dict[Hashable, int] = {}  # holding or waiting

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._holders[key] = self._holders.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._holders[key] -= 1
            if not self._holders[key]:
                del self._holders[key]
                del self._locks[key]

    def busy(self, key: Hashable) -> bool:
        """Someone holds or waits for this key's lock."""
        return key in self._holders

    def held(self) -> list[Hashable]:
        """The keys held or waited for now."""
        return list(self._holders)

    def __len__(self) -> int:
        return len(self._locks)
