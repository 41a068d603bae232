"""Admission control: at most N at once across the process, and a fair share of them for each person.

Two gates use it: commands (MAX_RUNNING_COMMANDS, at most MAX_RUNNING_PER_USER of one person's at
once) and requests to the model (MAX_MODEL_REQUESTS). Those who wait are served by person, round
robin: a free slot goes to the waiting person with the fewest running, and among those to the one
served longest ago (someone not served lately first, in the order they came); each person's own
waiters go in their arrival order. So a newcomer waits behind at most one of each other person's,
never behind anyone's backlog. The command gate also keeps its last free slot for someone with
nothing running (`keep_one_free`): commands are long and cannot be paused, and without it two
people's backlogs could fill every slot for minutes.

Each waiter is told how many are ahead of it (those running, and those the order above serves
first) whenever that changes, so a reply can show it is queued instead of looking stuck. Nothing
is dropped: a waiter leaves only when it gets its turn or its turn is cancelled.
"""
from __future__ import annotations

import asyncio
import heapq
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

OnWait = Callable[[int], None]
REMEMBERED = 1024  # people whose last turn is remembered for the order, beyond those running or waiting


class _Waiter:
    __slots__ = ("seq", "admitted", "wake", "on_wait", "told")

    def __init__(self, seq: int, on_wait: OnWait | None) -> None:
        self.seq = seq  # arrival order
        self.admitted = False
        self.wake: asyncio.Future[None] | None = None
        self.on_wait = on_wait
        self.told: int | None = None  # the last "ahead" it heard


class _Person:
    __slots__ = ("key", "running", "queue")

    def __init__(self, key: str) -> None:
        self.key = key
        self.running = 0
        self.queue: deque[_Waiter] = deque()


class FairGate:
    """At most `limit` holders at once; at most `per_person` of one person's (0: no cap of its own)."""

    def __init__(self, limit: int, *, per_person: int = 0, keep_one_free: bool = False) -> None:
        self.limit = max(1, limit)
        self.per_person = per_person
        self.keep_one_free = keep_one_free
        self.running = 0
        self.waiting = 0
        self._people: dict[str, _Person] = {}  # those running or waiting
        self._served: OrderedDict[str, int] = OrderedDict()  # person -> when last admitted, oldest first
        self._clock = 0

    def running_for(self, person: str) -> int:
        """How many of this person's hold a slot now."""
        found = self._people.get(person)
        return found.running if found is not None else 0

    @asynccontextmanager
    async def slot(self, person: str, on_wait: OnWait | None = None) -> AsyncIterator[None]:
        """Hold one of the `limit` slots for `person`.

        While queued, `on_wait(n)` hears "n ahead" each time n changes, and `on_wait(0)` once when
        the wait is over; one that never waited hears nothing.
        """
        await self._acquire(person, on_wait)
        try:
            yield
        finally:
            self._release(person)

    async def _acquire(self, key: str, on_wait: OnWait | None) -> None:
        person = self._people.get(key)
        if person is None:
            person = self._people[key] = _Person(key)
        waiter = _Waiter(self._tick(), on_wait)
        person.queue.append(waiter)
        self.waiting += 1
        self._dispatch()
        if waiter.admitted:
            return
        loop = asyncio.get_running_loop()
        try:
            while not waiter.admitted:
                waiter.wake = loop.create_future()
                await waiter.wake
            if on_wait is not None:
                on_wait(0)  # its turn: nothing ahead any more
        except BaseException:
            if waiter.admitted:  # admitted, then cancelled before it could run: pass the slot on
                self._release(key)
            else:
                person.queue.remove(waiter)
                self.waiting -= 1
                self._forget(key)
                self._dispatch()  # those behind it move up
            raise

    def _release(self, key: str) -> None:
        self._people[key].running -= 1
        self.running -= 1
        self._forget(key)
        self._dispatch()

    def _dispatch(self) -> None:
        """Admit whom the order allows into the free slots, then tell the rest where they stand."""
        while self.running < self.limit:
            person = min((p for p in self._people.values() if p.queue), key=self._rank, default=None)
            if person is None or not self._may_start(person):
                break  # the first in line may not start: nobody behind it may (they run as many or more)
            waiter = person.queue.popleft()
            self.waiting -= 1
            person.running += 1
            self.running += 1
            self._served[person.key] = self._tick()
            self._served.move_to_end(person.key)
            waiter.admitted = True
            if waiter.wake is not None and not waiter.wake.done():
                waiter.wake.set_result(None)
        self._announce()

    def _may_start(self, person: _Person) -> bool:
        if self.per_person and person.running >= self.per_person:
            return False
        # A person's second and later hold a slot only while one stays free for someone with none.
        return not (self.keep_one_free and person.running and self.running + 1 >= self.limit)

    def _rank(self, person: _Person) -> tuple[int, bool, int, int]:
        served = self._served.get(person.key)
        return person.running, served is not None, served or 0, person.queue[0].seq

    def _announce(self) -> None:
        """Each waiter's place: those running, and those the order would admit before it were slots
        to free one at a time now (nobody new arriving, nobody capped)."""
        if not self.waiting:
            return
        heap = [(*self._rank(p), n, 0, p) for n, p in enumerate(self._people.values()) if p.queue]
        heapq.heapify(heap)
        clock, position = self._clock, 0
        while heap:
            running, _, _, _, n, index, person = heapq.heappop(heap)
            waiter = person.queue[index]
            ahead = self.running + position
            if waiter.on_wait is not None and waiter.told != ahead:
                waiter.told = ahead
                waiter.on_wait(ahead)
            position += 1
            if index + 1 < len(person.queue):
                clock += 1  # as if admitted now: it goes behind everyone served before
                heapq.heappush(heap, (running + 1, True, clock, person.queue[index + 1].seq, n, index + 1, person))

    def _forget(self, key: str) -> None:
        """A person with nothing running or waiting leaves; when they were last served is kept a while."""
        person = self._people.get(key)
        if person is not None and not person.running and not person.queue:
            del self._people[key]
        if len(self._served) > REMEMBERED:  # forget the longest idle: they rank first again, as they nearly did
            for old in list(self._served)[:len(self._served) - REMEMBERED]:
                if old not in self._people:
                    del self._served[old]

    def _tick(self) -> int:
        self._clock += 1
        return self._clock
