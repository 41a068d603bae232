"""Operator logs (issue 10, item 7): one INFO line per turn, a ready line, no third-party noise,
and no message text at any level unless LOG_CONTENT=true."""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Iterator

import discord
import discord.ext.test as dpytest
import pytest
from discord.ext import commands

from bot.discord_bot import create_bot
from bot.logs import CHATTY_LOGGERS, CONTENT_LOGGERS, setup_logging
from core import ChatSession, Runtime, Scope
from tests.bot.test_chat_cog import settle
from tests.fake_ollama import FakeOllama, prompt_tokens, text, tool_calls
from tests.test_concurrency import wait_until

pytestmark = pytest.mark.asyncio


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def logs() -> Iterator[Collect]:
    """The bot's logging set up for real, undone afterwards; every record lands in `.records`."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level,
             {n: logging.getLogger(n).level for n in (*CONTENT_LOGGERS, *CHATTY_LOGGERS)})
    collect = Collect()
    yield collect
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def turn_lines(collect: Collect) -> list[str]:
    return [r.getMessage() for r in collect.records if r.name == "core.tool_loop" and r.getMessage().startswith("turn ")]


async def test_each_turn_logs_one_line_with_rounds_commands_and_tokens(runtime: Runtime, fake_ollama: FakeOllama,
                                                                      logs: Collect) -> None:
    setup_logging("INFO")
    logging.getLogger().addHandler(logs)
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo hi"}),
                                  ("execute_terminal", {"command": "exit 3"})),
                       text("Done: the second one failed."))
    async with ChatSession(user="5", session="9", runtime=runtime) as chat:
        async for _ in chat.chat_stream("please run two things"):
            pass
    [line] = turn_lines(logs)
    # the fake server counts a prompt token per 3.6 characters of the request, and one per 4 of the answer
    first, second = (prompt_tokens(body) for body in fake_ollama.requests)
    match = re.fullmatch(r"turn user=5 channel=9 model=qwen3:8b answered in \d+\.\d s; rounds=1 "
                         r"commands=\['echo hi' exit 0, 'exit 3' exit 3\] tokens: (\d+) in, 8 out; "
                         r"context: (\d+) chars, ~(\d+) tokens estimated, (\d+) measured; 2 messages shown", line)
    assert match, line
    assert int(match.group(1)) == first + second and int(match.group(4)) == second
    assert int(match.group(3)) >= second  # the estimate errs on the safe side
    assert "please run two things" not in logs.text() and "the second one failed" not in logs.text()


async def test_a_stopped_turn_says_so_in_its_line(runtime: Runtime, fake_ollama: FakeOllama, logs: Collect) -> None:
    setup_logging("INFO")
    logging.getLogger().addHandler(logs)
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 30"})))
    async with ChatSession(user="5", session="10", runtime=runtime) as chat:
        async def consume() -> None:
            async for _ in chat.chat_stream("long one"):
                pass
        task = asyncio.create_task(consume())
        await wait_until(lambda: chat.phase is not None and chat.phase.value == "tool")
        await asyncio.sleep(0.3)
        assert await chat.stop()
        await task
    [line] = turn_lines(logs)
    tokens = prompt_tokens(fake_ollama.requests[0])
    assert re.fullmatch(r"turn user=5 channel=10 model=qwen3:8b stopped in \d+\.\d s; rounds=0 "
                        rf"commands=\['sleep 30' stopped\] tokens: {tokens} in, 1 out; context: \d+ chars, "
                        rf"~\d+ tokens estimated, {tokens} measured; 1 messages shown", line), line


async def message_through_discord(bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    config = dpytest.get_config()
    fake_ollama.script(text("the answer is zebra-answer-456"))
    await dpytest.message(f"<@{bot.user.id}> my secret is parrot-secret-123", channel=config.channels[0],
                          member=config.members[0])
    await settle(bot, runtime)


async def test_debug_logs_hold_no_message_text_unless_asked(bot: commands.Bot, runtime: Runtime,
                                                            fake_ollama: FakeOllama, logs: Collect) -> None:
    setup_logging("DEBUG")
    logging.getLogger().addHandler(logs)
    await message_through_discord(bot, runtime, fake_ollama)
    assert turn_lines(logs), "the turn's own line is there"
    assert any(r.levelno == logging.DEBUG for r in logs.records), "DEBUG is on"
    assert "parrot-secret-123" not in logs.text() and "zebra-answer-456" not in logs.text()
    logs.records.clear()
    setup_logging("DEBUG", log_content=True)
    logging.getLogger().addHandler(logs)
    await message_through_discord(bot, runtime, fake_ollama)
    assert "parrot-secret-123" in logs.text() and "zebra-answer-456" in logs.text()


async def test_info_has_no_third_party_noise(runtime: Runtime, fake_ollama: FakeOllama, logs: Collect) -> None:
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = True  # as in a fresh process
    setup_logging("INFO")
    logging.getLogger().addHandler(logs)
    create_bot(runtime=runtime)
    fake_ollama.script(text("hello"))
    async with ChatSession(user="5", session="11", runtime=runtime) as chat:
        async for _ in chat.chat_stream("hi"):
            pass
    names = {r.name for r in logs.records if r.levelno >= logging.INFO}
    assert names == {"core.tool_loop"}, [(r.name, r.getMessage()) for r in logs.records]


async def test_ready_line_names_the_servers_and_model(bot: commands.Bot, runtime: Runtime,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    await runtime.places.set(Scope.channel(4), by="t", model="llama3.1:8b")
    with caplog.at_level(logging.INFO, logger="bot.discord_bot"):
        await bot.on_ready()
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ready")]
    assert line == (f"ready as {bot.user} (id {bot.user.id}) in 1 servers; model qwen3:8b (1 server/channel "
                    f"overrides); Ollama at {runtime.settings.ollama_host}; invite: "
                    f"https://discord.com/oauth2/authorize?client_id={bot.user.id}&scope=bot+applications.commands"
                    f"&permissions=309237746752")
