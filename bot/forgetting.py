"""Deleting a person's data on request, on Discord: the confirm buttons, and what the answer says.

/forget (a person, everywhere) and /admin forget (a server's manager, their server; the bot's
admins in a DM, everywhere) share all of it: a question with Delete and Cancel buttons that only
the asker can press (Cancel, or no answer in time, deletes nothing); then the person's messages
waiting for an answer are dropped, the engine forgets them (core: Runtime.forget_person) and the
answer says what went and what was kept, and why.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable

import discord

from core import EngineError, Forgotten, Reach, Settings, failure_line

if TYPE_CHECKING:
    from .discord_bot import LLMBot

log = logging.getLogger(__name__)
CONFIRM_SECONDS = 120
ONLY_THE_ASKER = "Only the person who asked can answer this."
CANCELLED = "Cancelled: nothing was deleted."
TIMED_OUT = "No answer within {minutes} minutes: nothing was deleted."
DELETING = "Deleting…"


def _count(n: int, thing: str, things: str | None = None) -> str:
    return f"{n} {thing if n == 1 else (things or thing + 's')}"


def question(settings: Settings, *, whose: str, where: str) -> str:
    """What the confirm buttons ask: what goes, what stays."""
    return (f"This deletes {where}, for good: {whose} conversations with me (every message and summary), "
            f"{whose} sandboxes and files in /data, usage records and settings. A record of each command run "
            f"in {whose} sandboxes stays for AUDIT_RETENTION_DAYS ({settings.audit_retention_days} days), with "
            "the command text removed. Delete it all?")


def answer(settings: Settings, forgotten: Forgotten, *, whose: str, where: str, dropped: int = 0) -> str:
    """What was deleted, and what was kept and why (the audit log)."""
    f = forgotten
    deleted = (f"Deleted {where}: {_count(f.conversations, 'conversation')} ({_count(f.messages, 'message')} "
               f"and their summaries), {_count(f.sandboxes, 'sandbox', 'sandboxes')}, "
               f"{_count(f.folders, '/data folder')} and {whose} usage records")
    if f.settings:
        deleted += f"; {whose} name is off the {_count(f.settings, 'setting')} last changed by them"
    if dropped:
        deleted += f"; {_count(dropped, 'message')} waiting for an answer will not be answered"
    lines = [deleted + "."]
    if f.audit_rows_kept:
        lines.append(f"Kept: {_count(f.audit_rows_kept, 'record')} of commands run in {whose} sandboxes, with the "
                     "command text removed: the operators' log of what ran on their machines. Each goes "
                     f"{settings.audit_retention_days} days after its command ran (AUDIT_RETENTION_DAYS).")
    else:
        lines.append("Nothing was kept.")
    return "\n".join(lines)


async def forget(bot: "LLMBot", user: str, reach: Reach, *, whose: str, where: str,
                 channels: Iterable[str] = ()) -> str:
    """Drop the person's waiting messages (they would start a conversation again), forget them, and
    say what that did."""
    runtime = bot.runtime
    sessions = None if reach.everywhere else {info.session for info in await runtime.sessions_of(user, reach)}
    chat = bot.get_cog("Chat")
    dropped = await chat.drop_waiting(user, sessions) if chat is not None else 0  # type: ignore[attr-defined]
    forgotten = await runtime.forget_person(user, reach, channels=channels)
    return answer(runtime.settings, forgotten, whose=whose, where=where, dropped=dropped)


class ConfirmView(discord.ui.View):
    """Delete and Cancel: only `asker_id` may press either; `action()` runs on Delete and returns the
    line that replaces the question. Cancel, or no answer within the timeout, changes nothing."""

    def __init__(self, asker_id: int, action: Callable[[], Awaitable[str]], *,
                 timeout: float = CONFIRM_SECONDS) -> None:
        super().__init__(timeout=timeout)
        self.asker_id = asker_id
        self.action = action
        self.message: discord.Message | discord.WebhookMessage | None = None  # the question, for the timeout
        self.answered = False

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.user.id != self.asker_id:
            await interaction.response.send_message(ONLY_THE_ASKER, ephemeral=True)
            return False
        return True

    @discord.ui.button(label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, _button: discord.ui.Button) -> None:
        if self.answered:
            return
        self.answered = True
        self.stop()
        await interaction.response.edit_message(content=DELETING, view=None)
        try:
            line = await self.action()
        except EngineError as exc:  # Docker down, say: the line says so; incidents log the detail
            log.debug("deleting a person's data failed: %s", exc)
            line = failure_line(exc)
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback
            log.exception("deleting a person's data failed")
            line = failure_line(exc)
        await interaction.edit_original_response(content=line)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, _button: discord.ui.Button) -> None:
        if self.answered:
            return
        self.answered = True
        self.stop()
        await interaction.response.edit_message(content=CANCELLED, view=None)

    async def on_timeout(self) -> None:
        if self.answered or self.message is None:
            return
        self.answered = True
        try:
            await self.message.edit(content=TIMED_OUT.format(minutes=round(self.timeout or 0) // 60), view=None)
        except discord.HTTPException as exc:
            log.debug("could not say that a deletion timed out: %s", exc)


async def ask(interaction: discord.Interaction, text: str, action: Callable[[], Awaitable[str]]) -> ConfirmView:
    """Ask (the interaction is deferred) with the confirm buttons; the view, holding its message."""
    view = ConfirmView(interaction.user.id, action)
    view.message = await interaction.followup.send(text, view=view, ephemeral=True, wait=True)
    return view
