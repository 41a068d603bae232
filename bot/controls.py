"""Buttons on a streaming reply: Stop, for the person who asked (and the bot's admins)."""
from __future__ import annotations

import io
from typing import Awaitable, Callable

import discord

from core.uploads import human_size

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


ONLY_AUTHOR_OUTPUT = "Only the person who asked (or an admin) can download this output."
OUTPUT_GONE = "That output is no longer kept (the bot keeps recent ones only, and forgets them on restart)."
OUTPUT_VIEW_SECONDS = 24 * 3600


class OutputsView(discord.ui.View):
    """One button per command whose output was cut for the model: the whole output as a .txt file,
    sent only to whoever pressed (the author or an admin), from the engine's bounded store."""

    def __init__(self, author_id: int, may_see: Callable[[discord.abc.User], bool],
                 fetch: Callable[[str], Awaitable[bytes | None]], outputs: list[tuple[str, str, int]]) -> None:
        super().__init__(timeout=OUTPUT_VIEW_SECONDS)
        self.author_id, self.may_see, self.fetch = author_id, may_see, fetch
        for index, (command, output_id, size) in enumerate(outputs[:25]):
            short = command if len(command) <= 40 else command[:39] + "…"
            button = discord.ui.Button(label=f"Full output: {short} ({human_size(size)})"[:80], emoji="📄",
                                       style=discord.ButtonStyle.secondary, custom_id=f"output:{output_id}")
            button.callback = self._sender(output_id, index)  # type: ignore[method-assign]
            self.add_item(button)

    def _sender(self, output_id: str, index: int) -> Callable[[discord.Interaction], Awaitable[None]]:
        async def send(interaction: discord.Interaction) -> None:
            if interaction.user.id != self.author_id and not self.may_see(interaction.user):
                await interaction.response.send_message(ONLY_AUTHOR_OUTPUT, ephemeral=True)
                return
            data = await self.fetch(output_id)
            if data is None:
                await interaction.response.send_message(OUTPUT_GONE, ephemeral=True)
                return
            await interaction.response.send_message(
                file=discord.File(io.BytesIO(data), filename=f"output-{index + 1}.txt"), ephemeral=True)
        return send

