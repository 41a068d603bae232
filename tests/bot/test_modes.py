"""Channels that need no @ (issue 19, item 1): /admin channel mode:mention|all|thread, threads the bot
starts and follows, /chat. dpytest drives the real discord.py dispatch (its backend starts threads as
Discord does: tests/bot/conftest.py); the engine runs for real (fake Ollama over HTTP, real Docker)."""
from __future__ import annotations

from typing import Any

import discord
import discord.ext.test as dpytest
import discord.ext.test.backend as back
import discord.ext.test.factories as facts
import pytest
from discord.ext import commands

from bot.cogs.admin import REFUSAL
from bot.cogs.threads import IN_A_DM, NO_RIGHT, NOT_HERE
from core import Runtime, Scope
from tests.bot.conftest import channel_messages, thread_data
from tests.bot.test_admin_cog import Interaction, call
from tests.bot.test_chat_cog import settle
from tests.fake_ollama import FakeOllama, text

pytestmark = pytest.mark.asyncio
ALL_MEANS = "I answer every message (each person still has a conversation of their own)"
THREAD_MEANS = ("a mention starts a thread named after the question and I answer there; in my threads nobody "
                "needs to mention me")


def config():  # type: ignore[no-untyped-def]
    return dpytest.get_config()


def manager(channel: Any = None, guild: int | None = None) -> Interaction:
    """A server manager's slash command, sent in `channel` (a real dpytest channel)."""
    interaction = Interaction(1, manage_guild=True, guild=guild or config().guilds[0].id)
    interaction.channel = channel
    return interaction


def allow_threads(channel: discord.TextChannel) -> None:
    """The rights a server gives the bot to start threads (the invite asks for them): a member
    overwrite on the channel, as Discord sends it (dpytest's own helper writes a type discord.py 2
    does not read); and its members theirs, which Discord's @everyone has by default (dpytest's
    predates threads)."""
    allow = discord.Permissions(create_public_threads=True, send_messages_in_threads=True)
    data = facts.dict_from_channel(channel)
    data["permission_overwrites"] = [{"id": str(channel.guild.me.id), "type": 1, "allow": str(allow.value),
                                      "deny": "0"},
                                     {"id": str(channel.guild.id), "type": 0, "allow": str(allow.value), "deny": "0"}]
    back.get_state().parse_channel_update(data)
    assert channel.permissions_for(channel.guild.me).create_public_threads


def said_by_bot(bot: commands.Bot, channel: Any) -> list[list[str]]:
    return [m.content.split("\n") for m in channel_messages(channel, bot)]


def threads(channel: discord.TextChannel) -> list[discord.Thread]:
    return [t for t in channel.guild.threads if t.parent_id == channel.id]


async def test_an_all_channel_answers_every_message_and_a_mention_channel_only_mentions(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    quiet, lively = config().channels[:2]
    alice, bob = config().members[0], config().members[1]
    said = await call(bot, ("admin", "channel"), manager(lively), mode="all")
    assert said == (f"Mode in <#{lively.id}> is now `all` (set for <#{lively.id}>): {ALL_MEANS}. "
                    "It applies from the next message.")
    fake_ollama.script(text("Four."), text("Paris."))
    await dpytest.message("what is 2+2?", channel=lively, member=alice)
    await dpytest.message("capital of France?", channel=lively, member=bob)
    await settle(bot, runtime)
    assert said_by_bot(bot, lively) == [["Four."], ["Paris."]]
    # still one conversation per person and channel: bob's request holds nothing of alice's
    assert [m["content"] for m in fake_ollama.requests[1]["messages"][1:]] == ["capital of France?"]
    await dpytest.message("just chatting among ourselves", channel=quiet, member=alice)
    await settle(bot, runtime)
    assert len(fake_ollama.requests) == 2 and channel_messages(quiet, bot) == []
    said = await call(bot, ("admin", "channel"), manager(quiet))
    assert said == (f"Mode in <#{quiet.id}>: `mention` (the built-in default): I answer a mention of me or a reply "
                    "to me.")


async def test_other_bots_webhooks_and_system_messages_are_ignored_in_an_all_channel(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    lively = config().channels[1]
    await runtime.places.set(Scope.channel(lively.id), by="t", mode="all")
    other = back.make_user("OtherBot", 1)
    other.bot = True
    back.make_message("I am a bot, answer me", back.make_member(other, lively.guild), lively)
    state = back.get_state()
    hook = facts.make_message_dict(lively, config().members[0], content="from a webhook", guild_id=lively.guild.id,
                                   webhook_id=facts.make_id())
    state.parse_message_create(hook)
    joined = facts.make_message_dict(lively, config().members[0], content="", guild_id=lively.guild.id,
                                     type=discord.MessageType.new_member.value)
    state.parse_message_create(joined)
    pinned = facts.make_message_dict(lively, config().members[0], content="pinned a message",
                                     guild_id=lively.guild.id, type=discord.MessageType.pins_add.value)
    state.parse_message_create(pinned)
    await dpytest.run_all_events()
    await settle(bot, runtime)
    assert fake_ollama.requests == [] and channel_messages(lively, bot) == []
    fake_ollama.script(text("Hello, person."))
    await dpytest.message("and a person", channel=lively, member=config().members[0])
    assert said_by_bot(bot, lively) == [["Hello, person."]]


async def test_a_mention_in_a_thread_channel_starts_a_thread_and_the_thread_needs_no_mention(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    room = config().channels[0]
    alice = config().members[0]
    allow_threads(room)
    said = await call(bot, ("admin", "channel"), manager(room), mode="thread", server=True)
    assert said == (f"Mode in this server is now `thread` (set for this server): {THREAD_MEANS}. "
                    "It applies from the next message.")
    await call(bot, ("admin", "prompt", "set"), manager(room), text="Answer like a pirate.", channel=room)
    fake_ollama.script(text("Use pandas.read_csv."), text("Use polars.read_csv, matey."))
    asked = await dpytest.message(f"<@{bot.user.id}> how do I read a **CSV** file?", channel=room, member=alice)
    await settle(bot, runtime)
    [thread] = threads(room)
    assert thread.name == "how do I read a CSV file?" and thread.owner_id == bot.user.id
    assert thread.id == asked.id  # a thread on the question itself, as Discord makes them
    assert channel_messages(room, bot) == []  # the answer went into the thread
    assert said_by_bot(bot, thread) == [["Use pandas.read_csv."]]
    # the thread is its own conversation, under its channel's settings
    assert runtime.history.find_session(str(alice.id), str(thread.id)) is not None
    assert runtime.history.find_session(str(alice.id), str(room.id)) is None
    assert "Answer like a pirate." in fake_ollama.requests[0]["messages"][0]["content"]
    await dpytest.message("and with polars?", channel=thread, member=alice)  # no mention
    await settle(bot, runtime)
    assert said_by_bot(bot, thread) == [["Use pandas.read_csv."], ["Use polars.read_csv, matey."]]
    assert [(m["role"], m["content"]) for m in fake_ollama.requests[1]["messages"][1:]] == [
        ("user", "how do I read a **CSV** file?"), ("assistant", "Use pandas.read_csv."),
        ("user", "and with polars?")]
    # without a mention, the channel itself stays quiet; a thread someone else started too
    await dpytest.message("chatting in the channel", channel=room, member=alice)
    theirs = thread_data(room, "alice's thread", alice.id)
    back.get_state().parse_thread_create(theirs)
    await dpytest.message("talking in my own thread", channel=room.guild.get_thread(int(theirs["id"])), member=alice)
    await settle(bot, runtime)
    assert len(fake_ollama.requests) == 2


async def test_a_long_question_names_its_thread_within_discords_limit(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    room = config().channels[0]
    allow_threads(room)
    await runtime.places.set(Scope.channel(room.id), by="t", mode="thread")
    question = "why does " + "my build fail " * 20 + "?"
    alice, bob, carol = config().members[:3]
    fake_ollama.script(text("Because."), text("Ask away."))
    await dpytest.message(f"<@{bot.user.id}>   {question}", channel=room, member=alice)
    await dpytest.message(f"<@{bot.user.id}>", channel=room, member=bob,
                          attachments=[__file__])  # no words at all: a name of its own
    await dpytest.message(f"<@{bot.user.id}> should <@{alice.id}> read `my_data.csv`?", channel=room, member=carol)
    await settle(bot, runtime)
    long_one, files_only, about_alice = threads(room)
    assert len(long_one.name) == 100 and long_one.name.endswith("…") and question.startswith(long_one.name[:-1])
    assert files_only.name == f"Chat with {bob.display_name}"
    assert about_alice.name == f"should @{alice.display_name} read my_data.csv?"
    assert said_by_bot(bot, long_one) == [["Because."]] and said_by_bot(bot, about_alice) == [["Ask away."]]


async def test_without_the_right_to_start_threads_a_mention_is_answered_in_the_channel(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    room = config().channels[0]
    said = await call(bot, ("admin", "channel"), manager(room), mode="thread")
    assert said.endswith(f"It applies from the next message.\n⚠️ I may not start threads in <#{room.id}> (I need "
                         "Create Public Threads and Send Messages in Threads): until I may, I answer mentions in "
                         "the channel itself.")
    fake_ollama.script(text("Right here."))
    await dpytest.message(f"<@{bot.user.id}> hello?", channel=room, member=config().members[0])
    assert threads(room) == [] and said_by_bot(bot, room) == [["Right here."]]


async def test_chat_starts_a_thread_that_needs_no_mention(bot: commands.Bot, runtime: Runtime,
                                                          fake_ollama: FakeOllama) -> None:
    room = config().channels[1]
    alice = config().members[0]
    allow_threads(room)
    asking = Interaction(alice.id, guild=room.guild.id)
    asking.user, asking.channel = alice, room
    said = await call(bot, ("chat",), asking, topic="Plotting **sales**.csv")
    [thread] = threads(room)
    assert said == f"Started <#{thread.id}>: write there, no need to mention me."
    assert thread.name == "Plotting **sales**.csv" and thread.owner_id == bot.user.id
    assert said_by_bot(bot, thread) == [[f"-# <@{alice.id}> started this thread about **Plotting \\*\\*sales\\*\\*.csv**: "
                                         "write here, no need to mention me."]]
    fake_ollama.script(text("Send me the file."))
    await dpytest.message("can you plot it?", channel=thread, member=alice)
    await settle(bot, runtime)
    assert said_by_bot(bot, thread)[-1] == ["Send me the file."]
    assert runtime.history.find_session(str(alice.id), str(thread.id)) is not None
    bare = Interaction(alice.id, guild=room.guild.id)
    bare.user, bare.channel = alice, room
    await call(bot, ("chat",), bare)
    assert sorted(t.name for t in threads(room)) == ["Chat with " + alice.display_name, "Plotting **sales**.csv"]


async def test_chat_says_why_it_starts_no_thread(bot: commands.Bot, runtime: Runtime) -> None:
    room = config().channels[0]
    alice = config().members[0]
    in_dm = Interaction(alice.id, guild=None)
    assert await call(bot, ("chat",), in_dm, topic="x") == IN_A_DM
    no_right = Interaction(alice.id, guild=room.guild.id)
    no_right.user, no_right.channel = alice, room
    assert await call(bot, ("chat",), no_right, topic="x") == NO_RIGHT
    allow_threads(room)
    ok = Interaction(alice.id, guild=room.guild.id)
    ok.user, ok.channel = alice, room
    await call(bot, ("chat",), ok, topic="first")
    [thread] = threads(room)
    inside = Interaction(alice.id, guild=room.guild.id)
    inside.user, inside.channel = alice, thread
    assert await call(bot, ("chat",), inside, topic="nested") == NOT_HERE
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset({alice.id}))
    blocked = Interaction(alice.id, guild=room.guild.id)
    blocked.user, blocked.channel = alice, room
    assert await call(bot, ("chat",), blocked, topic="again") == "Sorry, I'm not available to you here."
    assert len(threads(room)) == 1


async def test_only_this_servers_managers_set_its_channels_modes(bot: commands.Bot, runtime: Runtime,
                                                                 fake_ollama: FakeOllama) -> None:
    room = config().channels[0]
    member = Interaction(12345, manage_guild=False, guild=room.guild.id)
    member.channel = room
    assert await call(bot, ("admin", "channel"), member, mode="all") == REFUSAL
    elsewhere = manager(guild=room.guild.id + 1)  # manages another server
    assert await call(bot, ("admin", "channel"), elsewhere, mode="all", channel=room) == "Pick a channel of this server."
    assert await call(bot, ("admin", "channel"), manager(room), mode="all", everywhere=True) == \
        "Only the bot's admins (ADMIN_USER_IDS) can change the default for every server and DM."
    assert await runtime.places.overrides() == {}
    await dpytest.message("no mention here", channel=room, member=config().members[0])
    assert fake_ollama.requests == []


async def test_modes_fall_back_to_free_response_channels_and_clear_with_default(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    room = config().channels[0]
    runtime.settings = runtime.settings.replace(free_response_channel_ids=frozenset({room.id}))
    said = await call(bot, ("admin", "channel"), manager(room))
    assert said == f"Mode in <#{room.id}>: `all` (FREE_RESPONSE_CHANNEL_IDS in the bot's settings): {ALL_MEANS}."
    said = await call(bot, ("admin", "channel"), manager(room), mode="mention")
    assert said.startswith(f"Mode in <#{room.id}> is now `mention` (set for <#{room.id}>)")
    await dpytest.message("no mention", channel=room, member=config().members[0])
    assert fake_ollama.requests == []
    said = await call(bot, ("admin", "channel"), manager(room), mode="mention")
    assert said == f"Mode in <#{room.id}> is already `mention` (set for <#{room.id}>); nothing changed."
    said = await call(bot, ("admin", "channel"), manager(room), mode="default")
    assert said.startswith(f"Mode in <#{room.id}> is now `all` (FREE_RESPONSE_CHANNEL_IDS in the bot's settings)")
    assert await runtime.places.overrides() == {}
    fake_ollama.script(text("Heard you."))
    await dpytest.message("no mention again", channel=room, member=config().members[0])
    assert said_by_bot(bot, room) == [["Heard you."]]


async def test_help_describes_this_channels_mode(bot: commands.Bot, runtime: Runtime) -> None:
    room, lively = config().channels[:2]
    allow_threads(room)
    name = bot.user.display_name

    async def how(channel: Any) -> str:
        asking = Interaction(config().members[0].id, guild=room.guild.id, channel=channel.id)
        asking.channel = channel
        return (await call(bot, ("help",), asking)).splitlines()[1]

    per_person = (" You can also DM me. Each person has a conversation of their own with me in each channel (and in "
                  "each thread), and I remember it across restarts.")
    assert await how(room) == f"• Mention @{name} in a message, or reply to one of my messages." + per_person
    await runtime.places.set(Scope.channel(lively.id), by="t", mode="all")
    assert await how(lively) == (f"• In this channel I answer every message; elsewhere, mention @{name} or reply "
                                 "to me." + per_person)
    await runtime.places.set(Scope.channel(room.id), by="t", mode="thread")
    assert await how(room) == (f"• Mention @{name} here and I answer in a new thread named after your question; in "
                               "my threads, just write (no mention needed)." + per_person)
    starting = Interaction(config().members[0].id, guild=room.guild.id)
    starting.user, starting.channel = config().members[0], room
    await call(bot, ("chat",), starting)
    [thread] = threads(room)
    assert await how(thread) == "• This is one of my threads: just write here, nobody needs to mention me." + per_person
