"""One generation per session: ignore while streaming, replace while waiting on a tool."""
from __future__ import annotations

import asyncio

import docker
import pytest

from core import ChatSession, Runtime
from core.events import Done, Ignored, Replaced, Replacing, TextDelta
from core.registry import Phase
from core.tool_loop import CANCELLED_RESULT
from tests.fake_ollama import FakeOllama, text, tool_calls

pytestmark = pytest.mark.asyncio


async def collect(chat: ChatSession, message: str) -> list:
    return [e async for e in chat.events(message)]


async def wait_for(predicate, seconds: float = 10.0) -> None:
    for _ in range(int(seconds * 20)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_a_message_during_streaming_is_ignored_and_not_stored(runtime: Runtime,
                                                                   fake_ollama: FakeOllama) -> None:
    answer = "This answer streams slowly, one letter at a time."
    fake_ollama.script(text(answer, chunk_size=1, delay=0.03))
    async with ChatSession(user="alice", session="busy") as chat:
        first = asyncio.create_task(collect(chat, "first"))
        await wait_for(lambda: chat.phase is Phase.STREAMING and len(fake_ollama.requests) == 1)
        await asyncio.sleep(0.2)  # text is flowing now
        # Another ChatSession object for the same pair shares the registry.
        async with ChatSession(user="alice", session="busy") as other:
            assert [p async for p in other.chat_stream("second")] == []
            assert await collect(other, "third") == [Ignored()]
        events = await first
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer
    assert len(fake_ollama.requests) == 1
    contents = [m.content for m in runtime.history.messages(chat.session_id)]
    assert contents == ["first", answer]


async def test_other_sessions_are_not_blocked(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text("slow reply here", chunk_size=1, delay=0.05), text("fast"))
    async with ChatSession(user="alice", session="a") as a, ChatSession(user="bob", session="a") as b:
        slow = asyncio.create_task(collect(a, "slow please"))
        await wait_for(lambda: a.phase is Phase.STREAMING and len(fake_ollama.requests) == 1)
        assert "".join([p async for p in b.chat_stream("quick")]) == "fast"
        await slow


async def test_a_message_while_a_tool_runs_cancels_and_replaces_the_reply(runtime: Runtime,
                                                                         fake_ollama: FakeOllama) -> None:
    fake_ollama.script(
        tool_calls(("execute_terminal", {"command": "sleep 120; echo never"}),
                   ("execute_terminal", {"command": "echo also-never"})),
        text("Here is my answer to the new question."),
    )
    async with ChatSession(user="alice", session="replace") as chat:
        first = asyncio.create_task(collect(chat, "start a long job"))
        await wait_for(lambda: chat.phase is Phase.TOOL)
        await wait_for(lambda: "sleep 120" in _ps(runtime))
        second = await collect(chat, "never mind, answer this")
        old = await first
    assert old[-1] == Replaced()
    assert second[0] == Replacing() and isinstance(second[-1], Done)
    assert second[-1].text == "Here is my answer to the new question."
    assert "sleep 120" not in _ps(runtime)  # the command was killed in the container
    stored = [(m.role, m.content) for m in runtime.history.messages(chat.session_id)]
    assert [r for r, _ in stored] == ["user", "assistant", "tool", "tool", "user", "assistant"]
    assert stored[2][1] == CANCELLED_RESULT and "not run" in stored[3][1]
    # The replacing request is valid: every tool call is followed by its result.
    messages = fake_ollama.requests[1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert messages[3]["content"] == CANCELLED_RESULT


async def test_the_session_is_free_again_after_a_reply(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text("one"), text("two"))
    async with ChatSession(user="alice", session="free") as chat:
        assert "".join([p async for p in chat.chat_stream("a")]) == "one"
        assert chat.phase is None
        assert "".join([p async for p in chat.chat_stream("b")]) == "two"


def _ps(rt: Runtime) -> str:
    try:
        container = docker.from_env().containers.get(rt.sandboxes.name("alice", "replace"))
        return container.exec_run(["ps", "-o", "args"]).output.decode()
    except docker.errors.APIError:  # not there yet, or created but not started yet
        return ""
