"""Every turn ends, and the history stays a valid request, whatever the model sends or a crash leaves.

Each test reproduces a fault against the real engine (fake Ollama over HTTP, real Docker,
SQLite) and checks what the next request the server received looks like.
"""
from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import docker
import peewee
import pytest

from core import ChatSession, ModelError, Runtime
from core.sandbox.docker import DockerProvider
from core.events import Notice, ToolFinished, ToolStarted
from core.store import INTERRUPTED_RESULT, Store
from core.tool_loop import OVER_CAP_RESULT, UNREADABLE
from tests import crash_child
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, chunk_line, raw_lines, request_problems, text, tool_calls
from tests.test_concurrency import wait_until

pytestmark = pytest.mark.asyncio


def rows(rt: Runtime, chat: ChatSession) -> list[tuple[str, str, bool]]:
    return [(m.role, m.content, m.complete) for m in rt.history.messages(chat.session_id)]


async def reply(chat: ChatSession, message: str) -> str:
    return "".join([p async for p in chat.chat_stream(message)])


def assert_valid(body: dict, latest_user: str) -> None:
    assert request_problems(body) == []
    users = [m["content"] for m in body["messages"] if m["role"] == "user"]
    assert users[-1] == latest_user


# -- item 2: a cap on calls per message, and a window that always holds the user's message ------
async def test_a_hundred_tool_calls_in_one_message(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    calls = [("execute_terminal", {"command": f"echo call-{i}"}) for i in range(100)]
    fake_ollama.script(tool_calls(*calls), text("Ran the first eight."), text("Still here."))
    async with ChatSession(user="alice", session="many") as chat:
        events = [e async for e in chat.events("run all of these")]
        started = [e.command for e in events if isinstance(e, ToolStarted)]
        assert started == [f"echo call-{i}" for i in range(8)]
        assert [e.text for e in events if isinstance(e, Notice)] == [
            "92 more commands the model asked for in one go were not run (at most 8 at a time)."]
        stored = rows(runtime, chat)
        assert [r[0] for r in stored] == ["user", "assistant"] + ["tool"] * 100 + ["assistant"]
        results = [content for role, content, _ in stored if role == "tool"]
        assert [r.splitlines()[-1] for r in results[:8]] == [f"call-{i}" for i in range(8)]
        assert results[8:] == [OVER_CAP_RESULT.format(cap=8)] * 92
        assert len(runtime.store.audit.latest("alice", "many", limit=200)) == 8

        # The request after the calls: 102 rows of this turn against a window of 40, still valid,
        # still holding the user's message and every one of the 100 results.
        second = fake_ollama.requests[1]
        assert_valid(second, "run all of these")
        assert sum(1 for m in second["messages"] if m["role"] == "tool") == 100
        assert await reply(chat, "and now?") == "Still here."
        assert_valid(fake_ollama.requests[2], "and now?")


async def test_a_turn_longer_than_the_window_keeps_the_user_message_and_whole_rounds(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, history_window=10)
    for n in range(6):
        fake_ollama.script(tool_calls(*[("execute_terminal", {"command": f"echo r{n}-{i}"}) for i in range(3)]))
    fake_ollama.script(text("All six rounds done."))
    async with open_runtime(settings, docker_client) as rt:
        async with ChatSession(user="alice", session="long", runtime=rt) as chat:
            assert await reply(chat, "go") == "All six rounds done."
    requests = fake_ollama.requests
    assert len(requests) == 7
    for n, body in enumerate(requests):
        assert_valid(body, "go")
        assert len(body["messages"]) <= 1 + settings.history_window
        if n:  # the latest round is always there, right at the end
            assert body["messages"][-1]["content"].splitlines()[-1] == f"r{n - 1}-2"
    last = requests[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user"] + ["assistant", "tool", "tool", "tool"] * 2


# -- item 3: what a crash leaves half-done ----------------------------------------------------
async def test_a_bot_killed_mid_command_leaves_a_valid_history(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url)
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 300 > /dev/null 2>&1 & echo first"}),
                                  ("execute_terminal", {"command": "sleep 60"})),
                       text("Back again."), text("And again."))
    child = crash_child.spawn(settings, "alice", "crash", "run both")
    name = DockerProvider(settings).name("alice", "crash")

    def running() -> list[str]:
        try:
            output = docker_client.containers.get(name).exec_run(["ps", "-o", "args"]).output
        except docker.errors.APIError:  # still being created, or not started yet
            return []
        return [line.strip() for line in output.decode().splitlines()]

    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        assert line == b"running\n", (line, child.stderr.read())
        # the second command is under way in the sandbox (seconds on a busy machine)
        await wait_until(lambda: "sleep 60" in running(), 60)
        child.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(child.wait) == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()

    assert "sleep 60" in running() and "sleep 300" in running()  # the command outlived the bot

    # A new process on the same database and the same Docker engine.
    async with open_runtime(settings, docker_client) as rt:
        async with ChatSession(user="alice", session="crash", runtime=rt) as chat:
            # Start-up adoption ends what the killed process left running, before anyone asks;
            # a background job an earlier command started on purpose stays.
            await wait_until(lambda: "sleep 60" not in running())
            assert "sleep 300" in running()
            assert await reply(chat, "are you there?") == "Back again."
            body = fake_ollama.requests[1]
            assert_valid(body, "are you there?")
            results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
            assert results[0].splitlines()[-1] == "first"
            assert results[1] == INTERRUPTED_RESULT
            stored = rows(rt, chat)
            assert stored == [("user", "run both", True), ("assistant", "", True), ("tool", results[0], True),
                              ("tool", INTERRUPTED_RESULT, True), ("user", "are you there?", True),
                              ("assistant", "Back again.", True)]
            assert await reply(chat, "once more") == "And again."  # repaired once, in storage
            assert [c for _, c, _ in rows(rt, chat)].count(INTERRUPTED_RESULT) == 1
            assert_valid(fake_ollama.requests[2], "once more")
            # The killed process's sandbox was adopted, not duplicated.
            mine = docker_client.containers.list(all=True, sparse=True,
                                                 filters={"label": f"llmbot.app={settings.vm_name_prefix}"})
            assert len(mine) == 1


async def test_a_restart_leaves_background_jobs_alone(tmp_path: Path, fake_ollama: FakeOllama,
                                                     docker_client: docker.DockerClient) -> None:
    """Only a command cut off mid-way is ended at start-up: after a clean stop, nothing is."""
    settings = make_settings(tmp_path, fake_ollama.url)
    first = Runtime(settings)  # closing a runtime keeps its sandboxes for the next process
    try:
        assert (await first.terminal.execute("bob", "jobs", "sleep 30", timeout=1)).timed_out
        # the last command starts a job and ends: what it started must survive the restart
        done = await first.terminal.execute("bob", "jobs", "nohup sleep 300 > /tmp/job.log 2>&1 & echo started")
        assert done.stdout == "started\n"
    finally:
        await first.close()
    sandbox = docker_client.containers.get(DockerProvider(settings).name("bob", "jobs"))
    async with open_runtime(settings, docker_client) as rt:
        rt.start_background()
        await rt.sandboxes.adoption_done()  # start_background marks adoption as pending at once
        assert rt.sandboxes.leftovers() == [("bob", "jobs")]
        await rt.terminal.settle_all()
        assert rt.sandboxes.leftovers() == []
        ps = [line.strip() for line in sandbox.exec_run(["ps", "-o", "args"]).output.decode().splitlines()]
        assert "sleep 300" in ps and "sleep 30" not in ps
        assert (await rt.terminal.execute("bob", "jobs", "echo still here")).stdout == "still here\n"


async def test_a_refused_database_write_between_call_and_result(runtime: Runtime, fake_ollama: FakeOllama,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo hi"})), text("Fine now."))
    real = runtime.history.add_message

    def refuse_tool_rows(session_id: int, role: str, content: str = "", **kw: object) -> int:
        if role == "tool":
            raise peewee.OperationalError("database is locked")
        return real(session_id, role, content, **kw)

    async with ChatSession(user="alice", session="refused") as chat:
        monkeypatch.setattr(runtime.history, "add_message", refuse_tool_rows)
        with pytest.raises(Exception) as info:
            await reply(chat, "say hi")
        assert "\n" not in str(info.value) and "database" not in str(info.value)
        monkeypatch.setattr(runtime.history, "add_message", real)
        assert await reply(chat, "and now?") == "Fine now."
        assert_valid(fake_ollama.requests[1], "and now?")
        assert [r[0] for r in rows(runtime, chat)] == ["user", "assistant", "tool", "user", "assistant"]


async def test_the_window_repairs_an_old_orphan_in_the_request(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/h.db")
    history = store.history
    try:
        sid = history.open_session("u", "s")
        calls = [{"function": {"name": "execute_terminal", "arguments": {"command": c}}} for c in ("a", "b")]
        history.add_message(sid, "user", "first")
        history.add_message(sid, "assistant", "", tool_calls=calls)
        history.add_message(sid, "tool", "a done", tool_name="execute_terminal")
        history.add_message(sid, "user", "second")  # stored by a version without repair
        history.add_message(sid, "tool", "a stray result")
        window = history.window(sid, 40)
        assert request_problems({"messages": [{"role": "system", "content": ""}] + window}) == []
        assert window[3] == {"role": "tool", "content": INTERRUPTED_RESULT, "tool_name": "execute_terminal"}
        assert [m["content"] for m in window][-1] == "second"
        assert history.repair_interrupted(sid) == 0  # not the last round: only the request is repaired
    finally:
        store.close()


# -- item 4: malformed model output -------------------------------------------------------------
def call_line(arguments: object, name: str = "execute_terminal") -> str:
    return chunk_line({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name,
                                                                                        "arguments": arguments}}]})


@pytest.mark.parametrize("arguments, error", [
    ("ls -la", 'error: the arguments were not valid JSON (ls -la); send an object like {"command": "ls -la"}.'),
    (["ls", "-la"], 'error: the arguments were a list (["ls", "-la"]), not an object like {"command": "ls -la"}.'),
    (42, 'error: the arguments were a number (42), not an object like {"command": "ls -la"}.'),
], ids=["not JSON", "a list", "a number"])
async def test_bad_tool_arguments_go_back_to_the_model(runtime: Runtime, fake_ollama: FakeOllama,
                                                       arguments: object, error: str) -> None:
    fake_ollama.script(raw_lines(call_line(arguments), content="Let me look. "), text("Sorry, fixed."))
    async with ChatSession(user="alice", session="badargs") as chat:
        events = [e async for e in chat.events("list files")]
        finished = [e for e in events if isinstance(e, ToolFinished)]
        assert [(f.output, f.error) for f in finished] == [(error, True)]
        assert "".join(getattr(e, "text", "") for e in events if type(e).__name__ == "TextDelta") \
            == "Let me look. Sorry, fixed."
        body = fake_ollama.requests[1]
        assert_valid(body, "list files")
        assert body["messages"][-1] == {"role": "tool", "content": error, "tool_name": "execute_terminal"}
        assert body["messages"][-2]["tool_calls"] == [{"function": {"name": "execute_terminal", "arguments": {}}}]
        assert len(runtime.store.audit.latest("alice", "badargs")) == 0


async def test_arguments_sent_as_a_json_string_still_run(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(raw_lines(call_line(json.dumps({"command": "echo from-a-string"}))), text("Ran it."))
    async with ChatSession(user="alice", session="strargs") as chat:
        assert await reply(chat, "echo something") == "Ran it."
    assert fake_ollama.requests[1]["messages"][-1]["content"].splitlines()[-1] == "from-a-string"


async def test_a_null_message_is_read_as_empty(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(raw_lines(chunk_line(None), content="Hello there."))
    async with ChatSession(user="alice", session="null") as chat:
        assert await reply(chat, "hi") == "Hello there."
        assert rows(runtime, chat) == [("user", "hi", True), ("assistant", "Hello there.", True)]


@pytest.mark.parametrize("line", ['{"model": "qwen3:8b", "message": {"role": "assist', chunk_line("not a message")],
                         ids=["broken JSON line", "message not an object"])
async def test_a_broken_stream_is_one_line_and_keeps_the_partial(runtime: Runtime, fake_ollama: FakeOllama,
                                                                 line: str) -> None:
    fake_ollama.script(raw_lines(line, content="The first half"), text("Whole answer."))
    async with ChatSession(user="alice", session="broken") as chat:
        seen: list[str] = []
        with pytest.raises(ModelError) as info:
            async for part in chat.chat_stream("tell me"):
                seen.append(part)
        assert str(info.value) == UNREADABLE
        assert "".join(seen) == "The first half"
        assert rows(runtime, chat) == [("user", "tell me", True), ("assistant", "The first half", False)]
        assert chat.phase is None
        assert await reply(chat, "again") == "Whole answer."
    assert_valid(fake_ollama.requests[1], "again")
    assert [m["content"] for m in fake_ollama.requests[1]["messages"][1:]] == ["tell me", "again"]


@pytest.mark.parametrize("delay", [0.0, 0.3], ids=["as it starts", "a moment later"])
async def test_a_turn_stopped_as_its_command_starts_leaves_nothing_running(
        runtime: Runtime, fake_ollama: FakeOllama, docker_client: docker.DockerClient, delay: float) -> None:
    # Once, the timeout's start hook raised when the turn was cancelled before the exec had begun,
    # orphaning the command: it ran on, unsupervised, in the sandbox.
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 60"})))
    async with ChatSession(user="alice", session=f"early{delay}") as chat:
        seen: list[object] = []

        async def turn() -> None:
            async for event in chat.events("go"):
                seen.append(event)

        task = asyncio.create_task(turn())
        await until_tool_phase(chat)
        await asyncio.sleep(delay)
        assert await chat.stop()
        await task
        assert type(seen[-1]).__name__ == "Stopped"
        await runtime.sandboxes.start("alice", f"early{delay}")  # the sandbox may still have been starting
        sandbox = docker_client.containers.get(runtime.sandboxes.name("alice", f"early{delay}"))
        assert b"sleep 60" not in sandbox.exec_run("ps").output


async def until_tool_phase(chat: ChatSession) -> None:
    for _ in range(600):
        if chat.phase is not None and chat.phase.value == "tool":
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the turn never reached its command")
