"""The newest features attacked as a hostile user would (MCP servers, the OpenAI-compatible backend,
chat-only mode): a person who controls their own sandbox (a sandboxed MCP server runs there), a
model steered by a hostile prompt, a model server or MCP server that answers too much.

Real components throughout: MCP servers written with the SDK (tests/hostile_mcp_server.py,
tests/mcp_server.py), the fake Ollama and fake OpenAI HTTP servers, the real engine, real Docker.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from core import ChatSession, EngineError, FileReady, Notice, Reach, Runtime, Settings
from core.mcp.client import Connection
from core.mcp.config import parse
from core.model_backend import MAX_CALLS_KEPT, TOO_LONG_CALLS, UNREADABLE
from core.render import Reply, thinking_line
from core.tools import MAX_FILES_PER_REPLY
from tests.conftest import closed_port, make_settings, open_runtime, require
from tests.fake_ollama import FakeOllama, Response, raw_lines, text, tool_calls
from tests.fake_openai import DEFAULT_MODEL, FakeOpenAI, raw_events
from tests.mcp_fixtures import HttpServer, http_entry, sandboxed_entry, with_servers
from tests.test_concurrency import wait_until

pytestmark = pytest.mark.asyncio

PYTHON_IMAGE = "llmbot-test-python:latest"  # bash tests/images/python-mcp.sh: Python and the SDK in a sandbox
HOSTILE = Path(__file__).with_name("hostile_mcp_server.py")


def python_image(docker_client: docker.DockerClient) -> None:
    try:
        docker_client.images.get(PYTHON_IMAGE)
    except docker.errors.ImageNotFound:
        require(f"needs the image {PYTHON_IMAGE} (bash tests/images/python-mcp.sh)")


async def turn(runtime: Runtime, message: str, session: str = "s", user: str = "mallory") -> list:
    async with ChatSession(user=user, session=session, runtime=runtime) as chat:
        return [event async for event in chat.events(message)]


def mcp_tasks(label: str) -> list[str]:
    """The names of the tasks still running for connections whose label holds `label`."""
    names = (t.get_name() for t in asyncio.all_tasks())
    return sorted(name for name in names if name.startswith("mcp-") and label in name)


# -- a sandboxed server's session outlives its sandbox ----------------------------------------------
async def test_a_sandboxed_servers_session_goes_with_its_sandbox_reaped_or_forgotten(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    """Each conversation that used a sandboxed server kept its session object and its task for the
    life of the process once its sandbox was reaped (idle) or deleted (/forget): one more per
    conversation, forever, and /admin tools counted them as "down"."""
    python_image(docker_client)
    settings = with_servers(make_settings(tmp_path, fake_ollama.url, vm_image=PYTHON_IMAGE), tmp_path,
                            {"files": sandboxed_entry("files")})
    async with open_runtime(settings, docker_client) as runtime:
        for session in ("idle", "forgotten"):
            fake_ollama.script(tool_calls(("files__files", {})), text("ok"))
            await turn(runtime, "list my files", session=session)
        files = next(s for s in runtime.mcp.status() if s.name == "files")
        assert files.detail == "2 running"
        idle, forgotten = (runtime.sandboxes.name("mallory", s) for s in ("idle", "forgotten"))
        assert mcp_tasks(idle) and mcp_tasks(forgotten)

        await runtime.sandboxes.reap(idle_seconds=0)  # the idle reaper, now
        await runtime.forget_person("mallory", Reach.everything())  # and /forget
        await wait_until(lambda: not mcp_tasks(idle) and not mcp_tasks(forgotten), 30)
        files = next(s for s in runtime.mcp.status() if s.name == "files")
        assert files.detail == "0 running"

        # The next turn there starts the server again, in a new sandbox.
        fake_ollama.script(tool_calls(("files__files", {})), text("ok"))
        await turn(runtime, "again", session="idle")
        tool = [m for m in fake_ollama.requests[-1]["messages"] if m["role"] == "tool"][-1]
        assert not tool["content"].startswith("error"), tool["content"]
        assert next(s for s in runtime.mcp.status() if s.name == "files").detail == "1 running"


# -- an MCP result with more pictures than anyone can use ------------------------------------------
async def test_a_result_of_many_pictures_keeps_as_many_as_a_reply_can_carry(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    """A tool answering with hundreds of (tiny) pictures had each decoded, written into the person's
    /data one Docker call at a time, and stored as a picture of the result: minutes of a turn and
    of Docker's time, all for pictures neither the model nor the person is ever shown."""
    with HttpServer("pics", script=HOSTILE) as pics:
        settings = with_servers(make_settings(tmp_path, fake_ollama.url), tmp_path, {"pics": http_entry(pics)})
        async with open_runtime(settings, docker_client) as runtime:
            fake_ollama.capabilities["qwen3:8b"] = ["completion", "tools", "vision"]
            fake_ollama.script(tool_calls(("pics__pictures", {"n": 60})), text("Many dots."))
            events = await turn(runtime, "draw")
            listing = await runtime.list_files("mallory", "s", "")
    files = [e for e in events if isinstance(e, FileReady)]
    assert len(files) == MAX_FILES_PER_REPLY
    saved = [entry for entry in listing if entry.path.startswith("pics__pictures-")]
    assert len(saved) == MAX_FILES_PER_REPLY
    tool = [m for m in fake_ollama.requests[1]["messages"] if m["role"] == "tool"][-1]
    assert f"[50 more pictures not kept: at most {MAX_FILES_PER_REPLY} from one call]" in tool["content"]


# -- a sandbox that writes its server's output a few bytes at a time --------------------------------
DRIP = """import sys, time
out = sys.stdout.buffer
for _ in range(25_000):
    out.write(b"x" * 100); out.flush(); time.sleep(0.0005)
out.write(b"\\n"); out.flush()
"""


async def test_a_line_dripped_a_few_bytes_at_a_time_costs_the_bot_no_more_than_its_bytes(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    """The server in a person's sandbox is whatever they put there. One that writes a long line 100
    bytes at a time (2.5 MB in 25,000 pieces) had the bot copy and search the whole line so far
    at every piece: about ten seconds of the event loop's CPU here (hours for a slower drip of 8 MB,
    and one such server per conversation), against half a second for reading each byte once."""
    python_image(docker_client)
    settings = with_servers(make_settings(tmp_path, fake_ollama.url, vm_image=PYTHON_IMAGE), tmp_path,
                            {"drip": {"command": "python3", "args": ["-c", DRIP], "sandbox": True, "timeout": 120}})
    async with open_runtime(settings, docker_client) as runtime:
        await runtime.sandboxes.start("mallory", "s")
        began = time.process_time()
        tools = await runtime.mcp.offered("mallory", "s")  # starts the server in the sandbox; it drips
        spent = time.process_time() - began
    assert tools == {}  # what it wrote was no message: no tools, and no failure of the turn
    assert spent < 4.0, f"{spent:.1f} s of CPU to read 2.5 MB"


# -- a server that says its tools changed, again and again ---------------------------------------
@pytest.mark.parametrize("transport", ["http", "stdio", "2025"])
async def test_a_flood_of_list_changes_is_listed_a_few_times_not_once_each(transport: str) -> None:
    """Each "the tools changed" had the bot list the server's tools again at once: 200 notifications
    in 4 s, 200 listings, each parsed on the event loop (up to 8 MB from a person's own sandboxed
    server). The change itself must still arrive: the tool added last is listed."""
    server = HttpServer("flood", script=HOSTILE).start() if transport == "http" else None
    entry = {"url": server.url} if server else {"command": sys.executable, "args": [str(HOSTILE), "stdio", "flood"]}
    config = parse({"mcpServers": {"flood": entry}}, "test", {})[0]
    connection = Connection(config, mode="legacy" if transport == "2025" else "auto")
    try:
        connection.start()
        await asyncio.wait_for(connection.settled(), 60)
        await connection.call(connection.tools["flood__flood"], {"n": 200, "pause": 0.02})
        await wait_until(lambda: "flood__late" in connection.tools, 20)
        listings = await connection.call(connection.tools["flood__listings"], {})
        assert int(listings.content[0].text) <= 6
    finally:
        await connection.close()
        if server is not None:
            server.stop()


# -- a model message with thousands of tool calls, or arguments without end ------------------------
def on(api: str, tmp_path: Path, fake_ollama: FakeOllama, fake_openai: FakeOpenAI, **overrides: Any) -> Settings:
    """Settings whose model is served by `api`'s fake server (chat only: no Docker is needed)."""
    if api == "openai":
        return make_settings(tmp_path, f"http://127.0.0.1:{closed_port()}", model_api="openai",
                             openai_base_url=fake_openai.url, openai_model=DEFAULT_MODEL, tools=False, **overrides)
    return make_settings(tmp_path, fake_ollama.url, tools=False, **overrides)


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_thousands_of_tool_calls_in_one_message_are_counted_not_stored(
        api: str, tmp_path: Path, fake_ollama: FakeOllama, fake_openai: FakeOpenAI,
        docker_client: docker.DockerClient) -> None:
    """A model in a loop (or one a prompt talked into it) calling a tool 3,000 times in one message
    had every call stored with its "not run" result: 6,000 rows, all sent back with every later
    request of the conversation. The cap runs 8; the notice still counts the rest."""
    fake = fake_openai if api == "openai" else fake_ollama
    fake.script(tool_calls(*[("search", {"q": str(n)}) for n in range(3000)]), text("Sorry."))
    async with open_runtime(on(api, tmp_path, fake_ollama, fake_openai), docker_client) as runtime:
        async with ChatSession(user="mallory", session="s", runtime=runtime) as chat:
            events = [event async for event in chat.events("search everything")]
            stored = await chat.history()
    assert any(isinstance(e, Notice) and e.text.startswith("2992 more commands the model asked for in one go "
                                                            "were not run") for e in events)
    calls = [c for m in stored if m["role"] == "assistant" for c in json.loads(m["tool_calls"] or "[]")]
    results = [m for m in stored if m["role"] == "tool"]
    assert len(calls) == len(results) == MAX_CALLS_KEPT
    assert results[0]["content"].startswith("error: unknown tool 'search'")  # chat only: the model's to correct
    assert results[-1]["content"].startswith("not run: at most 8 commands run per message")


async def test_tool_call_arguments_without_end_are_cut_off_with_one_line(
        tmp_path: Path, fake_ollama: FakeOllama, fake_openai: FakeOpenAI,
        docker_client: docker.DockerClient) -> None:
    """An OpenAI-compatible server streams a call's arguments as pieces of JSON text, and the bot
    kept every piece until the stream ended: a server (or a model talked into it) sending 64 MB
    of them had all of it in memory, then parsed, then sent back as the model's own call."""
    head = {"index": 0, "id": "call_big", "type": "function", "function": {"name": "search", "arguments": '{"q": "'}}
    piece = {"index": 0, "function": {"arguments": "x" * 1024 ** 2}}
    fake_openai.strict = False
    fake_openai.script(raw_events(*(json.dumps(chunk(delta)) for delta in [head] + [piece] * 64)), text("again"))
    async with open_runtime(on("openai", tmp_path, fake_ollama, fake_openai), docker_client) as runtime:
        with pytest.raises(EngineError) as failed:
            await turn(runtime, "search")
    assert failed.value.user_message == TOO_LONG_CALLS
    assert fake_openai.pending == 1  # the model was not asked again with a 64 MB call of its own


def chunk(call_delta: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1700000000, "model": DEFAULT_MODEL,
            "choices": [{"index": 0, "delta": {"tool_calls": [call_delta]}, "finish_reason": None}]}


# -- tool-call arguments nested thousands deep -----------------------------------------------------
def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


async def test_arguments_nested_thousands_deep_are_a_tool_error_or_one_line_never_a_crash(
        tmp_path: Path, fake_ollama: FakeOllama, fake_openai: FakeOpenAI, docker_client: docker.DockerClient,
        caplog: pytest.LogCaptureFixture) -> None:
    """A call whose arguments nest 5,000 deep (a prompt asking for it, a model that loops) raised
    Python's RecursionError out of the JSON reader: the turn failed with "Something went wrong on my
    side" and a traceback in the log. From the OpenAI API (arguments as JSON text) it is a tool
    error the model reads and corrects, like any broken JSON; from Ollama, whose whole chunk
    cannot be read then, the line for an unreadable reply."""
    head = {"index": 0, "id": "call_deep", "type": "function",
            "function": {"name": "search", "arguments": nested(5000)}}
    fake_openai.strict = False
    fake_openai.script(raw_events(json.dumps(chunk(head))), text("Fixed it."))
    async with open_runtime(on("openai", tmp_path, fake_ollama, fake_openai), docker_client) as runtime:
        events = await turn(runtime, "nest")
    result = [m for m in fake_openai.requests[1]["messages"] if m["role"] == "tool"][0]["content"]
    assert result.startswith("error: the arguments were nested too deeply")
    assert events[-1].text == "Fixed it."

    line = ('{"model": "qwen3:8b", "created_at": "2024-01-01T00:00:00Z", "message": {"role": "assistant", '
            '"content": "", "tool_calls": [{"function": {"name": "search", "arguments": %s}}]}, "done": false}'
            % nested(5000))
    fake_ollama.script(raw_lines(line))
    (tmp_path / "o").mkdir()
    async with open_runtime(on("ollama", tmp_path / "o", fake_ollama, fake_openai), docker_client) as runtime:
        with pytest.raises(EngineError) as failed:
            await turn(runtime, "nest")
    assert failed.value.user_message == UNREADABLE
    assert "Traceback" not in caplog.text  # one warning line for operators, no crash


# -- what a sandboxed server writes to its standard error ------------------------------------------
FORGER = """import sys
sys.stderr.write("bye\\n2031-01-01 12:00:00 ERROR    core.runtime: the database is corrupt; run /admin forget\\n")
sys.stderr.flush()
"""


async def test_a_sandboxed_servers_last_words_are_one_line_of_the_log(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient,
        caplog: pytest.LogCaptureFixture) -> None:
    """The bot logs what a sandboxed server last wrote to its standard error when it ends: the
    sandbox's own words, newlines and all, so a person could write whole lines into the operators'
    log that look like the bot's own."""
    python_image(docker_client)
    settings = with_servers(make_settings(tmp_path, fake_ollama.url, vm_image=PYTHON_IMAGE), tmp_path,
                            {"forger": {"command": "python3", "args": ["-c", FORGER], "sandbox": True}})
    caplog.set_level(logging.INFO, logger="core.mcp")
    async with open_runtime(settings, docker_client) as runtime:
        await runtime.sandboxes.start("mallory", "s")
        assert await runtime.mcp.offered("mallory", "s") == {}
        await wait_until(lambda: "last words" in caplog.text, 30)
    [said] = [r.getMessage() for r in caplog.records if "last words" in r.getMessage()]
    assert "\n" not in said and "the database is corrupt" in said


# -- held: a server's tools named like the sandbox's own ---------------------------------------------
async def test_a_servers_execute_terminal_never_takes_the_place_of_the_sandboxs(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    """Held: a server naming its tools execute_terminal and send_file offers them as
    hx__execute_terminal and hx__send_file; execute_terminal is still the sandbox's own."""
    with HttpServer("hx", script=HOSTILE) as hx:
        settings = with_servers(make_settings(tmp_path, fake_ollama.url), tmp_path, {"hx": http_entry(hx)})
        async with open_runtime(settings, docker_client) as runtime:
            fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo from-the-sandbox"}),
                                          ("hx__execute_terminal", {"command": "echo x"})), text("ok"))
            await turn(runtime, "run")
    offered = [t["function"]["name"] for t in fake_ollama.requests[0]["tools"]]
    assert offered.count("execute_terminal") == 1 and offered.count("send_file") == 1
    assert {"hx__execute_terminal", "hx__send_file"} <= set(offered)
    ours, theirs = [m["content"] for m in fake_ollama.requests[1]["messages"] if m["role"] == "tool"]
    assert "from-the-sandbox" in ours and theirs == "hostile server ran 'echo x'"


# -- a reasoning flood -----------------------------------------------------------------------------
async def test_a_reasoning_flood_costs_the_reply_no_more_than_its_last_words(
        tmp_path: Path, fake_ollama: FakeOllama, fake_openai: FakeOpenAI, docker_client: docker.DockerClient) -> None:
    """Held: 10 MB of `reasoning_content` in 1 KB pieces (a runaway model, or a server). The reply
    keeps all of it in one string (a copy at each piece it is handed: 20 s for 10,000 of them), but
    the turn's outbox hands it over in batches as fast as the server sends, so few copies are made;
    a model slow enough to send them one by one never reaches such sizes."""
    reasoning = "".join(f"step {n:06d}. " for n in range(800_000))[:10 * 1024 ** 2]
    fake_openai.script(Response(content="Done.", thinking=reasoning, chunk_size=1024))
    async with open_runtime(on("openai", tmp_path, fake_ollama, fake_openai), docker_client) as runtime:
        reply = Reply(show_thinking=True)
        spent = 0.0
        async with ChatSession(user="mallory", session="s", runtime=runtime) as chat:
            async for event in chat.events("think hard"):
                began = time.process_time()
                reply.apply(event)
                spent += time.process_time() - began
    assert reply.render() == thinking_line(reasoning) + "\nDone."
    assert spent < 3.0, f"{spent:.1f} s of CPU to fold the reasoning in"


# -- a sandboxed server that asks and never listens -------------------------------------------------
ASKER = """import sys, time
out = sys.stdout.buffer
for n in range(100_000):
    out.write(b'{"jsonrpc": "2.0", "id": %d, "method": "ping"}\\n' % n)
out.flush()
time.sleep(600)
"""


async def test_a_sandboxed_server_asking_without_listening_cannot_pile_up_the_bots_answers(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    """The server in a person's sandbox may send requests (a ping) as fast as it can print them and
    never read the answers: the SDK starts a task per request, each waiting to write its answer
    into a pipe nobody reads. 300,000 pings (12 MB) held 300,000 tasks and 3 GB of the bot's
    memory here, for as long as the session lived: one person could run the bot out of memory.
    The sandbox's output is now read only while it is owed few answers."""
    python_image(docker_client)
    settings = with_servers(make_settings(tmp_path, fake_ollama.url, vm_image=PYTHON_IMAGE), tmp_path,
                            {"asker": {"command": "python3", "args": ["-c", ASKER], "sandbox": True, "timeout": 120}})
    async with open_runtime(settings, docker_client) as runtime:
        await runtime.sandboxes.start("mallory", "s")
        before = len(asyncio.all_tasks())
        listing = asyncio.create_task(runtime.mcp.offered("mallory", "s"))
        try:
            grown = 0
            for _ in range(16):  # 8 s: tens of thousands of tasks, had they piled up
                await asyncio.sleep(0.5)
                grown = max(grown, len(asyncio.all_tasks()) - before)
        finally:
            listing.cancel()
            await asyncio.gather(listing, return_exceptions=True)
    assert grown < 200, f"{grown} more tasks"
