"""Which reply is running in which session, shared by every ChatSession of the process.

One generation per (user, session). A message that arrives while the model is
producing text is ignored; one that arrives while the reply waits on a tool
cancels that reply and takes its place. All of this runs on the event loop, so
a check and the claim that follows it cannot interleave with another message.
"""
from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any

from .outbox import Outbox

Key = tuple[str, str]


class Phase(enum.Enum):
    STREAMING = "streaming"  # waiting on, or reading, the model
    TOOL = "tool"  # waiting on a tool result


@dataclass(eq=False)
class Generation:
    key: Key
    previous: "Generation | None" = None
    phase: Phase = Phase.STREAMING
    replaced: bool = False
    stopped: bool = False  # cancelled on purpose (a Stop button), not replaced by a newer message
    task: "asyncio.Task[Any] | None" = None
    outbox: Outbox = field(default_factory=Outbox)  # what its turn reports, on the way to the caller

    @property
    def running(self) -> bool:
        return self.task is None or not self.task.done()


class SessionRegistry:
    def __init__(self) -> None:
        self._active: dict[Key, Generation] = {}

    def begin(self, key: Key) -> Generation | None:
        """Claim the session for a new reply; None when the message must be ignored."""
        current = self._active.get(key)
        if current is not None and current.running:
            if current.phase is not Phase.TOOL:
                return None
            current.replaced = True
            if current.task is not None:
                current.task.cancel()
            generation = Generation(key, previous=current)
        else:
            generation = Generation(key)
        self._active[key] = generation
        return generation

    def attach(self, generation: Generation, task: "asyncio.Task[Any]") -> None:
        generation.task = task
        task.add_done_callback(lambda _t: self._release(generation))

    def _release(self, generation: Generation) -> None:
        if self._active.get(generation.key) is generation:
            del self._active[generation.key]

    def phase(self, key: Key) -> Phase | None:
        """What the session is doing now, or None when idle."""
        current = self._active.get(key)
        return current.phase if current is not None and current.running else None

    def active(self) -> dict[Key, Phase]:
        return {key: gen.phase for key, gen in self._active.items() if gen.running}

    async def cancel(self, key: Key, *, stopped: bool = False) -> bool:
        """Stop whatever runs in the session (/reset, a Stop button) and wait for it to clean up;
        False when nothing was running. `stopped` tells the turn it was stopped on purpose."""
        current = self._active.get(key)
        if current is None or current.task is None or current.task.done():
            return False
        current.stopped = current.stopped or stopped
        current.task.cancel()
        await asyncio.gather(current.task, return_exceptions=True)
        return True
