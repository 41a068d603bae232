"""Slash commands through the bot's own command tree, with the real runtime behind them."""
from __future__ import annotations

import asyncio
import types
from typing import Any

import discord
import docker
import pytest
from discord.ext import commands

from core import ChatSession, ModelError, Runtime, SandboxUnavailable
from tests.bot.conftest import invoke
from tests.fake_ollama import FakeOllama, error, text

pytestmark = pytest.mark.asyncio
CHANNEL = 555000111


class Response:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.deferred = False
        self.modal: discord.ui.Modal | None = None
        self.acknowledged_at: float | None = None  # loop time of the first answer Discord sees
        self.answered_at: float | None = None  # loop time of the last message

    def is_done(self) -> bool:
        return self.deferred or bool(self.sent) or self.modal is not None

    def _stamp(self) -> None:
        now = asyncio.get_running_loop().time()
        self.acknowledged_at = self.acknowledged_at or now
        self.answered_at = now

    async def send_modal(self, modal: discord.ui.Modal) -> None:
        assert not self.is_done(), "a modal must be the interaction's first answer"
        self._stamp()
        self.modal = modal

    async def send_message(self, content: str = "", **kwargs: Any) -> None:
        assert not self.is_done(), "an interaction is answered once; later messages are follow-ups"
        self._stamp()
        self.sent.append((content, kwargs))

    async def defer(self, **kwargs: Any) -> None:
        assert not self.is_done() and kwargs.get("ephemeral") is True
        self._stamp()
        self.deferred = True


class Followup:
    def __init__(self, response: Response) -> None:
        self.response = response

    async def send(self, content: str = "", **kwargs: Any) -> None:
        assert self.response.is_done(), "a follow-up needs an answered interaction"
        self.response._stamp()
        self.response.sent.append((content, kwargs))


class Interaction:
    """What a slash-command callback reads from discord.Interaction."""

    def __init__(self, user_id: int, *, manage_guild: bool = False, namespace: dict | None = None,
                 guild: int | None = 1, channel: int = CHANNEL) -> None:
        self.user = types.SimpleNamespace(id=user_id, guild_permissions=discord.Permissions(manage_guild=manage_guild))
        self.guild = types.SimpleNamespace(id=guild) if guild is not None else None
        self.channel_id = channel
        self.response = Response()
        self.followup = Followup(self.response)
        self.namespace = types.SimpleNamespace(**(namespace or {}))

    @property
    def said(self) -> str:
        assert self.response.sent, "nothing was sent"
        content, kwargs = self.response.sent[-1]
        assert kwargs.get("ephemeral") is True
        return content


async def call(bot: commands.Bot, path: tuple[str, ...], interaction: Interaction, **kwargs: Any) -> str:
    await invoke(bot, path, interaction, **kwargs)
    assert interaction.response.deferred, "every command acknowledges at once (defer), then follows up"
    return interaction.said


async def test_reset_clears_history_and_restarts_the_container(bot: commands.Bot, runtime: Runtime,
                                                               fake_ollama: FakeOllama,
                                                               docker_client: docker.DockerClient) -> None:
    fake_ollama.script(text("hello"))
    async with ChatSession(user=7, session=CHANNEL, runtime=runtime) as chat:
        await runtime.terminal.execute("7", str(CHANNEL), "echo kept > /tmp/x")
        async for _ in chat.chat_stream("hi"):
            pass
    name = runtime.sandboxes.name("7", str(CHANNEL))
    before = docker_client.containers.get(name).id
    said = await call(bot, ("reset",), Interaction(7))
    assert "Cleared 2 messages" in said and "restarted" in said
    assert runtime.history.window(chat.session_id, 10) == []
    after = await runtime.terminal.execute("7", str(CHANNEL), "cat /tmp/x")
    assert after.exit_code != 0 and docker_client.containers.get(name).id != before


async def test_reset_can_keep_the_container(bot: commands.Bot, runtime: Runtime) -> None:
    await runtime.terminal.execute("8", str(CHANNEL), "echo kept > /tmp/x")
    said = await call(bot, ("reset",), Interaction(8), keep_container=True)
    assert "kept your sandbox" in said
    assert (await runtime.terminal.execute("8", str(CHANNEL), "cat /tmp/x")).stdout == "kept\n"


async def test_sessions_lists_only_the_callers_conversations(bot: commands.Bot, runtime: Runtime) -> None:
    runtime.history.add_message(runtime.history.open_session("9", "111"), "user", "a")
    runtime.history.open_session("9", "222")
    runtime.history.open_session("10", "333")
    await runtime.terminal.execute("9", "111", "true")
    said = await call(bot, ("sessions",), Interaction(9))
    lines = said.splitlines()
    assert len(lines) == 2 and "<#333>" not in said
    line_111 = next(l for l in lines if l.startswith("<#111>"))
    assert "1 messages" in line_111 and "🟢 sandbox running" in line_111 and "<t:" in line_111
    assert "⚪ no sandbox" in next(l for l in lines if l.startswith("<#222>"))


async def test_sessions_and_help_say_how_much_of_a_conversation_the_model_sees(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(history_window=4)
    async with ChatSession(user=9, session=CHANNEL, runtime=runtime) as chat:
        for n in range(4):
            fake_ollama.script(text(f"answer {n}"))
            async for _ in chat.chat_stream(f"question {n}"):
                pass
    [line] = (await call(bot, ("sessions",), Interaction(9))).splitlines()
    assert line.startswith(f"<#{CHANNEL}> · 8 messages · last active <t:")
    assert line.endswith("· ⚪ no sandbox · the model sees its last 3 messages and a summary of the rest")
    help_lines = (await call(bot, ("help",), Interaction(9))).splitlines()
    assert help_lines[3] == ("• I read up to 16,384 tokens of a conversation at a time; earlier messages are kept "
                             "as a short summary (here I now see your last 3 messages and a summary of the rest). "
                             "`/reset` starts over.")


ADMIN_COMMANDS = [
    (("admin", "sessions"), {}),
    (("admin", "status"), {}),
    (("admin", "model"), {"name": "qwen3:8b"}),
    (("admin", "prompt", "set"), {"text": "You are a pirate."}),
    (("admin", "prompt", "show"), {}),
    (("admin", "prompt", "clear"), {}),
    (("admin", "reset"), {"user": types.SimpleNamespace(id=9), "channel": "111"}),
    (("admin", "stop"), {"user": types.SimpleNamespace(id=9), "channel": "111"}),
]


@pytest.mark.parametrize("path, kwargs", ADMIN_COMMANDS, ids=[" ".join(p[1:]) for p, _ in ADMIN_COMMANDS])
async def test_members_without_rights_are_refused_every_admin_command(bot: commands.Bot, runtime: Runtime,
                                                                     path: tuple, kwargs: dict) -> None:
    sid = runtime.history.open_session("9", "111")
    runtime.history.add_message(sid, "user", "precious")
    said = await call(bot, path, Interaction(12345, manage_guild=False), **kwargs)
    assert said.startswith("Only server managers")
    assert runtime.history.window(sid, 10) == [{"role": "user", "content": "precious"}]
    assert await runtime.places.overrides() == {}


async def test_managers_and_listed_admins_may_use_admin(bot: commands.Bot, runtime: Runtime,
                                                        fake_ollama: FakeOllama) -> None:
    said = await call(bot, ("admin", "status"), Interaction(1, manage_guild=True))
    assert "Ollama: 🟢 reachable" in said and "Docker: 🟢 reachable" in said and "`qwen3:8b`" in said
    runtime.settings = runtime.settings.replace(admin_user_ids=frozenset({77}))
    said = await call(bot, ("admin", "status"), Interaction(77))
    assert "Model:" in said


async def test_admin_sessions_reset_and_stop(bot: commands.Bot, runtime: Runtime,
                                             docker_client: docker.DockerClient) -> None:
    sid = runtime.history.open_session("9", "111", "1")  # in the managers' server (Interaction's guild 1)
    runtime.history.add_message(sid, "user", "x")
    await runtime.terminal.execute("9", "111", "true")
    admin = Interaction(1, manage_guild=True)
    assert "<@9> in <#111> · sandbox: running" in await call(bot, ("admin", "sessions"), admin)
    said = await call(bot, ("admin", "reset"), Interaction(1, manage_guild=True),
                      user=types.SimpleNamespace(id=9), channel="111")
    assert "Cleared 1 messages" in said and runtime.history.window(sid, 10) == []
    said = await call(bot, ("admin", "stop"), Interaction(1, manage_guild=True),
                      user=types.SimpleNamespace(id=9), channel="111")
    assert "sandbox removed" in said
    assert not docker_client.containers.list(all=True, filters={"name": runtime.sandboxes.name("9", "111")})


async def test_status_reports_ollama_down(bot: commands.Bot, fake_ollama: FakeOllama) -> None:
    fake_ollama.stop()
    said = await call(bot, ("admin", "status"), Interaction(1, manage_guild=True))
    assert "Ollama: 🔴 unreachable" in said


async def test_status_says_what_users_were_told_is_down(bot: commands.Bot, runtime: Runtime,
                                                       fake_ollama: FakeOllama) -> None:
    fake_ollama.script(error(404, 'model "qwen3:8b" not found, try pulling it first'), text("Back."))
    async with ChatSession(user="9", session="1", runtime=runtime) as chat:
        with pytest.raises(ModelError):
            async for _ in chat.chat_stream("hi"):
                pass
        runtime.settings = runtime.settings.replace(admin_user_ids=frozenset({77}))
        said = await call(bot, ("admin", "status"), Interaction(77))
        down = [line for line in said.split("\n") if line.startswith("🔴 Ollama failing since")]
        assert len(down) == 1 and down[0].endswith("(1×): The model 'qwen3:8b' is not on the Ollama server: "
                                                   "run `ollama pull qwen3:8b` or pick another with /admin model.")
        # a server's managers learn that it fails, not what failed elsewhere (another server's model, say)
        said = await call(bot, ("admin", "status"), Interaction(1, manage_guild=True))
        [down] = [line for line in said.split("\n") if line.startswith("🔴 Ollama failing since")]
        assert down.endswith("(1×) (the bot's admins see the details)")
        async for _ in chat.chat_stream("again"):
            pass
        said = await call(bot, ("admin", "status"), Interaction(77))
        assert "failing since" not in said  # the next good answer closes the incident


@pytest.mark.parametrize("path, kwargs", [(("reset",), {}), (("sessions",), {}), (("admin", "status"), {})],
                         ids=["reset", "sessions", "admin status"])
async def test_the_access_lists_apply_to_slash_commands(bot: commands.Bot, runtime: Runtime,
                                                        docker_client: docker.DockerClient,
                                                        path: tuple, kwargs: dict) -> None:
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset({66}))
    said = await call(bot, path, Interaction(66, manage_guild=True), **kwargs)
    assert said == "Sorry, I'm not available to you here."
    await asyncio.sleep(0.3)  # a sandbox start, had one been asked for, would be under way by now
    assert not docker_client.containers.list(all=True, filters={"label": "llmbot.user=66"})
    assert runtime.history.find_session("66", str(CHANNEL)) is None
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset(), allowed_channel_ids=frozenset({1}))
    said = await call(bot, path, Interaction(67, manage_guild=True), **kwargs)  # CHANNEL is not allowed
    assert said == "Sorry, I'm not available to you here."


@pytest.mark.parametrize("command", ["reset", "stop"])
async def test_admin_reset_and_stop_take_only_known_channels(bot: commands.Bot, runtime: Runtime,
                                                             docker_client: docker.DockerClient, command: str) -> None:
    person = types.SimpleNamespace(id=9)
    runtime.history.open_session("9", "777")  # a DM the bot talked in: the bot's admins' only
    runtime.history.open_session("9", "888", "2")  # a conversation in another server
    for channel in ("not-a-channel", "424242", "777", "888"):
        said = await call(bot, ("admin", command), Interaction(1, manage_guild=True), user=person, channel=channel)
        assert said == (f"<@9> has no conversation with me in the channel `{channel}` of this server: pick one "
                        "from the list.")
    assert runtime.history.find_session("9", "not-a-channel") is None  # nothing was created for a refusal
    assert runtime.history.find_session("9", "424242") is None
    await asyncio.sleep(0.3)
    assert not docker_client.containers.list(all=True, filters={"label": "llmbot.user=9"})
    runtime.settings = runtime.settings.replace(admin_user_ids=frozenset({77}))
    said = await call(bot, ("admin", command), Interaction(77, guild=None), user=person, channel="777")
    assert "<#777>" in said


async def test_admins_read_the_audit_others_cannot(bot: commands.Bot, runtime: Runtime) -> None:
    runtime.store.audit.add("9", str(CHANNEL), "ls -la /data", exit_code=0, duration=0.04, output_bytes=2048,
                            server="1")
    runtime.store.audit.add("10", "111", "rm -rf /", exit_code=None, duration=0.0, output_bytes=0, cancelled=True,
                            server="1")
    said = await call(bot, ("admin", "audit"), Interaction(1, manage_guild=True))
    lines = said.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("<@10> in <#111> `rm -rf /` → ⏹️ stopped · 0.0 s · 0 bytes")
    assert lines[1].endswith(f"<@9> in <#{CHANNEL}> `ls -la /data` → exit 0 · 0.0 s · 2 KB")
    said = await call(bot, ("admin", "audit"), Interaction(1, manage_guild=True), user=types.SimpleNamespace(id=9))
    assert "rm -rf" not in said and "ls -la" in said
    said = await call(bot, ("admin", "audit"), Interaction(12345))
    assert said.startswith("Only server managers")


async def test_reset_with_files_deletes_data_now(bot: commands.Bot, runtime: Runtime) -> None:
    await runtime.terminal.execute("7", str(CHANNEL), "mkdir -p /data/a/b && echo x > /data/a/b/f && echo y > /data/g")
    said = await call(bot, ("reset",), Interaction(7), files=True)
    assert said == "Cleared 0 messages here, deleted your files in /data and restarted your sandbox."
    assert (await runtime.terminal.execute("7", str(CHANNEL), "ls -A /data")).stdout == ""


async def test_a_command_that_fails_says_so_in_one_line(bot: commands.Bot, runtime: Runtime,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cog's cog_app_command_error: an engine error's own line, anything else a pointer to the log."""
    assert isinstance(bot.get_cog("Admin"), commands.GroupCog)

    async def broken(*_args: Any) -> None:
        raise RuntimeError("the database is on fire")

    monkeypatch.setattr(runtime, "sessions_of", broken)
    said = await call(bot, ("sessions",), Interaction(9))
    assert said == "⚠️ Something went wrong on my side; the details are in the bot's log."

    async def unavailable(*_args: Any) -> None:
        raise SandboxUnavailable("docker said no")

    monkeypatch.setattr(runtime, "stop_session", unavailable)
    said = await call(bot, ("reset",), Interaction(9))
    assert said == f"⚠️ {SandboxUnavailable.user_line}"
