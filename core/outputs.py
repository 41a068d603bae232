"""Whole outputs of commands whose copy for the model was cut, kept a while for the user to download.

Bounded in all (oldest go first), in memory: a restart forgets them, and the reply's button then
says so. Each one belongs to the conversation that ran it.
"""
from __future__ import annotations

import uuid
from collections import OrderedDict

from .registry import Key

STORE_BUDGET = 64 * 1024 ** 2  # bytes of kept outputs across the process


class OutputStore:
    def __init__(self, budget: int = STORE_BUDGET) -> None:
        self.budget = budget
        self._kept: OrderedDict[str, tuple[Key, bytes]] = OrderedDict()
        self._size = 0

    def keep(self, owner: Key, data: bytes) -> str:
        """Keep `data` for `owner`; the id to ask for it with."""
        output_id = uuid.uuid4().hex
        self._kept[output_id] = (owner, data)
        self._size += len(data)
        while self._size > self.budget and len(self._kept) > 1:
            _, (_, dropped) = self._kept.popitem(last=False)
            self._size -= len(dropped)
        return output_id

    def get(self, output_id: str, owner: Key) -> bytes | None:
        """The output, if still kept and `owner`'s; None otherwise."""
        found = self._kept.get(output_id)
        if found is None or found[0] != owner:
            return None
        return found[1]

    def forget(self, owner: Key) -> int:
        """Drop every output kept for `owner` (its conversation was deleted); the number dropped."""
        gone = [output_id for output_id, (key, _) in self._kept.items() if key == owner]
        for output_id in gone:
            _, data = self._kept.pop(output_id)
            self._size -= len(data)
        return len(gone)
