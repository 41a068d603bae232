"""Which messages the bot answers in a channel, and the threads it starts to answer in.

A channel's mode (core/store/places.py, set with /admin channel) is `mention` (a mention or a reply
to the bot), `all` (every message) or `thread` (a mention starts a public thread named after the
question, and the answer goes there). In a thread the bot started (on a mention or with /chat),
nobody needs to mention it: Discord records who started a thread (`owner_id`), so the bot knows
its threads again after a restart without storing them.
"""
from __future__ import annotations

import re
from typing import Any

import discord

from core import Place, Runtime
from core.store import Choice

THREAD_NAME_LIMIT = 100  # Discord's longest thread name
PEOPLE_WRITE = (discord.MessageType.default, discord.MessageType.reply)  # not joins, pins, thread notices…


def from_a_person(message: discord.Message) -> bool:
    """Written by a person: not by a bot (this one included), a webhook or Discord itself."""
    author = message.author
    return not (author.bot or getattr(author, "system", False) or message.webhook_id is not None
                or message.type not in PEOPLE_WRITE)


def is_bot_thread(channel: Any, me: discord.abc.User | None) -> bool:
    """A thread this bot started: every message in it is for the bot."""
    return me is not None and isinstance(channel, discord.Thread) and channel.owner_id == me.id


async def mode_at(runtime: Runtime, place: Place) -> Choice:
    """The mode in effect at `place` (a thread follows its channel), and where it comes from: an
    /admin channel setting, FREE_RESPONSE_CHANNEL_IDS, or the built-in default (mention)."""
    return await runtime.places.mode(place, runtime.settings.free_response_channel_ids)


def may_start_threads(channel: Any, member: Any = None) -> bool:
    """Whether the bot (or `member`) may start a public thread in `channel`: a server's text channel
    where it has the right to (not a DM, not a thread, not a voice or forum channel)."""
    if not isinstance(channel, discord.TextChannel):
        return False
    perms = channel.permissions_for(member if isinstance(member, discord.Member) else channel.guild.me)
    return perms.create_public_threads and perms.send_messages_in_threads


def thread_name(text: str, fallback: str) -> str:
    """A thread's name from a question or a topic: one line, within Discord's 100 characters."""
    flat = " ".join(text.split()) or " ".join(fallback.split())
    return flat if len(flat) <= THREAD_NAME_LIMIT else flat[:THREAD_NAME_LIMIT - 1].rstrip() + "…"


MARKUP = re.compile(r"\*\*|__|~~|\|\||`+")  # bold, underline, strike, spoiler, code: shown raw in a thread's name


def question_title(message: discord.Message, me: discord.abc.User) -> str:
    """The name of the thread a mention starts: the question as people read it, without the @bot
    (other people as @name, no bold or code marks; a lone * or _ may be a product or a file name)."""
    text = re.sub(rf"<@!?{me.id}>", " ", message.content)
    for user in message.mentions:
        text = re.sub(rf"<@!?{user.id}>", lambda _m, name=user.display_name: "@" + name, text)
    return thread_name(MARKUP.sub("", text), f"Chat with {message.author.display_name}")


async def start_thread(message: discord.Message, me: discord.abc.User) -> discord.Thread:
    """A public thread on `message`, named after it; discord.HTTPException when Discord refuses."""
    return await message.create_thread(name=question_title(message, me))
