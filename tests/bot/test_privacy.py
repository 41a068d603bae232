"""/forget, /export and /admin forget through the real cogs (issue 17, item 5): the confirm buttons
only the asker can press, what is deleted and what the answer says, the JSON a person gets."""
from __future__ import annotations

import asyncio
import json

import discord.ext.test as dpytest
import discord.ext.test.backend as back
import docker
import pytest

from bot.forgetting import CANCELLED, ONLY_THE_ASKER, TIMED_OUT
from core import Phase, Runtime
from tests.bot.servers import (SECRET, Asked, World, ask, press, say_to_bot, seeded, victims_messages,  # noqa: F401
                               victims_sandbox, world)
from tests.bot.test_chat_cog import settle
from tests.fake_ollama import FakeOllama, hang
from tests.test_concurrency import wait_until

pytestmark = pytest.mark.asyncio


def forgotten_everywhere(w: World, runtime: Runtime, docker_client: docker.DockerClient) -> bool:
    victim = str(w.victim.id)
    sandboxes = docker_client.containers.list(all=True, filters={"label": f"llmbot.user={victim}"})
    return (runtime.history.list_sessions(victim) == [] and sandboxes == []
            and not runtime.sandboxes.user_root(victim).exists())


async def test_forget_asks_first_and_only_the_asker_answers(seeded: World, runtime: Runtime,
                                                            docker_client: docker.DockerClient) -> None:
    w = seeded
    asked = Asked(w.bot, w.victim, w.a_room)
    question = await ask(w.bot, ("forget",), asked)
    assert question == ("This deletes everywhere, for good: your conversations with me (every message and summary), "
                        "your sandboxes and files in /data, usage records and settings. A record of each command run "
                        "in your sandboxes stays for AUDIT_RETENTION_DAYS (90 days), with the command text removed. "
                        "Delete it all?")
    view = asked.response.sent[-1][1]["view"]
    assert [item.label for item in view.children] == ["Delete", "Cancel"]
    for button in (view.confirm, view.cancel):  # someone else (even a manager) cannot answer
        stranger = await press(view, button, w.a_manager)
        assert stranger.said == [(ONLY_THE_ASKER, True)] and stranger.edits == []
    cancel = await press(view, view.cancel, w.victim)
    assert cancel.edits == [CANCELLED]
    assert victims_messages(runtime, w)[0] == SECRET and victims_sandbox(runtime, w, docker_client).status == "running"
    assert [r.command for r in runtime.store.audit.latest(str(w.victim.id))] == [SECRET]

    asked = Asked(w.bot, w.victim, w.a_room)
    await ask(w.bot, ("forget",), asked)
    view = asked.response.sent[-1][1]["view"]
    click = await press(view, view.confirm, w.victim)
    assert click.edits == [
        "Deleting…",
        "Deleted everywhere: 1 conversation (4 messages and their summaries), 1 sandbox, 1 /data folder and your "
        "usage records.\nKept: 1 record of commands run in your sandboxes, with the command text removed: the "
        "operators' log of what ran on their machines. Each goes 90 days after its command ran "
        "(AUDIT_RETENTION_DAYS)."]
    assert forgotten_everywhere(w, runtime, docker_client)
    runtime.settings = runtime.settings.replace(admin_user_ids=frozenset({w.b_other.id}))
    said = await ask(w.bot, ("admin", "audit"), Asked(w.bot, w.b_other, w.b_room), user=w.victim)
    assert said.count("(command removed at the person's request) → exit 0") == 1 and "ghp_SECRET" not in said
    # B's person is untouched
    assert runtime.history.list_sessions(str(w.b_person.id))[0].message_count == 2  # written: theirs and the answer


async def test_no_answer_in_time_deletes_nothing(seeded: World, runtime: Runtime,
                                                 docker_client: docker.DockerClient) -> None:
    w = seeded
    asked = Asked(w.bot, w.victim, w.a_room)
    await ask(w.bot, ("forget",), asked)
    view = asked.response.sent[-1][1]["view"]
    assert view.timeout == 120
    await view.on_timeout()  # what discord.py calls when the two minutes are up
    assert view.message.edits == [{"content": TIMED_OUT.format(minutes=2), "view": None}]
    late = await press(view, view.confirm, w.victim)  # a click that comes anyway changes nothing
    assert late.edits == []
    assert victims_messages(runtime, w)[0] == SECRET and victims_sandbox(runtime, w, docker_client).status == "running"


async def test_forget_and_export_work_for_someone_the_lists_block(seeded: World, runtime: Runtime,
                                                                  docker_client: docker.DockerClient) -> None:
    w = seeded
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset({w.victim.id}))
    assert await ask(w.bot, ("sessions",), Asked(w.bot, w.victim, w.a_room)) == "Sorry, I'm not available to you here."
    dm = await w.victim.create_dm()
    exported = Asked(w.bot, w.victim._user, dm)
    await ask(w.bot, ("export",), exported)
    assert exported.response.sent[-1][1]["file"].filename == f"conversations-{w.victim.id}.json"
    asked = Asked(w.bot, w.victim._user, dm)
    await ask(w.bot, ("forget",), asked)
    view = asked.response.sent[-1][1]["view"]
    await press(view, view.confirm, w.victim._user)
    assert forgotten_everywhere(w, runtime, docker_client)


async def test_export_sends_the_conversations_as_json(seeded: World, runtime: Runtime) -> None:
    w = seeded
    asked = Asked(w.bot, w.victim, w.a_room)
    said = await ask(w.bot, ("export",), asked)
    assert said == ("Your conversations with me, as JSON: for each one its server, channel and times, and every "
                    "message with its role, content, tool calls and time.")
    file = asked.response.sent[-1][1]["file"]
    file.fp.seek(0)
    exported = json.loads(file.fp.read())
    [conversation] = exported["conversations"]
    assert (exported["user"], conversation["server"], conversation["channel"]) == \
        (str(w.victim.id), str(w.a.id), str(w.a_room.id))
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert conversation["messages"][0]["content"] == SECRET
    assert conversation["messages"][1]["tool_calls"] == [
        {"function": {"name": "execute_terminal", "arguments": {"command": SECRET}}}]
    nobody = Asked(w.bot, w.a_plain, w.a_room)
    assert await ask(w.bot, ("export",), nobody) == "You have no conversations with me: there is nothing to export."
    # one export per person at a time (each reads everything they have)
    first, again = Asked(w.bot, w.victim, w.a_room), Asked(w.bot, w.victim, w.a_room)
    await asyncio.gather(ask(w.bot, ("export",), first), ask(w.bot, ("export",), again))
    assert again.said == "Your export is already being made; it comes here in a moment."
    assert first.response.sent[-1][1]["file"].filename == f"conversations-{w.victim.id}.json"


async def test_admin_forget_takes_a_person_in_this_server_only(seeded: World, runtime: Runtime,
                                                              fake_ollama: FakeOllama,
                                                              docker_client: docker.DockerClient) -> None:
    w = seeded
    in_b = back.make_member(w.victim._user, w.b)  # the victim is in server B too, and talks there
    await say_to_bot(w, in_b, w.b_room, "echo in b")
    asked = Asked(w.bot, w.a_manager, w.a_room)
    question = await ask(w.bot, ("admin", "forget"), asked, user=w.victim)
    assert question.startswith(f"This deletes in this server, for good: <@{w.victim.id}>'s conversations")
    view = asked.response.sent[-1][1]["view"]
    click = await press(view, view.confirm, w.a_manager)
    assert click.edits[-1].splitlines()[0] == (
        f"Deleted in this server: 1 conversation (4 messages and their summaries), 1 sandbox, 1 /data folder and "
        f"<@{w.victim.id}>'s usage records.")
    victim = str(w.victim.id)
    assert [s.session for s in runtime.history.list_sessions(victim)] == [str(w.b_room.id)]
    assert {r.session: r.command for r in runtime.store.audit.latest(victim)} == {
        str(w.a_room.id): "", str(w.b_room.id): "echo in b"}
    assert [c.labels["llmbot.session"] for c in docker_client.containers.list(
        all=True, filters={"label": f"llmbot.user={victim}"})] == [str(w.b_room.id)]
    # the bot's admins, in a DM: everywhere
    runtime.settings = runtime.settings.replace(admin_user_ids=frozenset({w.b_other.id}))
    dm = await w.b_other.create_dm()
    asked = Asked(w.bot, w.b_other._user, dm)
    question = await ask(w.bot, ("admin", "forget"), asked, user=w.victim)
    assert question.startswith(f"This deletes everywhere, for good: <@{w.victim.id}>'s conversations")
    view = asked.response.sent[-1][1]["view"]
    click = await press(view, view.confirm, w.b_other._user)
    assert click.edits[-1].startswith("Deleted everywhere: 1 conversation (4 messages")
    assert forgotten_everywhere(w, runtime, docker_client)
    # a manager in a DM is no admin there
    dm = await w.a_manager.create_dm()
    said = await ask(w.bot, ("admin", "forget"), Asked(w.bot, w.a_manager._user, dm), user=w.b_person)
    assert said == "Only server managers and the bot's admins can use /admin."
    assert runtime.history.list_sessions(str(w.b_person.id)) != []


async def test_forget_drops_the_persons_messages_waiting_for_an_answer(seeded: World, runtime: Runtime,
                                                                      fake_ollama: FakeOllama) -> None:
    w = seeded
    chat, key = w.bot.get_cog("Chat"), (str(w.victim.id), str(w.a_room.id))
    fake_ollama.script(hang("Let me think"))
    first = asyncio.create_task(dpytest.message(f"<@{w.bot.user.id}> first", channel=w.a_room, member=w.victim))
    await wait_until(lambda: runtime.registry.phase(key) is Phase.STREAMING and bool(chat.streams))
    # dpytest.message waits for every handler to finish: send it without waiting; it waits, marked ⏳
    second = asyncio.create_task(dpytest.message(f"<@{w.bot.user.id}> second", channel=w.a_room, member=w.victim))
    await wait_until(lambda: len(chat._waiting.get(key, [])) == 1)
    asked = Asked(w.bot, w.victim, w.a_room)
    await ask(w.bot, ("forget",), asked)
    view = asked.response.sent[-1][1]["view"]
    click = await press(view, view.confirm, w.victim)
    assert click.edits[-1].splitlines()[0].endswith("; 1 message waiting for an answer will not be answered.")
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    await settle(w.bot, runtime)
    assert chat._waiting == {} and runtime.history.list_sessions(str(w.victim.id)) == []
    assert "second" not in [r["messages"][-1]["content"] for r in fake_ollama.requests]
