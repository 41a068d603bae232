"""Runtime.close() lets go of everything the runtime opened: sockets, threads, tasks."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import docker
import pytest

from core import ChatSession
from core.events import ToolFinished, ToolStarted
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, text, tool_calls

pytestmark = pytest.mark.asyncio

POOL_THREADS = ("sandbox-disk", "images")


def pool_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(POOL_THREADS) and t.is_alive()]


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what each is (socket:[…], a file's path, …)."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own descriptor, closed already
    return fds


def pending_tasks(before: set[asyncio.Task]) -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() - before
                  if t is not asyncio.current_task() and not t.done())


async def released(baseline: dict[int, str], timeout: float = 10.0) -> dict[int, str]:
    """The descriptors opened since `baseline` and still open, after giving them `timeout` to close
    (the fake Ollama, a thread of this process, closes its side of a connection when it sees EOF)."""
    deadline = time.monotonic() + timeout
    while True:
        extra = {fd: what for fd, what in open_fds().items() if baseline.get(fd) != what}
        if not extra or time.monotonic() > deadline:
            return extra
        await asyncio.sleep(0.1)


async def test_close_releases_sockets_threads_and_tasks(tmp_path: Path, fake_ollama: FakeOllama,
                                                        docker_client: docker.DockerClient) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo kept > /data/note; cat /data/note"})),
                       text("Done."))
    docker_client.ping()  # the test's own Docker connection is open before the count
    assert not pool_threads(), "a pool thread of an earlier test is still alive"
    tasks_before = asyncio.all_tasks()
    fds_before = open_fds()
    async with open_runtime(make_settings(tmp_path, fake_ollama.url), docker_client) as rt:
        rt.start_background()
        async with ChatSession(user="alice", session="close") as chat:
            events = [e async for e in chat.events("write a note")]
        finished = [e for e in events if isinstance(e, ToolFinished)]
        assert finished and finished[0].exit_code == 0 and "kept" in finished[0].output
        await asyncio.get_running_loop().run_in_executor(rt.image_pool, int)  # as a picture would
        assert any(n.startswith("sandbox-disk") for n in pool_threads())  # /data's image was made there
        assert any(n.startswith("images") for n in pool_threads())
        assert set(open_fds()) - set(fds_before)  # Ollama's and Docker's connections, the database

        await rt.close()

        assert not pool_threads()
        assert not pending_tasks(tasks_before)
        assert not await released(fds_before)
        await rt.close()  # twice is harmless (open_runtime closes it once more)
    assert not pool_threads()


async def test_close_during_a_command_stops_the_turn_and_leaves_nothing(tmp_path: Path, fake_ollama: FakeOllama,
                                                                       docker_client: docker.DockerClient) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 600"})), text("never asked"))
    docker_client.ping()
    tasks_before = asyncio.all_tasks()
    fds_before = open_fds()
    async with open_runtime(make_settings(tmp_path, fake_ollama.url), docker_client) as rt:
        started = asyncio.Event()

        async def listen() -> list[object]:
            seen = []
            async with ChatSession(user="bob", session="busy") as chat:
                async for event in chat.events("sleep a while"):
                    seen.append(event)
                    if isinstance(event, ToolStarted):
                        started.set()
            return seen

        listener = asyncio.create_task(listen())
        await asyncio.wait_for(started.wait(), 60)
        await asyncio.sleep(1)  # the command is running
        await rt.close()
        await asyncio.wait_for(listener, 10)  # the turn ended, and said so to its listener
        assert not rt.registry.active()
        assert len(fake_ollama.requests) == 1  # the model was not asked to go on
        assert not pool_threads()
        assert not pending_tasks(tasks_before)
        assert not await released(fds_before)
        sandbox = docker_client.containers.get(rt.sandboxes.name("bob", "busy"))
        ps = sandbox.exec_run(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"]).output.decode()
        assert "sleep 600" not in ps  # the command was killed, not left behind
