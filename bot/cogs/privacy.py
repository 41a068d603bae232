"""/forget and /export: a person's own data, deleted or handed over, on request.

Discord's developer policy asks that people can have their data deleted; both commands work for
everyone, everywhere, whatever the access lists say (a person blocked from talking to the bot
still owns what it holds of them). Neither starts a sandbox or creates a conversation.
"""
from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from core import ExportTooLarge, Reach
from core.sizes import human_size

from .. import forgetting
from ..access import upload_limit
from .base import SlashCog, say

if TYPE_CHECKING:
    from ..discord_bot import LLMBot

log = logging.getLogger(__name__)
EXPORT_FILES_MAX = 20
NOTHING_TO_EXPORT = "You have no conversations with me: there is nothing to export."
EXPORT_UNDER_WAY = "Your export is already being made; it comes here in a moment."
EXPORTED = ("Your conversations with me, as JSON{packed}: for each one its server, channel and times, and "
            "every message with its role, content, tool calls and time.")
TOO_LARGE = ("Your conversations are too large to send here: they would take {files} files of up to {size} "
             "each (at most {most}). The bot's admins can export them for you, and /forget still deletes them.")


class Privacy(SlashCog):
    """/forget and /export, acknowledged at once (SlashCog.interaction_check), failures said once."""

    rated = frozenset({"export"})  # seconds of reading and packing: paced like a message, never refused

    def __init__(self, bot: "LLMBot") -> None:
        super().__init__(bot)
        self._exporting: set[int] = set()  # one export per person at a time: each one reads all they have

    def refusal_of(self, interaction: discord.Interaction) -> str | None:
        """Nobody is refused their own data: not the access lists, not DMs turned off."""
        return None

    @app_commands.command(name="forget", description="Delete everything the assistant holds of you, everywhere "
                                                     "(after a confirmation)")
    async def forget(self, interaction: discord.Interaction) -> None:
        user = str(interaction.user.id)

        async def action() -> str:
            line = await forgetting.forget(self.bot, user, Reach.everything(), whose="your", where="everywhere")
            log.info("/forget by %s", user)
            return line

        await forgetting.ask(interaction, forgetting.question(self.runtime.settings, whose="your",
                                                              where="everywhere"), action)

    @app_commands.command(name="export", description="Your conversations with the assistant, as a JSON file")
    async def export(self, interaction: discord.Interaction) -> None:
        who = interaction.user.id
        if who in self._exporting:
            return await say(interaction, EXPORT_UNDER_WAY)
        limit = upload_limit(getattr(interaction, "channel", None))
        self._exporting.add(who)
        try:
            files = await self.runtime.export_person(str(who), limit, EXPORT_FILES_MAX)
        except ExportTooLarge as exc:
            return await say(interaction, TOO_LARGE.format(files=exc.files, size=human_size(limit),
                                                           most=EXPORT_FILES_MAX))
        finally:
            self._exporting.discard(who)
        if not files:
            return await say(interaction, NOTHING_TO_EXPORT)
        packed = ", gzipped" if files[0][0].endswith(".gz") else ""
        if len(files) > 1:
            packed += f", in {len(files)} files (each a whole document; a long conversation continues in the next)"
        for n, (name, data) in enumerate(files):
            await interaction.followup.send(EXPORTED.format(packed=packed) if n == 0 else "",
                                            file=discord.File(io.BytesIO(data), filename=name), ephemeral=True)


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Privacy(bot))
