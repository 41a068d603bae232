"""Two servers (and DMs) through dpytest, for the server-scope and privacy tests: real members with
their roles and Manage Server rights, slash commands, autocompletes and button clicks as discord.py
dispatches them, and a seeded world (a victim's secret command in server A, a person of B's own)."""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, AsyncIterator

import discord
import discord.ext.test as dpytest
import discord.ext.test.backend as back
import docker
import pytest_asyncio
from discord.ext import commands

from core import Runtime, Scope
from tests.bot.conftest import channel_messages, invoke, slash_command, start_bot
from tests.bot.test_admin_cog import Followup, Response
from tests.bot.test_chat_cog import settle
from tests.fake_ollama import FakeOllama, command_agent

SECRET = "export TOKEN=ghp_SECRET123; echo victim"


class Answers(Response):
    """What Discord receives for a command or an autocomplete: answers, and autocomplete choices."""

    def __init__(self) -> None:
        super().__init__()
        self.choices: list[Any] | None = None

    def is_done(self) -> bool:
        return super().is_done() or self.choices is not None

    async def autocomplete(self, choices: list[Any]) -> None:
        assert not self.is_done()
        self.choices = list(choices)


class Question:
    """The ephemeral follow-up a confirm question is sent as (the view edits it on timeout)."""

    def __init__(self) -> None:
        self.edits: list[dict[str, Any]] = []

    async def edit(self, **kwargs: Any) -> None:
        self.edits.append(kwargs)


class Followups(Followup):
    async def send(self, content: str = "", **kwargs: Any) -> Any:
        await super().send(content, **kwargs)
        return Question() if kwargs.get("wait") else None


class Asked:
    """A slash command or an autocomplete as discord.py hands it to the bot: a real dpytest member (their
    roles and Manage Server right) or user, in a real channel of a server (or a DM); answers recorded."""

    def __init__(self, bot: commands.Bot, user: Any, channel: Any) -> None:
        self.client = bot
        self.user = user
        self.channel = channel
        self.channel_id = channel.id
        self.guild = getattr(channel, "guild", None)
        self.response = Answers()
        self.followup = Followups(self.response)
        self.namespace = types.SimpleNamespace()

    @property
    def said(self) -> str:
        assert self.response.sent, "nothing was sent"
        content, kwargs = self.response.sent[-1]
        assert kwargs.get("ephemeral") is True
        return content


class Press:
    """A click on a button of an ephemeral message, as discord.py's view dispatch hands it over."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self.data: dict[str, Any] = {}
        self.said: list[tuple[str, bool]] = []
        self.edits: list[str | None] = []
        outer = self

        class _Response:
            def is_done(self) -> bool:
                return bool(outer.said or outer.edits)

            async def send_message(self, content: str = "", *, ephemeral: bool = False, **_kw: Any) -> None:
                outer.said.append((content, ephemeral))

            async def edit_message(self, *, content: str | None = None, **_kw: Any) -> None:
                outer.edits.append(content)

        self.response = _Response()

    async def edit_original_response(self, *, content: str | None = None, **_kw: Any) -> None:
        self.edits.append(content)


async def ask(bot: commands.Bot, path: tuple[str, ...], asked: Asked, **options: Any) -> str:
    """Run a slash command as the command tree does (the cog's check, the callback, its error handler)."""
    await invoke(bot, path, asked, **options)
    assert asked.response.deferred, "every command acknowledges at once"
    return asked.said


async def complete(bot: commands.Bot, path: tuple[str, ...], option: str, asked: Asked, typed: str = "",
                   **namespace: Any) -> list[str]:
    """An autocomplete as the command tree runs it; the values offered."""
    asked.namespace = types.SimpleNamespace(**{option: typed}, **namespace)
    await slash_command(bot, *path)._invoke_autocomplete(asked, option, asked.namespace)
    assert asked.response.choices is not None and not asked.response.sent
    return [choice.value for choice in asked.response.choices]


async def press(view: discord.ui.View, button: discord.ui.Item[Any], who: Any) -> Press:
    """A click, through discord.py's own dispatch (the view's interaction_check, then the callback)."""
    click = Press(who)
    await view._scheduled_task(button, click)  # noqa: SLF001 - what discord.py runs for a click
    return click


@dataclass
class World:
    bot: commands.Bot
    a: discord.Guild
    b: discord.Guild
    a_room: discord.TextChannel
    b_room: discord.TextChannel
    victim: discord.Member  # talks to the bot in A
    a_manager: discord.Member  # Manage Server in A
    a_plain: discord.Member  # a member of A without rights
    b_person: discord.Member  # talks to the bot in B
    b_manager: discord.Member  # Manage Server in B: the hostile one
    b_other: discord.Member


async def manager_of(guild: discord.Guild, member: discord.Member) -> discord.Member:
    role = back.make_role("Managers", guild, permissions=discord.Permissions(manage_guild=True).value)
    await dpytest.add_role(member, role)
    found = guild.get_member(member.id)
    assert found is not None and found.guild_permissions.manage_guild
    return found


@pytest_asyncio.fixture
async def world(runtime: Runtime, fake_ollama: FakeOllama) -> AsyncIterator[World]:
    bot = await start_bot(runtime, guilds=2)
    config = dpytest.get_config()
    a, b = config.guilds
    a_rooms = [c for c in config.channels if c.guild == a and isinstance(c, discord.TextChannel)]
    b_rooms = [c for c in config.channels if c.guild == b and isinstance(c, discord.TextChannel)]
    a_members = [m for m in config.members if m.guild == a]
    b_members = [m for m in config.members if m.guild == b]
    world = World(bot, a, b, a_rooms[0], b_rooms[0], a_members[0], await manager_of(a, a_members[1]), a_members[2],
                  b_members[0], await manager_of(b, b_members[1]), b_members[2])
    try:
        yield world
    finally:
        await dpytest.empty_queue()


async def say_to_bot(world: World, member: Any, channel: Any, text: str) -> None:
    await dpytest.message(f"<@{world.bot.user.id}> {text}", channel=channel, member=member)
    await settle(world.bot, world.bot.runtime)


@pytest_asyncio.fixture
async def seeded(world: World, runtime: Runtime, fake_ollama: FakeOllama) -> World:
    """A's victim ran a secret command in A (a sandbox, history, an audit row); A has a channel model of
    its own; B's own person ran a command in B."""
    fake_ollama.fallback = command_agent
    await say_to_bot(world, world.victim, world.a_room, SECRET)
    await say_to_bot(world, world.b_person, world.b_room, "echo bee")
    assert f"`{SECRET}` → exit 0" in channel_messages(world.a_room, world.bot)[-1].content
    await runtime.places.set(Scope.channel(world.a_room.id), by=str(world.a_manager.id), model="llama3.1:8b")
    return world


def victims_sandbox(runtime: Runtime, world: World, docker_client: docker.DockerClient) -> Any:
    return docker_client.containers.get(runtime.sandboxes.name(str(world.victim.id), str(world.a_room.id)))


def victims_messages(runtime: Runtime, world: World) -> list[str]:
    sid = runtime.history.find_session(str(world.victim.id), str(world.a_room.id))
    return [m.content for m in runtime.history.messages(sid)]
