"""Chat: decides which messages to answer, and where (the channel, or a thread), and streams the reply back."""
from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Collection

import discord
from discord.ext import commands

from core import ChatSession, EngineError, Phase, Settings, TooFast, compose, failure_line
from core.store import ALL, THREAD

from ..access import person_refusal, place_of, upload_limit, user_is_admin
from ..controls import FullOutputButton, StopView, outputs_view
from ..modes import from_a_person, is_bot_thread, may_start_threads, mode_at, start_thread
from ..pacing import ChannelPacer
from ..reply import NO_MENTIONS, ReplyStream
from ..uploads import save_attachments

if TYPE_CHECKING:
    from ..discord_bot import LLMBot

log = logging.getLogger(__name__)
BUSY_REACTION = "⏳"
TOO_FAST_REACTION = "✋"  # a message over its sender's rate, once they have been told in a line
MAX_WAITING = 10  # messages one conversation may queue while its reply streams; they are answered in one turn
QUEUE_FULL = "-# ✋ {n} of your messages are already waiting for my answer here; send this one again once I have replied."
REFUSAL_QUIET_SECONDS = 600
ANSWERED_MEMORY = 5000  # reply messages remembered, to know whose conversation a replied-to answer is in
REPLY_QUOTE_LIMIT = 1500  # characters of a replied-to message quoted into the turn
HERE = "here"  # Chat.where: answered in the message's own channel (THREAD: in a thread started for it)


class Chat(commands.Cog):
    def __init__(self, bot: "LLMBot") -> None:
        self.bot = bot
        self.pacer = ChannelPacer(bot.runtime.settings.edits_per_5s)
        self.min_edit_interval = 1.0  # per reply; the channel's pacer is the hard limit
        self._refused: dict[tuple[int, int], float] = {}
        self._waiting: dict[tuple[str, str], list[tuple[discord.Message, str, list[str]]]] = {}
        self.streams: dict[tuple[str, str], ReplyStream] = {}  # the reply each session is showing now
        self._answered: OrderedDict[int, int] = OrderedDict()  # the bot's recent reply messages -> who asked

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(FullOutputButton)  # full-output buttons work on replies sent before a restart

    @property
    def settings(self) -> Settings:
        return self.bot.runtime.settings

    # -- which messages -------------------------------------------------------
    def mentioned(self, message: discord.Message) -> bool:
        """A mention of the bot, or a reply to one of its messages."""
        me = self.bot.user
        if me is None:
            return False
        if any(user.id == me.id for user in message.mentions):
            return True
        replied_to = self._known_reference(message)
        return replied_to is not None and replied_to.author.id == me.id

    async def where(self, message: discord.Message) -> str | None:
        """Where `message` is answered: HERE (in its channel), THREAD (in a thread started for it) or
        None (not for the bot). A DM and the bot's own threads: always here; elsewhere the channel's
        mode decides (bot/modes.py)."""
        me = self.bot.user
        if me is None or not from_a_person(message):
            return None
        if message.guild is None or is_bot_thread(message.channel, me):
            return HERE
        mode = (await mode_at(self.bot.runtime, place_of(message.channel))).value
        if self.mentioned(message):
            return THREAD if mode == THREAD and may_start_threads(message.channel) else HERE
        return HERE if mode == ALL else None

    def clean_text(self, message: discord.Message) -> str:
        me = self.bot.user
        text = message.content
        if me is not None:
            text = re.sub(rf"<@!?{me.id}>", "", text)
        return text.strip()

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        where = await self.where(message)
        if where is None:
            return
        refused = person_refusal(self.settings, message.author, message.channel, in_guild=message.guild is not None)
        if refused:
            await self.refuse(message, refused)
            return
        too_fast = self.bot.runtime.admit_message(message.author.id)
        if too_fast is not None:  # over USER_MESSAGES_PER_MINUTE: said so, never queued
            await self.slow_down(message, too_fast)
            return
        text = self.clean_text(message)
        if not text and not message.attachments:
            return
        channel: discord.abc.Messageable = message.channel
        if where == THREAD:
            channel = await self._thread_for(message)
        async with ChatSession(user=message.author.id, session=channel.id, place=place_of(channel),
                               file_limit=upload_limit(channel), runtime=self.bot.runtime) as chat:
            pictures: list[str] = []
            if message.attachments:
                saved = await save_attachments(message, chat, self.settings.upload_max_file_bytes)
                if saved and text:
                    text, pictures = compose(text, saved, self.settings.inline_text_max_bytes,
                                             commands=self.settings.tools)
            if not text:
                return
            text = await self.with_reply_context(message, text)
            if chat.phase is Phase.STREAMING:  # a reply is streaming here: this one waits its turn
                await self._wait(chat.key, message, text, pictures)
                return
            if (await self.respond(message, chat, text, pictures, channel=channel)).ignored:
                await self._wait(chat.key, message, text, pictures)  # the reply streaming now answers it
                return
            await self._answer_waiting(chat)  # they were written where this conversation is: its channel or thread

    async def _thread_for(self, message: discord.Message) -> discord.abc.Messageable:
        """A thread started on the message, for its answer; where Discord refuses one (a missing
        right, a deleted message), the message's own channel."""
        try:
            return await start_thread(message, self.bot.user)
        except discord.HTTPException as exc:
            log.warning("could not start a thread in channel %s (answering there instead): %s",
                        message.channel.id, exc)
            return message.channel

    # -- messages that arrive while a reply streams -------------------------------
    async def _wait(self, key: tuple[str, str], message: discord.Message, text: str, pictures: list[str]) -> None:
        """Queued in order, marked ⏳; the reply streaming now answers them when it ends. A full queue
        (someone flooding the channel) refuses the message with a line saying so: never silently."""
        queue = self._waiting.setdefault(key, [])
        if len(queue) >= MAX_WAITING:
            try:
                await message.reply(QUEUE_FULL.format(n=MAX_WAITING), allowed_mentions=NO_MENTIONS,
                                    mention_author=False)
            except discord.HTTPException as exc:
                log.warning("could not refuse a message in channel %s: %s", message.channel.id, exc)
            return
        queue.append((message, text, pictures))
        await self._react(message, BUSY_REACTION)

    async def _answer_waiting(self, chat: ChatSession) -> None:
        """Answer what waited during the reply that just ended: all of it together, in one turn."""
        while self._waiting.get(chat.key):
            batch = self._waiting.pop(chat.key)
            for waiting, _, _ in batch:
                await self._unreact(waiting, BUSY_REACTION)
            text = "\n\n".join(t for _, t, _ in batch)
            stream = await self.respond(batch[-1][0], chat, text, [p for _, _, pics in batch for p in pics])
            if stream.ignored:  # another reply started streaming first: it answers them when it ends
                self._waiting[chat.key] = batch + self._waiting.get(chat.key, [])
                for waiting, _, _ in batch:
                    await self._react(waiting, BUSY_REACTION)
                return

    async def drop_waiting(self, user: str, sessions: Collection[str] | None = None) -> int:
        """Drop a person's messages waiting for an answer (in `sessions`; None: everywhere), their ⏳
        taken off: they asked to be forgotten, and answering them would start a conversation again.
        The number dropped."""
        dropped = 0
        for key in [k for k in self._waiting if k[0] == user and (sessions is None or k[1] in sessions)]:
            for waiting, _, _ in self._waiting.pop(key, []):
                await self._unreact(waiting, BUSY_REACTION)
                dropped += 1
        return dropped

    # -- the replied-to message -----------------------------------------------------
    async def with_reply_context(self, message: discord.Message, text: str) -> str:
        """A reply to someone else's message (or to the bot's answer to someone else) brings that
        message into the turn as a quote, so the model sees what "this" refers to."""
        quoted = await self._referenced(message)
        if quoted is None or not (quoted.content or "").strip():
            return text
        me = self.bot.user
        if me is not None and quoted.author.id == me.id:
            asked_by = self._answered.get(quoted.id)
            if asked_by is None:
                asked = await self._referenced(quoted)
                asked_by = asked.author.id if asked is not None else None
            if asked_by == message.author.id:
                return text  # the bot's answer to this same person: already in their history
        body = quoted.content.strip()
        if me is not None:
            body = re.sub(rf"<@!?{me.id}>", "", body).strip()
        if len(body) > REPLY_QUOTE_LIMIT:
            body = body[:REPLY_QUOTE_LIMIT] + "…"
        who = "you (the assistant)" if me is not None and quoted.author.id == me.id else quoted.author.display_name
        quote = "\n".join("> " + line for line in body.splitlines())
        return f"[replying to a message from {who}]\n{quote}\n\n{text}"

    def _known_reference(self, message: discord.Message) -> discord.Message | None:
        """The replied-to message if Discord sent it along or it is cached, in this channel only."""
        ref = message.reference
        if ref is None or ref.message_id is None:
            return None
        found = ref.resolved if isinstance(ref.resolved, discord.Message) else ref.cached_message
        return found if found is not None and found.channel.id == message.channel.id else None

    async def _referenced(self, message: discord.Message) -> discord.Message | None:
        """The replied-to message, fetched from Discord when it is not at hand."""
        found = self._known_reference(message)
        if found is not None or message.reference is None or message.reference.message_id is None:
            return found
        try:
            return await message.channel.fetch_message(message.reference.message_id)
        except (discord.HTTPException, AttributeError):
            return None

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

    async def slow_down(self, message: discord.Message, too_fast: TooFast) -> None:
        """One line saying the message is over its sender's rate and will not be answered; the messages
        after it, while they are still over, get a ✋ instead of the same line again."""
        if too_fast.told:
            await self._react(message, TOO_FAST_REACTION)
            return
        try:
            await message.reply(too_fast.line, allowed_mentions=NO_MENTIONS, mention_author=False)
        except discord.HTTPException as exc:
            log.warning("could not tell someone over the message rate in channel %s: %s", message.channel.id, exc)

    # -- the reply --------------------------------------------------------------
    def may_stop(self, user: discord.abc.User) -> bool:
        return user_is_admin(self.settings, user)

    async def respond(self, message: discord.Message, chat: ChatSession, text: str,
                      pictures: list[str] | None = None, *,
                      channel: discord.abc.Messageable | None = None) -> ReplyStream:
        """Run one turn and show it as a reply to `message`, or in `channel` (a thread started for
        it); the stream says whether the engine ignored the message (a reply was already streaming there)."""
        channel = channel or message.channel

        async def stop(who: discord.abc.User) -> None:
            log.info("reply stopped by %s in channel %s", who.id, channel.id)
            stream.stopped_by = who.display_name
            await chat.stop()

        view = StopView(message.author.id, self.may_stop, stop)
        stream = ReplyStream(channel, message if channel.id == message.channel.id else None, self.pacer,
                             show_thinking=self.settings.show_thinking, min_interval=self.min_edit_interval,
                             view=view, outputs_view=lambda kept: outputs_view(message.author.id, channel.id, kept))
        self.streams[chat.key] = stream
        try:
            async with channel.typing():
                async for event in chat.events(text, images=pictures or []):
                    stream.apply(event)  # core/render.py words every event
                    if stream.ignored:  # a reply started streaming first: the caller queues this
                        return stream
        except EngineError as exc:
            log.debug("reply failed in channel %s: %s", channel.id, exc)  # incidents log the detail once
            stream.fail(failure_line(exc))
        except discord.HTTPException as exc:
            log.warning("discord refused an update in channel %s: %s", channel.id, exc)
        except Exception as exc:  # noqa: BLE001 - no traceback ever reaches Discord
            log.exception("unexpected failure while replying in channel %s", channel.id)
            stream.fail(failure_line(exc))
        finally:
            if self.streams.get(chat.key) is stream:
                del self.streams[chat.key]
            await stream.close()
            for sent in stream.messages:
                self._answered[sent.id] = message.author.id
            while len(self._answered) > ANSWERED_MEMORY:
                self._answered.popitem(last=False)
        return stream

    async def _react(self, message: discord.Message, emoji: str) -> None:
        try:
            await message.add_reaction(emoji)
        except Exception as exc:  # noqa: BLE001 - a reaction is a courtesy: never lose a message over one
            log.debug("could not react in channel %s: %r", message.channel.id, exc)

    async def _unreact(self, message: discord.Message, emoji: str) -> None:
        me = self.bot.user
        if me is None:
            return
        try:
            await message.remove_reaction(emoji, me)
        except Exception as exc:  # noqa: BLE001 - as above
            log.debug("could not remove a reaction in channel %s: %r", message.channel.id, exc)


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Chat(bot))
