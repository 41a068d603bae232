"""Everyone's slash commands: /reset, /sessions, /help, /files and /usage, about one's own conversations."""
from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.utils import MISSING

from core import ChatSession, EngineError, PersonalUsage, Reach
from core.context import Seen
from core.errors import NotAFolder, WorkspaceError
from core.sandbox.workspace import shown_name

from ..access import place_of_interaction, upload_limit, user_is_admin
from ..files import FILES_EMPTY, FilePicker, in_data, listing, send_file_to
from ..formatting import stamp, totals_line
from ..guide import help_text
from ..modes import is_bot_thread, mode_at
from ..reply import NO_MENTIONS
from .base import Choices, SlashCog, checked_choices, say

if TYPE_CHECKING:
    from ..discord_bot import LLMBot


def _seen(seen: Seen | None) -> str:
    """How much of a conversation the model saw in its latest request, for /sessions."""
    if seen is None:
        return ""
    return f" · the model sees its last {seen.shown} messages" + (" and a summary of the rest" if seen.summarized
                                                                   else "")


def usage_text(mine: PersonalUsage) -> str:
    """/usage: today, this week, and the daily budgets with what is left of them."""
    lines = [f"**Today** (UTC): {totals_line(mine.today) if mine.today.turns else 'nothing yet'}",
             f"**This week** (since Monday): {totals_line(mine.week) if mine.week.turns else 'nothing yet'}"]
    if mine.allowances:
        each = " · ".join(f"{a.amount(a.limit)} a day ({a.left_words})" for a in mine.allowances)
        they = "they reset" if len(mine.allowances) > 1 else "it resets"
        lines.append(f"**Your daily budget{'s' if len(mine.allowances) > 1 else ''}**: {each}; {they} at 00:00 UTC "
                     f"(in {mine.resets_in}).")
    return "\n".join(lines)


class Everyone(SlashCog):
    """Each command acknowledged and checked against the access lists once (SlashCog.interaction_check),
    its failures said once (SlashCog.cog_app_command_error)."""

    rated = frozenset({"reset"})  # it restarts a sandbox: a message's worth of the person's rate

    @app_commands.command(name="reset", description="Forget this channel's conversation and restart your sandbox")
    @app_commands.describe(keep_container="Keep the sandbox (installed packages) and only clear the history",
                           files="Also delete your files in /data now (otherwise they go after "
                                 "DATA_RETENTION_DAYS unused)")
    async def reset(self, interaction: discord.Interaction, keep_container: bool = False, files: bool = False) -> None:
        async with ChatSession(user=interaction.user.id, session=interaction.channel_id,
                               place=place_of_interaction(interaction), runtime=self.runtime) as chat:
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
        infos = await self.runtime.sessions_of(str(interaction.user.id), Reach.everything())  # their own, everywhere
        if not infos:
            return await say(interaction, "You have no conversations yet.")
        running = await self.runtime.sandbox_states(Reach.everything())  # read for their own conversations only
        sandboxes = self.runtime.settings.tools  # chat only: none to show
        lines = [f"<#{i.session}> · {i.message_count} messages · last active {stamp(i.last_active)}"
                 + ((" · 🟢 sandbox running" if running.get((i.user, i.session)) == "running" else " · ⚪ no sandbox")
                    if sandboxes else "")
                 + _seen(self.runtime.context_seen.get((i.user, i.session)))
                 for i in infos[:25]]
        await say(interaction, "\n".join(lines))

    @app_commands.command(name="usage", description="What you used today and this week, and your daily budgets")
    async def usage(self, interaction: discord.Interaction) -> None:
        await say(interaction, usage_text(await self.runtime.usage_of(str(interaction.user.id))))

    @app_commands.command(name="help", description="How to talk to the assistant and what it can do")
    async def help(self, interaction: discord.Interaction) -> None:
        rt = self.runtime
        channel = getattr(interaction, "channel", None)
        place = place_of_interaction(interaction)
        me = self.bot.user
        await say(interaction, help_text(
            rt.settings, bot_name=me.display_name if me else "the bot",
            seen=rt.context_seen.get((str(interaction.user.id), str(interaction.channel_id))),
            in_dm=interaction.guild is None, my_thread=is_bot_thread(channel, me),
            mode=(await mode_at(rt, place)).value,
            model=(await rt.places.model(place)).value, has_persona=bool((await rt.places.prompt(place)).value),
            tools=rt.mcp.known(str(interaction.user.id), str(interaction.channel_id), await rt.places.tools_off(place)),
            admin=user_is_admin(rt.settings, interaction.user, in_guild=interaction.guild is not None)))

    @app_commands.command(name="files", description="List your files in /data in this conversation, and download one")
    @app_commands.describe(path="A folder inside /data to list, or a file to download")
    async def files(self, interaction: discord.Interaction, path: str | None = None) -> None:
        # the most the bot may attach here: a DM's limit when there is no channel
        limit = min(self.runtime.settings.send_file_max_bytes, upload_limit(getattr(interaction, "channel", None)))
        user, session = str(interaction.user.id), str(interaction.channel_id)
        where = in_data(path or "")
        where = "" if where == "data" else where
        # Listing starts nothing: no sandbox, and no conversation for someone who never talked to me.
        chat = ChatSession(user=user, session=session, place=place_of_interaction(interaction), runtime=self.runtime,
                           prewarm=False)
        try:
            entries = await self.runtime.list_files(user, session, where)
        except NotAFolder:
            async with chat:
                return await send_file_to(interaction, chat, where, limit)  # a file: send it
        except WorkspaceError as exc:  # the message may hold the path as typed: shown inert
            return await say(interaction, f"⚠️ {discord.utils.escape_markdown(exc.user_message)}")
        disk = await self.runtime.user_disk(user)
        total = f"\n-# {'⚠️ ' + disk.full_line() if disk.full else disk.line()}" if disk.nearly_full else ""
        if not entries:
            await interaction.followup.send((FILES_EMPTY if not where else f"/data/{where} is empty.") + total,
                                            ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        async with chat:  # its files are listed: the conversation exists, and the picker reads through it
            picker = FilePicker(chat, entries, limit)
        await interaction.followup.send(listing(where, entries, total), ephemeral=True,
                                        view=picker if picker.children else MISSING, allowed_mentions=NO_MENTIONS)

    @files.autocomplete("path")
    @checked_choices
    async def _files_path(self, interaction: discord.Interaction, current: str) -> Choices:
        """Names in /data (or in the folder typed so far) that match what is typed; links left out.
        Nothing is created or started for it: no conversation, no sandbox (only an existing /data is read)."""
        typed = in_data(current)
        folder, _, stem = typed.rpartition("/")
        try:
            entries = await self.runtime.list_files(str(interaction.user.id), str(interaction.channel_id), folder)
        except EngineError:
            return []
        # only paths that come back exactly as sent (no control characters, no edge spaces a strip would eat)
        return [app_commands.Choice(name=e.path + ("/" if e.kind == "folder" else ""), value=e.path)
                for e in entries if e.kind != "link" and stem.lower() in e.path.rsplit("/", 1)[-1].lower()
                and len(e.path) <= 99 and shown_name(e.path) == e.path and in_data(e.path) == e.path][:25]


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Everyone(bot))
