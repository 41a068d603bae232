"""Buttons on a streaming reply: Stop, for the person who asked (and the bot's admins)."""
from __future__ import annotations

from typing import Awaitable, Callable

import discord

ONLY_AUTHOR = "Only the person who asked (or an admin) can stop this reply."


class StopView(discord.ui.View):
    """A Stop button; `on_stop(who)` cancels the turn. The reply removes the view when it ends."""

    def __init__(self, author_id: int, may_stop: Callable[[discord.abc.User], bool],
                 on_stop: Callable[[discord.abc.User], Awaitable[None]]) -> None:
        super().__init__(timeout=None)  # lives exactly as long as the reply: ReplyStream.close() stops it
        self.author_id = author_id
        self.may_stop = may_stop
        self.on_stop = on_stop
        self.stopped_by: discord.abc.User | None = None

    @discord.ui.button(label="Stop", emoji="⏹️", style=discord.ButtonStyle.secondary)
    async def stop_button(self, interaction: discord.Interaction, _button: discord.ui.Button) -> None:
        if interaction.user.id != self.author_id and not self.may_stop(interaction.user):
            await interaction.response.send_message(ONLY_AUTHOR, ephemeral=True)
            return
        await interaction.response.defer()
        if self.stopped_by is None:
            self.stopped_by = interaction.user
            await self.on_stop(interaction.user)
