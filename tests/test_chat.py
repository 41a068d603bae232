"""The Ollama tool loop end to end: fake Ollama over HTTP, real Docker, real SQLite."""
from __future__ import annotations

import json

import pytest

from core import ChatSession, Runtime
from core.events import Done, TextDelta, ToolFinished, ToolStarted
from core.prompt import system_prompt
from tests.fake_ollama import FakeOllama, text, tool_calls

pytestmark = pytest.mark.asyncio


async def reply(chat: ChatSession, message: str) -> str:
    return "".join([part async for part in chat.chat_stream(message)])


def rows(rt: Runtime, chat: ChatSession) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in rt.history.messages(chat.session_id)]


async def test_reply_streams_in_pieces_and_is_stored(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    # Pieces that arrive apart reach the caller apart (pieces that come faster than the caller
    # takes them are joined: tests/test_streaming.py).
    fake_ollama.script(text("Hello there, how can I help?", chunk_size=3, delay=0.01))
    async with ChatSession(user="alice", session="general") as chat:
        parts = [p async for p in chat.chat_stream("hi")]
    assert "".join(parts) == "Hello there, how can I help?" and len(parts) > 3
    assert rows(runtime, chat) == [("user", "hi"), ("assistant", "Hello there, how can I help?")]


async def test_system_prompt_is_sent_first_every_time_and_never_stored(runtime: Runtime,
                                                                      fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text("one"), text("two"))
    async with ChatSession(user=42, session=7) as chat:  # int ids work too
        await reply(chat, "first")
        await reply(chat, "second")
    for request in fake_ollama.requests:
        assert request["messages"][0]["role"] == "system"
        assert request["messages"][0]["content"] == system_prompt(runtime.settings)["content"]
        assert sum(m["role"] == "system" for m in request["messages"]) == 1
    assert "system" not in [role for role, _ in rows(runtime, chat)]
    assert [m["content"] for m in fake_ollama.requests[1]["messages"][1:]] == ["first", "one", "second"]


async def test_prompt_covers_tools_uploads_and_background_jobs(runtime: Runtime) -> None:
    prompt = system_prompt(runtime.settings)["content"]
    for needle in ("execute_terminal", "/data", "one command at a time", "nohup", "Plan", "container"):
        assert needle in prompt


async def test_tool_call_runs_in_the_container_and_the_loop_continues(runtime: Runtime,
                                                                     fake_ollama: FakeOllama) -> None:
    fake_ollama.script(
        tool_calls(("execute_terminal", {"command": "echo from-the-box; uname -s"}), content="Let me check."),
        text("It printed from-the-box."),
    )
    async with ChatSession(user="alice", session="tools") as chat:
        events = [e async for e in chat.events("run something")]
    started = [e for e in events if isinstance(e, ToolStarted)]
    finished = [e for e in events if isinstance(e, ToolFinished)]
    assert started[0].command == "echo from-the-box; uname -s"
    assert finished[0].exit_code == 0 and "from-the-box" in finished[0].output
    assert isinstance(events[-1], Done) and events[-1].text == "It printed from-the-box."
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me check.It printed from-the-box."
    second = fake_ollama.requests[1]
    assert second["tools"][0]["function"]["name"] == "execute_terminal"
    assistant, tool = second["messages"][-2:]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["function"]["arguments"] == {
        "command": "echo from-the-box; uname -s"}
    assert tool["role"] == "tool" and tool["tool_name"] == "execute_terminal"
    assert "exit code: 0" in tool["content"] and "from-the-box\nLinux" in tool["content"]
    assert [r for r, _ in rows(runtime, chat)] == ["user", "assistant", "tool", "assistant"]


async def test_several_calls_in_one_turn_run_in_order(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(
        tool_calls(("execute_terminal", {"command": "cd /tmp && echo one > f"}),
                   ("execute_terminal", {"command": "cat f"})),
        text("done"),
    )
    async with ChatSession(user="alice", session="multi") as chat:
        await reply(chat, "go")
    results = [m for m in fake_ollama.requests[1]["messages"] if m["role"] == "tool"]
    assert len(results) == 2 and "one" in results[1]["content"]


@pytest.mark.parametrize("call, expected", [
    (("delete_everything", {"path": "/"}), "unknown tool 'delete_everything'"),
    (("execute_terminal", {}), "'command' is required"),
    (("execute_terminal", {"command": 5}), "'command' is required"),
    (("execute_terminal", {"command": "true", "timeout": "soon"}), "'timeout' must be"),
])
async def test_bad_tool_calls_go_back_to_the_model_as_errors(runtime: Runtime, fake_ollama: FakeOllama,
                                                            call: tuple, expected: str) -> None:
    fake_ollama.script(tool_calls(call), text("Sorry, let me fix that."))
    async with ChatSession(user="alice", session="bad") as chat:
        assert await reply(chat, "do it") == "Sorry, let me fix that."
    tool = fake_ollama.requests[1]["messages"][-1]
    assert tool["role"] == "tool" and expected in tool["content"]


async def test_tool_rounds_are_bounded(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    limit = runtime.settings.max_tool_rounds
    fake_ollama.script(*[tool_calls(("execute_terminal", {"command": f"echo {i}"})) for i in range(limit)],
                       text("I give up and summarise."))
    async with ChatSession(user="alice", session="loop") as chat:
        assert await reply(chat, "loop forever") == "I give up and summarise."
    assert len(fake_ollama.requests) == limit + 1
    assert all("tools" in r for r in fake_ollama.requests[:limit])
    assert not fake_ollama.requests[limit].get("tools")  # the last request cannot call tools


async def test_a_new_chat_session_resumes_and_pairs_stay_apart(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text("noted"), text("bob's answer"), text("you said 42"))
    async with ChatSession(user="alice", session="general") as chat:
        await reply(chat, "remember 42")
    async with ChatSession(user="bob", session="general") as chat:
        await reply(chat, "hello")
    async with ChatSession(user="alice", session="general") as chat:
        await reply(chat, "what did I say?")
    bob = [m["content"] for m in fake_ollama.requests[1]["messages"][1:]]
    alice = [m["content"] for m in fake_ollama.requests[2]["messages"][1:]]
    assert bob == ["hello"]
    assert alice == ["remember 42", "noted", "what did I say?"]


async def test_only_a_bounded_window_is_sent(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(history_window=4)
    fake_ollama.script(*[text(f"answer {i}") for i in range(5)])
    async with ChatSession(user="alice", session="window") as chat:
        for i in range(5):
            await reply(chat, f"question {i}")
    last = fake_ollama.requests[-1]["messages"]
    # the system prompt, the summary of what fell out of the window, then at most 4 messages
    assert len(last) <= 2 + 4 and last[-1]["content"] == "question 4" and last[2]["role"] == "user"
    assert last[1]["role"] == "system" and last[1]["content"].startswith("Summary of the earlier part")


async def test_thinking_is_reported_but_not_stored(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(ollama_think=True)
    fake_ollama.script(text("42", thinking="Let me think about this carefully."))
    async with ChatSession(user="alice", session="think") as chat:
        events = [e async for e in chat.events("meaning of life?")]
    thinking = "".join(e.text for e in events if type(e).__name__ == "ThinkingDelta")
    assert thinking == "Let me think about this carefully."
    assert fake_ollama.requests[0]["think"] is True
    assert rows(runtime, chat) == [("user", "meaning of life?"), ("assistant", "42")]


async def test_empty_message_is_refused_clearly(runtime: Runtime) -> None:
    from core import EngineError
    async with ChatSession(user="alice", session="empty") as chat:
        with pytest.raises(EngineError, match="empty"):
            await reply(chat, "   ")
        assert rows(runtime, chat) == []


async def test_tool_calls_are_stored_as_json_in_ollama_shape(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "true"})), text("ok"))
    async with ChatSession(user="alice", session="json") as chat:
        await reply(chat, "go")
    stored = [m for m in runtime.history.messages(chat.session_id) if m.tool_calls]
    assert json.loads(stored[0].tool_calls) == [{"function": {"name": "execute_terminal",
                                                               "arguments": {"command": "true"}}}]
