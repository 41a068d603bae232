"""Chat: decides which messages to answer and streams the engine's reply back."""
from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from core import ChatSession, EngineError
from core.events import (Ignored, Replaced, Replacing, TextDelta, ThinkingDelta, ToolFinished,
                         ToolQueued, ToolStarted)

from ..access import channel_ids, refusal
from ..pacing import ChannelPacer
from ..reply import NO_MENTIONS, ReplyStream

if TYPE_CHECKING:
    from ..discord_bot import LLMBot

log = logging.getLogger(__name__)
BUSY_REACTION = "⏳"
REFUSAL_QUIET_SECONDS = 600


class Chat(commands.Cog):
    def __init__(self, bot: "LLMBot") -> None:
        self.bot = bot
        self.pacer = ChannelPacer(bot.runtime.settings.edits_per_5s)
        self.min_edit_interval = 1.0  # per reply; the channel's pacer is the hard limit
        self._refused: dict[tuple[int, int], float] = {}

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        return self.bot.runtime.settings

    # -- which messages -------------------------------------------------------
    def addressed(self, message: discord.Message) -> bool:
        """A DM, a mention, a reply to the bot, or an auto-reply channel."""
        me = self.bot.user
        if message.author.bot or me is None:
            return False
        if message.guild is None:
            return True
        if any(user.id == me.id for user in message.mentions):
            return True
        ref = message.reference
        if ref is not None:
            resolved = ref.resolved if isinstance(ref.resolved, discord.Message) else (
                self.bot._connection._get_message(ref.message_id) if ref.message_id else None)
            if resolved is not None and resolved.author.id == me.id:
                return True
        return bool(channel_ids(message.channel) & self.settings.auto_reply_channel_ids)

    def clean_text(self, message: discord.Message) -> str:
        me = self.bot.user
        text = message.content
        if me is not None:
            text = re.sub(rf"<@!?{me.id}>", "", text)
        return text.strip()

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not self.addressed(message):
            return
        roles = [r.id for r in getattr(message.author, "roles", [])]
        refused = refusal(self.settings, user_id=message.author.id, role_ids=roles,
                          channel_ids=channel_ids(message.channel), is_dm=message.guild is None)
        if refused:
            await self.refuse(message, refused)
            return
        text = self.clean_text(message)
        async with ChatSession(user=message.author.id, session=message.channel.id, runtime=self.bot.runtime) as chat:
            if message.attachments:
                uploads = self.bot.get_cog("Uploads")
                saved = await uploads.save_attachments(message, chat) if uploads else []  # type: ignore[attr-defined]
                if saved:
                    text = f"[uploaded: {', '.join(saved)}]\n{text}" if text else ""
            if text:
                await self.respond(message, chat, text)

    async def refuse(self, message: discord.Message, line: str) -> None:
        """One quiet line, then silence for a while, so a refused user is told but not spammed."""
        key = (message.author.id, message.channel.id)
        now = time.monotonic()
        for stale in [k for k, at in self._refused.items() if now - at >= REFUSAL_QUIET_SECONDS]:
            del self._refused[stale]  # quiet period over: forget them, the map stays small
        if now - self._refused.get(key, -REFUSAL_QUIET_SECONDS) < REFUSAL_QUIET_SECONDS:
            return
        self._refused[key] = now
        try:
            await message.reply(f"-# {line}", allowed_mentions=NO_MENTIONS, mention_author=False)
        except discord.HTTPException:
            pass

    # -- the reply --------------------------------------------------------------
    async def respond(self, message: discord.Message, chat: ChatSession, text: str) -> ReplyStream:
        stream = ReplyStream(message.channel, message, self.pacer, show_thinking=self.settings.show_thinking,
                             min_interval=self.min_edit_interval)
        try:
            async with message.channel.typing():
                async for event in chat.events(text):
                    if isinstance(event, Ignored):
                        await self._react(message, BUSY_REACTION)
                        return stream
                    if isinstance(event, TextDelta):
                        stream.add_text(event.text)
                    elif isinstance(event, ThinkingDelta):
                        stream.add_thinking(event.text)
                    elif isinstance(event, ToolStarted):
                        stream.tool_started(event.command if event.name == "execute_terminal" else event.name)
                    elif isinstance(event, ToolQueued):
                        stream.tool_queued(event.ahead)
                    elif isinstance(event, ToolFinished):
                        stream.tool_finished(exit_code=event.exit_code, timed_out=event.timed_out, error=event.error)
                    elif isinstance(event, Replacing):
                        stream.add_line("-# ↩️ Stopped my previous reply to answer this instead.")
                    elif isinstance(event, Replaced):
                        stream.add_line("-# ⏹️ Stopped: a newer message took over.")
        except EngineError as exc:
            log.warning("reply failed in channel %s: %s", message.channel.id, exc)
            stream.add_line(f"⚠️ {exc}")
        except discord.HTTPException as exc:
            log.warning("discord refused an update in channel %s: %s", message.channel.id, exc)
        except Exception:  # noqa: BLE001 - no traceback ever reaches Discord
            log.exception("unexpected failure while replying in channel %s", message.channel.id)
            stream.add_line("⚠️ Something went wrong on my side; the details are in the bot's log.")
        finally:
            await stream.close()
        return stream

    async def _react(self, message: discord.Message, emoji: str) -> None:
        try:
            await message.add_reaction(emoji)
        except discord.HTTPException:
            pass


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Chat(bot))
