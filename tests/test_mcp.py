"""MCP servers as tools (issue 20): real servers written with the SDK (tests/mcp_server.py), one over
Streamable HTTP on 127.0.0.1 and one over stdio as the bot's child process, a scripted model (the
fake Ollama), the real engine (history, audit, the tool loop) and, for the sandboxed server, Docker."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import docker
import pytest
import pytest_asyncio

from core import ChatSession, FileReady, Notice, Reach, Runtime, Scope, Stopped, ToolFinished
from core.mcp.client import Connection
from core.mcp.config import ServerConfig, load, parse
from core.store import Place
from tests.conftest import make_settings, open_runtime, require
from tests.fake_ollama import FakeOllama, text, tool_calls
from tests.mcp_fixtures import HttpServer, http_entry, sandboxed_entry, stdio_entry, with_servers


@pytest.fixture(scope="module")
def web() -> Iterator[HttpServer]:
    """One Streamable HTTP server for the module's tests that leave it as they found it."""
    with HttpServer("web") as server:
        yield server


@pytest_asyncio.fixture
async def rt(tmp_path: Path, fake_ollama: FakeOllama, web: HttpServer,
             docker_client: docker.DockerClient) -> AsyncIterator[Runtime]:
    """A runtime with two servers that both have a `search` tool: `web` (HTTP) and `wiki` (stdio)."""
    settings = with_servers(make_settings(tmp_path, fake_ollama.url), tmp_path,
                            {"web": http_entry(web, timeout=3), "wiki": stdio_entry("wiki")})
    async with open_runtime(settings, docker_client) as runtime:
        yield runtime


async def turn(runtime: Runtime, message: str, session: str = "s", user: str = "alice") -> list:
    async with ChatSession(user=user, session=session, runtime=runtime) as chat:
        return [event async for event in chat.events(message)]


def offered(request: dict) -> dict[str, dict]:
    return {t["function"]["name"]: t["function"] for t in request.get("tools") or []}


def results(request: dict) -> list[str]:
    """The tool results the model read in this request, after its last user message."""
    messages = request["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return [m["content"] for m in messages[last_user:] if m["role"] == "tool"]


@pytest.mark.asyncio
async def test_calls_and_results_reach_the_model_and_two_servers_never_collide(rt: Runtime,
                                                                              fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("web__search", {"q": "paris"}), ("wiki__search", {"q": "rome"})), text("Done."))
    events = await turn(rt, "look things up")
    tools = offered(fake_ollama.requests[0])
    # Both servers' `search`, each under its own name, with the SDK's inputSchema as Ollama parameters.
    assert {"web__search", "wiki__search", "execute_terminal", "send_file"} <= set(tools)
    assert tools["web__search"]["parameters"]["properties"]["q"]["type"] == "string"
    assert tools["web__search"]["parameters"]["required"] == ["q"]
    assert tools["web__search"]["description"].startswith("Search the web")
    assert tools["wiki__add"]["parameters"]["properties"]["b"]["description"].endswith("default: 2")
    assert results(fake_ollama.requests[1]) == ["web result for 'paris'", "wiki result for 'rome'"]
    finished = [e for e in events if isinstance(e, ToolFinished)]
    assert [(f.name, f.exit_code, f.error) for f in finished] == [("web__search", 0, False), ("wiki__search", 0, False)]


@pytest.mark.asyncio
async def test_a_stdio_server_sees_only_the_env_the_file_gives_it(tmp_path: Path, fake_ollama: FakeOllama,
                                                                 docker_client: docker.DockerClient,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token-value")
    monkeypatch.setenv("WIKI_KEY", "k-123")
    settings = with_servers(make_settings(tmp_path, fake_ollama.url), tmp_path,
                            {"wiki": stdio_entry("wiki", env={"WIKI_KEY": "given"})})
    async with open_runtime(settings, docker_client) as runtime:
        fake_ollama.script(tool_calls(("wiki__env_keys", {})), text("ok"))
        await turn(runtime, "env?")
    keys = results(fake_ollama.requests[1])[0].split()
    assert "WIKI_KEY" in keys and "DISCORD_TOKEN" not in keys
    assert set(keys) <= {"WIKI_KEY", "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LC_CTYPE"}


@pytest.mark.asyncio
async def test_the_files_headers_ride_on_every_request(tmp_path: Path, fake_ollama: FakeOllama, web: HttpServer,
                                                       docker_client: docker.DockerClient) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"web": http_entry(web, headers={"X-Key": "Bearer ${WEB_KEY}"})}}))
    settings = make_settings(tmp_path, fake_ollama.url).replace(mcp_config=str(path),
                                                                mcp_servers=load(str(path), {"WEB_KEY": "k-42"}))
    async with open_runtime(settings, docker_client) as runtime:
        fake_ollama.script(tool_calls(("web__header", {"name": "X-Key"})), text("ok"))
        await turn(runtime, "key?")
    assert results(fake_ollama.requests[1]) == ["Bearer k-42"]


@pytest.mark.asyncio
async def test_an_error_result_is_a_tool_error_the_model_reads(rt: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("web__fail", {"message": "no such page"}), ("web__search", {"q": "x"})),
                       text("Sorry."))
    events = await turn(rt, "fail please")
    assert results(fake_ollama.requests[1]) == ["error: Error executing tool fail: no such page",
                                                "web result for 'x'"]
    finished = [e for e in events if isinstance(e, ToolFinished)]
    assert (finished[0].exit_code, finished[1].exit_code) == (1, 0)
    rows = await rt.audit(Reach.everything(), "alice", "s")
    assert [(r.command, r.exit_code) for r in reversed(rows)] == [
        ('web__fail {"message": "no such page"}', 1), ('web__search {"q": "x"}', 0)]


@pytest.mark.asyncio
async def test_a_hung_server_ends_the_call_not_the_turn(rt: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("web__hang", {"seconds": 60}), ("wiki__search", {"q": "y"})), text("Moving on."))
    began = time.monotonic()
    events = await turn(rt, "wait")
    assert time.monotonic() - began < 30  # the server's timeout is 3 s
    timed_out, answered = results(fake_ollama.requests[1])
    assert timed_out.startswith("timed out: no answer within 3 s")
    assert answered == "wiki result for 'y'"
    assert events[-1].text == "Moving on."
    row = (await rt.audit(Reach.everything(), "alice", "s"))[1]
    assert row.command == 'web__hang {"seconds": 60}' and row.timed_out and row.exit_code is None


@pytest.mark.asyncio
async def test_the_per_message_cap_holds_for_mcp_calls(tmp_path: Path, fake_ollama: FakeOllama, web: HttpServer,
                                                       docker_client: docker.DockerClient) -> None:
    settings = with_servers(make_settings(tmp_path, fake_ollama.url, max_tool_calls_per_round=2), tmp_path,
                            {"web": http_entry(web)})
    async with open_runtime(settings, docker_client) as runtime:
        fake_ollama.script(tool_calls(*[("web__add", {"a": i}) for i in range(3)]), text("ok"))
        events = await turn(runtime, "add")
        assert results(fake_ollama.requests[1])[:2] == ["2", "3"]  # a + the default b=2
        assert results(fake_ollama.requests[1])[2].startswith("not run: at most 2 commands run per message")
        assert any(isinstance(e, Notice) and "1 more commands" in e.text for e in events)
        assert len(await runtime.audit(Reach.everything(), "alice", "s")) == 2


@pytest.mark.asyncio
async def test_output_is_capped_and_pictures_go_to_the_person(tmp_path: Path, fake_ollama: FakeOllama,
                                                             web: HttpServer,
                                                             docker_client: docker.DockerClient) -> None:
    settings = with_servers(make_settings(tmp_path, fake_ollama.url, output_limit=1000), tmp_path,
                            {"web": http_entry(web)})
    async with open_runtime(settings, docker_client) as runtime:
        fake_ollama.script(tool_calls(("web__long", {"n": 50_000}), ("web__picture", {})), text("ok"))
        events = await turn(runtime, "long")
    long, picture = results(fake_ollama.requests[1])
    assert len(long) < 1200 and "bytes cut from the middle" in long and long.startswith("abcdef")
    long_done = next(e for e in events if isinstance(e, ToolFinished))
    assert long_done.full_output_id and long_done.full_output_bytes == 50_000
    assert picture.startswith("here is a red dot\n[picture 1: image/png]")
    assert "attached to your reply" in picture
    files = [e for e in events if isinstance(e, FileReady)]
    assert len(files) == 1 and files[0].data.startswith(b"\x89PNG") and files[0].name.endswith(".png")


@pytest.mark.asyncio
async def test_stop_cancels_a_running_call(rt: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("wiki__hang", {"seconds": 120})), text("never"))
    async with ChatSession(user="alice", session="s", runtime=rt) as chat:
        seen: list = []

        async def listen() -> None:
            async for event in chat.events("hang"):
                seen.append(event)

        task = asyncio.ensure_future(listen())
        for _ in range(200):
            if rt.audit and any(getattr(e, "name", "") == "wiki__hang" for e in seen):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        began = time.monotonic()
        assert await chat.stop()
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - began < 10
        history = await chat.history()
    assert isinstance(seen[-1], Stopped)
    assert history[-1]["role"] == "tool" and history[-1]["content"].startswith("stopped:")
    row = (await rt.audit(Reach.everything(), "alice", "s"))[0]
    assert row.command == 'wiki__hang {"seconds": 120}' and row.cancelled


@pytest.mark.asyncio
async def test_a_server_that_dies_is_a_tool_error_and_one_incident_then_comes_back(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    server = HttpServer("flaky").start()
    try:
        settings = with_servers(make_settings(tmp_path, fake_ollama.url), tmp_path,
                                {"flaky": http_entry(server, timeout=5)})
        async with open_runtime(settings, docker_client) as runtime:
            fake_ollama.script(tool_calls(("flaky__search", {"q": "1"})), text("one"))
            await turn(runtime, "first")
            assert results(fake_ollama.requests[-1]) == ["flaky result for '1'"]

            server.stop()
            for attempt in (2, 3):  # still offered (its tools are known), each call a tool error
                fake_ollama.script(tool_calls(("flaky__search", {"q": str(attempt)}), ("execute_terminal",
                                                                                        {"command": "echo alive"})),
                                   text("down"))
                await turn(runtime, f"attempt {attempt}")
                down, other = results(fake_ollama.requests[-1])
                assert down.startswith("error: the tool server 'flaky' is unavailable right now")
                assert "alive" in other  # the other tools keep working
            incidents = [i for i in runtime.incidents.open() if i.part == "MCP server flaky"]
            assert len(incidents) == 1

            server.start()
            fake_ollama.script(tool_calls(("flaky__search", {"q": "4"})), text("back"))
            await turn(runtime, "again")
            assert results(fake_ollama.requests[-1]) == ["flaky result for '4'"]
            assert not [i for i in runtime.incidents.open() if i.part == "MCP server flaky"]
    finally:
        server.stop()


@pytest.mark.asyncio
async def test_a_list_change_offers_the_new_tool(tmp_path: Path, fake_ollama: FakeOllama,
                                                 docker_client: docker.DockerClient) -> None:
    with HttpServer("grower") as server:
        settings = with_servers(make_settings(tmp_path, fake_ollama.url), tmp_path, {"grower": http_entry(server)})
        async with open_runtime(settings, docker_client) as runtime:
            fake_ollama.script(tool_calls(("grower__grow", {})), text("grown"))
            await turn(runtime, "grow")
            assert "grower__extra" not in offered(fake_ollama.requests[0])
            for _ in range(100):  # the server's event arrives on its own schedule
                if "grower__extra" in (await runtime.mcp.offered("alice", "s")):
                    break
                await asyncio.sleep(0.1)
            fake_ollama.script(tool_calls(("grower__extra", {})), text("ok"))
            await turn(runtime, "extra")
            assert "grower__extra" in offered(fake_ollama.requests[-2])
            assert results(fake_ollama.requests[-1]) == ["extra here"]


@pytest.mark.asyncio
async def test_a_server_turned_off_in_a_place_is_not_offered_there(rt: Runtime, fake_ollama: FakeOllama) -> None:
    await rt.places.set_tool_server(Scope.server("1"), "web", False, by="admin")
    await rt.places.set_tool_server(Scope.channel("20"), "web", True, by="admin")
    for channel, expected in (("10", False), ("20", True)):
        fake_ollama.script(tool_calls(("web__search", {"q": "z"})), text("ok"))
        async with ChatSession(user="alice", session=channel, runtime=rt,
                               place=Place(channel=channel, server="1")) as chat:
            [event async for event in chat.events("search")]
        assert ("web__search" in offered(fake_ollama.requests[-2])) is expected
        assert "wiki__search" in offered(fake_ollama.requests[-2])
        answer = results(fake_ollama.requests[-1])[0]
        assert answer == "web result for 'z'" if expected else answer.startswith("error: unknown tool 'web__search'")
    assert await rt.places.tools_off(Place(channel="10", server="1")) == {"web"}


PYTHON_IMAGE = "llmbot-test-python:latest"  # bash tests/images/python-mcp.sh


@pytest.mark.asyncio
async def test_a_sandboxed_server_runs_in_each_conversations_own_sandbox_and_sees_only_its_data(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    try:
        docker_client.images.get(PYTHON_IMAGE)
    except docker.errors.ImageNotFound:
        require(f"needs the image {PYTHON_IMAGE} (bash tests/images/python-mcp.sh)")
    settings = with_servers(make_settings(tmp_path, fake_ollama.url, vm_image=PYTHON_IMAGE), tmp_path,
                            {"files": sandboxed_entry("files", env={"WHO": "the file's"})})
    async with open_runtime(settings, docker_client) as runtime:
        for user in ("alice", "bob"):
            async with ChatSession(user=user, session="s", runtime=runtime) as chat:
                await chat.save_upload(f"{user}.txt", f"{user}'s notes".encode())
        for user, other in (("alice", "bob"), ("bob", "alice")):
            fake_ollama.script(tool_calls(("files__files", {}), ("files__read", {"path": f"/data/{user}.txt"}),
                                          ("files__read", {"path": "/etc/hostname"}), ("files__env_keys", {})),
                               text("ok"))
            await turn(runtime, "what is in my files?", user=user)
            listing, mine, hostname, env = results(fake_ollama.requests[-1])
            assert f"{user}.txt" in listing.split() and f"{other}.txt" not in listing
            assert mine == f"{user}'s notes"
            assert hostname.strip() == "sandbox"  # it runs in the sandbox, not on the bot's machine
            assert "WHO" in env.split() and "DISCORD_TOKEN" not in env.split()
        assert offered(fake_ollama.requests[0])["files__read"]["parameters"]["required"] == ["path"]
        # one server per conversation, each in its own container
        running = {key[1] for key, c in runtime.mcp._boxed.items() if c.state == "up"}
        assert running == {"alice", "bob"}


@pytest.mark.asyncio
async def test_chat_only_mode_offers_the_shared_servers_but_not_the_sandboxed_ones(
        tmp_path: Path, fake_ollama: FakeOllama, web: HttpServer, docker_client: docker.DockerClient) -> None:
    settings = with_servers(make_settings(tmp_path, fake_ollama.url, tools=False), tmp_path,
                            {"web": http_entry(web), "files": sandboxed_entry("files")})
    async with open_runtime(settings, docker_client) as runtime:
        fake_ollama.script(tool_calls(("web__search", {"q": "tea"})), text("ok"))
        await turn(runtime, "search")
        tools = offered(fake_ollama.requests[0])
        assert tools and all(name.startswith("web__") for name in tools)
        assert "Tools named service__tool" in fake_ollama.requests[0]["messages"][0]["content"]
        assert results(fake_ollama.requests[1]) == ["web result for 'tea'"]
        files = next(s for s in runtime.mcp.status() if s.name == "files")
        assert (files.state, files.detail) == ("unavailable", "needs the Docker sandbox, which chat-only mode "
                                                              "(TOOLS=off) does not have")


@pytest.mark.asyncio
async def test_a_picture_is_shown_to_a_vision_model_with_the_result(rt: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.capabilities["qwen3:8b"] = ["completion", "tools", "vision"]
    fake_ollama.script(tool_calls(("wiki__picture", {})), text("A red dot."))
    events = await turn(rt, "draw")
    tool = [m for m in fake_ollama.requests[1]["messages"] if m["role"] == "tool"][-1]
    assert len(tool["images"]) == 1 and base64.b64decode(tool["images"][0]).startswith(b"\x89PNG")
    saved = tool["content"].split("saved as ")[1].rstrip(")]")
    assert "picture 1 is shown to you" in tool["content"] and saved.startswith("/data/wiki__picture-")
    assert [e.name for e in events if isinstance(e, FileReady)] == [saved.removeprefix("/data/")]


@pytest.mark.asyncio
async def test_a_2025_era_session_lists_calls_and_hears_list_changes() -> None:
    """Most servers in use speak the 2025 protocol (the initialize handshake, notifications sent
    unasked): the same connection, held to it, lists the tools, calls one, and lists them again
    on the server's notification."""
    config: ServerConfig = parse({"mcpServers": {"old": stdio_entry("old")}}, "test", {})[0]
    connection = Connection(config, mode="legacy")
    try:
        connection.start()
        await asyncio.wait_for(connection.settled(), 60)
        assert connection.state == "up" and "old__grow" in connection.tools and "old__extra" not in connection.tools
        assert (await connection.session()).protocol_version == "2025-11-25"
        result = await connection.call(connection.tools["old__grow"], {})
        assert result.content[0].text == "grown"
        for _ in range(100):
            if "old__extra" in connection.tools:
                break
            await asyncio.sleep(0.05)
        assert "old__extra" in connection.tools
    finally:
        await connection.close()
    assert connection.state == "closed"
