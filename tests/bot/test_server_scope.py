"""Many servers (issue 17, item 1): each server's managers see and act on their own server only.

Two servers through dpytest: in server A a person (the victim) runs `export TOKEN=ghp_SECRET…` in a
real sandbox; in server B, a manager (Manage Server there, and only there) tries every /admin
command and autocomplete against A's data, and gets nothing of A. The bot's admins see both. DMs
obey the role and channel lists. Real Docker and the fake Ollama behind everything.
"""
from __future__ import annotations

import asyncio
import types
from typing import Any

import discord
import discord.ext.test as dpytest
import discord.ext.test.backend as back
import docker
import pytest

from bot.access import NO_DMS, REFUSED
from bot.forgetting import ONLY_THE_ASKER
from core import Runtime, Scope
from tests.bot.conftest import channel_messages
from tests.bot.servers import (SECRET, Asked, World, ask, complete, press, say_to_bot, seeded, victims_messages,  # noqa: F401
                               victims_sandbox, world)
from tests.bot.test_chat_cog import settle
from tests.fake_ollama import FakeOllama, command_agent

pytestmark = pytest.mark.asyncio


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
    assert said.splitlines()[0] == "Model: `qwen3:8b` · 1 server or channel overrides (/admin model)"
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
