"""Persona and model per server and channel (issue 10, item 6), and /help: set through the slash
commands' own callbacks, seen in what the real Ollama client sends and in what users read."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any

import discord.ext.test as dpytest
import docker
import pytest
from discord.ext import commands

from core import ChatSession, Place, Runtime, Scope
from core.prompt import TEMPLATE
from tests.bot.test_admin_cog import CHANNEL, Interaction, call
from tests.bot.conftest import channel_messages, invoke
from tests.bot.test_chat_cog import settle
from tests.conftest import open_runtime
from tests.fake_ollama import FakeOllama, text

pytestmark = pytest.mark.asyncio
BUILT_IN = TEMPLATE.splitlines()[0]  # the first line of the instructions that always stay


def manager(guild: int = 1, **kwargs: Any) -> Interaction:
    return Interaction(1, manage_guild=True, guild=guild, **kwargs)


def channel(id: int, guild: int = 1) -> Any:
    """A channel option as discord.py resolves it: a channel of some server."""
    return types.SimpleNamespace(id=id, guild=types.SimpleNamespace(id=guild), mention=f"<#{id}>")


async def ask(runtime: Runtime, fake: FakeOllama, place: Place, user: str = "5") -> dict[str, Any]:
    """One turn from `place`; the request the model received."""
    fake.script(text("ok"))
    async with ChatSession(user=user, session=place.channel or "dm", place=place, runtime=runtime) as chat:
        async for _ in chat.chat_stream("hi"):
            pass
    return fake.requests[-1]


RESTARTED = """
import asyncio, json, sys
from core import Place, Settings
from core.store import Store

async def main():
    store = Store(sys.argv[1], Settings(ollama_model=sys.argv[2]))
    print(json.dumps([(await store.places.model(Place(**p))).value for p in json.loads(sys.argv[3])]))
    store.close()

asyncio.run(main())
"""


async def models_after_restart(settings: Any, places: list[Place]) -> list[str]:
    """The model each place gets in a new process on the same database."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RESTARTED, settings.database_url, settings.ollama_model,
        json.dumps([dataclasses.asdict(p) for p in places]), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    return json.loads(out)


def system(request: dict[str, Any]) -> str:
    first = request["messages"][0]
    assert first["role"] == "system"
    return first["content"]


async def test_a_servers_persona_joins_the_built_in_instructions_and_a_channels_wins(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    said = await call(bot, ("admin", "prompt", "set"), manager(), text="You are Ada. Answer like a pirate.")
    assert said.splitlines() == ["Persona for this server saved; it applies from the next message:",
                                 "> You are Ada. Answer like a pirate."]
    prompt = system(await ask(runtime, fake_ollama, Place(channel="10", server="1")))
    assert BUILT_IN in prompt and "execute_terminal" in prompt and "You are Ada. Answer like a pirate." in prompt
    assert prompt.rstrip().endswith("that contradict these rules or the user's request.")  # the rules close it
    # another server: only the built-in instructions
    assert "pirate" not in system(await ask(runtime, fake_ollama, Place(channel="20", server="2")))
    # a channel's own persona wins over the server's, and a thread follows its channel
    said = await call(bot, ("admin", "prompt", "set"), manager(), text="You are Bob.", channel=channel(10))
    assert said.splitlines()[0] == "Persona for <#10> saved; it applies from the next message:"
    prompt = system(await ask(runtime, fake_ollama, Place(channel="10", server="1")))
    assert "You are Bob." in prompt and "pirate" not in prompt
    assert "You are Bob." in system(await ask(runtime, fake_ollama, Place(channel="11", parent="10", server="1")))
    assert "pirate" in system(await ask(runtime, fake_ollama, Place(channel="12", server="1")))
    # show and clear say where the text comes from
    said = await call(bot, ("admin", "prompt", "show"), manager(), channel=channel(10))
    assert said.splitlines() == ["Persona for <#10> (set for <#10>):", "> You are Bob."]
    said = await call(bot, ("admin", "prompt", "clear"), manager(), channel=channel(10))
    assert said == "Persona for <#10> removed. Now in effect: set for this server."
    assert "pirate" in system(await ask(runtime, fake_ollama, Place(channel="10", server="1")))
    said = await call(bot, ("admin", "prompt", "clear"), manager(), channel=channel(10))
    assert said == "<#10> has no persona of its own."
    # the persona is never stored in the conversation
    history = runtime.history.window(runtime.history.open_session("5", "10"), 50)
    assert all("pirate" not in m["content"] and "Bob" not in m["content"] for m in history)


async def test_system_prompt_setting_is_the_default_persona(tmp_path: Path, fake_ollama: FakeOllama,
                                                            settings: Any, docker_client: docker.DockerClient) -> None:
    async with open_runtime(settings.replace(system_prompt="Always sign as Zed."), docker_client) as runtime:
        prompt = system(await ask(runtime, fake_ollama, Place(channel="1", server="1")))
        assert "Always sign as Zed." in prompt and BUILT_IN in prompt
        await runtime.places.set(Scope.server(1), by="t", prompt="You are Ada.")
        prompt = system(await ask(runtime, fake_ollama, Place(channel="1", server="1")))
        assert "You are Ada." in prompt and "Zed" not in prompt


async def test_prompt_set_without_text_opens_a_form_holding_the_current_text(bot: commands.Bot, runtime: Runtime,
                                                                             fake_ollama: FakeOllama) -> None:
    await runtime.places.set(Scope.server(1), by="t", prompt="Old line one.\nOld line two.")
    opening = manager()
    await invoke(bot, ("admin", "prompt", "set"), opening)
    form = opening.response.modal
    assert form is not None and not opening.response.sent
    assert form.text.default == "Old line one.\nOld line two." and form.text.max_length == 4000
    form.text._value = "Line one.\nLine two."  # what the manager typed
    submitted = manager()
    await form.on_submit(submitted)
    assert submitted.said.splitlines() == ["Persona for this server saved; it applies from the next message:",
                                           "> Line one.", "> Line two."]
    assert "Line one.\nLine two." in system(await ask(runtime, fake_ollama, Place(channel="3", server="1")))


async def test_a_persona_past_the_limit_is_refused_whole(bot: commands.Bot, runtime: Runtime) -> None:
    opening = manager()
    await invoke(bot, ("admin", "prompt", "set"), opening)
    opening.response.modal.text._value = "x" * 4001
    submitted = manager()
    await opening.response.modal.on_submit(submitted)
    assert submitted.said == "⚠️ The persona is 4001 characters long; the limit is 4000."
    assert await runtime.places.overrides() == {}


async def test_model_switch_checks_tools_targets_a_channel_and_survives_a_restart(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama, settings: Any,
        docker_client: docker.DockerClient) -> None:
    fake_ollama.models = ["qwen3:8b", "llama3.1:8b", "gemma3:4b", "mistral-nemo:12b"]
    fake_ollama.capabilities["gemma3:4b"] = ["completion", "vision"]
    fake_ollama.context_lengths["mistral-nemo:12b"] = 8192  # smaller than the context requests are built for
    choices = await bot.get_cog("Admin")._model_choices(manager(), "lla")
    assert [c.value for c in choices] == ["llama3.1:8b"]
    said = await call(bot, ("admin", "model"), manager(), name="gemma3:4b")
    assert said == ("⚠️ The model 'gemma3:4b' cannot call tools (completion, vision): choose a tool-capable "
                    "model, e.g. qwen3:8b or llama3.1:8b; the model was not changed.")
    said = await call(bot, ("admin", "model"), manager(), name="no-such-model")
    assert said.startswith("⚠️ The model 'no-such-model' is not pulled: run `ollama pull no-such-model`")
    assert await runtime.places.overrides() == {}
    said = await call(bot, ("admin", "model"), manager(), name="llama3.1:8b")
    assert said.splitlines() == [
        "Model for this server switched from `qwen3:8b` to `llama3.1:8b` (set for this server); "
        "it applies from the next message.",
        "Its context: up to 40,960 tokens; requests are built to fit 16,384 (OLLAMA_NUM_CTX)."]
    said = await call(bot, ("admin", "model"), manager(), name="mistral-nemo:12b", channel=channel(30))
    assert said.startswith("Model for <#30> switched from `llama3.1:8b` to `mistral-nemo:12b`")
    assert (await ask(runtime, fake_ollama, Place(channel="30", server="1")))["model"] == "mistral-nemo:12b"
    assert (await ask(runtime, fake_ollama, Place(channel="31", server="1")))["model"] == "llama3.1:8b"
    assert (await ask(runtime, fake_ollama, Place(channel="40", server="2")))["model"] == "qwen3:8b"
    assert (await call(bot, ("admin", "model"), manager(), channel=channel(30))).splitlines() == [
        "Model for <#30>: `mistral-nemo:12b` (set for <#30>).",
        "Its context: up to 8,192 tokens; requests are built to fit 16,384 (OLLAMA_NUM_CTX).",
        "⚠️ OLLAMA_NUM_CTX is more than this model can hold: long conversations would be cut without a word. "
        "Set OLLAMA_NUM_CTX to 8192 or less."]
    # a restart: a new process reads the same database
    assert await models_after_restart(settings, [Place(channel="30", server="1"), Place(channel="31", server="1"),
                                                 Place(channel="40", server="2")]) == \
        ["mistral-nemo:12b", "llama3.1:8b", "qwen3:8b"]
    said = await call(bot, ("admin", "model"), manager(), name="default")
    assert said.startswith("Model for this server switched from `llama3.1:8b` to `qwen3:8b` (OLLAMA_MODEL")
    assert (await ask(runtime, fake_ollama, Place(channel="31", server="1")))["model"] == "qwen3:8b"


async def test_only_the_bots_admins_change_every_server(bot: commands.Bot, runtime: Runtime,
                                                        fake_ollama: FakeOllama) -> None:
    said = await call(bot, ("admin", "prompt", "set"), manager(), text="Be terse.", everywhere=True)
    assert said == "Only the bot's admins (ADMIN_USER_IDS) can change the default for every server and DM."
    said = await call(bot, ("admin", "prompt", "set"), manager(), text="Be terse.", channel=channel(99, guild=2))
    assert said == "Pick a channel of this server."
    assert await runtime.places.overrides() == {}
    runtime.settings = runtime.settings.replace(admin_user_ids=frozenset({77}))
    said = await call(bot, ("admin", "prompt", "set"), Interaction(77, guild=None), text="Be terse.")
    assert said.startswith("Persona for every server and DM (the default) saved")
    assert "Be terse." in system(await ask(runtime, fake_ollama, Place(channel="dm-1")))
    assert "Be terse." in system(await ask(runtime, fake_ollama, Place(channel="8", server="3")))


async def test_a_discord_message_uses_its_servers_model_and_persona(bot: commands.Bot, runtime: Runtime,
                                                                    fake_ollama: FakeOllama) -> None:
    config = dpytest.get_config()
    guild, room = config.guilds[0], config.channels[0]
    fake_ollama.models.append("llama3.1:8b")
    await call(bot, ("admin", "model"), manager(guild.id), name="llama3.1:8b")
    await call(bot, ("admin", "prompt", "set"), manager(guild.id), text="You are the Rust Learners helper.")
    fake_ollama.script(text("Ahoy."))
    await dpytest.message(f"<@{bot.user.id}> hello", channel=room, member=config.members[0])
    await settle(bot, runtime)
    assert [m.content for m in channel_messages(room, bot)] == ["Ahoy."]
    request = fake_ollama.requests[-1]
    assert request["model"] == "llama3.1:8b" and "You are the Rust Learners helper." in system(request)
    assert request["messages"][-1] == {"role": "user", "content": "hello"}


async def test_help_says_how_to_talk_here(bot: commands.Bot, runtime: Runtime) -> None:
    said = await call(bot, ("help",), Interaction(5))
    lines = said.splitlines()
    assert lines[0] == "**Talking to me**"
    assert lines[1] == (f"• Mention @{bot.user.display_name} in a message, or reply to one of my messages. You can "
                        "also DM me. Each person has a conversation of their own with me in each channel (and in "
                        "each thread), and I remember it across restarts.")
    assert "• `/reset`: forget this conversation and restart your sandbox (`keep_container` keeps it, `files` " \
           "deletes your files too)." in lines
    assert lines[-1] == "Here I use the model `qwen3:8b`."
    assert lines[3] == ("• I read up to 16,384 tokens of a conversation at a time; earlier messages are kept as a "
                        "short summary. `/reset` starts over.")
    assert not any("/admin" in line for line in lines)
    runtime.settings = runtime.settings.replace(free_response_channel_ids=frozenset({CHANNEL}), allow_dms=False)
    await runtime.places.set(Scope.server(1), by="t", prompt="Be kind.")
    lines = (await call(bot, ("help",), Interaction(1, manage_guild=True))).splitlines()
    assert lines[1].startswith(f"• In this channel I answer every message; elsewhere, mention "
                               f"@{bot.user.display_name} or reply to me. Each person")
    assert any(line.startswith("• `/admin status`") for line in lines)
    assert lines[-1] == "Here I use the model `qwen3:8b` with a persona set by the operators."
    assert len(said) < 2000


async def test_allowed_models_bound_what_a_servers_manager_may_pick(bot: commands.Bot, runtime: Runtime,
                                                                    fake_ollama: FakeOllama) -> None:
    """ALLOWED_MODELS: on a public bot any stranger manages a server of their own, and each switch makes
    the model server load another model for everyone; the bot's admins still pick any model."""
    fake_ollama.models = ["qwen3:8b", "llama3.1:8b", "mistral-nemo:12b"]
    runtime.settings = runtime.settings.replace(allowed_models=("qwen3:8b", "llama3.1:8b"),
                                                admin_user_ids=frozenset({99}))
    choices = await bot.get_cog("Admin")._model_choices(manager(), "")
    assert [c.value for c in choices] == ["qwen3:8b", "llama3.1:8b"]
    said = await call(bot, ("admin", "model"), manager(), name="mistral-nemo:12b")
    assert said == ("⚠️ `mistral-nemo:12b` is not among the models offered here: `qwen3:8b`, `llama3.1:8b` "
                    "(ALLOWED_MODELS); the model was not changed.")
    assert await runtime.places.overrides() == {}
    said = await call(bot, ("admin", "model"), manager(), name="llama3.1:8b")
    assert said.startswith("Model for this server switched from `qwen3:8b` to `llama3.1:8b`")
    admin = Interaction(99, manage_guild=True)
    assert [c.value for c in await bot.get_cog("Admin")._model_choices(admin, "")] == fake_ollama.models
    said = await call(bot, ("admin", "model"), admin, name="mistral-nemo:12b")
    assert said.startswith("Model for this server switched from `llama3.1:8b` to `mistral-nemo:12b`")
