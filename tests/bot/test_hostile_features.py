"""The newest features attacked through the bot as a hostile member, manager or stranger would:
/admin tools and /help with MCP servers that name their tools for people to misread, and a
manager of one server looking at what another server's people run (issues 19, 20, 22).

Real components: MCP servers written with the SDK (tests/hostile_mcp_server.py, tests/mcp_server.py),
the fake Ollama, the real engine and Docker, discord.py's command tree (dpytest)."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import AsyncIterator

import discord
import discord.ext.test as dpytest
import discord.ext.test.backend as back
import discord.ext.test.factories as facts
import docker
import pytest
import pytest_asyncio
from discord.ext import commands

from bot.logs import setup_logging
from core import ChatSession, Place, Runtime, Settings
from core.mcp.client import Connection
from core.mcp.config import parse
from tests.bot.conftest import start_bot
from tests.bot.test_admin_cog import Interaction, call
from tests.bot.test_logs import Collect, logs  # noqa: F401 - logs: the fixture that undoes setup_logging
from tests.bot.test_modes import allow_threads, threads
from tests.bot.test_places import channel as channel_option
from tests.bot.test_places import manager
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, text, tool_calls
from tests.fake_openai import DEFAULT_MODEL, FakeOpenAI
from tests.mcp_fixtures import HttpServer, http_entry, with_servers
from tests.test_concurrency import wait_until
from tests.test_hostile_features import HOSTILE, PYTHON_IMAGE, python_image

pytestmark = pytest.mark.asyncio
BOT_ADMIN = 99


@pytest_asyncio.fixture
async def hostile_bot(tmp_path: Path, fake_ollama: FakeOllama,
                      docker_client: docker.DockerClient) -> AsyncIterator[tuple[commands.Bot, Runtime]]:
    """A bot with a hostile server run in each conversation's sandbox ("box"), the same server shared
    over HTTP ("odd"), and a stdio server whose command is not there ("gone")."""
    python_image(docker_client)
    with HttpServer("odd", script=HOSTILE) as odd:
        servers = {"box": {"command": "python3", "args": ["-c", HOSTILE.read_text(), "stdio", "box"],
                           "sandbox": True},
                   "odd": http_entry(odd),
                   "gone": {"command": "/srv/secret-tools/bin/server", "args": []}}
        settings = with_servers(make_settings(tmp_path, fake_ollama.url, vm_image=PYTHON_IMAGE,
                                                   admin_user_ids=frozenset({BOT_ADMIN})), tmp_path, servers)
        async with open_runtime(settings, docker_client) as runtime:
            runtime.start_background()
            bot = await start_bot(runtime)
            try:
                await asyncio.wait_for(runtime.mcp._shared["odd"].settled(), 30)
                await asyncio.wait_for(runtime.mcp._shared["gone"].settled(), 30)
                yield bot, runtime
            finally:
                await dpytest.empty_queue()


async def test_admin_tools_never_shows_another_servers_sandbox_tools_or_the_hosts_details(
        hostile_bot: tuple[commands.Bot, Runtime], fake_ollama: FakeOllama) -> None:
    """A member of server 1 runs their own tool server in their sandbox, naming its tools as lines for
    people to misread; a manager of server 2 asked /admin tools and read them, as that server's
    tools, with the fake line among its own. And a server that failed showed its error in full
    (here the host's path to the command) to any server's managers, which /admin status keeps for
    the bot's admins."""
    bot, runtime = hostile_bot
    fake_ollama.script(tool_calls(("box__pictures", {"n": 1})), text("ok"))
    async with ChatSession(user="66", session="10", runtime=runtime, place=Place(channel="10", server="1")) as chat:
        [event async for event in chat.events("use my tools")]
    await wait_until(lambda: any(s.name == "box" and s.detail == "1 running" for s in runtime.mcp.status()))

    manager = Interaction(5, manage_guild=True, guild=2)
    box = await call(bot, ("admin", "tools"), manager, server="box")
    assert box.split("\n")[1:] == ["🔵 **box** · stdio, in each conversation's sandbox · per conversation: "
                                   "1 running · on here"]  # the tools one person's sandbox lists are theirs
    lines = (await call(bot, ("admin", "tools"), Interaction(5, manage_guild=True, guild=2))).split("\n")
    gone = next(line for line in lines if "**gone**" in line)
    assert "secret-tools" not in gone and gone.startswith("🔴 **gone** · stdio · down")
    assert "(the bot's admins see the details)" in gone
    # The bot's admins still read why.
    assert "secret-tools" in await call(bot, ("admin", "tools"), Interaction(BOT_ADMIN, guild=2))


async def test_tool_names_are_shown_as_the_model_calls_them_never_as_lines_or_links(
        hostile_bot: tuple[commands.Bot, Runtime]) -> None:
    """A shared server's tool names went into /help and /admin tools as they were: a newline and a
    fake `-# ✅` line, a heading, a masked link, a mention."""
    bot, _ = hostile_bot
    for said in (await call(bot, ("help",), Interaction(3)),
                 await call(bot, ("admin", "tools"), Interaction(1, manage_guild=True), server="odd")):
        lines = said.split("\n")
        odd = [line for line in lines if line.startswith(("• Tools from services", "-# tools:"))]
        assert len(odd) == 1, said
        for fake in ("-# ✅", "# HEADING"):
            assert not any(line.startswith(fake) for line in lines), said
        assert "](https://" not in said and "@everyone" not in said and "`" not in odd[0]
        assert "execute_terminal" in odd[0] and "pictures" in odd[0]  # the names the model calls


# -- /admin model by a server's manager ------------------------------------------------------------
@pytest.fixture
def settings(tmp_path: Path, fake_ollama: FakeOllama, fake_openai: FakeOpenAI) -> Settings:
    """MODEL_API=ollama, with an OpenAI-compatible server beside it at an address of the operator's."""
    return make_settings(tmp_path, fake_ollama.url, openai_base_url=fake_openai.url)


async def test_admin_model_never_tells_a_servers_manager_where_the_model_server_is(
        bot: commands.Bot, fake_openai: FakeOpenAI) -> None:
    """/admin status keeps the model servers' addresses for the bot's admins; a manager of any server
    typing a model the OpenAI-compatible server does not have read its address (OPENAI_BASE_URL,
    which may be an internal host, or carry a user and password) in the refusal."""
    said = await call(bot, ("admin", "model"), manager(), name="openai:nope")
    assert said == ("⚠️ The model 'nope' is not served by the OpenAI API server (served: "
                    f"{DEFAULT_MODEL}); the model was not changed.")
    assert fake_openai.url.split("//")[1] not in said


# -- /chat, again and again ------------------------------------------------------------------------
async def test_chat_starts_threads_no_faster_than_its_member_may_send_messages(bot: commands.Bot,
                                                                               runtime: Runtime) -> None:
    """Each /chat starts a thread (and Discord says so in the channel, with the name the member
    chose), with no limit: a member could fill a channel with threads and notices as fast as they
    typed. A /chat now counts as one of their messages (USER_MESSAGES_PER_MINUTE)."""
    runtime.settings = runtime.settings.replace(user_messages_per_minute=3)
    room, mallory = dpytest.get_config().channels[1], dpytest.get_config().members[0]
    allow_threads(room)
    said = []
    for n in range(5):
        asking = Interaction(mallory.id, guild=room.guild.id)
        asking.user, asking.channel = mallory, room
        said.append(await call(bot, ("chat",), asking, topic=f"spam {n}"))
    assert len(threads(room)) == 3
    assert said[3].startswith("-# ✋ You're sending messages faster than I can answer (at most 3 a minute here)")


async def test_admin_tools_of_another_servers_channel_or_everywhere_is_refused(
        hostile_bot: tuple[commands.Bot, Runtime]) -> None:
    """Held: a manager of server 2 can neither turn a tool server off in a channel of server 1, nor
    read that channel's settings, nor set the default for every server."""
    bot, runtime = hostile_bot
    other = channel_option(10, guild=1)
    for state in (None, "off"):
        said = await call(bot, ("admin", "tools"), Interaction(5, manage_guild=True, guild=2), server="odd",
                          state=state, channel=other)
        assert said == "Pick a channel of this server."
    said = await call(bot, ("admin", "tools"), Interaction(5, manage_guild=True, guild=2), server="odd", state="off",
                      everywhere=True)
    assert said.startswith("Only the bot's admins (ADMIN_USER_IDS) can change the default")
    assert await runtime.places.tools_off(Place(channel="10", server="1")) == frozenset()
    assert await runtime.places.tools_off(Place(channel="20", server="2")) == frozenset()


async def test_admin_model_of_the_other_api_without_its_server_says_so(bot: commands.Bot, runtime: Runtime) -> None:
    """`openai:<name>` where no OpenAI-compatible server is set up was refused with "The AI model
    could not answer right now; try again in a minute": a retry that can never work."""
    runtime.settings = runtime.settings.replace(openai_base_url="")
    said = await call(bot, ("admin", "model"), manager(), name="openai:gpt-5")
    assert said == ("⚠️ No OpenAI-compatible server is set (OPENAI_BASE_URL), so models named 'openai:…' cannot "
                    "answer; set it, or pick another model with /admin model; the model was not changed.")


async def test_chat_starts_no_thread_where_its_member_may_not_start_one(bot: commands.Bot) -> None:
    """Slash commands work in channels where a member may not write or start threads (an
    announcements channel): /chat had the bot start a public thread there for them, named as they
    chose, with Discord's notice of it and the bot's "started this thread about …" line."""
    room, mallory = dpytest.get_config().channels[1], dpytest.get_config().members[0]
    me = room.guild.me
    threads_right = discord.Permissions(create_public_threads=True, send_messages_in_threads=True, send_messages=True)
    data = facts.dict_from_channel(room)
    data["permission_overwrites"] = [
        {"id": str(me.id), "type": 1, "allow": str(threads_right.value), "deny": "0"},
        {"id": str(room.guild.id), "type": 0, "allow": "0",  # @everyone: read only
         "deny": str(discord.Permissions(send_messages=True, create_public_threads=True).value)}]
    back.get_state().parse_channel_update(data)
    assert room.permissions_for(me).create_public_threads and not room.permissions_for(mallory).create_public_threads
    asking = Interaction(mallory.id, guild=room.guild.id)
    asking.user, asking.channel = mallory, room
    said = await call(bot, ("chat",), asking, topic="FREE NITRO at evil.example")
    assert said == "You may not start threads in this channel, so I do not start one for you here."
    assert threads(room) == []


# -- the operators' log ----------------------------------------------------------------------------
async def test_an_mcp_url_with_a_key_in_it_never_reaches_the_log(logs: Collect) -> None:
    """MCP_CONFIG takes `${NAME}` in a URL, so a key may ride in its query string (many hosted servers
    take `?api_key=`). The MCP SDK and the openai SDK send through httpx2, whose logger writes
    `HTTP Request: POST <the whole URL>` at INFO for every request; the bot's logging quietened
    httpx and httpcore only, so the key went into the log at every call."""
    setup_logging("INFO")
    logging.getLogger().addHandler(logs)
    secret = "k-SECRET-93f1"
    with HttpServer("keyed", script=HOSTILE) as server:
        config = parse({"mcpServers": {"keyed": {"url": server.url + "?api_key=${KEYED_KEY}"}}}, "test",
                       {"KEYED_KEY": secret})[0]
        connection = Connection(config)
        try:
            connection.start()
            await asyncio.wait_for(connection.settled(), 30)
            result = await connection.call(connection.tools["keyed__listings"], {})
        finally:
            await connection.close()
    assert int(result.content[0].text) >= 1  # the server was reached, key and all
    assert secret not in logs.text()
    assert "HTTP Request" not in logs.text()
