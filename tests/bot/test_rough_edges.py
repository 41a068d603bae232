"""What a newcomer ran into (issue 19, item 3), seen as Discord shows it: the Stop button on long
replies, one ⏹️ line, a 💭 line while hidden thinking runs, /sessions' counts, a no-op /admin model.
dpytest drives the real discord.py dispatch; the engine runs for real (fake Ollama, real Docker)."""
from __future__ import annotations

import asyncio
from typing import Any

import discord
import discord.ext.test as dpytest
import pytest
from discord.ext import commands

from core import Runtime
from core.render import THINKING
from tests.bot.conftest import channel_messages
from tests.bot.test_admin_cog import Interaction, call
from tests.bot.test_chat_cog import settle
from tests.bot.test_experience import Press, buttons
from tests.fake_ollama import FakeOllama, Response, hang, text, tool_calls
from tests.test_concurrency import wait_until

pytestmark = pytest.mark.asyncio


def lines(bot: commands.Bot, channel: Any) -> list[list[str]]:
    return [m.content.split("\n") for m in channel_messages(channel, bot)]


async def test_a_reply_of_3000_characters_ends_with_no_button_on_any_message(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    answer = " ".join(f"word{i:04d}" for i in range(334))  # 3,339 characters: two messages
    fake_ollama.script(text(answer, chunk_size=150, delay=0.05))
    channel = dpytest.get_config().channels[0]
    turn = asyncio.create_task(dpytest.message(f"<@{bot.user.id}> a long one please", channel=channel))
    await wait_until(lambda: len(channel_messages(channel, bot)) == 2)  # the second message is out
    assert buttons(channel_messages(channel, bot)[0]) == ["Stop"]  # the button rides on the first, meanwhile
    await turn
    await settle(bot, runtime)
    messages = channel_messages(channel, bot)
    assert len(messages) == 2 and " ".join(m.content for m in messages) == answer
    assert [buttons(m) for m in messages] == [[], []]
    assert all(m.components == [] for m in messages)


async def test_stop_adds_one_line_with_or_without_a_command(bot: commands.Bot, runtime: Runtime,
                                                            fake_ollama: FakeOllama) -> None:
    config = dpytest.get_config()
    channel, author = config.channels[0], config.members[0]
    key = (str(author.id), str(channel.id))
    fake_ollama.script(hang("Let me think about th"))
    turn = asyncio.create_task(dpytest.message(f"<@{bot.user.id}> ponder", channel=channel, member=author))
    await wait_until(lambda: bool(channel_messages(channel, bot)) and bot.get_cog("Chat").streams.get(key) is not None)
    await bot.get_cog("Chat").streams[key].view.stop_button.callback(Press(author))
    await turn
    await settle(bot, runtime)
    fake_ollama.release()
    assert lines(bot, channel) == [["Let me think about th", f"-# ⏹️ Stopped by {author.display_name}."]]
    assert buttons(channel_messages(channel, bot)[0]) == []


async def test_hidden_thinking_shows_a_line_until_the_answer_starts(bot: commands.Bot, runtime: Runtime,
                                                                    fake_ollama: FakeOllama) -> None:
    assert not runtime.settings.show_thinking
    fake_ollama.script(text("The answer is 42.", thinking="weighing the options carefully " * 20, chunk_size=8,
                            delay=0.01))
    channel = dpytest.get_config().channels[0]
    turn = asyncio.create_task(dpytest.message(f"<@{bot.user.id}> think first", channel=channel))
    await wait_until(lambda: lines(bot, channel) == [[THINKING]])
    await turn
    await settle(bot, runtime)
    assert lines(bot, channel) == [["The answer is 42."]]  # the final message, line by line: the 💭 line is gone


async def test_a_thinking_phase_after_a_command_shows_under_it_and_goes(bot: commands.Bot, runtime: Runtime,
                                                                        fake_ollama: FakeOllama) -> None:
    fake_ollama.script(Response(thinking="which command fits " * 10, calls=[("execute_terminal", {"command": "echo hi"})],
                                chunk_size=8, delay=0.01),
                       text("It printed hi.", thinking="reading what it printed " * 60, chunk_size=8, delay=0.02))
    channel = dpytest.get_config().channels[0]
    turn = asyncio.create_task(dpytest.message(f"<@{bot.user.id}> run it", channel=channel))
    await wait_until(lambda: lines(bot, channel) == [["-# ✅ `echo hi` → exit 0", THINKING]])
    await turn
    await settle(bot, runtime)
    assert lines(bot, channel) == [["-# ✅ `echo hi` → exit 0", "It printed hi."]]


async def test_sessions_counts_what_people_and_the_assistant_wrote(bot: commands.Bot, runtime: Runtime,
                                                                   fake_ollama: FakeOllama) -> None:
    config = dpytest.get_config()
    channel, author = config.channels[0], config.members[0]
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo one"})),
                       tool_calls(("execute_terminal", {"command": "echo two"})), text("Both ran."),
                       text("You're welcome."))
    await dpytest.message(f"<@{bot.user.id}> run two commands", channel=channel, member=author)
    await dpytest.message(f"<@{bot.user.id}> thanks", channel=channel, member=author)
    await settle(bot, runtime)
    rows = runtime.history.messages(runtime.history.find_session(str(author.id), str(channel.id)))
    assert len(rows) == 8  # two of them the commands' results, two more the calls that asked for them
    said = await call(bot, ("sessions",), Interaction(author.id, guild=channel.guild.id, channel=channel.id))
    assert said.startswith(f"<#{channel.id}> · 4 messages · last active <t:")


async def test_a_no_op_model_switch_says_the_model_is_already_in_use(bot: commands.Bot, runtime: Runtime) -> None:
    manager = Interaction(1, manage_guild=True)
    said = await call(bot, ("admin", "model"), manager, name="qwen3:8b")
    assert said == "`qwen3:8b` is already the model for this server (OLLAMA_MODEL in the bot's settings); nothing changed."
    said = await call(bot, ("admin", "model"), Interaction(1, manage_guild=True), name="default")
    assert said == "This server has no model of its own: it uses `qwen3:8b` (OLLAMA_MODEL in the bot's settings)."
    assert await runtime.places.overrides() == {}
