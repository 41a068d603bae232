"""Failures: a clear message, the user's message kept, nothing half-written stored as complete, next turn fine."""
from __future__ import annotations

import asyncio
from pathlib import Path

import docker
import pytest

from core import ChatSession, ModelError, OllamaUnavailable, Runtime, SandboxUnavailable
from core.sandbox.docker import DockerProvider
from core.sandbox import Terminal
from core.events import ToolFinished, ToolStarted
from core.model_client import ModelServer
from tests.conftest import closed_port, make_settings, open_runtime, remove_containers
from tests.fake_ollama import FakeOllama, cut, error, hang, request_problems, stream_error, text, tool_calls
from tests.socket_proxy import SocketProxy

pytestmark = pytest.mark.asyncio


def stored(rt: Runtime, chat: ChatSession) -> list[tuple[str, str, bool]]:
    return [(m.role, m.content, m.complete) for m in rt.history.messages(chat.session_id)]


async def reply(chat: ChatSession, message: str) -> str:
    return "".join([p async for p in chat.chat_stream(message)])



async def test_ollama_unreachable(tmp_path: Path, docker_client: docker.DockerClient,
                                  fake_ollama: FakeOllama) -> None:
    dead = make_settings(tmp_path, f"http://127.0.0.1:{closed_port()}")
    rt = Runtime(dead)
    try:
        async with ChatSession(user="alice", session="s", runtime=rt) as chat:
            with pytest.raises(OllamaUnavailable) as info:
                await reply(chat, "hello?")
            assert "not reachable" in str(info.value) and "\n" not in str(info.value)
            assert stored(rt, chat) == [("user", "hello?", True)]
            # Ollama comes back (here: the host is pointed at a live server) and the next turn works.
            rt.settings = rt.settings.replace(ollama_host=fake_ollama.url)
            rt.model_server = ModelServer(rt.settings)
            fake_ollama.script(text("I'm back."))
            assert await reply(chat, "and now?") == "I'm back."
        sent = [m["content"] for m in fake_ollama.requests[0]["messages"][1:]]
        assert sent == ["hello?", "and now?"]
    finally:
        await rt.close()
        remove_containers(docker_client, dead.vm_name_prefix)


async def test_connection_dropped_mid_stream(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(cut("The answer is forty"), text("The answer is 42."))
    async with ChatSession(user="alice", session="cut") as chat:
        parts: list[str] = []
        with pytest.raises(OllamaUnavailable, match="dropped"):
            async for part in chat.chat_stream("what is the answer?"):
                parts.append(part)
        assert "".join(parts) == "The answer is forty"
        assert stored(runtime, chat) == [("user", "what is the answer?", True),
                                         ("assistant", "The answer is forty", False)]
        assert await reply(chat, "try again") == "The answer is 42."
    retry = [m["content"] for m in fake_ollama.requests[1]["messages"][1:]]
    assert retry == ["what is the answer?", "try again"]  # the cut reply is never sent back


@pytest.mark.parametrize("partial", ["", "Let me think about th"], ids=["before the reply", "mid-reply"])
async def test_a_hung_ollama_ends_the_turn_and_frees_the_session(tmp_path: Path, docker_client: docker.DockerClient,
                                                                 fake_ollama: FakeOllama, partial: str) -> None:
    rt = Runtime(make_settings(tmp_path, fake_ollama.url, ollama_stall_timeout=1.0))
    fake_ollama.script(hang(partial), text("Here now."))
    loop = asyncio.get_running_loop()
    try:
        async with ChatSession(user="alice", session="hung", runtime=rt) as chat:
            began = loop.time()
            with pytest.raises(OllamaUnavailable) as info:
                await asyncio.wait_for(reply(chat, "hello?"), 10)  # without a stall timeout: fails, not hangs
            assert loop.time() - began < 3
            assert str(info.value) == "The AI model stopped answering (nothing for 1 s). Please try again."
            kept = [("assistant", partial, False)] if partial else []
            assert stored(rt, chat) == [("user", "hello?", True), *kept]
            assert chat.phase is None  # the session is free: the next message is answered
            assert await reply(chat, "still there?") == "Here now."
        assert [m["content"] for m in fake_ollama.requests[1]["messages"][1:]] == ["hello?", "still there?"]
    finally:
        fake_ollama.release()
        await rt.close()
        remove_containers(docker_client, rt.settings.vm_name_prefix)


async def test_error_inside_the_stream(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(stream_error("Partial", "model runner crashed"), text("fine now"))
    async with ChatSession(user="alice", session="err") as chat:
        with pytest.raises(ModelError, match="model runner crashed"):
            await reply(chat, "hi")
        assert stored(runtime, chat)[0] == ("user", "hi", True)
        assert all(not complete for role, _, complete in stored(runtime, chat) if role == "assistant")
        assert await reply(chat, "again") == "fine now"


async def test_model_not_pulled(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(error(404, 'model "qwen3:8b" not found, try pulling it first'))
    async with ChatSession(user="alice", session="404") as chat:
        with pytest.raises(ModelError) as info:
            await reply(chat, "hi")
    assert "ollama pull qwen3:8b" in str(info.value)
    assert stored(runtime, chat) == [("user", "hi", True)]


async def test_docker_unreachable_during_a_tool_call(runtime: Runtime, fake_ollama: FakeOllama,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{closed_port()}")
    runtime.sandboxes = DockerProvider(runtime.settings)
    runtime.terminal = Terminal(runtime.sandboxes)
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "ls"})), text("Plain answer."))
    async with ChatSession(user="alice", session="nodocker") as chat:
        with pytest.raises(SandboxUnavailable) as info:
            await reply(chat, "list files")
        assert "Docker is not reachable" in str(info.value)
        rows = stored(runtime, chat)
        assert [r[0] for r in rows] == ["user", "assistant", "tool"]
        assert rows[2][1] == "error: " + SandboxUnavailable.user_line  # the model reads what a user may read
        assert await reply(chat, "just talk then") == "Plain answer."
    roles = [m["role"] for m in fake_ollama.requests[1]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]


async def test_a_dead_container_is_replaced_during_a_turn(runtime: Runtime, fake_ollama: FakeOllama,
                                                          docker_client: docker.DockerClient) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo first"})), text("ok"),
                       tool_calls(("execute_terminal", {"command": "echo second"})), text("still ok"))
    async with ChatSession(user="alice", session="dead") as chat:
        assert await reply(chat, "one") == "ok"
        docker_client.containers.get(runtime.sandboxes.name("alice", "dead")).kill()
        assert await reply(chat, "two") == "still ok"
    assert "second" in fake_ollama.requests[3]["messages"][-1]["content"]


async def test_unexpected_errors_never_leak_a_traceback(runtime: Runtime, fake_ollama: FakeOllama,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a, **_k):
        raise RuntimeError("internal detail that must not reach users")
    monkeypatch.setattr(runtime.history, "window", broken)
    from core import EngineError
    async with ChatSession(user="alice", session="boom") as chat:
        with pytest.raises(EngineError) as info:
            await reply(chat, "hi")
    assert "internal detail" not in str(info.value) and "log" in str(info.value)


async def test_lost_contact_with_docker_during_a_command(tmp_path: Path, fake_ollama: FakeOllama,
                                                         docker_client: docker.DockerClient,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = await SocketProxy().start()  # Docker reached through a connection the test can cut
    monkeypatch.setenv("DOCKER_HOST", proxy.url)
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 30"})),
                       tool_calls(("execute_terminal", {"command": "echo back"})), text("Docker is back."))
    async with open_runtime(make_settings(tmp_path, fake_ollama.url), docker_client) as rt:
        async with ChatSession(user="alice", session="lost", runtime=rt) as chat:
            events: list[object] = []
            started = asyncio.Event()

            async def turn() -> None:
                async for event in chat.events("wait a while"):
                    events.append(event)
                    if isinstance(event, ToolStarted):
                        started.set()

            task = asyncio.create_task(turn())
            await asyncio.wait_for(started.wait(), 60)
            await asyncio.sleep(1)  # sleep 30 is running in the sandbox
            await proxy.cut()
            with pytest.raises(SandboxUnavailable) as info:
                await asyncio.wait_for(task, 20)
            line = str(info.value)
            assert line.startswith("Lost contact with Docker while the command ran") and "\n" not in line
            told = info.value.user_message
            assert told == SandboxUnavailable.user_line
            assert [(e.output, e.error) for e in events if isinstance(e, ToolFinished)] == [(told, True)]
            assert stored(rt, chat) == [("user", "wait a while", True), ("assistant", "", True),
                                        ("tool", f"error: {told}", True)]

            await proxy.restore()
            assert await reply(chat, "is it back?") == "Docker is back."
            assert request_problems(fake_ollama.requests[1]) == []
            # The command that lost its connection was killed before the next one ran.
            container = docker_client.containers.get(rt.sandboxes.name("alice", "lost"))
            assert b"sleep 30" not in container.exec_run("ps").output
    await proxy.cut()


async def test_a_new_upload_dir_is_what_the_sandbox_sees(tmp_path: Path, fake_ollama: FakeOllama,
                                                         docker_client: docker.DockerClient) -> None:
    first = make_settings(tmp_path, fake_ollama.url, upload_dir=str(tmp_path / "old"))
    async with open_runtime(first, docker_client) as rt:
        async with ChatSession(user="alice", session="moved", runtime=rt) as chat:
            await chat.save_upload("old.txt", b"old")
            assert (await rt.terminal.execute("alice", "moved", "ls /data")).stdout == "old.txt\n"
        # A restart with another UPLOAD_DIR (the containers stay; open_runtime removes them only at the end)
        await rt.close()
        moved = first.replace(upload_dir=str(tmp_path / "new"))
        rt2 = Runtime(moved)
        try:
            async with ChatSession(user="alice", session="moved", runtime=rt2) as chat:
                assert await chat.save_upload("report.csv", b"a,b\n") == "/data/report.csv"
                result = await rt2.terminal.execute("alice", "moved", "ls /data; cat /data/report.csv")
                assert result.stdout == "report.csv\na,b\n"
        finally:
            await rt2.close()
