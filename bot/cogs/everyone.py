"""Everyone's slash commands: /reset, /sessions, /help and /files, about one's own conversations."""
from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.utils import MISSING

from core import ChatSession, EngineError, Place
from core.context import Seen
from core.errors import NotAFolder, WorkspaceError
from core.sandbox.workspace import shown_name

from ..access import channel_ids, place_of, upload_limit, user_is_admin
from ..files import FILES_EMPTY, FilePicker, in_data, listing, send_file_to
from ..formatting import stamp
from ..guide import help_text
from ..reply import NO_MENTIONS
from .base import SlashCog, say

if TYPE_CHECKING:
    from ..discord_bot import LLMBot


def _seen(seen: Seen | None) -> str:
    """How much of a conversation the model saw in its latest request, for /sessions."""
    if seen is None:
        return ""
    return f" · the model sees its last {seen.shown} messages" + (" and a summary of the rest" if seen.summarized
                                                                   else "")


class Everyone(SlashCog):
    """Each command acknowledged and checked against the access lists once (SlashCog.interaction_check),
    its failures said once (SlashCog.cog_app_command_error)."""

    @app_commands.command(name="reset", description="Forget this channel's conversation and restart your sandbox")
    @app_commands.describe(keep_container="Keep the sandbox (installed packages) and only clear the history",
                           files="Also delete your files in /data now (otherwise they go after "
                                 "DATA_RETENTION_DAYS unused)")
    async def reset(self, interaction: discord.Interaction, keep_container: bool = False, files: bool = False) -> None:
        async with ChatSession(user=interaction.user.id, session=interaction.channel_id, runtime=self.runtime) as chat:
            removed = await chat.reset(keep_container=keep_container, delete_files=files)
        if not self.runtime.settings.tools:  # chat only: there is no sandbox to speak of
            return await say(interaction, f"Cleared {removed} messages here"
                                          + (" and deleted your files." if files else "."))
        if files:
            return await say(interaction, f"Cleared {removed} messages here, deleted your files in /data and "
                                          "restarted your sandbox.")
        what = "kept your sandbox" if keep_container else "restarted your sandbox"
        await say(interaction, f"Cleared {removed} messages here and {what}.")

    @app_commands.command(name="sessions", description="List your conversations with the assistant")
    async def sessions(self, interaction: discord.Interaction) -> None:
        infos = await self.runtime.sessions_of(str(interaction.user.id))
        if not infos:
            return await say(interaction, "You have no conversations yet.")
        running = await self.runtime.sandbox_states()
        sandboxes = self.runtime.settings.tools  # chat only: none to show
        lines = [f"<#{i.session}> · {i.message_count} messages · last active {stamp(i.last_active)}"
                 + ((" · 🟢 sandbox running" if running.get((i.user, i.session)) == "running" else " · ⚪ no sandbox")
                    if sandboxes else "")
                 + _seen(self.runtime.context_seen.get((i.user, i.session)))
                 for i in infos[:25]]
        await say(interaction, "\n".join(lines))

    @app_commands.command(name="help", description="How to talk to the assistant and what it can do")
    async def help(self, interaction: discord.Interaction) -> None:
        rt = self.runtime
        channel = getattr(interaction, "channel", None)
        place = place_of(channel) if channel is not None else Place(
            channel=str(interaction.channel_id),
            server=str(interaction.guild.id) if interaction.guild is not None else None)
        ids = channel_ids(channel) if channel is not None else {interaction.channel_id}
        me = self.bot.user
        await say(interaction, help_text(
            rt.settings, bot_name=me.display_name if me else "the bot",
            seen=rt.context_seen.get((str(interaction.user.id), str(interaction.channel_id))),
            in_dm=interaction.guild is None, auto_reply_here=bool(ids & rt.settings.auto_reply_channel_ids),
            model=(await rt.places.model(place)).value, has_persona=bool((await rt.places.prompt(place)).value),
            tools=rt.mcp.known(str(interaction.user.id), str(interaction.channel_id), await rt.places.tools_off(place)),
            admin=user_is_admin(rt.settings, interaction.user, in_guild=interaction.guild is not None)))

    @app_commands.command(name="files", description="List your files in /data in this conversation, and download one")
    @app_commands.describe(path="A folder inside /data to list, or a file to download")
    async def files(self, interaction: discord.Interaction, path: str | None = None) -> None:
        # the most the bot may attach here: a DM's limit when there is no channel
        limit = min(self.runtime.settings.send_file_max_bytes, upload_limit(getattr(interaction, "channel", None)))
        chat = ChatSession(user=interaction.user.id, session=interaction.channel_id, runtime=self.runtime)
        async with chat:
            where = in_data(path or "")
            where = "" if where == "data" else where
            try:
                entries = await chat.list_files(where)
                disk = await chat.disk_usage()
            except NotAFolder:
                return await send_file_to(interaction, chat, where, limit)  # a file: send it
            except WorkspaceError as exc:  # the message may hold the path as typed: shown inert
                return await say(interaction, f"⚠️ {discord.utils.escape_markdown(exc.user_message)}")
        total = f"\n-# {'⚠️ ' + disk.full_line() if disk.full else disk.line()}" if disk.nearly_full else ""
        if not entries:
            await interaction.followup.send((FILES_EMPTY if not where else f"/data/{where} is empty.") + total,
                                            ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        picker = FilePicker(chat, entries, limit)
        await interaction.followup.send(listing(where, entries, total), ephemeral=True,
                                        view=picker if picker.children else MISSING, allowed_mentions=NO_MENTIONS)

    @files.autocomplete("path")
    async def _files_path(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        """Names in /data (or in the folder typed so far) that match what is typed; links left out."""
        typed = in_data(current)
        folder, _, stem = typed.rpartition("/")
        try:
            async with ChatSession(user=interaction.user.id, session=interaction.channel_id,
                                   runtime=self.runtime) as chat:
                entries = await chat.list_files(folder)
        except EngineError:
            return []
        # only paths that come back exactly as sent (no control characters, no edge spaces a strip would eat)
        return [app_commands.Choice(name=e.path + ("/" if e.kind == "folder" else ""), value=e.path)
                for e in entries if e.kind != "link" and stem.lower() in e.path.rsplit("/", 1)[-1].lower()
                and len(e.path) <= 99 and shown_name(e.path) == e.path and in_data(e.path) == e.path][:25]


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Everyone(bot))
