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
from core.uploads import FileEntry, human_size, safe_filename, shown_name

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
                disk = await chat.disk_usage()
            except NotAFolder:
                await send_file_to(interaction, chat, where, limit)  # a file: send it
                return
            except UploadError as exc:
                await interaction.followup.send(f"⚠️ {discord.utils.escape_markdown(exc.user_message)}",
                                                ephemeral=True)
                return
        total = f"\n-# {'⚠️ ' + disk.full_line() if disk.full else disk.line()}" if disk.nearly_full else ""
        if not entries:
            await interaction.followup.send((FILES_EMPTY if not where else f"/data/{where} is empty.") + total,
                                            ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        picker = FilePicker(chat, entries, limit)
        await interaction.followup.send(_listing(where, entries, total), ephemeral=True,
                                        view=picker if picker.children else MISSING, allowed_mentions=NO_MENTIONS)

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
        # only paths that come back exactly as sent (no control characters, no edge spaces a strip would eat)
        return [app_commands.Choice(name=e.path + ("/" if e.kind == "folder" else ""), value=e.path)
                for e in entries if e.kind != "link" and stem.lower() in e.path.rsplit("/", 1)[-1].lower()
                and len(e.path) <= 99 and shown_name(e.path) == e.path and _in_data(e.path) == e.path][:25]


FILES_SHOWN = 20


def _in_data(path: str) -> str:
    """A path as typed ("/data/results/", "results") relative to /data."""
    return path.strip().strip("/").removeprefix("data/")
FILES_EMPTY = "Your /data here is empty. Attach files to a message to me to put them there."


NAME_SHOWN = 60  # characters of a name in a listing line: 20 lines must fit one Discord message
LISTING_MAX = 1900  # Discord refuses a message over 2000 characters


def _code(name: str, width: int = NAME_SHOWN) -> str:
    """A name the sandbox chose, as one inline-code span that nothing in it can break or extend: control
    characters escaped (no forged line), backticks swapped for a look-alike (no early end), long names cut."""
    text = shown_name(name).replace("`", "\u02cb")
    if len(text) > width:
        text = text[:width - 1] + "…"
    return f"`{text}`"


def _entry_line(entry: FileEntry) -> str:
    name = entry.path.rsplit("/", 1)[-1]
    when = f"<t:{int(entry.modified)}:R>"
    if entry.kind == "folder":
        return f"📁 {_code(name + '/')} · {when}"
    if entry.kind == "link":
        return f"🔗 {_code(name)} (a link) · {when}"
    return f"📄 {_code(name)} · {human_size(entry.size)} · {when}"


def _listing(where: str, entries: list[FileEntry], tail: str = "") -> str:
    """The /files message: a title and one line per entry, as many as fit in one Discord message
    with `tail` (the person's total, when it is worth saying) at its end."""
    shown = discord.utils.escape_markdown(shown_name(where)[:200])  # as the person typed it, inert
    lines = [f"**/data/{shown}**" if where else "**/data**"]
    size = len(lines[0]) + len(tail)
    for entry in entries[:FILES_SHOWN]:
        line = _entry_line(entry)
        if size + len(line) + 1 > LISTING_MAX:
            break
        lines.append(line)
        size += len(line) + 1
    more = len(entries) - (len(lines) - 1)
    if more > 0:
        lines.append(f"-# … and {more} more; `/files path:<folder>` lists a folder")
    return "\n".join(lines) + tail


class FilePicker(discord.ui.View):
    """A menu of the listed files: the one picked is sent to whoever asked, and only to them."""

    def __init__(self, chat: ChatSession, entries: list[FileEntry], limit: int) -> None:
        super().__init__(timeout=600)
        self.chat, self.limit = chat, limit
        files = [e for e in entries if e.kind == "file"][:25]
        # The value is an index: the exact path stays here (whatever its characters or length) and is
        # what the download reads; the label is only for the eye.
        self.paths = {str(n): e.path for n, e in enumerate(files)}
        options = [discord.SelectOption(label=_label(e.path), value=str(n), description=human_size(e.size))
                   for n, e in enumerate(files)]
        self.menu = discord.ui.Select(placeholder="Download a file…", options=options)
        self.menu.callback = self.picked  # type: ignore[method-assign]
        if options:
            self.add_item(self.menu)

    async def picked(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await send_file_to(interaction, self.chat, self.paths[self.menu.values[0]], self.limit, exact=True)


def _label(path: str) -> str:
    """A menu label (plain text, at most 100 characters): the path's end, control characters escaped."""
    text = shown_name(path)
    return text if len(text) <= 100 else "…" + text[-99:]


async def send_file_to(interaction: discord.Interaction, chat: ChatSession, path: str, limit: int, *,
                       exact: bool = False) -> None:
    """One file of /data to the person who asked, read through the sandbox, within the upload limit.
    `exact`: the path as listed (from the menu), read as it is, not as if typed."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    try:
        data = await chat.read_file(path, limit, exact=exact)
    except EngineError as exc:
        await interaction.followup.send(f"⚠️ {discord.utils.escape_markdown(exc.user_message)}", ephemeral=True)
        return
    await interaction.followup.send(file=discord.File(io.BytesIO(data), filename=safe_filename(name)), ephemeral=True)


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Uploads(bot))
