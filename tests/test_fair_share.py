"""A fair share for each person (issue 17, items 2 and 3): the gates' round-robin order, the model's
gate in a real turn, the message rate, and the commands' share against the real Docker engine."""
from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import docker
import pytest

from core import ChatSession, ModelError, Runtime
from core.admission import FairGate
from core.events import Done, ModelQueued, ToolFinished, ToolQueued
from core.rate import MessageRate
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, command_agent, hang, stream_error, text
from tests.test_concurrency import first, turn, wait_until

pytestmark = pytest.mark.asyncio


class Holders:
    """Tasks that take a gate's slot under a name, for a person, and hold it until finished."""

    def __init__(self, gate: FairGate) -> None:
        self.gate = gate
        self.order: list[str] = []  # names in the order they got their slot
        self.heard: dict[str, list[int]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}

    async def start(self, person: str, name: str) -> None:
        self.heard[name], self._done[name] = [], asyncio.Event()

        async def hold() -> None:
            async with self.gate.slot(person, self.heard[name].append):
                self.order.append(name)
                await self._done[name].wait()

        self.tasks[name] = asyncio.create_task(hold())
        await settle()

    async def finish(self, name: str) -> None:
        assert name in self.order, f"{name} does not hold a slot"
        self._done[name].set()
        await self.tasks[name]
        await settle()

    def waiting_ahead(self) -> dict[str, int]:
        """What each waiter heard last."""
        return {n: h[-1] for n, h in self.heard.items() if n not in self.order and h}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- the gate's order ---------------------------------------------------------------------------------
async def test_a_newcomer_is_served_before_anyone_s_backlog_and_is_told_so() -> None:
    holders = Holders(FairGate(1))
    for name in ("a1", "a2", "a3", "a4"):
        await holders.start("alice", name)
    assert holders.order == ["a1"] and holders.waiting_ahead() == {"a2": 1, "a3": 2, "a4": 3}
    await holders.start("bob", "b1")
    await holders.start("carol", "c1")
    # one ahead of bob (alice's running one), not alice's three waiting
    assert holders.waiting_ahead() == {"b1": 1, "c1": 2, "a2": 3, "a3": 4, "a4": 5}
    for name in ("a1", "b1", "c1", "a2", "a3", "a4"):
        await holders.finish(name)
    assert holders.order == ["a1", "b1", "c1", "a2", "a3", "a4"]
    assert holders.heard["b1"] == [1, 0] and holders.heard["c1"] == [2, 1, 0]
    assert holders.heard["a4"] == [3, 4, 5, 4, 3, 2, 1, 0]
    assert holders.heard["a1"] == []  # it never waited
    assert (holders.gate.running, holders.gate.waiting) == (0, 0)


async def test_backlogs_take_turns_and_a_newcomer_waits_behind_one_of_each_at_most() -> None:
    holders = Holders(FairGate(1))
    await holders.start("xavier", "x")
    for person in ("alice", "bob"):
        for n in (1, 2, 3):
            await holders.start(person, f"{person[0]}{n}")
    await holders.finish("x")
    await holders.start("carol", "c1")  # alice's first is running; bob has waited longer than carol
    assert holders.heard["c1"] == [2]
    for name in ("a1", "b1", "c1", "a2", "b2", "a3", "b3"):
        await holders.finish(name)
    assert holders.order == ["x", "a1", "b1", "c1", "a2", "b2", "a3", "b3"]


async def test_n_ahead_is_the_place_the_round_robin_gives() -> None:
    """With one slot, nobody capped and nobody new, each waiter's last "n ahead" is exactly how
    many start before it (the one running, then n - 1 of those waiting)."""
    rng = random.Random(17)
    holders = Holders(FairGate(1))
    await holders.start("zed", "first")
    people = ["ann", "ben", "cid", "dot"]
    for n in range(24):
        await holders.start(rng.choice(people), f"w{n}")
        if n % 7 == 6:  # some are served while others still arrive
            await holders.finish(holders.order[-1])
    told = holders.waiting_ahead()
    running = holders.order[-1]
    await holders.finish(running)
    while len(holders.order) < 25:
        await holders.finish(holders.order[-1])
    started_after = holders.order[holders.order.index(running) + 1:]
    assert {name: started_after.index(name) + 1 for name in told} == told


async def test_one_person_runs_at_most_their_share_and_the_last_slot_waits_for_someone_new() -> None:
    holders = Holders(FairGate(4, per_person=2, keep_one_free=True))
    for person in ("alice", "bob"):
        for n in (1, 2, 3):
            await holders.start(person, f"{person[0]}{n}")
    # alice's two, bob's first; bob's second would take the last free slot
    assert holders.order == ["a1", "a2", "b1"] and holders.gate.running == 3
    await holders.start("carol", "c1")
    assert holders.order[-1] == "c1" and holders.heard["c1"] == []  # carol's command starts at once
    await holders.finish("c1")
    assert holders.order == ["a1", "a2", "b1", "c1"]  # the freed slot stays free for the next newcomer
    await holders.finish("a1")
    assert holders.order[-1] == "a3"  # alice and bob run one each now: alice was served longer ago
    await holders.finish("a2")
    assert holders.order[-1] == "b2"
    await holders.finish("b1")
    assert holders.order[-1] == "b3"
    for name in ("a3", "b2", "b3"):
        await holders.finish(name)
    assert all(h[-1] == 0 for n, h in holders.heard.items() if h)  # every waiter heard its turn come
    assert (holders.gate.running, holders.gate.waiting) == (0, 0)


async def test_a_cancelled_waiter_leaves_and_an_admitted_then_cancelled_one_passes_its_slot_on() -> None:
    gate = FairGate(1)
    holders = Holders(gate)
    held = gate.slot("xavier")
    await held.__aenter__()
    for person, name in (("bob", "b1"), ("carol", "c1"), ("dan", "d1")):
        await holders.start(person, name)
    holders.tasks["c1"].cancel()  # gives up while waiting: those behind it move up
    await settle()
    assert holders.heard["d1"] == [3, 2] and gate.waiting == 2
    await held.__aexit__(None, None, None)  # xavier's slot goes to bob...
    holders.tasks["b1"].cancel()  # ...who is cancelled before he runs: it goes on to dan
    await asyncio.gather(holders.tasks["b1"], holders.tasks["c1"], return_exceptions=True)
    await settle()
    assert holders.order == ["d1"] and holders.tasks["b1"].cancelled() and holders.tasks["c1"].cancelled()
    assert holders.heard["d1"] == [3, 2, 1, 0]
    await holders.finish("d1")
    assert (gate.running, gate.waiting) == (0, 0)


# -- the message rate ---------------------------------------------------------------------------------
async def test_the_message_rate_counts_a_person_across_conversations_and_tells_them_once() -> None:
    now = [1000.0]
    rate = MessageRate(clock=lambda: now[0])
    assert [rate.admit("ann", 3) for _ in range(2)] == [None, None]
    assert rate.admit("bob", 3) is None  # someone else's messages are their own
    now[0] += 20
    assert rate.admit("ann", 3) is None
    over = rate.admit("ann", 3)
    assert over is not None and not over.told and over.line == (
        "-# ✋ You're sending messages faster than I can answer (at most 3 a minute here); "
        "send this one again in 40 s.")
    again = rate.admit("ann", 3)
    assert again is not None and again.told  # said once; the next ones are only marked
    now[0] += 40  # the first two are a minute old: two more fit, not three
    assert [rate.admit("ann", 3) is None for _ in range(3)] == [True, True, False]
    assert rate.admit("ann", 0) is None  # 0: no limit


# -- the model's gate in real turns (fake Ollama, real Docker) ------------------------------------------
async def test_a_turn_waits_for_the_model_behind_another_persons_request_and_says_so(
        runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(hang("Thinking"), text("Your answer."))
    async with ChatSession(user="alice", session="one", runtime=runtime) as alice:
        held = asyncio.create_task(_events(alice, "a long question"))
        await wait_until(lambda: len(fake_ollama.requests) == 1)
        async with ChatSession(user="bob", session="two", runtime=runtime) as bob:
            waiting = asyncio.create_task(_events(bob, "a short one"))
            await wait_until(lambda: runtime.model_gate.waiting == 1)
            assert len(fake_ollama.requests) == 1  # bob's request is not sent while alice's streams
            await alice.stop()  # the slot is let go as alice's request ends (here: stopped)
            events = await waiting
    await asyncio.gather(held, return_exceptions=True)
    assert [e for e in events if isinstance(e, ModelQueued)] == [ModelQueued(1), ModelQueued(0)]
    assert events[-1] == Done("Your answer.") and (runtime.model_gate.running, runtime.model_gate.waiting) == (0, 0)


async def test_a_failed_request_lets_the_model_slot_go(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.fallback = lambda body: (stream_error("Partial", "model runner crashed")
                                         if body["messages"][-1]["content"] == "hi" else text("fine"))
    async with ChatSession(user="alice", session="one", runtime=runtime) as alice, \
            ChatSession(user="bob", session="two", runtime=runtime) as bob:
        failing, other = await asyncio.gather(_events(alice, "hi"), _events(bob, "hello"), return_exceptions=True)
    assert isinstance(failing, ModelError) and other[-1] == Done("fine")
    assert (runtime.model_gate.running, runtime.model_gate.waiting) == (0, 0)


async def _events(chat: ChatSession, message: str) -> list[Any]:
    return [event async for event in chat.events(message)]


# -- commands: a newcomer's echo while two people fill the bot (real Docker) ----------------------------
async def test_a_third_persons_echo_starts_at_once_while_two_people_each_run_three_long_commands(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, max_running_commands=4, command_timeout=30)
    assert settings.max_running_per_user == 2  # the default
    fake_ollama.fallback = command_agent
    async with open_runtime(settings, docker_client) as rt:
        busy = [(person, f"chan{n}") for person in ("alice", "bob") for n in range(3)]
        await asyncio.gather(*(rt.sandboxes.start(p, s) for p, s in [*busy, ("carol", "chan")]))
        load = [asyncio.create_task(turn(rt, p, s, "sleep 20")) for p, s in busy]
        try:
            await wait_until(lambda: rt.terminal.gate.waiting == 3)  # each one's third, and bob's second
            assert rt.terminal.gate.running == 3
            assert sorted(rt.terminal.gate.running_for(p) for p in ("alice", "bob")) == [1, 2]
            loop = asyncio.get_running_loop()
            began = loop.time()
            echo = await turn(rt, "carol", "chan", "echo ok")
            finished, result = first(echo, ToolFinished)
            assert result.output == "exit code: 0\nstdout:\nok\n"
            assert not any(isinstance(e, ToolQueued) for _, e in echo)  # it never queued
            assert finished - began < 2.0, f"carol's echo ended {finished - began:.1f} s after she asked"
            assert rt.terminal.gate.running == 3 and rt.terminal.gate.waiting == 3  # the load is still there
        finally:
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)
    assert echo[-1][1] == Done("result: exit code: 0")
