"""What only the OpenAI-compatible backend has (issue 22): the API key, 429 with Retry-After, what
/v1/models says of a model (vision, tools, vLLM's max_model_len) or MODEL_CAPABILITIES instead,
errors inside the stream, one conversation moving between backends, /admin model's checks and
--check. Against tests/fake_openai.py (a real HTTP server) through the real `openai` SDK."""
from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from typing import Any, AsyncIterator

import docker
import pytest
import pytest_asyncio
from PIL import Image

from core import ChatSession, ModelError, OllamaUnavailable, Runtime, Scope, Settings
from core.config import ConfigError
from core.events import Event, Notice
from core.openai_backend import openai_messages, retry_after
from core.preflight import check_model, run_checks
from core.store import Place
from core.tool_loop import UNREADABLE
from tests import fake_ollama as ollama_fake
from tests.conftest import closed_port, make_settings, open_runtime
from tests.fake_ollama import FakeOllama, stream_error, text, tool_calls
from tests.fake_openai import DEFAULT_MODEL, FakeOpenAI, images_of, rate_limited, raw_events, request_problems

KEY = "sk-test-SECRET-7f3a9c"


def openai_settings(tmp_path: Path, fake: FakeOpenAI, **overrides: Any) -> Settings:
    return make_settings(tmp_path, f"http://127.0.0.1:{closed_port()}", model_api="openai",
                         openai_base_url=fake.url, openai_model=DEFAULT_MODEL, **overrides)


@pytest_asyncio.fixture
async def rt(tmp_path: Path, fake_openai: FakeOpenAI, docker_client: docker.DockerClient) -> AsyncIterator[Runtime]:
    async with open_runtime(openai_settings(tmp_path, fake_openai), docker_client) as runtime:
        yield runtime


async def reply(chat: ChatSession, message: str, **kwargs: Any) -> str:
    return "".join([p async for p in chat.chat_stream(message, **kwargs)])


async def turn(chat: ChatSession, message: str, **kwargs: Any) -> list[Event]:
    return [e async for e in chat.events(message, **kwargs)]


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (0, 0, 255)).save(out, format="PNG")
    return out.getvalue()


# -- the shape of a request ------------------------------------------------------------------
def test_messages_in_ollamas_shape_become_openais() -> None:
    history = [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "look", "images": ["iVBORw0KGgoAAAANSUhEUg=="]},
        {"role": "assistant", "content": "", "tool_calls": [  # an Ollama model's calls: no ids
            {"function": {"name": "execute_terminal", "arguments": {"command": "ls"}}},
            {"function": {"name": "execute_terminal", "arguments": {"command": "pwd"}}}]},
        {"role": "tool", "content": "a b", "tool_name": "execute_terminal"},
        {"role": "tool", "content": "/data", "tool_name": "execute_terminal"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_srv_1", "function": {"name": "send_file", "arguments": {"path": "é.txt"}}}]},
        {"role": "tool", "content": "sent", "tool_name": "send_file"},
    ]
    sent = openai_messages(history)
    assert sent[1] == {"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}}]}
    assert [c["id"] for c in sent[2]["tool_calls"]] == ["call_2_0", "call_2_1"]
    assert sent[2]["tool_calls"][0] == {"id": "call_2_0", "type": "function",
                                        "function": {"name": "execute_terminal", "arguments": '{"command": "ls"}'}}
    assert [m.get("tool_call_id") for m in sent[3:5]] == ["call_2_0", "call_2_1"]
    assert sent[5]["tool_calls"][0]["function"]["arguments"] == '{"path": "é.txt"}'
    assert sent[6] == {"role": "tool", "tool_call_id": "call_srv_1", "content": "sent"}
    assert request_problems({"messages": sent}) == []


def test_retry_after_in_seconds_milliseconds_or_a_date() -> None:
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({}) == 1.0  # not said: a second
    assert retry_after({"retry-after": "3600"}) is None  # longer than a minute: not retried
    assert 0 <= retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) <= 1  # a date gone by: at once


def test_settings_say_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="MODEL_API=openai needs OPENAI_BASE_URL"):
        Settings.from_env({"MODEL_API": "openai"}, dotenv=False)
    with pytest.raises(ConfigError, match="MODEL_API must be ollama or openai"):
        Settings.from_env({"MODEL_API": "vllm"}, dotenv=False)
    with pytest.raises(ConfigError, match="MODEL_CAPABILITIES must list some of tools, vision"):
        Settings.from_env({"MODEL_CAPABILITIES": "tools,telepathy"}, dotenv=False)
    settings = Settings.from_env({"MODEL_API": "OpenAI", "OPENAI_BASE_URL": "http://gpu:8000/v1/",
                                  "OPENAI_MODEL": "m", "OPENAI_API_KEY": KEY, "MODEL_CAPABILITIES": "none"},
                                 dotenv=False)
    assert (settings.model_api, settings.openai_base_url, settings.model_capabilities) == (
        "openai", "http://gpu:8000/v1", frozenset())
    assert KEY not in repr(settings)


# -- the key ----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_the_key_is_sent_and_a_refused_one_is_one_line_never_logged(
        tmp_path: Path, fake_openai: FakeOpenAI, docker_client: docker.DockerClient,
        caplog: pytest.LogCaptureFixture) -> None:
    fake_openai.api_key = KEY
    fake_openai.script(text("Hi."))
    wrong = KEY[:-1] + "X"
    with caplog.at_level(logging.DEBUG):
        async with open_runtime(openai_settings(tmp_path, fake_openai, openai_api_key=KEY), docker_client) as rt:
            async with ChatSession(user="alice", session="key", runtime=rt) as chat:
                assert await reply(chat, "hello") == "Hi."
                rt.settings = rt.settings.replace(openai_api_key=wrong)  # the next request uses it
                with pytest.raises(ModelError) as info:
                    await reply(chat, "again")
                [incident] = rt.incidents.open()
    assert fake_openai.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert info.value.user_message == ("The AI model server refused the bot's credentials (HTTP 401); the bot's "
                                       "operator needs to check its API key.")
    assert str(info.value).startswith(f"The model server at {fake_openai.url} refused the API key (HTTP 401: "
                                      "Incorrect API key provided: ***)")  # the server echoed it: cut out
    assert incident.part == "OpenAI-compatible server" and "\n" not in str(info.value)
    everything = "\n".join(r.getMessage() + str(r.args) + str(r.exc_info) for r in caplog.records)
    assert KEY not in everything and wrong not in everything


@pytest.mark.asyncio
async def test_no_key_still_works_with_servers_that_need_none(rt: Runtime, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(text("Fine."))
    async with ChatSession(user="alice", session="nokey", runtime=rt) as chat:
        assert await reply(chat, "hi") == "Fine."
    assert fake_openai.headers[0]["Authorization"] == "Bearer sk-no-key-required"


# -- 429 ---------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_429_is_retried_once_after_its_retry_after(rt: Runtime, fake_openai: FakeOpenAI) -> None:
    fake_openai.script(rate_limited("0.5"), text("After the wait."))
    loop = asyncio.get_running_loop()
    async with ChatSession(user="alice", session="busy", runtime=rt) as chat:
        began = loop.time()
        assert await reply(chat, "hi") == "After the wait."
        assert loop.time() - began >= 0.5  # it waited as asked
    assert len(fake_openai.requests) == 2 and rt.incidents.open() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("answers, asked", [
    ([rate_limited("0.1"), rate_limited("0.1")], 2),  # once retried, then said
    ([rate_limited("3600")], 1),  # asks for an hour: not waited for
], ids=["twice", "an hour"])
async def test_a_429_that_persists_is_one_line_and_one_incident(rt: Runtime, fake_openai: FakeOpenAI,
                                                                answers: list[Any], asked: int) -> None:
    fake_openai.script(*answers, text("unused"))
    async with ChatSession(user="alice", session="busy2", runtime=rt) as chat:
        with pytest.raises(ModelError) as info:
            await reply(chat, "hi")
    assert info.value.user_message == "The AI model server is busy (too many requests); try again in a minute."
    assert len(fake_openai.requests) == asked
    [incident] = rt.incidents.open()
    assert incident.count == 1 and "HTTP 429" in incident.detail


# -- what the stream may hold --------------------------------------------------------------------
@pytest.mark.asyncio
async def test_an_error_inside_the_stream_is_one_line_and_keeps_the_partial(rt: Runtime,
                                                                           fake_openai: FakeOpenAI) -> None:
    fake_openai.script(stream_error("Half an ans", "the GPU fell off the bus"), text("Whole."))
    async with ChatSession(user="alice", session="midway", runtime=rt) as chat:
        with pytest.raises(ModelError) as info:
            await reply(chat, "hi")
        assert info.value.user_message == "The AI model could not answer: the GPU fell off the bus"
        assert await reply(chat, "again") == "Whole."
    assert [(m.role, m.content, m.complete) for m in rt.history.messages(chat.session_id)][1] == (
        "assistant", "Half an ans", False)
    assert [m["content"] for m in fake_openai.requests[1]["messages"][1:]] == ["hi", "again"]


@pytest.mark.asyncio
@pytest.mark.parametrize("data", ['{"id": "x", "choices": [{"delta": {"content": "bro', 'not json at all',
                                  '{"id": "x", "object": "chat.completion.chunk", "choices": "nope"}'],
                         ids=["cut JSON", "not JSON", "choices not a list"])
async def test_an_unreadable_chunk_is_one_line(rt: Runtime, fake_openai: FakeOpenAI, data: str) -> None:
    fake_openai.script(raw_events(data, content="So far "))
    async with ChatSession(user="alice", session="garbled", runtime=rt) as chat:
        with pytest.raises(ModelError) as info:
            await reply(chat, "hi")
    assert str(info.value) == UNREADABLE


@pytest.mark.asyncio
async def test_calls_are_read_even_when_the_server_says_stop(rt: Runtime, fake_openai: FakeOpenAI) -> None:
    """Some servers end a message that called tools with finish_reason "stop" (or none at all)."""
    call = ('{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, '
            '"delta": {"tool_calls": [{"index": 0, "id": "call_odd", "type": "function", "function": '
            '{"name": "execute_terminal", "arguments": "{\\"command\\": \\"echo odd\\"}"}}]}, "finish_reason": null}]}')
    fake_openai.script(raw_events(call), text("Ran it."))
    async with ChatSession(user="alice", session="odd", runtime=rt) as chat:
        assert await reply(chat, "go") == "Ran it."
    second = fake_openai.requests[1]
    assert request_problems(second) == [] and second["messages"][-1]["tool_call_id"] == "call_odd"
    assert "odd" in second["messages"][-1]["content"]


# -- what a model can do -------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_the_context_is_the_servers_max_model_len(tmp_path: Path, fake_openai: FakeOpenAI,
                                                       docker_client: docker.DockerClient) -> None:
    fake_openai.models[DEFAULT_MODEL] = {"max_model_len": 4096}  # as vLLM says it
    fake_openai.script(text("Read it."))
    async with open_runtime(openai_settings(tmp_path, fake_openai, reply_reserve_tokens=1024), docker_client) as rt:
        assert await rt.context_tokens(DEFAULT_MODEL) == (4096, None)
        async with ChatSession(user="alice", session="long", runtime=rt) as chat:
            assert await reply(chat, "word " * 20_000) == "Read it."  # ~100 KB: far over 4096 tokens
    request = fake_openai.requests[0]
    from tests.fake_openai import prompt_tokens
    assert prompt_tokens(request) <= 4096 - 1024
    assert "was cut: it did not fit the model's context" in request["messages"][-1]["content"]


@pytest.mark.asyncio
async def test_without_metadata_model_capabilities_says_what_a_model_can_do(
        tmp_path: Path, fake_openai: FakeOpenAI, docker_client: docker.DockerClient) -> None:
    fake_openai.capabilities[DEFAULT_MODEL] = ["tools", "vision"]  # it can; /v1/models does not say
    fake_openai.script(text("Blue."), text("Blue again."))
    settings = openai_settings(tmp_path, fake_openai)
    async with open_runtime(settings, docker_client) as rt:
        async with ChatSession(user="alice", session="caps", runtime=rt) as chat:
            path = await chat.save_upload("b.png", png())
            notices = [e for e in await turn(chat, "colour?", images=[path]) if isinstance(e, Notice)]
            assert len(notices) == 1 and not any(images_of(fake_openai.requests[0]))  # the default: tools only
    async with open_runtime(settings.replace(model_capabilities=frozenset({"tools", "vision"}),
                                             database_url=f"sqlite:///{tmp_path}/second.db"), docker_client) as rt:
        async with ChatSession(user="alice", session="caps", runtime=rt) as chat:
            assert not [e for e in await turn(chat, "colour?", images=[path]) if isinstance(e, Notice)]
    assert images_of(fake_openai.requests[1])[-1] == [png()]


@pytest.mark.asyncio
async def test_a_long_conversation_is_summarised_through_the_same_server(tmp_path: Path, fake_openai: FakeOpenAI,
                                                                        docker_client: docker.DockerClient) -> None:
    fake_openai.script(*[text(f"answer {i}") for i in range(5)])
    async with open_runtime(openai_settings(tmp_path, fake_openai, history_window=4), docker_client) as rt:
        async with ChatSession(user="alice", session="sum", runtime=rt) as chat:
            for i in range(5):
                await reply(chat, f"question {i}")
    assert fake_openai.summary_requests and not fake_openai.summary_requests[0].get("stream")
    last = fake_openai.requests[-1]["messages"]
    assert last[1]["role"] == "system" and last[1]["content"].startswith("Summary of the earlier part")
    assert "Earlier:" in last[1]["content"] and request_problems(fake_openai.requests[-1]) == []


# -- one conversation, two backends ----------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_conversation_moves_between_backends_and_stays_a_valid_request(
        tmp_path: Path, fake_openai: FakeOpenAI, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, openai_base_url=fake_openai.url)  # MODEL_API=ollama
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo one"})), text("One."))
    fake_openai.script(tool_calls(("execute_terminal", {"command": "echo two"})), text("Two."))
    fake_ollama.script(text("Three."))
    async with open_runtime(settings, docker_client) as rt:
        place = Place(channel="c1", server="g1")
        async with ChatSession(user="alice", session="c1", place=place, runtime=rt) as chat:
            assert await reply(chat, "first") == "One."
            await rt.switch_model(Scope.channel("c1"), f"openai:{DEFAULT_MODEL}", by="test")
            assert (await rt.places.model(place)).value == f"openai:{DEFAULT_MODEL}"
            assert await reply(chat, "second") == "Two."
            await rt.switch_model(Scope.channel("c1"), "ollama:qwen3:8b", by="test")  # Ollama's: stored plain
            assert (await rt.places.model(place)).value == "qwen3:8b"
            assert await reply(chat, "third") == "Three."
    for request in fake_openai.requests:
        assert request["model"] == DEFAULT_MODEL and request_problems(request) == []
    # The Ollama call got an id from its place; the OpenAI one kept the server's.
    ids = [c["id"] for m in fake_openai.requests[-1]["messages"] for c in m.get("tool_calls") or []]
    assert ids[0].startswith("call_") and ids[1] == fake_openai.call_ids[0]
    last = fake_ollama.requests[-1]
    assert ollama_fake.request_problems(last) == []
    assert [m.get("content", "") for m in last["messages"] if m["role"] == "assistant"] == ["", "One.", "", "Two."]


@pytest.mark.asyncio
async def test_switching_checks_the_model_on_its_own_server(tmp_path: Path, fake_openai: FakeOpenAI,
                                                           fake_ollama: FakeOllama,
                                                           docker_client: docker.DockerClient) -> None:
    fake_openai.models["tiny-chat"] = {"supports_function_calling": False}
    async with open_runtime(make_settings(tmp_path, fake_ollama.url, openai_base_url=fake_openai.url),
                            docker_client) as rt:
        with pytest.raises(ModelError) as info:
            await rt.switch_model(Scope.server("g"), "openai:nope", by="t")
        assert str(info.value) == (f"The model 'nope' is not served at {fake_openai.url} (served: "
                                   f"{DEFAULT_MODEL}, tiny-chat); the model was not changed.")
        assert info.value.user_message == ("The model 'nope' is not served by the OpenAI API server (served: "
                                           f"{DEFAULT_MODEL}, tiny-chat); the model was not changed.")  # no address
        with pytest.raises(ModelError) as info:
            await rt.switch_model(Scope.server("g"), "openai:tiny-chat", by="t")
        assert info.value.user_message == ("The model 'tiny-chat' cannot call tools (the server says so): choose a "
                                           "tool-capable model; the model was not changed.")
        assert await rt.places.overrides() == {}
        assert await rt.models() == ["qwen3:8b", f"openai:{DEFAULT_MODEL}", "openai:tiny-chat"]
        fake_openai.stop()
        with pytest.raises(OllamaUnavailable) as down:
            await rt.switch_model(Scope.server("g"), f"openai:{DEFAULT_MODEL}", by="t")
        assert down.value.user_message == "The AI model server is unreachable, so the model was not changed."
        assert [o.models is None for o in await rt.model_offers()] == [False, True]


# -- --check ----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_check_names_the_backend_it_checked(tmp_path: Path, fake_openai: FakeOpenAI,
                                                  fake_ollama: FakeOllama) -> None:
    settings = openai_settings(tmp_path, fake_openai)
    check = await check_model(settings)
    assert (check.name, check.ok) == ("openai", True)
    assert check.line() == (f"ok   openai   OpenAI API at {fake_openai.url} serves {DEFAULT_MODEL} "
                            "(tools, as MODEL_CAPABILITIES says)")
    fake_openai.models[DEFAULT_MODEL] = {"capabilities": ["tools"]}
    assert (await check_model(settings)).message.endswith(f"serves {DEFAULT_MODEL} (tools)")
    missing = await check_model(settings.replace(openai_model="gpt-5"))
    assert not missing.ok and missing.message == (f"the model 'gpt-5' is not served at {fake_openai.url} (served: "
                                                  f"{DEFAULT_MODEL}) (OPENAI_MODEL)")
    dead = await check_model(settings.replace(openai_base_url=f"http://127.0.0.1:{closed_port()}/v1"))
    assert dead.name == "openai" and not dead.ok and "not reachable at http://127.0.0.1:" in dead.message
    both = await run_checks(settings.replace(ollama_host=fake_ollama.url), token=False)
    assert [(c.name, c.ok) for c in both][:2] == [("openai", True), ("ollama", True)]
    assert both[1].message == f"Ollama at {fake_ollama.url} offers 1 models (for models named ollama:<name>)"

