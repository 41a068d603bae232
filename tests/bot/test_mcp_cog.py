"""MCP tools as a Discord user and an operator see them (issue 20): the progress line of each call
(dpytest, the final rendered message line by line), /admin tools, /help. Real MCP servers
(tests/mcp_server.py over Streamable HTTP and stdio), the fake Ollama, the real engine."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import discord.ext.test as dpytest
import docker
import pytest
import pytest_asyncio
from discord.ext import commands

from core import Runtime
from tests.bot.conftest import channel_messages, start_bot
from tests.bot.test_admin_cog import Interaction, call
from tests.bot.test_places import channel as channel_option
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, text, tool_calls
from tests.mcp_fixtures import HttpServer, http_entry, stdio_entry, with_servers
from tests.test_concurrency import wait_until
from tests.test_mcp import web  # noqa: F401 - the module's Streamable HTTP server, a fixture

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def mcp_bot(tmp_path: Path, fake_ollama: FakeOllama, web: HttpServer,
                  docker_client: docker.DockerClient) -> AsyncIterator[tuple[commands.Bot, Runtime]]:
    settings = with_servers(make_settings(tmp_path, fake_ollama.url), tmp_path,
                            {"web": http_entry(web, timeout=3), "wiki": stdio_entry("wiki")})
    async with open_runtime(settings, docker_client) as runtime:
        runtime.start_background()
        bot = await start_bot(runtime)
        try:
            yield bot, runtime
        finally:
            await dpytest.empty_queue()


def lines(bot: commands.Bot, channel: Any) -> list[list[str]]:
    return [m.content.split("\n") for m in channel_messages(channel, bot)]


async def test_each_call_shows_a_line_that_ends_in_its_outcome(mcp_bot: tuple[commands.Bot, Runtime],
                                                               fake_ollama: FakeOllama) -> None:
    bot, runtime = mcp_bot
    fake_ollama.script(tool_calls(("web__search", {"q": "weather in Paris"}), ("wiki__fail", {"message": "gone"}),
                                  ("web__hang", {"seconds": 30}), content="Looking it up."),
                       text("It is sunny."))
    channel = dpytest.get_config().channels[0]
    turn = asyncio.create_task(dpytest.message(f"<@{bot.user.id}> weather?", channel=channel))
    # While the hung call runs, its line says so.
    await wait_until(lambda: any("-# 🔧 `web__hang(30)`…" in m.content for m in channel_messages(channel, bot)))
    await turn
    await wait_until(lambda: "It is sunny." in "\n".join(m.content for m in channel_messages(channel, bot)))
    assert lines(bot, channel) == [["Looking it up.",
                                    '-# ✅ `web__search("weather in Paris")`',
                                    '-# ❌ `wiki__fail("gone")` returned an error',
                                    "-# ⏱️ `web__hang(30)` timed out",
                                    "It is sunny."]]


async def test_a_picture_from_a_tool_is_attached(mcp_bot: tuple[commands.Bot, Runtime],
                                                 fake_ollama: FakeOllama) -> None:
    bot, _ = mcp_bot
    fake_ollama.script(tool_calls(("wiki__picture", {})), text("A red dot."))
    channel = dpytest.get_config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> draw", channel=channel)
    await wait_until(lambda: any(m.attachments for m in channel_messages(channel, bot)))
    shown = channel_messages(channel, bot)
    assert [line for m in shown for line in m.content.split("\n")][:2] == ["-# ✅ `wiki__picture()`", "A red dot."]
    names = [a.filename for m in shown for a in m.attachments]
    assert len(names) == 1 and names[0].startswith("wiki__picture-") and names[0].endswith(".png")


async def test_admin_tools_lists_servers_and_turns_one_off_for_a_channel(mcp_bot: tuple[commands.Bot, Runtime],
                                                                          fake_ollama: FakeOllama) -> None:
    bot, runtime = mcp_bot
    for name in ("web", "wiki"):
        await asyncio.wait_for(runtime.mcp._shared[name].settled(), 30)
    manager = Interaction(1, manage_guild=True)
    listing = (await call(bot, ("admin", "tools"), manager)).split("\n")
    assert listing[0] == "**MCP servers** for this server:"
    assert listing[1].startswith("🟢 **web** · Streamable HTTP · up since ") and listing[1].endswith(" · on here")
    assert listing[2] == "-# tools: add, env_keys, fail, files, grow, hang, header, long, picture, read, search"
    assert listing[3].startswith("🟢 **wiki** · stdio · up since ")

    channel = dpytest.get_config().channels[1]
    off = await call(bot, ("admin", "tools"), Interaction(1, manage_guild=True), server="web", state="off",
                     channel=channel_option(channel.id))
    assert off.split("\n")[0] == f"**MCP servers** for <#{channel.id}>:"
    assert off.split("\n")[1].endswith(f" · **off** here (set for <#{channel.id}>)")

    fake_ollama.script(text("ok"), text("ok"))
    await dpytest.message(f"<@{bot.user.id}> hi", channel=channel)
    await dpytest.message(f"<@{bot.user.id}> hi", channel=dpytest.get_config().channels[0])
    await wait_until(lambda: len(fake_ollama.requests) == 2)
    there, elsewhere = ({t["function"]["name"] for t in r["tools"]} for r in fake_ollama.requests)
    assert "web__search" not in there and "wiki__search" in there
    assert {"web__search", "wiki__search"} <= elsewhere

    unknown = await call(bot, ("admin", "tools"), Interaction(1, manage_guild=True), server="nope", state="on")
    assert unknown == "No MCP server is named `nope`: pick one of web, wiki."
    refused = await call(bot, ("admin", "tools"), Interaction(2, manage_guild=False))
    assert refused == "Only server managers and the bot's admins can use /admin."


async def test_help_lists_the_tools_available_here(mcp_bot: tuple[commands.Bot, Runtime]) -> None:
    bot, runtime = mcp_bot
    for name in ("web", "wiki"):
        await asyncio.wait_for(runtime.mcp._shared[name].settled(), 30)
    said = await call(bot, ("help",), Interaction(3))
    line = next(line for line in said.split("\n") if line.startswith("• Tools from services"))
    assert line.startswith("• Tools from services the operators connected: **web** (add, env_keys, fail, files, "
                           "grow, hang, header, long and 3 more); **wiki** (add, ")
