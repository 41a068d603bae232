"""The same turns on both model backends (issue 22): Ollama's API (tests/fake_ollama.py) and the OpenAI
chat-completions API (tests/fake_openai.py, through the real `openai` SDK), each a real HTTP server
on 127.0.0.1, with real Docker and real SQLite. The tool loop, the history, the window and the
events are one path: what a person reads is the same line for line, whichever server answered."""
from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import docker
import pytest
import pytest_asyncio
from PIL import Image

from core import ChatSession, EngineError, ModelError, OllamaUnavailable, Runtime, Settings
from core.events import Event, Notice, ThinkingDelta
from core.render import Reply, failure_line
from tests import fake_ollama, fake_openai
from tests.conftest import closed_port, make_settings, open_runtime
from tests.fake_ollama import FakeOllama, cut, error, hang, text, tool_calls
from tests.fake_openai import DEFAULT_MODEL, FakeOpenAI

pytestmark = pytest.mark.asyncio


@dataclass
class Server:
    """One fake model server, and how its requests read (each API has its own shape)."""

    api: str
    fake: Any  # FakeOllama or FakeOpenAI

    @property
    def part(self) -> str:
        return "Ollama" if self.api == "ollama" else "OpenAI-compatible server"

    def script(self, *answers: Any) -> None:
        self.fake.script(*answers)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.fake.requests

    def problems(self, request: dict[str, Any]) -> list[str]:
        module = fake_ollama if self.api == "ollama" else fake_openai
        return module.request_problems(request)

    def prompt_tokens(self, request: dict[str, Any]) -> int:
        module = fake_ollama if self.api == "ollama" else fake_openai
        return module.prompt_tokens(request)

    def results(self, request: dict[str, Any]) -> list[str]:
        return [m["content"] for m in request["messages"] if m["role"] == "tool"]

    def images(self, request: dict[str, Any]) -> list[list[bytes]]:
        if self.api == "ollama":
            return [[base64.b64decode(i) for i in m.get("images", [])] for m in request["messages"]]
        return fake_openai.images_of(request)

    def sees(self) -> None:
        """The model reads pictures, and its server says so."""
        if self.api == "ollama":
            self.fake.capabilities["qwen3:8b"] = ["completion", "tools", "vision"]
        else:
            self.fake.capabilities[DEFAULT_MODEL] = ["tools", "vision"]
            self.fake.models[DEFAULT_MODEL] = {"capabilities": ["tools", "vision"]}


def settings_for(server: Server, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings that point at `server` only: with the OpenAI API, Ollama's host is a closed port."""
    if server.api == "ollama":
        return make_settings(tmp_path, server.fake.url, **overrides)
    return make_settings(tmp_path, f"http://127.0.0.1:{closed_port()}", model_api="openai",
                         openai_base_url=server.fake.url, openai_model=DEFAULT_MODEL, **overrides)


@pytest.fixture(params=["ollama", "openai"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with (FakeOllama() if request.param == "ollama" else FakeOpenAI()) as fake:
        yield Server(request.param, fake)


@pytest_asyncio.fixture
async def rt(server: Server, tmp_path: Path, docker_client: docker.DockerClient) -> AsyncIterator[Runtime]:
    async with open_runtime(settings_for(server, tmp_path), docker_client) as runtime:
        yield runtime


async def turn(chat: ChatSession, message: str, **kwargs: Any) -> list[Event]:
    return [event async for event in chat.events(message, **kwargs)]


def seen(events: list[Event], error: BaseException | None = None, *, thinking: bool = False) -> list[str]:
    """The reply as a person reads it, line by line."""
    reply = Reply(show_thinking=thinking)
    for event in events:
        reply.apply(event)
    if error is not None:
        reply.fail(failure_line(error))
    return reply.render().splitlines()


def stored(rt: Runtime, chat: ChatSession) -> list[tuple[str, str, bool]]:
    return [(m.role, m.content, m.complete) for m in rt.history.messages(chat.session_id)]


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(out, format="PNG")
    return out.getvalue()


async def test_a_plain_answer_streams_is_stored_and_its_tokens_counted(rt: Runtime, server: Server,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    answer = "Hello there, how can I help?"
    server.script(text(answer, chunk_size=3, delay=0.01))
    with caplog.at_level(logging.INFO, logger="core.tool_loop"):
        async with ChatSession(user="alice", session="plain", runtime=rt) as chat:
            parts = [p async for p in chat.chat_stream("hi")]
    assert "".join(parts) == answer and len(parts) > 3  # pieces that came apart reached the caller apart
    assert stored(rt, chat) == [("user", "hi", True), ("assistant", answer, True)]
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("turn user=alice")]
    request = server.requests[0]
    assert server.problems(request) == []
    assert f"tokens: {server.prompt_tokens(request)} in, {len(answer) // 4} out" in line  # as the server counted


async def test_a_tool_call_runs_a_real_command_and_its_result_goes_back_under_its_call(rt: Runtime,
                                                                                      server: Server) -> None:
    server.script(tool_calls(("execute_terminal", {"command": "echo from-the-box; uname -s"}), content="Let me check."),
                  text("It printed from-the-box."))
    async with ChatSession(user="alice", session="tools", runtime=rt) as chat:
        events = await turn(chat, "run something")
    assert seen(events) == ["Let me check.", "-# ✅ `echo from-the-box; uname -s` → exit 0",
                            "It printed from-the-box."]
    second = server.requests[1]
    assert server.problems(second) == []
    [result] = server.results(second)
    assert "exit code: 0" in result and "from-the-box\nLinux" in result
    assert [r for r, _, _ in stored(rt, chat)] == ["user", "assistant", "tool", "assistant"]
    [call] = json.loads(next(m.tool_calls for m in rt.history.messages(chat.session_id) if m.tool_calls))
    assert call["function"] == {"name": "execute_terminal", "arguments": {"command": "echo from-the-box; uname -s"}}
    if server.api == "openai":  # the id the server gave is kept, and the result is sent back under it
        assert call["id"] == server.fake.call_ids[0]
        assert second["messages"][-2]["tool_calls"][0]["id"] == call["id"]
        assert second["messages"][-1]["tool_call_id"] == call["id"]


async def test_two_calls_in_one_message_with_awkward_arguments_run_in_order(rt: Runtime, server: Server) -> None:
    # Quotes, a backslash and letters beyond ASCII: cut every three characters, they must still join up.
    first = {"command": "mkdir -p /tmp/w && cd /tmp/w && printf '%s\\n' \"é ü \\\\ ok\" > f"}
    server.script(tool_calls(("execute_terminal", first), ("execute_terminal", {"command": "cat /tmp/w/f"})),
                  text("done"))
    async with ChatSession(user="alice", session="two", runtime=rt) as chat:
        events = await turn(chat, "go")
    assert seen(events)[-1] == "done" and len(seen(events)) == 3
    second = server.requests[1]
    assert server.problems(second) == []
    results = server.results(second)
    assert len(results) == 2 and "é ü \\ ok" in results[1]


@pytest.mark.parametrize("arguments, expected", [
    ("ls -la", "error: the arguments were not valid JSON (ls -la)"),
    (["ls"], "error: the arguments were a list"),
], ids=["broken JSON", "a list"])
async def test_malformed_arguments_go_back_to_the_model_as_a_tool_error(rt: Runtime, server: Server,
                                                                       arguments: Any, expected: str) -> None:
    server.script(tool_calls(("execute_terminal", arguments)), text("Sorry, fixed."))
    async with ChatSession(user="alice", session="bad", runtime=rt) as chat:
        events = await turn(chat, "do it")
    assert seen(events) == ["-# ⚠️ `(no command)` could not run", "Sorry, fixed."]
    second = server.requests[1]
    assert server.problems(second) == []  # the stored call has arguments a server accepts ({})
    assert server.results(second)[0].startswith(expected)


async def test_thinking_is_shown_like_thinking_and_never_stored(rt: Runtime, server: Server) -> None:
    server.script(text("42", thinking="Let me think about this carefully."))
    async with ChatSession(user="alice", session="think", runtime=rt) as chat:
        events = await turn(chat, "meaning of life?")
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == "Let me think about this carefully."
    assert seen(events, thinking=True) == ["-# 💭 Let me think about this carefully.", "42"]
    assert stored(rt, chat) == [("user", "meaning of life?", True), ("assistant", "42", True)]


async def test_a_picture_reaches_a_vision_model(rt: Runtime, server: Server) -> None:
    server.sees()
    picture = png((255, 0, 0))
    server.script(text("A red rectangle."))
    async with ChatSession(user="alice", session="pic", runtime=rt) as chat:
        path = await chat.save_upload("red.png", picture)
        events = await turn(chat, "what is this?", images=[path])
    assert seen(events) == ["A red rectangle."]
    request = server.requests[-1]
    assert server.problems(request) == [] and server.images(request)[-1] == [picture]


async def test_a_model_that_cannot_see_gets_no_picture_and_the_user_is_told(rt: Runtime, server: Server) -> None:
    if server.api == "openai":  # the server says so in /v1/models, whatever MODEL_CAPABILITIES says
        server.fake.models[DEFAULT_MODEL] = {"capabilities": ["tools"]}
        rt.settings = rt.settings.replace(model_capabilities=frozenset({"tools", "vision"}))
    else:
        server.fake.capabilities["qwen3:8b"] = ["completion", "tools"]
    server.script(text("I cannot see it."))
    async with ChatSession(user="alice", session="blind", runtime=rt) as chat:
        path = await chat.save_upload("red.png", png((255, 0, 0)))
        events = await turn(chat, "see?", images=[path])
    assert [e.text for e in events if isinstance(e, Notice)] == [
        "The AI model here cannot see images; your picture is saved as /data/red.png, where commands can work "
        "with it."]
    assert server.problems(server.requests[-1]) == [] and not any(server.images(server.requests[-1]))


COULD_NOT = "⚠️ The AI model could not answer right now; try again in a minute."  # Ollama's: details in the log
FAILURES = {
    # kind: (the scripted answer, the line a user reads on each API)
    "missing model": (lambda api: error(404, 'model "qwen3:8b" not found, try pulling it first' if api == "ollama"
                                         else f"The model `{DEFAULT_MODEL}` does not exist."),
                      {"ollama": COULD_NOT,
                       "openai": f"⚠️ The model '{DEFAULT_MODEL}' is not on the AI model server: pick another with "
                                 "/admin model."}),
    "server error": (lambda api: error(500, "CUDA out of memory"),
                     {"ollama": COULD_NOT, "openai": "⚠️ The AI model server failed (HTTP 500); try again in a minute."}),
    "cut mid-reply": (lambda api: cut("The answer is forty"),
                      {"ollama": "⚠️ The connection to the AI model dropped in the middle of the reply. Please try "
                                 "again.",
                       "openai": "⚠️ The connection to the AI model dropped in the middle of the reply. Please try "
                                 "again."}),
    "stalled": (lambda api: hang("Let me think about th"),
                {"ollama": "⚠️ The AI model stopped answering. Please try again.",
                 "openai": "⚠️ The AI model stopped answering. Please try again."}),
}


@pytest.mark.parametrize("kind", list(FAILURES))
async def test_a_failure_is_one_line_one_incident_and_the_next_turn_works(
        server: Server, tmp_path: Path, docker_client: docker.DockerClient, kind: str) -> None:
    answer, lines = FAILURES[kind]
    server.script(answer(server.api), text("Back again."))
    async with open_runtime(settings_for(server, tmp_path, ollama_stall_timeout=1.0), docker_client) as rt:
        async with ChatSession(user="alice", session="fail", runtime=rt) as chat:
            events: list[Event] = []
            with pytest.raises(EngineError) as info:
                async for event in chat.events("hello?"):
                    events.append(event)
            said = seen(events, info.value)
            assert said[-1] == lines[server.api] and "\n" not in str(info.value)
            if kind in ("cut mid-reply", "stalled"):  # what came before the failure is shown and kept, marked
                assert said[:-1] == [("The answer is forty" if kind == "cut mid-reply" else "Let me think about th")]
                assert stored(rt, chat)[-1][2] is False
            [incident] = rt.incidents.open()
            assert incident.part == server.part and incident.detail == str(info.value)
            server.fake.release()
            assert seen(await turn(chat, "and now?")) == ["Back again."]
            assert rt.incidents.open() == []  # the next success closes it
            assert server.problems(server.requests[-1]) == []


async def test_an_unreachable_server_is_one_line_naming_where(server: Server, tmp_path: Path,
                                                              docker_client: docker.DockerClient) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    settings = settings_for(server, tmp_path).replace(**(
        {"ollama_host": dead} if server.api == "ollama" else {"openai_base_url": dead + "/v1"}))
    async with open_runtime(settings, docker_client) as rt:
        async with ChatSession(user="alice", session="dead", runtime=rt) as chat:
            with pytest.raises(OllamaUnavailable) as info:
                await turn(chat, "hello?")
    assert info.value.user_message == "The AI model is unavailable right now; try again in a minute."
    assert "not reachable at " + dead in str(info.value) and "\n" not in str(info.value)
    assert ("OLLAMA_HOST" if server.api == "ollama" else "OPENAI_BASE_URL") in str(info.value)
    assert isinstance(info.value, (OllamaUnavailable, ModelError))
