"""The chat cog through the real discord.py dispatch (dpytest), fake Ollama, real Docker."""
from __future__ import annotations

import asyncio
import time

import discord
import discord.ext.test as dpytest
import discord.ext.test.backend as back
import discord.ext.test.factories as facts
import pytest
from discord.ext import commands

from bot.cogs.chat import MAX_WAITING, QUEUE_FULL, REFUSAL_QUIET_SECONDS
from core import ChatSession, Runtime
from tests.bot.conftest import channel_messages, start_bot
from tests.fake_ollama import FakeOllama, error, hang, text, tool_calls
from tests.test_concurrency import wait_until

pytestmark = pytest.mark.asyncio


def config():  # type: ignore[no-untyped-def]
    return dpytest.get_config()


def bot_text(bot: commands.Bot, channel) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(m.content for m in channel_messages(channel, bot))


async def test_setup_hook_loads_the_four_cogs_and_their_commands(bot: commands.Bot) -> None:
    assert {"Chat", "Everyone", "Admin", "Privacy"} <= set(bot.cogs)
    names = {c.name for c in bot.tree.get_commands()}
    assert {"reset", "sessions", "help", "usage", "admin", "forget", "export", "chat"} <= names
    admin = bot.tree.get_command("admin")
    assert {c.name for c in admin.commands} == {"sessions", "reset", "stop", "status", "model", "audit", "prompt",
                                                "usage", "channel", "forget", "tools"}
    assert bot.intents.message_content
    from bot.discord_bot import create_bot
    fresh = create_bot(runtime=bot.runtime)  # dpytest swaps the connection state of `bot`
    mentions = fresh.allowed_mentions
    assert not (mentions.everyone or mentions.users or mentions.roles)


async def test_sharded_bot_when_shard_count_is_set(runtime: Runtime) -> None:
    from bot.discord_bot import create_bot
    runtime.settings = runtime.settings.replace(shard_count=2)
    sharded = create_bot(runtime=runtime)
    assert isinstance(sharded, commands.AutoShardedBot) and sharded.shard_count == 2


async def test_a_mention_is_answered_without_the_mention(bot: commands.Bot, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text("Hi! How can I help?"))
    channel = config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> hello there", channel=channel)
    assert fake_ollama.requests[0]["messages"][-1]["content"] == "hello there"
    assert bot_text(bot, channel) == "Hi! How can I help?"


async def test_plain_guild_messages_and_bots_are_ignored(bot: commands.Bot, fake_ollama: FakeOllama) -> None:
    channel = config().channels[0]
    await dpytest.message("just chatting with friends", channel=channel)
    other_bot = back.make_user("OtherBot", 1, )
    other_bot.bot = True
    member = back.make_member(other_bot, config().guilds[0])
    back.make_message(f"<@{bot.user.id}> hi", member, channel)
    await dpytest.run_all_events()
    assert fake_ollama.requests == [] and channel_messages(channel, bot) == []


async def test_dms_are_answered(bot: commands.Bot, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text("Hello in private."))
    member = config().members[0]
    dm = await member.create_dm()
    await dpytest.message("hi bot", channel=dm, member=member)
    assert fake_ollama.requests[0]["messages"][-1]["content"] == "hi bot"
    assert "Hello in private." in bot_text(bot, dm)


async def test_replies_to_the_bot_are_answered(bot: commands.Bot, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text("First answer."), text("Second answer."))
    channel, member = config().channels[0], config().members[0]
    await dpytest.message(f"<@{bot.user.id}> first", channel=channel, member=member)
    answer = channel_messages(channel, bot)[-1]
    data = facts.make_message_dict(channel, member, content="and a follow-up", guild_id=channel.guild.id)
    data["message_reference"] = {"message_id": answer.id, "channel_id": channel.id, "guild_id": channel.guild.id}
    data["referenced_message"] = facts.dict_from_message(answer)
    back.get_state().parse_message_create(data)
    await dpytest.run_all_events()
    assert fake_ollama.requests[1]["messages"][-1]["content"] == "and a follow-up"


async def test_free_response_channels_answer_everything(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    bot = await start_bot(runtime)
    channel = config().channels[1]
    runtime.settings = runtime.settings.replace(free_response_channel_ids=frozenset({channel.id}))
    fake_ollama.script(text("Always listening here."))
    await dpytest.message("no mention needed", channel=channel)
    assert bot_text(bot, channel) == "Always listening here."
    await dpytest.message("not here", channel=config().channels[0])
    assert len(fake_ollama.requests) == 1
    await dpytest.empty_queue()


async def test_long_replies_continue_in_follow_ups_without_breaking_code(bot: commands.Bot,
                                                                       fake_ollama: FakeOllama) -> None:
    code = "\n".join(f"echo line {i}  # {'z' * 30}" for i in range(150))
    answer = f"Here is the script:\n```bash\n{code}\n```\nThat's all."
    fake_ollama.script(text(answer, chunk_size=400))
    channel = config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> write a long script", channel=channel)
    messages = channel_messages(channel, bot)
    assert len(messages) >= 3
    for message in messages:
        assert len(message.content) <= 2000
        assert sum(l.startswith("```") for l in message.content.split("\n")) % 2 == 0
    assert messages[1].content.startswith("```bash")
    lines = [l for m in messages for l in m.content.split("\n") if not l.startswith("```")]
    assert lines == [l for l in answer.split("\n") if not l.startswith("```")]


async def test_tool_progress_is_shown(bot: commands.Bot, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "uname -s"})),
                       tool_calls(("execute_terminal", {"command": "exit 3"})), text("Linux it is."))
    channel = config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> what os?", channel=channel)
    shown = bot_text(bot, channel)
    assert "✅ `uname -s` → exit 0" in shown and "❌ `exit 3` → exit 3" in shown
    assert shown.strip().endswith("Linux it is.")


async def test_thinking_hidden_by_default_and_collapsed_when_enabled(runtime: Runtime,
                                                                    fake_ollama: FakeOllama) -> None:
    bot = await start_bot(runtime)
    channel = config().channels[0]
    fake_ollama.script(text("Answer.", thinking="secret chain of thought " * 30, delay=0.01))
    edits: list[str] = []
    original = discord.Message.edit

    async def spy(self, **kwargs):  # type: ignore[no-untyped-def]
        edits.append(kwargs.get("content", ""))
        return await original(self, **kwargs)

    original_reply = discord.Message.reply

    async def reply_spy(self, content=None, **kwargs):  # type: ignore[no-untyped-def]
        edits.append(content or "")
        return await original_reply(self, content, **kwargs)

    discord.Message.edit = spy  # type: ignore[method-assign]
    discord.Message.reply = reply_spy  # type: ignore[method-assign]
    try:
        await dpytest.message(f"<@{bot.user.id}> think", channel=channel)
        assert "chain of thought" not in bot_text(bot, channel) + "".join(edits)
        runtime.settings = runtime.settings.replace(show_thinking=True, edits_per_5s=1000)
        bot.get_cog("Chat").pacer.per_window = 1000
        fake_ollama.script(text("Second.", thinking="visible reasoning " * 40, chunk_size=8, delay=0.01))
        await dpytest.message(f"<@{bot.user.id}> think aloud", channel=channel)
    finally:
        discord.Message.edit = original  # type: ignore[method-assign]
        discord.Message.reply = original_reply  # type: ignore[method-assign]
    seen = [m.content for m in channel_messages(channel, bot)] + edits
    thinking = [s for s in seen if "💭" in s]
    assert thinking and all(len(s.split("\n")[0]) < 200 for s in thinking)
    final = channel_messages(channel, bot)[-1].content.split("\n")
    assert len(final) == 2 and final[1] == "Second."  # the thinking stays, collapsed, above the answer
    assert final[0].startswith("-# 💭 …") and final[0].endswith("visible reasoning") and len(final[0]) < 200
    await dpytest.empty_queue()


async def test_nobody_can_be_pinged(bot: commands.Bot, fake_ollama: FakeOllama,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[discord.AllowedMentions | None] = []
    for cls, name in ((discord.abc.Messageable, "send"), (discord.Message, "reply"), (discord.Message, "edit")):
        original = getattr(cls, name)

        def make(original):  # type: ignore[no-untyped-def]
            async def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                calls.append(kwargs.get("allowed_mentions"))
                return await original(self, *args, **kwargs)
            return spy
        monkeypatch.setattr(cls, name, make(original))
    fake_ollama.script(text("@everyone look! <@&123> <@456> " + "x" * 30, chunk_size=5))
    await dpytest.message(f"<@{bot.user.id}> ping people", channel=config().channels[0])
    assert calls and all(c is not None and not (c.everyone or c.users or c.roles or c.replied_user)
                         for c in calls)


async def test_engine_failures_are_one_friendly_line(bot: commands.Bot, fake_ollama: FakeOllama,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    fake_ollama.script(error(404, 'model "qwen3:8b" not found, try pulling it first'),
                       error(404, 'model "qwen3:8b" not found, try pulling it first'))
    channel = config().channels[0]
    with caplog.at_level("INFO"):
        await dpytest.message(f"<@{bot.user.id}> hello", channel=channel)
        await dpytest.message(f"<@{bot.user.id}> hello again", channel=channel)
    assert [m.content for m in channel_messages(channel, bot)] == \
        ["⚠️ The AI model could not answer right now; try again in a minute."] * 2
    # the operator reads the detail, once for the incident, not once per message
    details = [r.getMessage() for r in caplog.records if "ollama pull qwen3:8b" in r.getMessage()]
    assert len(details) == 1 and details[0].startswith("Ollama problem: ")


async def test_ollama_down_is_one_friendly_line(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    bot = await start_bot(runtime)
    fake_ollama.stop()
    channel = config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> hello", channel=channel)
    shown = bot_text(bot, channel)
    assert shown == "⚠️ The AI model is unavailable right now; try again in a minute."  # no host, no port
    await dpytest.empty_queue()


async def settle(bot: commands.Bot, runtime: Runtime, timeout: float = 20) -> None:
    """Until, for half a second, no reply runs, none is shown and nothing waits in the bot's queue."""
    chat = bot.get_cog("Chat")
    quiet = 0
    for _ in range(int(timeout / 0.05)):
        await asyncio.sleep(0.05)
        busy = runtime.registry.active() or chat.streams or any(chat._waiting.values())
        quiet = 0 if busy else quiet + 1
        if quiet >= 10:
            return
    raise AssertionError("the bot never settled")


def reactions(channel, message) -> list[str]:  # type: ignore[no-untyped-def]
    stored = next(m for m in back._cur_config.messages[channel.id] if int(m["id"]) == message.id)
    return [r["emoji"]["name"] for r in stored.get("reactions", []) if r.get("count", 1) > 0]


async def test_messages_sent_while_a_reply_streams_are_answered_together_next(
        bot: commands.Bot, fake_ollama: FakeOllama, runtime: Runtime) -> None:
    fake_ollama.script(text("a slow and steady answer", chunk_size=1, delay=0.1), text("Both answered."))
    channel, member = config().channels[0], config().members[0]
    first = asyncio.create_task(dpytest.message(f"<@{bot.user.id}> first", channel=channel, member=member))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if fake_ollama.requests:
            break
    await asyncio.sleep(0.1)
    # dpytest.message waits for every handler to finish: send these two without waiting
    later = [asyncio.create_task(dpytest.message(f"<@{bot.user.id}> {word}", channel=channel, member=member))
             for word in ("second", "third")]
    chat = bot.get_cog("Chat")
    for _ in range(100):
        await asyncio.sleep(0.02)
        if sum(len(v) for v in chat._waiting.values()) == 2:
            break
    second, third = [message for message, _, _ in next(iter(chat._waiting.values()))]
    assert reactions(channel, second) == ["⏳"] and reactions(channel, third) == ["⏳"]
    assert len(fake_ollama.requests) == 1  # nothing else is asked while the reply streams
    await asyncio.gather(first, *later)
    await settle(bot, runtime)
    assert len(fake_ollama.requests) == 2
    assert fake_ollama.requests[1]["messages"][-1] == {"role": "user", "content": "second\n\nthird"}
    assert reactions(channel, second) == [] and reactions(channel, third) == []
    assert [m.content for m in channel_messages(channel, bot)] == ["a slow and steady answer", "Both answered."]


async def test_a_flood_while_a_reply_streams_is_bounded_and_told_so(bot: commands.Bot, fake_ollama: FakeOllama,
                                                                   runtime: Runtime) -> None:
    fake_ollama.script(hang("Thinking it over"), text("All ten answered."))
    channel, member = config().channels[0], config().members[0]
    first = asyncio.create_task(dpytest.message(f"<@{bot.user.id}> first", channel=channel, member=member))
    await wait_until(lambda: bool(fake_ollama.requests))
    await asyncio.sleep(0.2)
    flood = [asyncio.create_task(dpytest.message(f"<@{bot.user.id}> m{i}", channel=channel, member=member))
             for i in range(MAX_WAITING + 2)]
    chat = bot.get_cog("Chat")
    await wait_until(lambda: sum(len(v) for v in chat._waiting.values()) == MAX_WAITING
                     and sum(m.content == QUEUE_FULL.format(n=MAX_WAITING) for m in channel_messages(channel, bot)) == 2)
    fake_ollama.release()
    await asyncio.gather(first, *flood)
    await settle(bot, runtime)
    assert len(fake_ollama.requests) == 2
    asked = fake_ollama.requests[1]["messages"][-1]["content"].split("\n\n")
    assert len(asked) == MAX_WAITING and len(set(asked)) == MAX_WAITING  # ten of the twelve, each once
    shown = [m.content for m in channel_messages(channel, bot)]
    assert shown.count(QUEUE_FULL.format(n=MAX_WAITING)) == 2 and shown[-1] == "All ten answered."


async def test_a_batch_that_loses_the_race_to_another_reply_waits_again_once(
        bot: commands.Bot, fake_ollama: FakeOllama, runtime: Runtime) -> None:
    """The engine may still be streaming another reply when the waiting messages' turn starts:
    they go back in the queue exactly as they were (no duplicate, nothing asked of the model)."""
    channel, member = config().channels[0], config().members[0]
    waiting = [back.make_message(word, member, channel) for word in ("one", "two")]  # not addressed: no turn
    await dpytest.run_all_events()
    key = (str(member.id), str(channel.id))
    other = runtime.registry.begin(key)  # a reply streaming in this session, started elsewhere
    assert other is not None
    chat_cog = bot.get_cog("Chat")
    chat_cog._waiting[key] = [(m, m.content, []) for m in waiting]
    async with ChatSession(user=member.id, session=channel.id, runtime=runtime) as chat:
        await chat_cog._answer_waiting(chat)
    assert [t for _, t, _ in chat_cog._waiting[key]] == ["one", "two"]
    assert [reactions(channel, m) for m in waiting] == [["⏳"], ["⏳"]] and fake_ollama.requests == []


async def test_a_message_while_a_tool_runs_replaces_the_reply_and_says_so(bot: commands.Bot,
                                                                         fake_ollama: FakeOllama,
                                                                         runtime: Runtime) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 60"})), text("New answer."))
    channel, member = config().channels[0], config().members[0]
    first = asyncio.create_task(dpytest.message(f"<@{bot.user.id}> long job", channel=channel, member=member))
    key = (str(member.id), str(channel.id))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if runtime.registry.phase(key) is not None and runtime.registry.phase(key).value == "tool":
            break
    await dpytest.message(f"<@{bot.user.id}> actually, never mind", channel=channel, member=member)
    await first
    await settle(bot, runtime)
    shown = [m.content.split("\n") for m in channel_messages(channel, bot)]
    assert shown == [["-# ⏹️ `sleep 60` stopped: a newer message took over"],
                     ["-# ↩️ Stopped my previous reply to answer this instead.", "New answer."]]


async def test_refused_users_get_one_quiet_line(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    bot = await start_bot(runtime)
    member = config().members[1]
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset({member.id}))
    channel = config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> hi", channel=channel, member=member)
    await dpytest.message(f"<@{bot.user.id}> hi again", channel=channel, member=member)
    shown = channel_messages(channel, bot)
    assert len(shown) == 1 and "not available" in shown[0].content and fake_ollama.requests == []
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset(), allow_dms=False)
    dm = await member.create_dm()
    await dpytest.message("hello?", channel=dm, member=member)
    assert "direct messages" in channel_messages(dm, bot)[-1].content
    await dpytest.empty_queue()


async def test_the_refusal_memory_forgets_users_whose_quiet_period_is_over(runtime: Runtime) -> None:
    bot = await start_bot(runtime)
    member = config().members[1]
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset({member.id}))
    cog = bot.get_cog("Chat")
    long_ago = time.monotonic() - REFUSAL_QUIET_SECONDS - 1
    cog._refused.update({(user, 1): long_ago for user in range(5000)})  # refused long ago, in other channels
    cog._refused[(42, 2)] = time.monotonic()  # refused just now: still quiet
    channel = config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> hi", channel=channel, member=member)
    assert set(cog._refused) == {(42, 2), (member.id, channel.id)}
    assert "not available" in channel_messages(channel, bot)[-1].content
    await dpytest.empty_queue()


async def test_edits_in_one_channel_respect_the_rate(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(edits_per_5s=3)
    runtime.model_gate.limit = 3  # the three replies stream at once, as with OLLAMA_NUM_PARALLEL=3
    bot = await start_bot(runtime)
    cog = bot.get_cog("Chat")
    cog.min_edit_interval = 0.01  # every reply wants to edit as often as it can: only the pacer holds it back
    pacer = cog.pacer
    pacer.window = 1.0  # same rule, a shorter window keeps the test quick
    stamps: list[float] = []
    loop = asyncio.get_running_loop()
    original = discord.Message.edit

    async def spy(self, **kwargs):  # type: ignore[no-untyped-def]
        stamps.append(loop.time())
        return await original(self, **kwargs)

    discord.Message.edit = spy  # type: ignore[method-assign]
    try:
        fake_ollama.script(*[text(f"reply {i} " + "word " * 30, chunk_size=5, delay=0.03) for i in range(3)])
        channel = config().channels[0]
        members = config().members
        await asyncio.gather(*[dpytest.message(f"<@{bot.user.id}> go {i}", channel=channel, member=members[i])
                               for i in range(3)])
    finally:
        discord.Message.edit = original  # type: ignore[method-assign]
    assert len(stamps) >= 4
    sends = len(channel_messages(channel, bot))
    for i in range(len(stamps)):
        in_window = [s for s in stamps if stamps[i] <= s < stamps[i] + 1.0]
        assert len(in_window) <= 3
    finals = sorted(m.content for m in channel_messages(channel, bot))
    assert sends == 3 and [f.strip() for f in finals] == sorted((f"reply {i} " + "word " * 30).strip() for i in range(3))
    await dpytest.empty_queue()


async def test_typing_is_shown_while_working(bot: commands.Bot, fake_ollama: FakeOllama) -> None:
    import discord.ext.test.callbacks as callbacks
    typed: list[int] = []

    async def on_typing(channel) -> None:  # type: ignore[no-untyped-def]
        typed.append(channel.id)

    callbacks.set_callback(on_typing, "send_typing")
    try:
        fake_ollama.script(text("done typing"))
        channel = config().channels[0]
        await dpytest.message(f"<@{bot.user.id}> hi", channel=channel)
    finally:
        callbacks.remove_callback("send_typing")
    assert typed and typed[0] == channel.id


async def test_docker_down_is_one_friendly_line(bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from core.sandbox.docker import DockerProvider
    from core.sandbox import Terminal
    from tests.conftest import closed_port
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{closed_port()}")
    runtime.sandboxes = DockerProvider(runtime.settings)
    runtime.terminal = Terminal(runtime.sandboxes)
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "ls"})))
    channel = config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> list files", channel=channel)
    assert bot_text(bot, channel).split("\n") == [
        "-# ⚠️ `ls` could not run",
        "⚠️ Commands cannot run right now (the sandbox is unavailable); try again in a minute."]
