"""Uploads: a message's attachments go into the sender's /data in that channel's sandbox."""
from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands
from discord.utils import MISSING

from core import ChatSession, EngineError, UploadError
from core.errors import NotAFolder
from core.uploads import FileEntry, human_size

from ..access import interaction_refusal, upload_limit
from ..reply import NO_MENTIONS

if TYPE_CHECKING:
    from ..discord_bot import LLMBot

log = logging.getLogger(__name__)


class Uploads(commands.Cog):
    def __init__(self, bot: "LLMBot") -> None:
        self.bot = bot

    async def save_attachments(self, message: discord.Message, chat: ChatSession) -> list[tuple[str, bytes]]:
        """Save each attachment, reply with where each went (or why not); the saved paths and bytes."""
        limit = self.bot.runtime.settings.upload_max_file_bytes
        saved: list[tuple[str, bytes]] = []
        lines: list[str] = []
        for attachment in message.attachments:
            name = discord.utils.escape_markdown(attachment.filename)
            if attachment.size > limit:
                lines.append(f"⚠️ {name} is over the {human_size(limit)} limit per file; not saved.")
                continue
            try:
                data = await attachment.read()
            except (discord.HTTPException, OSError, ValueError) as exc:
                log.warning("could not download an attachment in channel %s: %s", message.channel.id, exc)
                lines.append(f"⚠️ {name} could not be downloaded from Discord; please send it again.")
                continue
            try:
                path = await chat.save_upload(attachment.filename, data, size=len(data))
            except UploadError as exc:
                lines.append(f"⚠️ {discord.utils.escape_markdown(str(exc))}")
                continue
            except Exception:  # noqa: BLE001 - whatever /data holds, the user gets one line, never a traceback
                log.exception("saving an attachment failed in channel %s", message.channel.id)
                lines.append(f"⚠️ {name} could not be saved; the details are in the bot's log.")
                continue
            saved.append((path, data))
            lines.append(f"📎 {name} → `{path}`")
        if lines:
            try:
                await message.reply("\n".join(lines), allowed_mentions=NO_MENTIONS, mention_author=False)
            except discord.HTTPException as exc:
                log.warning("could not confirm uploads in channel %s: %s", message.channel.id, exc)
        return saved

    @app_commands.command(name="files", description="List your files in /data in this conversation, and download one")
    @app_commands.describe(path="A folder inside /data to list, or a file to download")
    async def files(self, interaction: discord.Interaction, path: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        settings = self.bot.runtime.settings
        channel = getattr(interaction, "channel", None)
        refused = interaction_refusal(settings, interaction)
        if refused:
            await interaction.followup.send(refused, ephemeral=True)
            return
        limit = min(settings.send_file_max_bytes, upload_limit(channel))  # a DM's when there is no channel
        chat = ChatSession(user=interaction.user.id, session=interaction.channel_id, runtime=self.bot.runtime)
        async with chat:
            where = _in_data(path or "")
            where = "" if where == "data" else where
            try:
                entries = await chat.list_files(where)
            except NotAFolder:
                await send_file_to(interaction, chat, where, limit)  # a file: send it
                return
            except UploadError as exc:
                await interaction.followup.send(f"⚠️ {exc.user_message}", ephemeral=True)
                return
        if not entries:
            await interaction.followup.send(FILES_EMPTY if not where else f"/data/{where} is empty.", ephemeral=True)
            return
        title = f"**/data/{where}**" if where else "**/data**"
        more = len(entries) - FILES_SHOWN
        lines = [title, *(_entry_line(e) for e in entries[:FILES_SHOWN])]
        if more > 0:
            lines.append(f"-# … and {more} more; `/files path:<folder>` lists a folder")
        picker = FilePicker(chat, entries, limit)
        await interaction.followup.send("\n".join(lines), ephemeral=True, view=picker if picker.children else MISSING,
                                        allowed_mentions=NO_MENTIONS)

    @files.autocomplete("path")
    async def _files_path(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        """Names in /data (or in the folder typed so far) that match what is typed; links left out."""
        typed = _in_data(current)
        folder, _, stem = typed.rpartition("/")
        try:
            async with ChatSession(user=interaction.user.id, session=interaction.channel_id,
                                   runtime=self.bot.runtime) as chat:
                entries = await chat.list_files(folder)
        except EngineError:
            return []
        return [app_commands.Choice(name=e.path + ("/" if e.kind == "folder" else ""), value=e.path)
                for e in entries if e.kind != "link" and stem.lower() in e.path.rsplit("/", 1)[-1].lower()
                and len(e.path) <= 99][:25]


FILES_SHOWN = 20


def _in_data(path: str) -> str:
    """A path as typed ("/data/results/", "results") relative to /data."""
    return path.strip().strip("/").removeprefix("data/")
FILES_EMPTY = "Your /data here is empty. Attach files to a message to me to put them there."


def _entry_line(entry: FileEntry) -> str:
    name = entry.path.rsplit("/", 1)[-1]
    when = f"<t:{int(entry.modified)}:R>"
    if entry.kind == "folder":
        return f"📁 `{name}/` · {when}"
    if entry.kind == "link":
        return f"🔗 `{name}` (a link) · {when}"
    return f"📄 `{name}` · {human_size(entry.size)} · {when}"


class FilePicker(discord.ui.View):
    """A menu of the listed files: the one picked is sent to whoever asked, and only to them."""

    def __init__(self, chat: ChatSession, entries: list[FileEntry], limit: int) -> None:
        super().__init__(timeout=600)
        self.chat, self.limit = chat, limit
        options = [discord.SelectOption(label=e.path[-100:], value=e.path[-100:],
                                        description=human_size(e.size))
                   for e in entries if e.kind == "file" and len(e.path) <= 100][:25]
        self.menu = discord.ui.Select(placeholder="Download a file…", options=options)
        self.menu.callback = self.picked  # type: ignore[method-assign]
        if options:
            self.add_item(self.menu)

    async def picked(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await send_file_to(interaction, self.chat, self.menu.values[0], self.limit)


async def send_file_to(interaction: discord.Interaction, chat: ChatSession, path: str, limit: int) -> None:
    """One file of /data to the person who asked, read through the sandbox, within the upload limit."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    try:
        data = await chat.read_file(path, limit)
    except EngineError as exc:
        await interaction.followup.send(f"⚠️ {discord.utils.escape_markdown(exc.user_message)}", ephemeral=True)
        return
    await interaction.followup.send(file=discord.File(io.BytesIO(data), filename=name), ephemeral=True)


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Uploads(bot))
