"""USER_MESSAGES_PER_MINUTE: how many messages one person may send in a minute, all conversations together.

Past it a message is neither stored nor answered, and the person is told so in one line (once:
the messages after it while they are still over are only marked), instead of the message joining
a queue that one person's flood would fill (issue 17: 50 messages in 2 s became 46 model turns).
Only answered messages count, so someone over the rate gets in again as soon as their oldest
message of the last minute is a minute old.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

WINDOW = 60.0
TOO_FAST = ("-# ✋ You're sending messages faster than I can answer (at most {n} a minute here); "
            "send this one again in {s} s.")


@dataclass(frozen=True)
class TooFast:
    """A message over its sender's rate: not answered."""

    per_minute: int
    wait: float  # seconds until the person may send again
    told: bool  # they were already told since they went over: a mark on the message will do

    @property
    def line(self) -> str:
        return TOO_FAST.format(n=self.per_minute, s=max(1, math.ceil(self.wait)))


class MessageRate:
    """Each person's answered messages of the last minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sent: dict[str, deque[float]] = {}
        self._told: set[str] = set()
        self._swept = clock()

    def admit(self, person: str, per_minute: int) -> TooFast | None:
        """Count a message of `person` if they are under `per_minute` (0: no limit); else what to tell them."""
        if per_minute <= 0:
            return None
        now = self._clock()
        if now - self._swept >= WINDOW:
            self._sweep(now)
        sent = self._sent.setdefault(person, deque())
        while sent and now - sent[0] >= WINDOW:
            sent.popleft()
        if len(sent) < per_minute:
            sent.append(now)
            self._told.discard(person)
            return None
        told = person in self._told
        self._told.add(person)
        return TooFast(per_minute, WINDOW - (now - sent[-per_minute]), told)

    def _sweep(self, now: float) -> None:
        """Forget people whose last message is over a minute old: the map holds only the last minute's."""
        self._swept = now
        for person in [p for p, sent in self._sent.items() if not sent or now - sent[-1] >= WINDOW]:
            del self._sent[person]
            self._told.discard(person)
