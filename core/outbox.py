"""How a turn's events cross from its task to the caller: in batches.

A streamed reply comes as hundreds of small pieces. Handing each to the caller on its own (one
queue hop, then one step of every async generator between the turn and the caller) cost more than
reading it from the model did. Here the turn appends to a list and wakes the caller once; the
caller takes whatever has gathered meanwhile, and pieces in a row come out as one event. The first
piece wakes the caller at once, as a queue would: batching only happens while the caller is busy.
"""
from __future__ import annotations

import asyncio
from typing import Any

from .events import TextDelta, ThinkingDelta

Piece = type[TextDelta] | type[ThinkingDelta]


class Outbox:
    """One generation's events, from its turn (`put`, `piece`) to its caller (`take`); one loop."""

    def __init__(self) -> None:
        self._items: list[Any] = []  # events, and (kind, pieces) for a run of streamed pieces
        self._run: tuple[Piece, list[str]] | None = None  # the run still open at the end of _items
        self._waiter: asyncio.Future[None] | None = None

    def put(self, event: Any) -> None:
        """An event, for the caller as it is."""
        self._items.append(event)
        self._run = None
        self._wake()

    def piece(self, kind: Piece, text: str) -> None:
        """A piece of streamed text (TextDelta) or thinking (ThinkingDelta): it joins the pieces of
        the same kind just before it that the caller has not taken yet."""
        run = self._run
        if run is not None and run[0] is kind:
            run[1].append(text)
            return
        self._run = (kind, [text])
        self._items.append(self._run)
        self._wake()

    async def take(self) -> list[Any]:
        """Everything put since the last take, in order, waiting for something when nothing is."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._items, self._run = self._items, [], None
        return [item[0]("".join(item[1])) if type(item) is tuple else item for item in items]

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
