"""The bot under load: real discord.py dispatch (dpytest), fake Ollama, real Docker."""
from __future__ import annotations

import asyncio
from pathlib import Path

import discord.ext.test as dpytest
import pytest
from discord.ext import commands

from core import ChatSession, Runtime, Settings
from tests.bot.conftest import channel_messages
from tests.bot.test_admin_cog import CHANNEL, Interaction, call
from tests.conftest import make_settings
from tests.fake_ollama import FakeOllama, command_agent, text
from tests.test_concurrency import wait_until

pytestmark = pytest.mark.asyncio


@pytest.fixture
def settings(tmp_path: Path, fake_ollama: FakeOllama) -> Settings:
    fake_ollama.fallback = command_agent  # every message is run as a command, then its result reported
    return make_settings(tmp_path, fake_ollama.url, max_running_commands=2)


async def test_a_command_over_the_cap_shows_it_is_queued_then_runs(bot: commands.Bot, runtime: Runtime) -> None:
    config = dpytest.get_config()
    first_channel, second_channel = config.channels[0], config.channels[1]
    one, two, three = config.members[0], config.members[1], config.members[2]
    await asyncio.gather(*(runtime.sandboxes.start(str(m.id), str(c.id))
                           for m, c in ((one, first_channel), (two, second_channel), (three, first_channel))))
    mention = f"<@{bot.user.id}>"
    busy = [asyncio.create_task(dpytest.message(f"{mention} sleep 3; echo one", channel=first_channel, member=one)),
            asyncio.create_task(dpytest.message(f"{mention} sleep 3; echo two", channel=second_channel, member=two))]
    await wait_until(lambda: runtime.terminal.gate.running == 2)
    third = asyncio.create_task(dpytest.message(f"{mention} echo three", channel=first_channel, member=three))

    def shown() -> list[str]:
        return [m.content for m in channel_messages(first_channel, bot)]

    await wait_until(lambda: "-# ⏳ queued behind 2 commands…" in shown(), seconds=10)
    assert runtime.terminal.gate.waiting == 1  # still waiting while the line is shown
    await asyncio.gather(*busy, third)
    assert shown() == ["-# ✅ `sleep 3; echo one` → exit 0\nresult: exit code: 0",
                       "-# ✅ `echo three` → exit 0\nresult: exit code: 0"]
    assert [m.content for m in channel_messages(second_channel, bot)] == [
        "-# ✅ `sleep 3; echo two` → exit 0\nresult: exit code: 0"]
    async with ChatSession(user=three.id, session=first_channel.id, runtime=runtime) as chat:
        assert [m["content"] for m in await chat.history()] == [
            "echo three", "", "exit code: 0\nstdout:\nthree\n", "result: exit code: 0"]  # nothing lost
    await dpytest.empty_queue()


async def test_reset_and_sessions_answer_within_discords_deadline_while_twenty_commands_run(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(max_running_commands=32)
    runtime.terminal.gate.limit = 32
    fake_ollama.script(text("hello"))
    async with ChatSession(user=7, session=CHANNEL, runtime=runtime) as chat:
        async for _ in chat.chat_stream("hi"):
            pass
    users = [f"load{i}" for i in range(20)]
    await asyncio.gather(*(runtime.sandboxes.start(u, "chan") for u in users))
    load = [asyncio.create_task(runtime.terminal.execute(u, "chan", "sleep 10")) for u in users]
    try:
        await wait_until(lambda: runtime.terminal.gate.running == 20)
        loop = asyncio.get_running_loop()
        for path, expected in ((("sessions",), "<#555000111> · 2 messages · last active <t:"),
                               (("reset",), "Cleared 2 messages here and restarted your sandbox.")):
            interaction = Interaction(7)
            invoked = loop.time()
            said = await call(bot, path, interaction)
            assert interaction.response.acknowledged_at - invoked < 3.0, path
            assert interaction.response.answered_at - invoked < 3.0, path
            assert said.startswith(expected), said
        assert runtime.terminal.gate.running == 20  # the load was still there throughout
    finally:
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)
