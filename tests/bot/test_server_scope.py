"""Many servers (issue 17, item 1): each server's managers see and act on their own server only.

Two servers through dpytest: in server A a person (the victim) runs `export TOKEN=ghp_SECRET…` in a
real sandbox; in server B, a manager (Manage Server there, and only there) tries every /admin
command and autocomplete against A's data, and gets nothing of A. The bot's admins see both. DMs
obey the role and channel lists. Real Docker and the fake Ollama behind everything.
"""
from __future__ import annotations

import asyncio
import types
from dataclasses import dataclass
from typing import Any, AsyncIterator

import discord
import discord.ext.test as dpytest
import discord.ext.test.backend as back
import docker
import pytest
import pytest_asyncio
from discord.ext import commands

from bot.access import NO_DMS, REFUSED
from bot.forgetting import ONLY_THE_ASKER
from core import Runtime, Scope
from tests.bot.conftest import channel_messages, invoke, slash_command, start_bot
from tests.bot.test_admin_cog import Followup, Response
from tests.bot.test_chat_cog import settle
from tests.fake_ollama import FakeOllama, command_agent

pytestmark = pytest.mark.asyncio
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


# -- a manager of server B against server A's data ----------------------------------------------------
async def test_a_manager_reads_only_their_servers_audit(seeded: World, runtime: Runtime) -> None:
    w = seeded
    [line] = (await ask(w.bot, ("admin", "audit"), Asked(w.bot, w.b_manager, w.b_room))).splitlines()
    assert f"<@{w.b_person.id}> in <#{w.b_room.id}> `echo bee` → exit 0 · " in line
    for filters in ({"user": w.victim}, {"channel": str(w.a_room.id)}, {"user": w.victim, "channel": str(w.a_room.id)}):
        said = await ask(w.bot, ("admin", "audit"), Asked(w.bot, w.b_manager, w.b_room), **filters)
        assert said == "No commands recorded for that filter."
    # A's own manager reads A's, and only A's
    said = await ask(w.bot, ("admin", "audit"), Asked(w.bot, w.a_manager, w.a_room))
    assert "ghp_SECRET123" in said and "echo bee" not in said


async def test_a_manager_lists_only_their_servers_sessions(seeded: World) -> None:
    w = seeded
    said = await ask(w.bot, ("admin", "sessions"), Asked(w.bot, w.b_manager, w.b_room))
    assert said.splitlines() == [f"<@{w.b_person.id}> in <#{w.b_room.id}> · sandbox: running"]
    said = await ask(w.bot, ("admin", "sessions"), Asked(w.bot, w.a_manager, w.a_room))
    assert said.splitlines() == [f"<@{w.victim.id}> in <#{w.a_room.id}> · sandbox: running"]


async def test_a_managers_status_counts_their_server_only(seeded: World, runtime: Runtime) -> None:
    w = seeded
    said = await ask(w.bot, ("admin", "status"), Asked(w.bot, w.b_manager, w.b_room))
    assert said.splitlines() == ["Model: `qwen3:8b`", "Ollama: 🟢 reachable", "Docker: 🟢 reachable",
                                 "Sandboxes running in this server: 1", "Replies in progress in this server: 0"]
    said = await ask(w.bot, ("admin", "status"), Asked(w.bot, w.a_manager, w.a_room))
    assert said.splitlines()[0] == "Model: `qwen3:8b` · 1 channel or server overrides (/admin model)"
    assert runtime.settings.ollama_host not in said


@pytest.mark.parametrize("command", ["reset", "stop"])
async def test_a_manager_cannot_reset_or_stop_another_servers_conversation(
        seeded: World, runtime: Runtime, docker_client: docker.DockerClient, command: str) -> None:
    w = seeded
    before, messages = victims_sandbox(runtime, w, docker_client).id, victims_messages(runtime, w)
    for channel in (str(w.a_room.id), str(w.b_room.id)):
        said = await ask(w.bot, ("admin", command), Asked(w.bot, w.b_manager, w.b_room), user=w.victim,
                         channel=channel)
        assert said == (f"<@{w.victim.id}> has no conversation with me in the channel `{channel}` of this server: "
                        "pick one from the list.")
    await asyncio.sleep(0.3)
    sandbox = victims_sandbox(runtime, w, docker_client)
    assert sandbox.id == before and sandbox.status == "running" and victims_messages(runtime, w) == messages
    # A's manager may
    said = await ask(w.bot, ("admin", command), Asked(w.bot, w.a_manager, w.a_room), user=w.victim,
                     channel=str(w.a_room.id))
    assert f"<@{w.victim.id}> in <#{w.a_room.id}>" in said


async def test_a_manager_cannot_forget_someone_in_another_server(seeded: World, runtime: Runtime,
                                                                 docker_client: docker.DockerClient) -> None:
    w = seeded
    before, messages = victims_sandbox(runtime, w, docker_client).id, victims_messages(runtime, w)
    asked = Asked(w.bot, w.b_manager, w.b_room)
    question = await ask(w.bot, ("admin", "forget"), asked, user=w.victim)
    assert question.startswith(f"This deletes in this server, for good: <@{w.victim.id}>'s conversations")
    view = asked.response.sent[-1][1]["view"]
    stranger = await press(view, view.confirm, w.b_other)  # nobody but the asker can answer
    assert stranger.said == [(ONLY_THE_ASKER, True)] and not stranger.edits
    click = await press(view, view.confirm, w.b_manager)
    assert click.edits == ["Deleting…", f"Deleted in this server: 0 conversations (0 messages and their summaries), "
                                        f"0 sandboxes, 0 /data folders and <@{w.victim.id}>'s usage records.\n"
                                        "Nothing was kept."]
    assert victims_sandbox(runtime, w, docker_client).id == before and victims_messages(runtime, w) == messages
    assert runtime.sandboxes.data_dir(str(w.victim.id), str(w.a_room.id)).exists()
    assert [r.command for r in runtime.store.audit.latest(str(w.victim.id))] == [SECRET]


async def test_a_manager_cannot_touch_another_servers_channel_settings(seeded: World, runtime: Runtime) -> None:
    w = seeded
    a_thread = types.SimpleNamespace(id=987654321, guild_id=w.a.id, guild=None)  # a thread of A, uncached
    for channel in (w.a_room, a_thread):
        for path, options in ((("admin", "prompt", "show"), {}), (("admin", "prompt", "set"), {"text": "Hi."}),
                              (("admin", "prompt", "clear"), {}), (("admin", "model"), {})):
            said = await ask(w.bot, path, Asked(w.bot, w.b_manager, w.b_room), channel=channel, **options)
            assert said == "Pick a channel of this server."
    assert (await runtime.places.own(Scope.channel(w.a_room.id))).model == "llama3.1:8b"
    assert await runtime.places.own(Scope.channel(a_thread.id)) is None


async def test_autocompletes_offer_a_manager_only_their_server(seeded: World, fake_ollama: FakeOllama) -> None:
    w = seeded
    for command in ("reset", "stop"):
        offered = await complete(w.bot, ("admin", command), "channel", Asked(w.bot, w.b_manager, w.b_room),
                                 user=w.victim)
        assert offered == []
        offered = await complete(w.bot, ("admin", command), "channel", Asked(w.bot, w.b_manager, w.b_room),
                                 typed=str(w.a_room.id)[:4])
        assert str(w.a_room.id) not in offered
        offered = await complete(w.bot, ("admin", command), "channel", Asked(w.bot, w.b_manager, w.b_room))
        assert offered == [str(w.b_room.id)]
        offered = await complete(w.bot, ("admin", command), "channel", Asked(w.bot, w.a_manager, w.a_room),
                                 user=w.victim)
        assert offered == [str(w.a_room.id)]
    assert await complete(w.bot, ("admin", "model"), "name", Asked(w.bot, w.b_manager, w.b_room)) == \
        fake_ollama.models[:25]


async def test_a_non_admins_autocomplete_lists_nothing(seeded: World, fake_ollama: FakeOllama) -> None:
    w = seeded
    for command in ("reset", "stop"):
        assert await complete(w.bot, ("admin", command), "channel", Asked(w.bot, w.a_plain, w.a_room),
                              user=w.victim) == []
        assert await complete(w.bot, ("admin", command), "channel", Asked(w.bot, w.a_plain, w.a_room)) == []
    assert await complete(w.bot, ("admin", "model"), "name", Asked(w.bot, w.a_plain, w.a_room)) == []
    said = await ask(w.bot, ("admin", "sessions"), Asked(w.bot, w.a_plain, w.a_room))
    assert said == "Only server managers and the bot's admins can use /admin."


async def test_the_bots_admins_see_every_server_in_a_dm_too(seeded: World, runtime: Runtime) -> None:
    w = seeded
    runtime.settings = runtime.settings.replace(admin_user_ids=frozenset({w.b_other.id}))
    dm = await w.b_other.create_dm()
    for asked in (Asked(w.bot, w.b_other, w.b_room), Asked(w.bot, w.b_other, dm)):
        said = await ask(w.bot, ("admin", "audit"), asked)
        assert "ghp_SECRET123" in said and "echo bee" in said
    said = await ask(w.bot, ("admin", "sessions"), Asked(w.bot, w.b_other, dm))
    assert sorted(said.splitlines()) == sorted([f"<@{w.victim.id}> in <#{w.a_room.id}> · sandbox: running",
                                                f"<@{w.b_person.id}> in <#{w.b_room.id}> · sandbox: running"])
    said = await ask(w.bot, ("admin", "status"), Asked(w.bot, w.b_other, dm))
    assert f"Ollama: 🟢 reachable at {runtime.settings.ollama_host}" in said and "Sandboxes running: 2" in said
    offered = await complete(w.bot, ("admin", "reset"), "channel", Asked(w.bot, w.b_other, dm), user=w.victim)
    assert offered == [str(w.a_room.id)]


# -- DMs obey the role and channel lists ------------------------------------------------------------
async def test_a_dm_from_someone_with_a_blocked_role_is_refused(world: World, runtime: Runtime,
                                                                 fake_ollama: FakeOllama) -> None:
    w = world
    blocked = back.make_role("Blocked", w.a)
    await dpytest.add_role(w.victim, blocked)
    runtime.settings = runtime.settings.replace(blocked_role_ids=frozenset({blocked.id}))
    dm = await w.victim.create_dm()
    await dpytest.message("hello?", channel=dm, member=w.victim)
    assert channel_messages(dm, w.bot)[-1].content == f"-# {NO_DMS}"
    said = await ask(w.bot, ("sessions",), Asked(w.bot, w.victim._user, dm))
    assert said == NO_DMS
    # looking roles up in the servers they share does not help: a blocked role in any of them refuses
    runtime.settings = runtime.settings.replace(dm_access="mutual")
    said = await ask(w.bot, ("sessions",), Asked(w.bot, w.victim._user, dm))
    assert said == REFUSED
    assert fake_ollama.requests == [] and runtime.history.find_session(str(w.victim.id), str(dm.id)) is None


async def test_a_dm_with_allowed_channels_set_is_refused(world: World, runtime: Runtime,
                                                         fake_ollama: FakeOllama) -> None:
    w = world
    runtime.settings = runtime.settings.replace(allowed_channel_ids=frozenset({w.a_room.id}))
    dm = await w.victim.create_dm()
    await dpytest.message("hello?", channel=dm, member=w.victim)
    assert channel_messages(dm, w.bot)[-1].content == f"-# {NO_DMS}"
    assert await ask(w.bot, ("help",), Asked(w.bot, w.victim._user, dm)) == NO_DMS
    assert fake_ollama.requests == []
    fake_ollama.fallback = command_agent
    await say_to_bot(w, w.victim, w.a_room, "echo allowed here")  # the allowed channel itself is answered
    assert "`echo allowed here` → exit 0" in channel_messages(w.a_room, w.bot)[-1].content


async def test_dm_access_mutual_looks_roles_up_in_shared_servers(world: World, runtime: Runtime,
                                                                fake_ollama: FakeOllama) -> None:
    w = world
    helpers = back.make_role("Helpers", w.a)
    await dpytest.add_role(w.victim, helpers)
    runtime.settings = runtime.settings.replace(allowed_role_ids=frozenset({helpers.id}), dm_access="mutual")
    fake_ollama.fallback = command_agent
    dm = await w.victim.create_dm()
    await dpytest.message("echo in private", channel=dm, member=w.victim)
    await settle(w.bot, runtime)
    assert "`echo in private` → exit 0" in channel_messages(dm, w.bot)[-1].content
    stranger_dm = await w.a_plain.create_dm()  # shares server A, without the role
    await dpytest.message("echo me too", channel=stranger_dm, member=w.a_plain)
    assert channel_messages(stranger_dm, w.bot)[-1].content == f"-# {REFUSED}"


# -- autocompletes check access first and never start a sandbox -------------------------------------
async def test_a_blocked_persons_files_autocomplete_starts_nothing(world: World, runtime: Runtime,
                                                                  fake_ollama: FakeOllama,
                                                                  docker_client: docker.DockerClient) -> None:
    w = world
    person, key = w.a_plain, (str(w.a_plain.id), str(w.a_room.id))
    fake_ollama.fallback = command_agent
    await say_to_bot(w, person, w.a_room, "echo kept > /data/notes.txt")  # their /data, from before
    await runtime.stop_session(*key)  # no sandbox now; the files stay

    def sandboxes() -> list[Any]:
        return docker_client.containers.list(all=True, filters={"label": f"llmbot.user={person.id}"})

    assert sandboxes() == [] and runtime.sandboxes.data_dir(*key).exists()
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset({person.id}))
    assert await complete(w.bot, ("files",), "path", Asked(w.bot, person, w.a_room)) == []
    await asyncio.sleep(0.5)  # a sandbox start, had one been asked for, would be under way by now
    assert sandboxes() == []
    # allowed again: the names are offered, and still nothing starts, nor is a conversation created
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset())
    assert await complete(w.bot, ("files",), "path", Asked(w.bot, person, w.a_room), typed="no") == ["notes.txt"]
    other_room = next(c for c in dpytest.get_config().channels if c.guild == w.a and c.id != w.a_room.id
                      and isinstance(c, discord.TextChannel))
    assert await complete(w.bot, ("files",), "path", Asked(w.bot, person, other_room)) == []
    await asyncio.sleep(0.5)
    assert sandboxes() == [] and runtime.history.find_session(str(person.id), str(other_room.id)) is None


async def test_conversations_and_audit_rows_carry_their_server(seeded: World, runtime: Runtime) -> None:
    w = seeded
    [mine] = runtime.history.list_sessions(str(w.victim.id))
    assert mine.server == str(w.a.id)
    assert [r.server for r in runtime.store.audit.latest(str(w.victim.id))] == [str(w.a.id)]
    dm = await w.b_person.create_dm()
    await dpytest.message("echo private", channel=dm, member=w.b_person)
    await settle(w.bot, runtime)
    assert {s.session: s.server for s in runtime.history.list_sessions(str(w.b_person.id))} == \
        {str(w.b_room.id): str(w.b.id), str(dm.id): None}
    assert {r.session: r.server for r in runtime.store.audit.latest(str(w.b_person.id))} == \
        {str(w.b_room.id): str(w.b.id), str(dm.id): None}
    # a DM's conversation and commands are the bot's admins' alone
    said = await ask(w.bot, ("admin", "audit"), Asked(w.bot, w.b_manager, w.b_room), user=w.b_person)
    assert "echo private" not in said and "echo bee" in said
