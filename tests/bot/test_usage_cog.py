"""/usage, /admin usage and the daily budget's refusal, through the bot's own command tree and
dpytest's real discord.py dispatch, with the real runtime behind them."""
from __future__ import annotations

import io
import threading
from datetime import timedelta

import discord
import discord.ext.test as dpytest
import pytest
from discord.ext import commands
from PIL import Image

from bot.cogs.admin import REFUSAL
from core import ChatSession, Place, Runtime, human_duration
from core.store import Usage
from tests.bot.conftest import channel_messages
from tests.bot.test_admin_cog import Interaction, call
from tests.fake_ollama import FakeOllama, Response, answer_tokens, prompt_tokens, text, tool_calls
from tests.test_usage import MONDAY, at

pytestmark = pytest.mark.asyncio
WEDNESDAY = MONDAY + timedelta(days=2)  # 20:48 UTC: 3 h 12 min before midnight


async def turn(runtime: Runtime, fake: FakeOllama, user: int, place: Place, *answers: Response) -> tuple[int, int]:
    """One real turn; the tokens in and out the fake server counted for it."""
    before = len(fake.requests)
    fake.script(*answers)
    async with ChatSession(user=user, session=place.channel, place=place, runtime=runtime) as chat:
        async for _ in chat.events("hello"):
            pass
    return (sum(prompt_tokens(body) for body in fake.requests[before:]), sum(answer_tokens(a) for a in answers))


async def test_usage_shows_today_this_week_and_what_is_left_of_the_budgets(bot: commands.Bot, runtime: Runtime,
                                                                         fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(user_daily_tokens=100_000, user_daily_command_seconds=600)
    usage = runtime.usage
    usage.clock = at(MONDAY - timedelta(days=1))  # Sunday: last week
    await turn(runtime, fake_ollama, 7, Place(channel="70", server="1"), text("Sunday's answer."))
    usage.clock = at(MONDAY)
    monday = await turn(runtime, fake_ollama, 7, Place(channel="70", server="1"),
                        tool_calls(("execute_terminal", {"command": "sleep 1"})), text("Slept a second."))
    usage.clock = at(WEDNESDAY)
    today = await turn(runtime, fake_ollama, 7, Place(channel="71"), text("Hello from a DM."))
    slept = human_duration(usage.totals("7", MONDAY.date()).command_seconds)  # the real `sleep 1`
    assert slept in ("1 s", "2 s")
    week = (today[0] + monday[0], today[1] + monday[1])
    assert (await call(bot, ("usage",), Interaction(7))).splitlines() == [
        f"**Today** (UTC): 1 turn · {today[0]:,} tokens in · {today[1]:,} out · 0 s of commands · 0 files sent",
        f"**This week** (since Monday): 2 turns · {week[0]:,} tokens in · {week[1]:,} out · "
        f"{slept} of commands · 0 files sent",
        f"**Your daily budgets**: 100,000 tokens a day ({100_000 - sum(today):,} left) · 10 min of command time a "
        f"day (10 min left); they reset at 00:00 UTC (in 3 h 12 min)."]


async def test_usage_of_someone_new_without_budgets(bot: commands.Bot) -> None:
    assert (await call(bot, ("usage",), Interaction(8))).splitlines() == [
        "**Today** (UTC): nothing yet", "**This week** (since Monday): nothing yet"]
    assert "• `/usage`: what you used today and this week, and your daily budgets if there are any." in \
        (await call(bot, ("help",), Interaction(8))).splitlines()


async def test_a_spent_budget_is_one_line_in_the_channel(bot: commands.Bot, runtime: Runtime,
                                                         fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(user_daily_tokens=50)
    runtime.usage.clock = at(WEDNESDAY)
    config = dpytest.get_config()
    channel, member = config.channels[0], config.members[0]
    fake_ollama.script(text("First answer."))
    await dpytest.message(f"<@{bot.user.id}> hello", channel=channel, member=member)
    await dpytest.message(f"<@{bot.user.id}> and more", channel=channel, member=member)
    assert [m.content for m in channel_messages(channel, bot)] == [
        "First answer.",
        "⚠️ You've used today's 50 tokens; it resets at 00:00 UTC (in 3 h 12 min): send your message again then."]
    assert len(fake_ollama.requests) == 1
    [row] = Usage.select()  # the refused message used nothing and is no turn
    assert (row.user, row.server, row.turns) == (str(member.id), str(config.guilds[0].id), 1)


def seed(runtime: Runtime) -> None:
    """Usage in two servers and a DM: the last week's, and one day just before it."""
    usage = runtime.usage
    usage.clock = at(WEDNESDAY - timedelta(days=7))  # outside "the last 7 days"
    usage.add("12", "1", "qwen3:8b", tokens_in=10 ** 6)
    usage.clock = at(WEDNESDAY - timedelta(days=3))
    usage.add("11", "1", "qwen3:8b", tokens_in=1000, tokens_out=100, command_seconds=5)
    usage.add("13", "2", "qwen3:8b", tokens_in=10 ** 5)
    usage.clock = at(WEDNESDAY)
    usage.add("12", "1", "qwen3:8b", tokens_in=2000, tokens_out=200, command_seconds=60, files_sent=1)
    usage.add("12", "1", "llama3:8b", tokens_in=1000, tokens_out=100, command_seconds=30)
    usage.add("11", None, "qwen3:8b", tokens_in=500)


def answer(interaction: Interaction) -> tuple[list[str], discord.File | None]:
    content, kwargs = interaction.response.sent[-1]
    assert kwargs.get("ephemeral") is True
    return content.splitlines(), kwargs.get("file")


async def test_admin_usage_shows_a_servers_own_people_and_a_chart(bot: commands.Bot, runtime: Runtime) -> None:
    seed(runtime)
    manager = Interaction(20, manage_guild=True, guild=1)
    await call(bot, ("admin", "usage"), manager)
    lines, chart = answer(manager)
    assert lines == [
        "**Usage in this server, the last 7 days (UTC)**, most tokens first:",
        "1. <@12>: 2 turns · 3,000 tokens in · 300 out · 1 min 30 s of commands · 1 file sent",
        "2. <@11>: 1 turn · 1,000 tokens in · 100 out · 5 s of commands · 0 files sent"]
    assert chart is not None and chart.filename == "usage.png"
    image = Image.open(io.BytesIO(chart.fp.read()))
    assert image.format == "PNG" and image.size == (800, 500)
    assert any(t.name.startswith("charts") for t in threading.enumerate())  # drawn on its own thread

    today = Interaction(20, manage_guild=True, guild=1)
    await call(bot, ("admin", "usage"), today, days=1)
    assert answer(today)[0] == [
        "**Usage in this server, today (UTC)**, most tokens first:",
        "1. <@12>: 2 turns · 3,000 tokens in · 300 out · 1 min 30 s of commands · 1 file sent"]

    other = Interaction(21, manage_guild=True, guild=2)  # another server's manager sees theirs alone
    await call(bot, ("admin", "usage"), other)
    assert answer(other)[0] == [
        "**Usage in this server, the last 7 days (UTC)**, most tokens first:",
        "1. <@13>: 1 turn · 100,000 tokens in · 0 out · 0 s of commands · 0 files sent"]

    empty = Interaction(22, manage_guild=True, guild=3)
    assert await call(bot, ("admin", "usage"), empty) == "No usage recorded in this server, the last 7 days (UTC)."
    assert answer(empty)[1] is None


async def test_admin_usage_in_a_dm_is_for_the_bots_admins_and_covers_every_server(bot: commands.Bot,
                                                                                   runtime: Runtime) -> None:
    seed(runtime)
    assert await call(bot, ("admin", "usage"), Interaction(20, manage_guild=True, guild=None)) == REFUSAL
    runtime.settings = runtime.settings.replace(admin_user_ids=frozenset({99}))
    admin = Interaction(99, guild=None)
    await call(bot, ("admin", "usage"), admin, days=90)
    lines, chart = answer(admin)
    assert lines == [
        "**Usage in every server and DM, the last 90 days (UTC)**, most tokens first:",
        "1. <@12>: 3 turns · 1,003,000 tokens in · 300 out · 1 min 30 s of commands · 1 file sent",
        "2. <@13>: 1 turn · 100,000 tokens in · 0 out · 0 s of commands · 0 files sent",
        "3. <@11>: 2 turns · 1,500 tokens in · 100 out · 5 s of commands · 0 files sent"]
    assert Image.open(io.BytesIO(chart.fp.read())).size == (800, 500)
    assert await call(bot, ("admin", "usage"), Interaction(99, guild=None), days=91) == "`days` must be from 1 to 90."
