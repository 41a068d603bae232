"""A message's attachments go into the sender's /data in that channel's sandbox, each confirmed in a line."""
from __future__ import annotations

import logging

import discord

from core import ChatSession, UploadError
from core.sizes import human_size

from .reply import NO_MENTIONS

log = logging.getLogger(__name__)


async def save_attachments(message: discord.Message, chat: ChatSession, limit: int) -> list[tuple[str, bytes]]:
    """Save each attachment (at most `limit` bytes each), reply with where each went (or why not);
    the saved paths and bytes."""
    saved: list[tuple[str, bytes]] = []
    lines: list[str] = []
    for attachment in message.attachments:
        name = discord.utils.escape_markdown(attachment.filename)
        if attachment.size > limit:
            lines.append(f"⚠️ {name} is over the {human_size(limit)} limit per file; not saved.")
            continue
        try:
            data = await attachment.read()
        except (discord.HTTPException, OSError, ValueError) as exc:
            log.warning("could not download an attachment in channel %s: %s", message.channel.id, exc)
            lines.append(f"⚠️ {name} could not be downloaded from Discord; please send it again.")
            continue
        try:
            path = await chat.save_upload(attachment.filename, data, size=len(data))
        except UploadError as exc:
            lines.append(f"⚠️ {discord.utils.escape_markdown(str(exc))}")
            continue
        except Exception:  # noqa: BLE001 - whatever /data holds, the user gets one line, never a traceback
            log.exception("saving an attachment failed in channel %s", message.channel.id)
            lines.append(f"⚠️ {name} could not be saved; the details are in the bot's log.")
            continue
        saved.append((path, data))
        lines.append(f"📎 {name} → `{path}`")
    if lines:
        try:
            await message.reply("\n".join(lines), allowed_mentions=NO_MENTIONS, mention_author=False)
        except discord.HTTPException as exc:
            log.warning("could not confirm uploads in channel %s: %s", message.channel.id, exc)
    return saved
