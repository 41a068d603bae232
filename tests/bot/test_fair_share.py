"""A fair share of the model through the chat cog (issue 17, item 3): the real discord.py dispatch
(dpytest), the fake Ollama over HTTP, the real runtime. What people see, line by line."""
from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import discord.ext.test as dpytest
import discord.ext.test.backend as back
import pytest
from discord.ext import commands

from core import ChatSession, Runtime
from tests.bot.conftest import channel_messages
from tests.bot.test_chat_cog import reactions, settle
from tests.fake_ollama import FakeOllama, Response, hang, text
from tests.test_concurrency import wait_until

pytestmark = pytest.mark.asyncio
TOO_FAST = re.compile(r"-# ✋ You're sending messages faster than I can answer \(at most (\d+) a minute here\); "
                      r"send this one again in (\d+) s\.")


def lines(bot: commands.Bot, channel: Any) -> list[list[str]]:
    """The bot's messages in a channel as Discord shows them now, each split into its lines."""
    return [m.content.split("\n") for m in channel_messages(channel, bot)]


async def test_a_message_over_the_persons_rate_gets_one_line_and_no_answer(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(user_messages_per_minute=2)
    fake_ollama.script(text("One."), text("Two."), text("Yours."))
    config = dpytest.get_config()
    (here, there), (ann, bob) = config.channels[:2], config.members[:2]
    mention = f"<@{bot.user.id}>"
    await dpytest.message(f"{mention} first", channel=here, member=ann)
    await dpytest.message(f"{mention} second", channel=there, member=ann)  # the rate counts all her channels
    await dpytest.message(f"{mention} third", channel=here, member=ann)
    fourth = await dpytest.message(f"{mention} fourth", channel=here, member=ann)
    await dpytest.message(f"{mention} hello", channel=there, member=bob)  # bob's share is his own
    await settle(bot, runtime)
    shown = lines(bot, here)
    assert shown[0] == ["One."] and len(shown) == 2 and len(shown[1]) == 1
    said = TOO_FAST.fullmatch(shown[1][0])
    assert said is not None and said.group(1) == "2" and 50 <= int(said.group(2)) <= 60, shown[1]
    assert reactions(here, fourth) == ["✋"]  # told once: the next one over is only marked
    assert lines(bot, there) == [["Two."], ["Yours."]]
    assert [r["messages"][-1]["content"] for r in fake_ollama.requests] == ["first", "second", "hello"]
    async with ChatSession(user=ann.id, session=here.id, runtime=runtime) as chat:
        assert [m["content"] for m in await chat.history()] == ["first", "One."]  # neither stored nor answered


async def test_a_reply_waiting_for_the_model_says_so_then_shows_only_the_answer(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(hang("Thinking it over"), text("Your answer."))
    config = dpytest.get_config()
    (here, there), (ann, bob) = config.channels[:2], config.members[:2]
    mention = f"<@{bot.user.id}>"
    first = asyncio.create_task(dpytest.message(f"{mention} a long question", channel=here, member=ann))
    await wait_until(lambda: len(fake_ollama.requests) == 1)
    second = asyncio.create_task(dpytest.message(f"{mention} a short one", channel=there, member=bob))
    await wait_until(lambda: lines(bot, there) == [["-# ⏳ waiting for the model (1 ahead)…"]])
    assert len(fake_ollama.requests) == 1 and runtime.model_gate.waiting == 1
    fake_ollama.release()
    await asyncio.gather(first, second)
    await settle(bot, runtime)
    assert lines(bot, here) == [["Thinking it over"]]
    assert lines(bot, there) == [["Your answer."]]  # the waiting line is gone: the message became the answer


async def test_one_persons_flood_leaves_another_persons_turn_waiting_one_model_turn_at_most(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    model_turn = [1.5]  # seconds each answer takes; 0 once the measure is taken
    arrivals: list[tuple[float, str]] = []  # (when the fake model got it, the user's words)

    def answer(body: dict[str, Any]) -> Response:
        said = body["messages"][-1]["content"]
        arrivals.append((time.monotonic(), said))
        return text(f"answer: {said}", chunk_size=1000, delay=model_turn[0])

    fake_ollama.fallback = answer
    config = dpytest.get_config()
    guild, (flooder, bob) = config.guilds[0], config.members[:2]
    channels = [back.make_text_channel(f"flood{i}", guild) for i in range(10)]
    mention = f"<@{bot.user.id}>"
    assert runtime.settings.user_messages_per_minute == 20 and runtime.settings.max_model_requests == 1
    flood = [asyncio.create_task(dpytest.message(f"{mention} m{i}", channel=channels[i % 10], member=flooder))
             for i in range(50)]
    await wait_until(lambda: runtime.model_gate.waiting >= 5)  # the flooder's turns queue for the model
    asked = time.monotonic()
    bobs = asyncio.create_task(dpytest.message(f"{mention} hello from bob", channel=config.channels[1], member=bob))
    await wait_until(lambda: any(said == "hello from bob" for _, said in arrivals), seconds=30)
    model_turn[0] = 0.0
    bob_at = next(at for at, said in arrivals if said == "hello from bob")
    before_bob = [said for at, said in arrivals if asked <= at < bob_at]
    # at most the flooder's request that started while bob's message was on its way to the model
    assert len(before_bob) <= 1, before_bob
    assert bob_at - asked < 1.5 + 1.0, f"bob's turn started {bob_at - asked:.1f} s after he asked"
    await asyncio.gather(*flood, bobs)
    await settle(bot, runtime, timeout=60)
    assert lines(bot, config.channels[1]) == [["answer: hello from bob"]]
    # 20 of the 50 answered (the rate), the other 30 told: one line, then a ✋ on each
    answered = [m for _, said in arrivals if said != "hello from bob" for m in said.split("\n\n")]
    assert len(answered) == len(set(answered)) == 20
    shown = [line for channel in channels for message in lines(bot, channel) for line in message]
    assert sum(bool(TOO_FAST.fullmatch(line)) for line in shown) == 1
    marked = [m for channel in channels for m in back._cur_config.messages.get(channel.id, [])
              if any(r["emoji"]["name"] == "✋" for r in m.get("reactions", []))]
    assert len(marked) == 29
