"""/admin model and /admin status with two model servers (issue 22): Ollama (MODEL_API) and an
OpenAI-compatible one beside it (tests/fake_openai.py). The autocomplete lists what each offers;
a server switched to the other API's model answers that server's messages."""
from __future__ import annotations

from pathlib import Path

import discord.ext.test as dpytest
import pytest
from discord.ext import commands

from core import Runtime, Settings
from tests.bot.conftest import channel_messages
from tests.bot.test_admin_cog import Interaction, call
from tests.bot.test_chat_cog import settle
from tests.bot.test_places import manager
from tests.conftest import make_settings
from tests.fake_ollama import FakeOllama, text
from tests.fake_openai import DEFAULT_MODEL, FakeOpenAI, request_problems

pytestmark = pytest.mark.asyncio
OTHER = f"openai:{DEFAULT_MODEL}"


@pytest.fixture
def settings(tmp_path: Path, fake_ollama: FakeOllama, fake_openai: FakeOpenAI) -> Settings:
    """MODEL_API=ollama (the default), with an OpenAI-compatible server set up beside it."""
    return make_settings(tmp_path, fake_ollama.url, openai_base_url=fake_openai.url)


async def test_the_autocomplete_lists_what_each_server_offers(bot: commands.Bot, fake_ollama: FakeOllama,
                                                              fake_openai: FakeOpenAI) -> None:
    fake_ollama.models = ["qwen3:8b", "llama3.1:8b"]
    fake_openai.models["meta-llama/Llama-3.1-8B-Instruct"] = {}
    choices = await bot.get_cog("Admin")._model_choices(manager(), "")
    assert [(c.name, c.value) for c in choices] == [
        ("qwen3:8b · Ollama", "qwen3:8b"), ("llama3.1:8b · Ollama", "llama3.1:8b"),
        (f"{OTHER} · OpenAI API", OTHER),
        ("openai:meta-llama/Llama-3.1-8B-Instruct · OpenAI API", "openai:meta-llama/Llama-3.1-8B-Instruct")]
    assert [c.value for c in await bot.get_cog("Admin")._model_choices(manager(), "llama-3")] == [
        "openai:meta-llama/Llama-3.1-8B-Instruct"]
    fake_openai.stop()  # a server that cannot be asked offers nothing; the other still does
    assert [c.value for c in await bot.get_cog("Admin")._model_choices(manager(), "llama")] == ["llama3.1:8b"]


async def test_a_server_switched_to_the_other_apis_model_is_answered_by_it(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama, fake_openai: FakeOpenAI) -> None:
    config = dpytest.get_config()
    guild, room = config.guilds[0], config.channels[0]
    fake_openai.models[DEFAULT_MODEL] = {"max_model_len": 32768}  # as vLLM reports it
    said = await call(bot, ("admin", "model"), manager(guild.id), name=OTHER)
    assert said.splitlines() == [
        f"Model for this server switched from `qwen3:8b` to `{OTHER}` (set for this server); it applies from the "
        "next message.",
        "Its context: 32,768 tokens, as its server says; requests are built to fit it."]
    fake_openai.script(text("Ahoy from the GPU box."))
    await dpytest.message(f"<@{bot.user.id}> hello", channel=room, member=config.members[0])
    await settle(bot, runtime)
    assert [m.content for m in channel_messages(room, bot)] == ["Ahoy from the GPU box."]
    [request] = fake_openai.requests
    assert request["model"] == DEFAULT_MODEL and request_problems(request) == []
    assert fake_ollama.requests == []
    # a server's managers see whether each server works; where it runs is for the bot's admins
    status = (await call(bot, ("admin", "status"), Interaction(1, manage_guild=True))).splitlines()
    assert status[1:3] == ["Ollama: 🟢 reachable", "OpenAI API: 🟢 reachable"]
    bot.runtime.settings = bot.runtime.settings.replace(admin_user_ids=frozenset({1}))
    status = (await call(bot, ("admin", "status"), Interaction(1))).splitlines()
    assert status[1:3] == [f"Ollama: 🟢 reachable at {fake_ollama.url}",
                           f"OpenAI API: 🟢 reachable at {fake_openai.url}"]
