"""Buttons on a streaming reply: Stop, for the person who asked (and the bot's admins)."""
from __future__ import annotations

import io
import re
from typing import Awaitable, Callable

import discord

from core.sizes import human_size

from .access import user_is_admin

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


class FullOutputButton(discord.ui.DynamicItem[discord.ui.Button],
                       template=r"llmbot:output:(?P<user>\d+):(?P<session>\d+):(?P<id>[0-9a-f]{32})"):
    """The whole output of a command whose copy for the model was cut, as a .txt file sent only to
    whoever pressed (the author or an admin). Its custom id says everything it needs, so the button
    keeps working after a restart (registered with Bot.add_dynamic_items): then it says the output
    is gone rather than failing."""

    def __init__(self, user: int, session: int, output_id: str, label: str = "Full output") -> None:
        super().__init__(discord.ui.Button(label=label[:80], emoji="📄", style=discord.ButtonStyle.secondary,
                                           custom_id=f"llmbot:output:{user}:{session}:{output_id}"))
        self.user, self.session, self.output_id = user, session, output_id

    @classmethod
    def labelled(cls, user: int, session: int, output_id: str, command: str, size: int) -> "FullOutputButton":
        short = command if len(command) <= 40 else command[:39] + "…"
        return cls(user, session, output_id, f"Full output: {short} ({human_size(size)})")

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,  # type: ignore[override]
                             match: re.Match[str]) -> "FullOutputButton":
        return cls(int(match["user"]), int(match["session"]), match["id"], getattr(item, "label", None) or "Full output")

    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        runtime = interaction.client.runtime  # type: ignore[attr-defined]
        if interaction.user.id != self.user and not user_is_admin(runtime.settings, interaction.user):
            await interaction.response.send_message(ONLY_AUTHOR_OUTPUT, ephemeral=True)
            return
        data = runtime.outputs.get(self.output_id, (str(self.user), str(self.session)))
        if data is None:
            await interaction.response.send_message(OUTPUT_GONE, ephemeral=True)
            return
        await interaction.response.send_message(
            file=discord.File(io.BytesIO(data), filename="output.txt"), ephemeral=True)


def outputs_view(user: int, session: int, kept: list[tuple[str, str, int]]) -> discord.ui.View:
    """The reply's buttons for its cut outputs (at most 25, Discord's limit per message)."""
    view = discord.ui.View(timeout=None)
    for command, output_id, size in kept[:25]:
        view.add_item(FullOutputButton.labelled(user, session, output_id, command, size))
    return view
