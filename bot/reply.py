"""One streamed reply on Discord: the reply core/render.py builds from a turn's events, shown by paced edits.

Updates only mark the reply dirty; a single flusher per reply applies the
latest state whenever the channel's pacer allows, so pending text coalesces and
the final flush always carries the full text.
"""
from __future__ import annotations

import asyncio
import io
import logging
from typing import Any, Callable

import discord

from core import Reply

from .formatting import LIMIT, split_message
from .pacing import ChannelPacer

log = logging.getLogger(__name__)
NO_MENTIONS = discord.AllowedMentions.none()


class ReplyStream(Reply):
    """A Reply (core/render.py) shown on Discord: one or more messages, edited as it grows, paced per channel."""

    def __init__(self, channel: Any, reply_to: discord.Message | None, pacer: ChannelPacer, *,
                 show_thinking: bool = False, limit: int = LIMIT, min_interval: float = 1.0,
                 view: discord.ui.View | None = None,
                 outputs_view: Callable[[list[tuple[str, str, int]]], discord.ui.View] | None = None) -> None:
        super().__init__(show_thinking=show_thinking)
        self.channel = channel
        self.reply_to = reply_to
        self.pacer = pacer
        self.limit = limit
        self.view = view  # controls shown on the first message while the reply runs (the Stop button)
        self.outputs_view = outputs_view  # builds the buttons that hand out cut outputs, shown when it ends
        self._view_shown = False
        self.messages: list[discord.Message] = []
        self._shown: list[str] = []
        self.min_interval = min_interval  # Discord shows about one edit a second per channel anyway
        self._dirty = asyncio.Event()
        self._closing = asyncio.Event()
        self._closed = False
        self._flusher: asyncio.Task[None] | None = None

    def changed(self) -> None:
        self._touch()

    # -- showing it ---------------------------------------------------------
    def _touch(self) -> None:
        self._dirty.set()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._apply()
            if self._closed and not self._dirty.is_set():
                return
            if not self._closed:  # let text pile up between edits; close() cuts the wait short
                try:
                    await asyncio.wait_for(self._closing.wait(), timeout=self.min_interval)
                except asyncio.TimeoutError:
                    pass

    async def _apply(self) -> None:
        chunks = [c for c in split_message(self.render(), self.limit) if c.strip()]
        for index, chunk in enumerate(chunks):
            if index < len(self._shown) and self._shown[index] == chunk:
                continue
            await self.pacer.acquire(self.channel.id)
            try:
                if index < len(self.messages):
                    extra: dict[str, Any] = {}
                    if index == 0 and self._closed and self._view_shown:
                        extra["view"] = None  # the last edit of the first message also takes the button away
                        self._view_shown = False
                    # discord.py 2 returns the edited message instead of updating the old object.
                    edited = await self.messages[index].edit(content=chunk, allowed_mentions=NO_MENTIONS, **extra)
                    if isinstance(edited, discord.Message):
                        self.messages[index] = edited
                    self._shown[index] = chunk
                else:
                    message = await self._send(chunk, first=index == 0)
                    self.messages.append(message)
                    self._shown.append(chunk)
            except discord.HTTPException as exc:
                log.warning("could not update a reply in channel %s: %s", self.channel.id, exc)

    async def _send(self, content: str, *, first: bool) -> discord.Message:
        extra: dict[str, Any] = {}
        if first and self.view is not None and not self._closed:
            extra["view"] = self.view
        message: discord.Message | None = None
        if first and self.reply_to is not None:
            try:
                message = await self.reply_to.reply(content, allowed_mentions=NO_MENTIONS, mention_author=False,
                                                    **extra)
            except discord.HTTPException:
                pass  # the message was deleted: send it plainly
        if message is None:
            message = await self.channel.send(content, allowed_mentions=NO_MENTIONS, **extra)
        if extra:  # only the first message carries the button; sending the later ones leaves that known
            self._view_shown = True
        return message

    async def close(self) -> None:
        """Show the final state, whatever the pacing, and stop the flusher."""
        self._closed = True
        self._closing.set()
        if self._flusher is None:
            if not self.render().strip():
                await self._finish()
                return
            self._dirty.set()
            self._flusher = asyncio.create_task(self._flush_forever())
        else:
            self._dirty.set()
        await self._flusher
        await self._finish()
        if self.view is not None:
            self.view.stop()
            if self._view_shown and self.messages:  # the final text needed no edit of the first message
                await self._edit(0, view=None, what="remove the Stop button")
                self._view_shown = False

    async def _finish(self) -> None:
        """The reply's files and the buttons for its cut outputs go onto its last message, in one edit
        (images render inline). With no message yet, or when Discord refuses the files, the files go
        in a message of their own."""
        files = [discord.File(io.BytesIO(f.data), filename=f.name, description=f.caption[:1024] or None)
                 for f in self.files]
        self.files = []
        kept = self.kept_outputs
        view = self.outputs_view(kept) if kept and self.outputs_view is not None and self.messages else None
        if self.messages and (files or view is not None):
            fields: dict[str, Any] = {}
            if files:
                fields["attachments"] = [*self.messages[-1].attachments, *files]
            if view is not None:
                fields["view"] = view
            if await self._edit(len(self.messages) - 1, what="attach files or buttons to a reply", **fields):
                files, view = [], None
            elif view is not None and files and await self._edit(len(self.messages) - 1, view=view,
                                                                 what="offer full outputs"):
                view = None
            for file in files:
                file.reset()
            if view is None and kept and len(self.messages) == 1:
                self._view_shown = False  # the Stop button went with that edit
        if files:
            await self._send_files(files)

    async def _edit(self, index: int, *, what: str, **fields: Any) -> bool:
        """Edit one of the reply's messages under the channel's pacer; False (logged) if Discord refused."""
        await self.pacer.acquire(self.channel.id)
        try:
            edited = await self.messages[index].edit(allowed_mentions=NO_MENTIONS, **fields)
        except discord.HTTPException as exc:
            log.warning("could not %s in channel %s: %s", what, self.channel.id, exc)
            return False
        if isinstance(edited, discord.Message):  # discord.py 2 returns the edited message
            self.messages[index] = edited
        return True

    async def _send_files(self, files: list[discord.File]) -> None:
        try:
            self.messages.append(await self.channel.send(files=files, allowed_mentions=NO_MENTIONS))
        except discord.HTTPException as exc:
            log.warning("could not send files in channel %s: %s", self.channel.id, exc)
            try:
                await self.channel.send(f"⚠️ Discord refused the file{'s' if len(files) > 1 else ''} I made "
                                        f"({', '.join(f.filename for f in files)}); they are still in /data.",
                                        allowed_mentions=NO_MENTIONS)
            except discord.HTTPException:
                pass  # the channel refuses this bot altogether: the files stay in /data, as said in the log
