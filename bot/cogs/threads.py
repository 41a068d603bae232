"""/chat [topic]: a thread of one's own with the assistant, where nobody needs to mention it."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from ..modes import THREAD_NAME_LIMIT, may_start_threads, thread_name
from ..reply import NO_MENTIONS
from .base import Refused, SlashCog, say

if TYPE_CHECKING:
    from ..discord_bot import LLMBot

log = logging.getLogger(__name__)
IN_A_DM = "Threads live in servers' text channels; here in our DM, just write: I answer every message."
NOT_HERE = "I can start a thread only in a text channel (not in a thread, a voice or a forum channel)."
NO_RIGHT = "I may not start threads in this channel (I need Create Public Threads and Send Messages in Threads)."
NOT_YOURS = "You may not start threads in this channel, so I do not start one for you here."


class Threads(SlashCog):
    """Checked against the access lists once (SlashCog.interaction_check); failures said once."""

    rated = frozenset({"chat"})  # Discord starts a thread for it: a message's worth of the person's rate

    @app_commands.command(name="chat", description="Start a thread with me: nobody needs to mention me there")
    @app_commands.describe(topic="What it is about: the thread's name")
    async def chat(self, interaction: discord.Interaction,
                   topic: app_commands.Range[str, 1, THREAD_NAME_LIMIT] | None = None) -> None:
        if interaction.guild is None:
            raise Refused(IN_A_DM)
        channel = interaction.channel
        if not isinstance(channel, discord.TextChannel):
            raise Refused(NOT_HERE)
        if not may_start_threads(channel):
            raise Refused(NO_RIGHT)
        who = interaction.user
        if not may_start_threads(channel, who):  # slash commands work where a member may not write
            raise Refused(NOT_YOURS)
        try:
            thread = await channel.create_thread(name=thread_name(topic or "", f"Chat with {who.display_name}"),
                                                 type=discord.ChannelType.public_thread)
        except discord.Forbidden:
            raise Refused(NO_RIGHT) from None
        try:
            await thread.add_user(who)  # the thread shows in their list at once
        except discord.HTTPException as exc:
            log.info("could not add %s to thread %s: %s", who.id, thread.id, exc)
        about = f" about **{discord.utils.escape_markdown(topic)}**" if topic else ""
        await thread.send(f"-# <@{who.id}> started this thread{about}: write here, no need to mention me.",
                          allowed_mentions=NO_MENTIONS)
        await say(interaction, f"Started {thread.mention}: write there, no need to mention me.")


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Threads(bot))
