"""Issue 17 attacked through the real cogs (dpytest, two servers), the fake Ollama and real Docker, as
a hostile person would: slash commands that start work for them, used to flood past the message
rate; another server's channels passed as options."""
from __future__ import annotations

import re

import pytest

from core import Runtime, Scope
from tests.bot.servers import Asked, World, ask, seeded, world  # noqa: F401
from tests.bot.test_modes import allow_threads, threads
from tests.fake_ollama import FakeOllama

pytestmark = pytest.mark.asyncio
TOO_FAST = re.compile(r"-# ✋ You're sending messages faster than I can answer \(at most 2 a minute here\); "
                      r"send this one again in \d+ s\.")


async def test_slash_commands_that_start_work_count_toward_the_message_rate(world: World, runtime: Runtime) -> None:
    """/reset recreates a sandbox (and starts one in a channel never used) and /chat makes Discord
    start a thread: sent in a loop, across channels, they churned Docker and Discord for everyone
    with no USER_MESSAGES_PER_MINUTE at all."""
    w = world
    runtime.settings = runtime.settings.replace(user_messages_per_minute=2)
    allow_threads(w.b_room)
    mallory = w.b_other
    for _ in range(2):
        said = await ask(w.bot, ("reset",), Asked(w.bot, mallory, w.b_room))
        assert said == "Cleared 0 messages here and restarted your sandbox."
    assert TOO_FAST.fullmatch(await ask(w.bot, ("reset",), Asked(w.bot, mallory, w.b_room)))
    assert TOO_FAST.fullmatch(await ask(w.bot, ("chat",), Asked(w.bot, mallory, w.b_room), topic="spam"))
    assert threads(w.b_room) == []
    # every server's manager is a stranger who added the public bot: /admin reset and /admin stop on
    # their own conversation do what /reset does, and /admin usage draws a chart (CPU) each time
    boss = w.b_manager
    for command, options in ((("admin", "reset"), {"user": boss, "channel": str(w.b_room.id)}),
                             (("admin", "stop"), {"user": boss, "channel": str(w.b_room.id)}),
                             (("admin", "usage"), {}), (("export",), {})):
        runtime.message_rate = type(runtime.message_rate)()  # a new minute
        await ask(w.bot, ("reset",), Asked(w.bot, boss, w.b_room))
        await ask(w.bot, ("reset",), Asked(w.bot, boss, w.b_room))
        assert TOO_FAST.fullmatch(await ask(w.bot, command, Asked(w.bot, boss, w.b_room), **options)), command
    # another person's share is their own
    said = await ask(w.bot, ("chat",), Asked(w.bot, w.b_person, w.b_room), topic="mine")
    [thread] = threads(w.b_room)
    assert said == f"Started <#{thread.id}>: write there, no need to mention me."


async def test_a_manager_cannot_set_the_mode_of_another_servers_channel(seeded: World, runtime: Runtime,
                                                                         fake_ollama: FakeOllama) -> None:
    w = seeded
    for mode in ("all", None):
        said = await ask(w.bot, ("admin", "channel"), Asked(w.bot, w.b_manager, w.b_room), mode=mode,
                         channel=w.a_room)
        assert said == "Pick a channel of this server."
    assert (await runtime.places.own(Scope.channel(w.a_room.id))).mode is None
