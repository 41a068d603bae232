"""What a Discord user sees (issue 10): the Stop button, rendering, reply context. dpytest drives the
real discord.py dispatch; the engine runs for real (fake Ollama over HTTP, real Docker)."""
from __future__ import annotations

import asyncio
from typing import Any

import discord
import discord.ext.test as dpytest
import discord.ext.test.backend as back
import discord.ext.test.factories as facts
import pytest
from discord.ext import commands

from bot.controls import ONLY_AUTHOR
from core import Runtime
from core.tool_loop import STOPPED_RESULT
from tests.bot.conftest import channel_messages
from tests.bot.test_chat_cog import settle
from tests.test_concurrency import wait_until
from tests.fake_ollama import FakeOllama, cut, text, tool_calls

pytestmark = pytest.mark.asyncio


def lines(bot: commands.Bot, channel: Any) -> list[list[str]]:
    return [m.content.split("\n") for m in channel_messages(channel, bot)]


def buttons(message: discord.Message) -> list[str]:
    return [child.label for row in message.components for child in getattr(row, "children", [])]


class Press:
    """A click on a button, as discord.py hands it to the callback."""

    def __init__(self, user: discord.abc.User) -> None:
        self.user = user
        self.deferred = False
        self.said: list[tuple[str, bool]] = []
        outer = self

        class Response:
            async def defer(self, **_kw: Any) -> None:
                outer.deferred = True

            async def send_message(self, content: str, *, ephemeral: bool = False, **_kw: Any) -> None:
                outer.said.append((content, ephemeral))

        self.response = Response()


async def test_the_stop_button_stops_the_reply_and_kills_its_command(
        bot: commands.Bot, fake_ollama: FakeOllama, runtime: Runtime, docker_client: Any) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 60"})), text("Fresh start."))
    config = dpytest.get_config()
    channel, author, other = config.channels[0], config.members[0], config.members[1]
    key = (str(author.id), str(channel.id))
    turn = asyncio.create_task(dpytest.message(f"<@{bot.user.id}> long job", channel=channel, member=author))
    await wait_until(lambda: runtime.registry.phase(key) is not None and runtime.registry.phase(key).value == "tool")
    await wait_until(lambda: bool(channel_messages(channel, bot)))
    running = channel_messages(channel, bot)[-1]
    assert running.content == "-# ⚙️ running `sleep 60`…" and buttons(running) == ["Stop"]

    view = bot.get_cog("Chat").streams[key].view
    stranger = Press(other)
    await view.stop_button.callback(stranger)
    assert stranger.said == [(ONLY_AUTHOR, True)] and runtime.registry.phase(key) is not None

    press = Press(author)
    await view.stop_button.callback(press)
    assert press.deferred
    await turn
    await settle(bot, runtime)
    final = channel_messages(channel, bot)[-1]
    assert final.content.split("\n") == [f"-# ⏹️ `sleep 60` stopped by {author.display_name}"]  # one ⏹️ line
    assert buttons(final) == []  # the button goes when the reply ends
    rows = runtime.history.messages(runtime.history.find_session(str(author.id), str(channel.id)))
    assert [(r.role, r.content) for r in rows][-1] == ("tool", STOPPED_RESULT)
    sandbox = docker_client.containers.get(runtime.sandboxes.name(str(author.id), str(channel.id)))
    assert b"sleep 60" not in sandbox.exec_run("ps").output
    # the session is free again
    await dpytest.message(f"<@{bot.user.id}> again", channel=channel, member=author)
    assert lines(bot, channel)[-1] == ["Fresh start."]


async def test_a_reply_that_ends_normally_loses_its_button(bot: commands.Bot, fake_ollama: FakeOllama,
                                                           runtime: Runtime) -> None:
    fake_ollama.script(text("Done quickly."))
    channel = dpytest.get_config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> hi", channel=channel)
    await settle(bot, runtime)
    [message] = channel_messages(channel, bot)
    assert message.content == "Done quickly." and buttons(message) == []


async def test_an_empty_answer_says_so(bot: commands.Bot, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text(""))
    channel = dpytest.get_config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> say nothing", channel=channel)
    assert lines(bot, channel) == [["-# (no answer)"]]


async def test_an_error_mid_answer_is_a_line_of_its_own(bot: commands.Bot, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(cut("Starting a long answer that will"))
    channel = dpytest.get_config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> explain", channel=channel)
    assert lines(bot, channel) == [["Starting a long answer that will",
                                    "⚠️ The connection to the AI model dropped in the middle of the reply. "
                                    "Please try again."]]


async def test_a_finished_command_and_the_answer_are_separate_lines(bot: commands.Bot,
                                                                    fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo hi"}), content="Let me check."),
                       text("It printed hi."))
    channel = dpytest.get_config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> run it", channel=channel)
    assert lines(bot, channel) == [["Let me check.", "-# ✅ `echo hi` → exit 0", "It printed hi."]]


def reply_to(channel: Any, member: Any, target: discord.Message, content: str, *, mention: Any = None) -> None:
    data = facts.make_message_dict(channel, member, content=content, guild_id=channel.guild.id,
                                   mentions=[mention] if mention is not None else None)
    data["message_reference"] = {"message_id": target.id, "channel_id": channel.id, "guild_id": channel.guild.id}
    data["referenced_message"] = facts.dict_from_message(target)
    back.get_state().parse_message_create(data)


async def test_replying_to_the_bots_answer_to_someone_else_quotes_it(bot: commands.Bot,
                                                                     fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text("Use `git bisect` to find it."), text("It splits the history in halves."))
    config = dpytest.get_config()
    channel, alice, bob = config.channels[0], config.members[0], config.members[1]
    await dpytest.message(f"<@{bot.user.id}> how do I find a bad commit?", channel=channel, member=alice)
    answer = channel_messages(channel, bot)[-1]
    reply_to(channel, bob, answer, f"<@{bot.user.id}> how does that work?")
    await dpytest.run_all_events()
    asked = fake_ollama.requests[1]["messages"]
    assert [m["role"] for m in asked] == ["system", "user"]  # bob's own conversation: only the quote
    assert asked[-1]["content"] == ("[replying to a message from you (the assistant)]\n"
                                    "> Use `git bisect` to find it.\n\nhow does that work?")


async def test_replying_to_another_users_message_quotes_it(bot: commands.Bot, fake_ollama: FakeOllama,
                                                           runtime: Runtime) -> None:
    fake_ollama.script(text("Probably a missing wheel for arm64."))
    config = dpytest.get_config()
    channel, alice, bob = config.channels[0], config.members[0], config.members[1]
    original = await dpytest.message("the build fails on arm64\nwith a pip error", channel=channel, member=alice)
    reply_to(channel, bob, original, f"<@{bot.user.id}> any idea why?", mention=bot.user)
    await dpytest.run_all_events()
    expected = (f"[replying to a message from {alice.display_name}]\n> the build fails on arm64\n> with a pip error"
                "\n\nany idea why?")
    assert fake_ollama.requests[0]["messages"][-1]["content"] == expected
    stored = runtime.history.messages(runtime.history.find_session(str(bob.id), str(channel.id)))
    assert stored[0].content == expected  # the stored message records the context


async def test_replying_to_its_own_answer_adds_no_quote(bot: commands.Bot, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text("First answer."), text("Second answer."))
    config = dpytest.get_config()
    channel, alice = config.channels[0], config.members[0]
    await dpytest.message(f"<@{bot.user.id}> first", channel=channel, member=alice)
    reply_to(channel, alice, channel_messages(channel, bot)[-1], "and a follow-up")
    await dpytest.run_all_events()
    assert fake_ollama.requests[1]["messages"][-1]["content"] == "and a follow-up"
