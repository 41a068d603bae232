"""What every cog with slash commands shares: its check and its error handler, written once.

discord.py runs a cog's `interaction_check` before each of its app commands and hands whatever
a command raises to its `cog_app_command_error`: commands hold only what they do. Autocompletes
get no interaction_check from discord.py: each is wrapped in `checked_choices`, which applies the
same rule (`refusal_of`) and offers nothing to whoever the command would refuse. A cog's `rated`
commands (those that start work: a sandbox, a thread) also count toward USER_MESSAGES_PER_MINUTE.
"""
from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Awaitable, Callable, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from core import EngineError, Runtime, failure_line

from ..access import interaction_refusal

if TYPE_CHECKING:
    from ..discord_bot import LLMBot

log = logging.getLogger(__name__)
C = TypeVar("C", bound="SlashCog")
Choices = list[app_commands.Choice[str]]


class Refused(app_commands.CheckFailure):
    """A command not run, and the one line that says why (an access list, a missing right, a bad target)."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


async def say(interaction: discord.Interaction, text: str) -> None:
    """An answer only the asker sees: the first answer, or a follow-up once answered (or deferred).
    Mentions never ping: the bot sends with AllowedMentions.none() (LLMBot)."""
    text = text if len(text) <= 2000 else text[:1990] + "\n…"
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


class SlashCog(commands.Cog):
    """A cog of slash commands: each acknowledged at once, under the same access lists as chat, and
    any failure said in one line, never a traceback and never silence."""

    # Commands that start work for their person (a sandbox, a thread): each counts toward
    # USER_MESSAGES_PER_MINUTE like a message, or a loop of them would churn Docker or Discord for everyone.
    rated: frozenset[str] = frozenset()

    def __init__(self, bot: "LLMBot") -> None:
        self.bot = bot

    @property
    def runtime(self) -> Runtime:
        return self.bot.runtime

    def opens_a_form(self, interaction: discord.Interaction) -> bool:
        """True for a command whose first answer is a form (a modal must be the first answer)."""
        return False

    def refusal_of(self, interaction: discord.Interaction) -> str | None:
        """Why this cog's commands are refused to whoever sent `interaction` (None: they are not):
        the same access lists as chat."""
        return interaction_refusal(self.runtime.settings, interaction)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """Acknowledge at once (Discord gives 3 s, and Docker or the database may take longer under
        load), then apply refusal_of."""
        if not interaction.response.is_done() and not self.opens_a_form(interaction):
            await interaction.response.defer(ephemeral=True, thinking=True)
        line = self.refusal_of(interaction)
        if line:
            raise Refused(line)
        if getattr(getattr(interaction, "command", None), "qualified_name", None) in self.rated:
            too_fast = self.runtime.admit_message(interaction.user.id)
            if too_fast is not None:
                raise Refused(too_fast.line)
        return True

    async def cog_app_command_error(self, interaction: discord.Interaction,
                                    error: app_commands.AppCommandError, /) -> None:
        if isinstance(error, Refused):
            await say(interaction, error.line)
            return
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        name = getattr(interaction.command, "qualified_name", "?")
        if isinstance(cause, EngineError):
            log.debug("/%s failed: %s", name, cause)  # incidents log the detail once
        else:
            log.error("/%s failed", name, exc_info=cause)
        try:
            await say(interaction, failure_line(cause))
        except discord.HTTPException as exc:
            log.warning("could not say why /%s failed: %s", name, exc)


def checked_choices(complete: Callable[[C, discord.Interaction, str], Awaitable[Choices]]
                    ) -> Callable[[C, discord.Interaction, str], Awaitable[Choices]]:
    """An autocomplete that first applies its cog's refusal_of: whoever the command would refuse is
    offered nothing, and nothing is looked up, created or started for them."""
    @functools.wraps(complete)
    async def checked(cog: C, interaction: discord.Interaction, current: str) -> Choices:
        if cog.refusal_of(interaction) is not None:
            return []
        return await complete(cog, interaction, current)

    return checked
