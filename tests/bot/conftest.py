"""A real discord.py bot driven by dpytest, over the real runtime (fake Ollama, real Docker)."""
from __future__ import annotations

import asyncio
import json
import sys
import types
import uuid
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import unquote, urlparse

import discord
import discord.ext.test as dpytest
import discord.ext.test.backend as dpy_backend
import discord.ext.test.factories as facts
import pytest
import pytest_asyncio
from discord import app_commands
from discord.ext import commands
from discord.http import MultipartParameters

from bot.discord_bot import create_bot
from core import Runtime


async def _cdn(self: Any, url: str) -> bytes:
    """Discord's CDN, for dpytest's attachments: they point at local files."""
    path = unquote(urlparse(url).path) if url.startswith("file:") else url
    if not Path(path).is_file():
        raise discord.NotFound(types.SimpleNamespace(status=404, reason="Not Found"), "Unknown attachment")
    return Path(path).read_bytes()


def with_reaction_type(original: Any) -> Any:
    """dpytest 0.7 builds reaction payloads without the "type" field discord.py 2.7 reads."""
    def parse(self: Any, data: dict) -> None:
        data.setdefault("type", 0)
        data.setdefault("burst", False)
        return original(self, data)
    return parse


def keeping_components(original: Any) -> Any:
    """dpytest 0.7 drops a sent message's components (buttons); Discord shows them: keep them."""
    async def send_message(self: Any, channel_id: int, *, params: Any) -> dict:
        channel = sys._getframe(1).f_locals.get("channel")  # noqa: F841 - dpytest reads its caller's locals
        data = await original(self, channel_id, params=params)
        components = (params.payload or {}).get("components")
        if components:
            data["components"] = components
            for stored in dpy_backend._cur_config.messages.get(int(channel_id), []):
                if stored.get("id") == data.get("id"):
                    stored["components"] = components
        return data
    return send_message


def keeping_edited_files(original: Any, folder: Path) -> Any:
    """dpytest 0.7 ignores the files of an edit; Discord adds them to the message's attachments."""
    async def edit_message(http: Any, channel_id: int, message_id: int, **fields: Any) -> dict:
        self = sys._getframe(1).f_locals.get("self")  # noqa: F841 - dpytest reads its caller's locals
        params = fields.get("params")
        payload = getattr(params, "payload", None)
        if payload is None and getattr(params, "multipart", None):  # with files, the JSON rides in a form field
            payload = json.loads(next(p["value"] for p in params.multipart if p["name"] == "payload_json"))
            fields["params"] = MultipartParameters(payload=payload, multipart=None, files=params.files)
        payload = payload or {}
        if "attachments" in payload:
            stored = next((m for m in dpy_backend._cur_config.messages.get(int(channel_id), [])
                           if int(m["id"]) == int(message_id)), {})
            kept = {int(a["id"]): a for a in stored.get("attachments", [])}
            files = list(params.files or [])
            attachments = []
            for item in payload["attachments"]:
                if int(item["id"]) in kept:
                    attachments.append(kept[int(item["id"])])
                    continue
                file = files.pop(0)
                path = folder / f"edit-{uuid.uuid4().hex}-{file.filename}"
                file.fp.seek(0)
                path.write_bytes(file.fp.read())
                attachments.append(facts.make_attachment_dict(file.filename, path.stat().st_size, path.as_uri(),
                                                              path.as_uri(), facts.make_id()))
            payload["attachments"] = attachments
        return await original(http, channel_id, message_id, **fields)
    return edit_message


def keeping_components_on_edit(original: Any) -> Any:
    """dpytest 0.7 rebuilds an edited message from the message object, which has lost its buttons:
    Discord keeps a message's components unless the edit sends new ones (`view=None` sends none)."""
    async def edit_message(http: Any, channel_id: int, message_id: int, **fields: Any) -> dict:
        self = sys._getframe(1).f_locals.get("self")  # noqa: F841 - dpytest reads its caller's locals
        stored = next((m for m in dpy_backend._cur_config.messages.get(int(channel_id), [])
                       if int(m["id"]) == int(message_id)), {})
        kept = stored.get("components")
        data = await original(http, channel_id, message_id, **fields)
        payload = getattr(fields.get("params"), "payload", None) or {}
        components = payload["components"] if "components" in payload else kept
        for message in dpy_backend._cur_config.messages.get(int(channel_id), []):
            if int(message["id"]) == int(message_id):
                message["components"] = components or []
        data["components"] = components or []
        return data
    return edit_message


def _thread_in(channel_id: int, name: str, auto_archive_duration: int, kind: int,
               message_id: int | None = None) -> dict:
    """What Discord does when the bot starts a thread: checks the right and the name, then makes the
    thread (a thread on a message takes the message's id) and announces it (THREAD_CREATE)."""
    state = dpy_backend.get_state()
    parent = state.get_channel(int(channel_id))
    if not isinstance(parent, discord.TextChannel):
        raise discord.HTTPException(types.SimpleNamespace(status=400, reason="Bad Request"), "not a text channel")
    perms = parent.permissions_for(parent.guild.me)
    if not (perms.create_public_threads or perms.administrator):
        raise discord.Forbidden(types.SimpleNamespace(status=403, reason="Forbidden"), "Missing Permissions")
    if not 1 <= len(name) <= 100:
        raise discord.HTTPException(types.SimpleNamespace(status=400, reason="Bad Request"),
                                    "name: must be between 1 and 100 in length")
    data = thread_data(parent, name, state.user.id, auto_archive_duration=auto_archive_duration, kind=kind,
                       thread_id=message_id)
    state.parse_thread_create(data)
    return data


def thread_data(parent: discord.TextChannel, name: str, owner_id: int, *, auto_archive_duration: int = 1440,
                kind: int = discord.ChannelType.public_thread.value, thread_id: int | None = None) -> dict:
    """A thread as Discord describes it in THREAD_CREATE: started by `owner_id` in `parent`."""
    return {"id": str(thread_id or facts.make_id()), "guild_id": str(parent.guild.id), "parent_id": str(parent.id),
            "owner_id": str(owner_id), "name": name, "type": kind, "flags": 0, "last_message_id": None,
            "rate_limit_per_user": 0, "message_count": 0, "member_count": 1, "newly_created": True,
            "thread_metadata": {"archived": False, "auto_archive_duration": auto_archive_duration,
                                "archive_timestamp": discord.utils.utcnow().isoformat(), "locked": False}}


async def _start_thread_with_message(self: Any, channel_id: int, message_id: int, *, name: str,
                                     auto_archive_duration: int, **_: Any) -> dict:
    return _thread_in(channel_id, name, auto_archive_duration, discord.ChannelType.public_thread.value, message_id)


async def _start_thread_without_message(self: Any, channel_id: int, *, name: str, auto_archive_duration: int,
                                        type: int, **_: Any) -> dict:  # noqa: A002 - discord.py's name
    return _thread_in(channel_id, name, auto_archive_duration, int(type))


async def _add_user_to_thread(self: Any, channel_id: int, user_id: int) -> None:
    if dpy_backend.get_state().get_channel(int(channel_id)) is None:
        raise discord.NotFound(types.SimpleNamespace(status=404, reason="Not Found"), "Unknown Channel")


@pytest.fixture(autouse=True)
def fake_cdn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # dpytest writes the files the bot sends to its working folder
    monkeypatch.setattr(dpy_backend.FakeHttp, "edit_message", keeping_edited_files(
        keeping_components_on_edit(dpy_backend.FakeHttp.edit_message), tmp_path))
    # dpytest 0.7 has no threads: start them as Discord does (owned by the bot, announced to the client)
    monkeypatch.setattr(dpy_backend.FakeHttp, "start_thread_with_message", _start_thread_with_message, raising=False)
    monkeypatch.setattr(dpy_backend.FakeHttp, "start_thread_without_message", _start_thread_without_message,
                        raising=False)
    monkeypatch.setattr(dpy_backend.FakeHttp, "add_user_to_thread", _add_user_to_thread, raising=False)
    monkeypatch.setattr(dpy_backend.FakeHttp, "get_from_cdn", _cdn, raising=False)
    monkeypatch.setattr(dpy_backend.FakeHttp, "send_message", keeping_components(dpy_backend.FakeHttp.send_message))
    for parser in ("parse_message_reaction_add", "parse_message_reaction_remove"):
        monkeypatch.setattr(discord.state.ConnectionState, parser,
                            with_reaction_type(getattr(discord.state.ConnectionState, parser)))


async def start_bot(runtime: Runtime, guilds: int = 1) -> commands.Bot:
    """The bot over `runtime`, in `guilds` servers of 2 text channels and 3 members each (dpytest)."""
    bot = create_bot(runtime=runtime)
    await bot._async_setup_hook()
    # dpytest resolves mentions through the guild's member cache, which needs the members
    # intent; the bot itself does not (it reads mentions from the message payload).
    bot._connection._intents.members = True
    bot._connection.member_cache_flags = discord.MemberCacheFlags.from_intents(bot.intents)
    dpytest.configure(bot, guilds=guilds, text_channels=2, members=3)
    bot._connection.loop = asyncio.get_running_loop()  # discord.py 2.7 sets it at login, which dpytest skips
    await bot.setup_hook()
    return bot


@pytest_asyncio.fixture
async def bot(runtime: Runtime) -> AsyncIterator[commands.Bot]:
    bot = await start_bot(runtime)
    try:
        yield bot
    finally:
        await dpytest.empty_queue()


def sent() -> list[discord.Message]:
    """Every message the bot sent since the last call, oldest first, with edits applied."""
    out = []
    while not dpytest.sent_queue.empty():
        out.append(dpytest.get_message())
    return out


def channel_messages(channel: discord.abc.Messageable, bot: commands.Bot) -> list[discord.Message]:
    """The bot's messages in a channel as Discord now shows them (edits applied), oldest first."""
    stored = dpy_backend._cur_config.messages.get(channel.id, [])
    return [discord.Message(state=dpy_backend.get_state(), channel=channel, data=data)
            for data in stored if int(data["author"]["id"]) == bot.user.id]


def slash_command(bot: commands.Bot, *path: str) -> app_commands.Command:
    """A slash command of the bot's tree by its path, e.g. ("admin", "prompt", "set")."""
    cmd = bot.tree.get_command(path[0])
    for name in path[1:]:
        cmd = cmd.get_command(name)
    return cmd


async def invoke(bot: commands.Bot, path: tuple[str, ...], interaction: Any, /, **options: Any) -> None:
    """Run a slash command as discord.py's CommandTree does on an interaction: its cog's
    interaction_check, then the callback with the options given, and on failure the error
    handlers (the cog's cog_app_command_error). `interaction` is a test double recording answers;
    `options` are already what Discord's payload resolves to (users, channels)."""
    cmd = slash_command(bot, *path)
    interaction.command = cmd
    interaction.namespace = types.SimpleNamespace(**options)
    try:
        if not await cmd._check_can_run(interaction):
            raise app_commands.CheckFailure(f"The check functions for command {cmd.name!r} failed.")
        await cmd._do_call(interaction, options)
    except app_commands.AppCommandError as error:
        await cmd._invoke_error_handlers(interaction, error)
