"""Many conversations at once, against the real Docker engine and the fake Ollama.

No running command may stall anyone else: timeouts fire on time however many
commands run, a plain turn elsewhere is answered at once, commands over the
global cap wait their turn, and a user's sandboxes stay within their cap.
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import docker
import pytest

from core import ChatSession, Runtime, SandboxUnavailable
from core.admission import FairGate
from core.events import Done, ToolFinished, ToolQueued, ToolStarted
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, command_agent, text

pytestmark = pytest.mark.asyncio
KILLED = ("timed out after 5 s: the command was killed. For long jobs, run them in the background with output "
          "to a file (nohup CMD > /tmp/job.log 2>&1 &) and check on them later.\n(no output)")


async def turn(rt: Runtime, user: str, session: str, message: str) -> list[tuple[float, Any]]:
    """One whole turn; each event with the loop time it arrived."""
    loop = asyncio.get_running_loop()
    events: list[tuple[float, Any]] = []
    async with ChatSession(user=user, session=session, runtime=rt) as chat:
        async for event in chat.events(message):
            events.append((loop.time(), event))
    return events


def first(events: list[tuple[float, Any]], kind: type) -> tuple[float, Any]:
    return next((t, e) for t, e in events if isinstance(e, kind))


async def wait_until(condition: Any, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def processes(docker_client: docker.DockerClient, rt: Runtime, user: str, session: str) -> str:
    container = docker_client.containers.get(rt.sandboxes.name(user, session))
    return container.exec_run(["ps", "-o", "args"]).output.decode()


async def test_ten_commands_past_their_timeout_are_all_killed_on_time(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, command_timeout=5)
    fake_ollama.fallback = command_agent
    async with open_runtime(settings, docker_client) as rt:
        users = [f"user{i}" for i in range(10)]
        await asyncio.gather(*(rt.sandboxes.start(u, "chan") for u in users))
        turns = await asyncio.gather(*(turn(rt, u, "chan", "sleep 100") for u in users))
        for user, events in zip(users, turns):
            started, _ = first(events, ToolStarted)
            finished, result = first(events, ToolFinished)
            assert result.timed_out and result.output == KILLED, user
            assert finished - started < 8, f"{user}: reported {finished - started:.1f} s after its start"
            assert isinstance(events[-1][1], Done) and events[-1][1].text == f"result: {KILLED.splitlines()[0]}"
            assert "sleep 100" not in await asyncio.to_thread(processes, docker_client, rt, user, "chan")


async def test_a_fresh_session_is_answered_at_once_while_ten_commands_run(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url)
    fake_ollama.fallback = command_agent
    async with open_runtime(settings, docker_client) as rt:
        users = [f"busy{i}" for i in range(10)]
        await asyncio.gather(*(rt.sandboxes.start(u, "chan") for u in [*users, "probe"]))
        threads_before = threading.active_count()
        slow = [asyncio.create_task(turn(rt, u, "chan", "sleep 8; echo slept")) for u in users]
        await wait_until(lambda: rt.terminal.gate.running == 10)
        threads_during = threading.active_count()

        loop = asyncio.get_running_loop()
        fake_ollama.script(text("Hello! How can I help?"))
        began = loop.time()
        plain = await turn(rt, "probe", "chan", "hello")
        plain_seconds = loop.time() - began
        began = loop.time()
        echo = await turn(rt, "probe", "chan", "echo ok")
        echo_seconds = loop.time() - began
        assert rt.terminal.gate.running == 10, "the slow commands were still running during the probe"

        assert [e.text for _, e in plain if isinstance(e, Done)] == ["Hello! How can I help?"]
        assert plain_seconds < 1.0, f"a plain turn took {plain_seconds:.2f} s"
        assert first(echo, ToolFinished)[1].output == "exit code: 0\nstdout:\nok\n"
        assert echo_seconds < 2.0, f"a turn running `echo ok` took {echo_seconds:.2f} s"
        assert threads_during - threads_before <= 2, "running commands must not hold a thread each"

        for user, events in zip(users, await asyncio.gather(*slow)):
            assert first(events, ToolFinished)[1].output == "exit code: 0\nstdout:\nslept\n", user
            assert events[-1][1] == Done("result: exit code: 0"), user


async def test_commands_over_the_cap_wait_their_turn_and_say_so(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, max_running_commands=2)
    fake_ollama.fallback = command_agent
    async with open_runtime(settings, docker_client) as rt:
        await asyncio.gather(*(rt.sandboxes.start(u, "chan") for u in ("a", "b", "c")))
        running = [asyncio.create_task(turn(rt, u, "chan", f"sleep 2; echo {u}")) for u in ("a", "b")]
        await wait_until(lambda: rt.terminal.gate.running == 2)
        third = await turn(rt, "c", "chan", "echo c")
        queued = [e.ahead for _, e in third if isinstance(e, ToolQueued)]
        assert queued[0] == 2 and queued[-1] == 0  # behind two, then its turn
        assert first(third, ToolQueued)[0] < first(third, ToolFinished)[0]
        assert first(third, ToolFinished)[1].output == "exit code: 0\nstdout:\nc\n"
        for user, events in zip(("a", "b"), await asyncio.gather(*running)):
            assert first(events, ToolFinished)[1].output == f"exit code: 0\nstdout:\n{user}\n"
            assert not any(isinstance(e, ToolQueued) for _, e in events)  # the first two never waited
        # the third command started only once one of the first two had finished
        assert first(third, ToolFinished)[0] >= min(first(e, ToolFinished)[0] for e in [await r for r in running])


async def test_a_users_third_sandbox_removes_their_least_recently_used_idle_one(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, max_sandboxes_per_user=2)
    async with open_runtime(settings, docker_client) as rt:
        await rt.sandboxes.adopt()  # as at start-up: from here on the engine knows every sandbox it has
        names = {c: rt.sandboxes.name("alice", c) for c in ("busy", "idle", "new", "fourth")}
        await rt.terminal.execute("alice", "busy", "true")  # the least recently used of alice's two...
        await rt.terminal.execute("alice", "idle", "true")
        await rt.terminal.execute("bob", "other", "true")  # someone else's sandbox is never touched
        long_command = asyncio.create_task(rt.terminal.execute("alice", "busy", "sleep 3; echo survived"))
        await wait_until(lambda: rt.terminal.gate.running == 1)

        await rt.sandboxes.start("alice", "new")  # ...but it is busy: the idle one makes room
        alive = {c.name for c in docker_client.containers.list(filters={"label": ["llmbot.user=alice", f"llmbot.app={settings.vm_name_prefix}"]})}
        assert alive == {names["busy"], names["new"]}
        assert docker_client.containers.get(rt.sandboxes.name("bob", "other")).status == "running"

        # both of alice's sandboxes busy: a third is refused with a clear line, and nothing is removed
        blocker = asyncio.create_task(rt.terminal.execute("alice", "new", "sleep 2"))
        await wait_until(lambda: rt.terminal.gate.running == 2)
        with pytest.raises(SandboxUnavailable) as refused:
            await rt.sandboxes.start("alice", "fourth")
        assert str(refused.value) == ("You already have 2 sandboxes busy running commands, the most one person may "
                                      "have (2). Try again when one of them finishes.")
        assert (await long_command).stdout == "survived\n"
        await blocker
        alive = {c.name for c in docker_client.containers.list(filters={"label": ["llmbot.user=alice", f"llmbot.app={settings.vm_name_prefix}"]})}
        assert alive == {names["busy"], names["new"]}
        # the files of a removed sandbox stay: coming back recreates it with its /data
        (rt.sandboxes.data_dir("alice", "idle") / "kept.txt").write_text("still here")
        assert (await rt.terminal.execute("alice", "idle", "cat /data/kept.txt")).stdout == "still here"


async def test_the_gate_serves_one_persons_waiters_in_order_and_loses_none_to_cancellation() -> None:
    gate = FairGate(1)
    order: list[str] = []
    heard: dict[str, list[int]] = {"b": [], "c": [], "d": []}

    async def command(name: str, hold: float) -> None:
        async with gate.slot("one person", heard[name].append if name in heard else None):
            order.append(name)
            await asyncio.sleep(hold)

    a = asyncio.create_task(command("a", 0.2))
    await asyncio.sleep(0)
    b, c, d = (asyncio.create_task(command(n, 0.01)) for n in "bcd")
    await asyncio.sleep(0.05)
    assert gate.running == 1 and gate.waiting == 3
    c.cancel()  # a waiter that gives up leaves the queue; those behind it move up
    await asyncio.gather(a, b, d, c, return_exceptions=True)
    assert order == ["a", "b", "d"] and gate.running == 0 and gate.waiting == 0
    assert heard["b"] == [1, 0] and heard["c"] == [2] and heard["d"] == [3, 2, 1, 0]


async def test_the_docker_connection_pool_holds_every_running_command_and_its_kill(runtime: Runtime) -> None:
    # aiohttp's default pool of 100 connections would make the 101st running command wait for a socket.
    pool = runtime.sandboxes.docker.connector.limit
    assert pool == 0 or pool >= 2 * runtime.settings.max_running_commands
