"""Chat-only mode (TOOLS=off, issue 19 item 2) through the real dispatch, with no Docker engine
anywhere: DOCKER_HOST names a socket that does not exist, so any call to an engine would fail the
turn. Models without tool support answer, text attachments are quoted, pictures reach a vision
model (again in later turns, read back from the conversation's folder), and no request carries tools.
"""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import discord.ext.test as dpytest
import pytest
import pytest_asyncio
from discord.ext import commands

from core import Runtime, Scope, set_runtime
from core.sandbox.docker import DockerProvider
from tests.bot.conftest import channel_messages
from tests.bot.test_admin_cog import Interaction, call
from tests.bot.test_uploads_cog import send_with_files
from tests.conftest import make_settings
from tests.fake_ollama import FakeOllama, request_problems, text
from tests.test_files import png, request_images

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def runtime(tmp_path: Path, fake_ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Runtime]:
    """A chat-only runtime, on a machine where no Docker engine answers."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker-here.sock")
    fake_ollama.capabilities["qwen3:8b"] = ["completion"]  # a model that cannot call tools at all
    rt = Runtime(make_settings(tmp_path, fake_ollama.url, tools=False))
    set_runtime(rt)
    try:
        yield rt
    finally:
        await rt.close()
        set_runtime(None)


async def test_a_message_is_answered_with_no_docker_engine_and_no_tools(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    engine = DockerProvider(runtime.settings)
    try:
        assert not await engine.ping()  # there really is no engine to reach
    finally:
        await engine.close()
    fake_ollama.script(text("Paris is the capital of France."), text("About 2.1 million."))
    channel = dpytest.get_config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> what is the capital of France?", channel=channel)
    await dpytest.message(f"<@{bot.user.id}> how many live there?", channel=channel)
    assert [m.content for m in channel_messages(channel, bot)] == ["Paris is the capital of France.",
                                                                   "About 2.1 million."]
    for request in fake_ollama.requests:
        assert not request.get("tools") and request_problems(request) == [], request.get("tools")
        system = request["messages"][0]["content"]
        assert "execute_terminal" not in system and "cannot run commands" in system
    assert fake_ollama.requests[1]["messages"][-1]["content"] == "how many live there?"
    # the background loops ran without an engine: the reaper swept, and no disk watch was started
    assert runtime.background.reaper is not None and not runtime.background.reaper.done()
    assert runtime.background.disk_watch is None
    swept = await runtime.background.retention_pass()
    assert (swept.audit_rows, swept.conversations, swept.folders) == (0, 0, [])


async def test_text_attachments_are_quoted_and_other_files_named_as_unseen(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama, tmp_path: Path) -> None:
    runtime.settings = runtime.settings.replace(inline_text_max_bytes=64)
    notes = tmp_path / "notes.txt"
    notes.write_text("buy milk\n")
    long = tmp_path / "long.txt"
    long.write_text("".join(f"line {n:02}\n" for n in range(20)))  # 160 bytes: quoted up to 64
    blob = tmp_path / "data.bin"
    blob.write_bytes(b"\x00\x01\x02\x03")
    fake_ollama.script(text("Milk, and twenty numbered lines."))
    message = await send_with_files(f"<@{bot.user.id}> what do these say?", [notes, long, blob])
    shown = [m.content for m in channel_messages(message.channel, bot)]
    assert shown[-1] == "Milk, and twenty numbered lines."
    [request] = fake_ollama.requests
    assert not request.get("tools")
    assert request["messages"][-1]["content"].split("\n") == [
        "[attached: notes.txt, long.txt, data.bin]",
        "[notes.txt, 9 bytes]", "```", "buy milk", "```",
        "[long.txt, 160 bytes; only its first 63 bytes are quoted]", "```",
        *[f"line {n:02}" for n in range(8)], "```",
        "[data.bin, 4 bytes: not shown to you, and you cannot open files here]",
        "what do these say?",
    ]


async def test_a_picture_reaches_a_vision_model_now_and_in_the_next_turn(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama, tmp_path: Path) -> None:
    fake_ollama.capabilities["qwen3:8b"] = ["completion", "vision"]  # sees, cannot call tools
    picture = tmp_path / "red.png"
    picture.write_bytes(png((255, 0, 0)))
    fake_ollama.script(text("A red rectangle."), text("Still red."))
    message = await send_with_files(f"<@{bot.user.id}> what is this?", [picture])
    await dpytest.message(f"<@{bot.user.id}> and its colour again?", channel=message.channel)
    assert [m.content for m in channel_messages(message.channel, bot)][-2:] == ["A red rectangle.", "Still red."]
    first, second = fake_ollama.requests
    assert first["messages"][-1]["content"] == "[attached: red.png]\nwhat is this?"
    assert request_images(first)[-1] == [picture.read_bytes()]
    assert [images for images in request_images(second) if images] == [[picture.read_bytes()]]
    assert not first.get("tools") and not second.get("tools")


async def test_reset_files_help_and_status_say_what_is_true_without_a_sandbox(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("buy milk\n")
    fake_ollama.script(text("Noted."))
    message = await send_with_files(f"<@{bot.user.id}> keep this", [notes])
    user, channel = message.author.id, message.channel.id

    listing = await call(bot, ("files",), Interaction(user, channel=channel))
    assert listing.splitlines()[0] == "**/data**" and "`notes.txt` · 9 bytes" in listing
    help_lines = (await call(bot, ("help",), Interaction(user, channel=channel))).splitlines()
    assert "• Answer, explain, write and translate. This bot is in chat-only mode: I run no commands." in help_lines
    assert not [line for line in help_lines if "sandbox" in line]
    sessions = await call(bot, ("sessions",), Interaction(user, channel=channel))
    assert sessions.startswith(f"<#{channel}> · 2 messages") and "sandbox" not in sessions
    status = (await call(bot, ("admin", "status"), Interaction(user, manage_guild=True, channel=channel))).splitlines()
    assert "Docker: not used (TOOLS=off: chat only, no commands)" in status

    assert await call(bot, ("reset",), Interaction(user, channel=channel)) == "Cleared 2 messages here."
    folder = runtime.sandboxes.data_dir(str(user), str(channel))
    assert (folder / "notes.txt").exists()  # files stay unless asked
    said = await call(bot, ("reset",), Interaction(user, channel=channel), files=True)
    assert said == "Cleared 0 messages here and deleted your files." and not folder.exists()


async def test_a_model_without_tools_may_be_chosen(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.models = ["qwen3:8b", "gemma3:4b"]
    fake_ollama.capabilities["gemma3:4b"] = ["completion", "vision"]
    await runtime.switch_model(Scope.channel("42"), "gemma3:4b", by="test")
    assert await runtime.places.overrides() != {}
