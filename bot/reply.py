"""One streamed reply on Discord: text, tool progress and thinking, shown by paced edits.

Updates only mark the reply dirty; a single flusher per reply applies the
latest state whenever the channel's pacer allows, so pending text coalesces and
the final flush always carries the full text.
"""
from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from typing import Any, Callable

import discord

from .formatting import LIMIT, inline_code, split_message, thinking_line
from .pacing import ChannelPacer

log = logging.getLogger(__name__)
NO_MENTIONS = discord.AllowedMentions.none()


@dataclass
class _Tool:
    command: str  # for a file (send_file): its name
    status: str = "running"  # queued, running, ok, failed, timeout, error, stopped
    exit_code: int | None = None
    ahead: int = 0  # while queued: commands before it
    kind: str = "command"  # or "file"
    output_id: str = ""  # the whole output is kept (the model's copy was cut): a button offers it
    output_bytes: int = 0

    def line(self) -> str:
        if self.kind == "file":
            name = inline_code(self.command or "(no name)")
            return {"running": f"-# 📎 sending {name}…", "ok": f"-# 📎 {name} attached below",
                    "stopped": f"-# ⏹️ {name} not sent"}.get(self.status, f"-# ⚠️ {name} not sent")
        cmd = inline_code(self.command or "(no command)")
        if self.status == "queued":
            return f"-# ⏳ queued behind {self.ahead} command{'' if self.ahead == 1 else 's'}…"
        if self.status == "running":
            return f"-# ⚙️ running {cmd}…"
        if self.status == "timeout":
            return f"-# ⏱️ {cmd} timed out"
        if self.status == "error":
            return f"-# ⚠️ {cmd} could not run"
        if self.status == "stopped":
            return f"-# ⏹️ {cmd} stopped"
        mark = "✅" if self.status == "ok" else "❌"
        more = " · 📄 full output below" if self.output_id else ""
        return f"-# {mark} {cmd} → exit {self.exit_code}{more}"


@dataclass
class _Notice:
    """A line of its own: a notice or an error, never glued to the answer's text."""

    text: str


NO_ANSWER = "-# (no answer)"


class ReplyStream:
    """Renders a reply into one or more messages, paced per channel."""

    def __init__(self, channel: Any, reply_to: discord.Message | None, pacer: ChannelPacer, *,
                 show_thinking: bool = False, limit: int = LIMIT, min_interval: float = 1.0,
                 view: discord.ui.View | None = None,
                 outputs_view: Callable[[list[tuple[str, str, int]]], discord.ui.View] | None = None) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self.pacer = pacer
        self.show_thinking = show_thinking
        self.limit = limit
        self.parts: list[str | _Tool | _Notice] = []
        self.files: list[tuple[str, bytes, str]] = []  # (name, bytes, caption), attached at the end
        self.ignored = False  # the engine ignored the message (a reply was already streaming)
        self.view = view  # controls shown on the first message while the reply runs (the Stop button)
        self.outputs_view = outputs_view  # builds the buttons that hand out cut outputs, shown when it ends
        self._view_shown = False
        self.thinking = ""
        self.messages: list[discord.Message] = []
        self._shown: list[str] = []
        self.min_interval = min_interval  # Discord shows about one edit a second per channel anyway
        self._dirty = asyncio.Event()
        self._closing = asyncio.Event()
        self._closed = False
        self._flusher: asyncio.Task[None] | None = None

    # -- what happened ----------------------------------------------------
    def add_text(self, text: str) -> None:
        if self.parts and isinstance(self.parts[-1], str):
            self.parts[-1] += text
        else:
            self.parts.append(text)
        self._touch()

    def add_line(self, line: str) -> None:
        """A line of its own (notices, errors)."""
        self.parts.append(_Notice(line))
        self._touch()

    def add_thinking(self, text: str) -> None:
        self.thinking += text
        if self.show_thinking:
            self._touch()

    def tool_started(self, command: str, kind: str = "command") -> None:
        self.parts.append(_Tool(command, kind=kind))
        self._touch()

    def add_file(self, name: str, data: bytes, caption: str = "") -> None:
        """A file for the user: attached to the reply's last message when the reply ends."""
        self.files.append((name, data, caption))

    def tool_queued(self, ahead: int) -> None:
        """The current command waits for a free slot behind `ahead` others (0: it runs now)."""
        for part in reversed(self.parts):
            if isinstance(part, _Tool) and part.status in ("queued", "running"):
                part.status, part.ahead = ("queued", ahead) if ahead > 0 else ("running", 0)
                break
        self._touch()

    def tool_finished(self, *, exit_code: int | None, timed_out: bool, error: bool, output_id: str = "",
                      output_bytes: int = 0) -> None:
        for part in reversed(self.parts):
            if isinstance(part, _Tool) and part.status in ("queued", "running"):
                part.exit_code = exit_code
                part.output_id, part.output_bytes = output_id, output_bytes
                part.status = ("timeout" if timed_out else "error" if error or exit_code is None
                               else "ok" if exit_code == 0 else "failed")
                break
        self._touch()

    def stop_tools(self) -> None:
        """Commands still shown as running or queued were killed with the reply."""
        for part in self.parts:
            if isinstance(part, _Tool) and part.status in ("queued", "running"):
                part.status = "stopped"
        self._touch()

    def finish(self) -> None:
        """The model's answer is complete: an empty one still shows that it came."""
        if not self.text.strip():
            self.add_line(NO_ANSWER)

    @property
    def text(self) -> str:
        return "".join(p for p in self.parts if isinstance(p, str))

    def render(self) -> str:
        """Thinking (collapsed, when shown) above; text, tool lines and notices each on lines of their own."""
        blocks: list[str] = []
        if self.show_thinking and self.thinking.strip():
            blocks.append(thinking_line(self.thinking))
        for part in self.parts:
            if isinstance(part, _Tool):
                blocks.append(part.line())
            elif isinstance(part, _Notice):
                blocks.append(part.text)
            elif part.strip():
                blocks.append(part.strip("\n"))
        return "\n".join(blocks)

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
        if first and self.reply_to is not None:
            try:
                message = await self.reply_to.reply(content, allowed_mentions=NO_MENTIONS, mention_author=False,
                                                    **extra)
                self._view_shown = bool(extra)
                return message
            except discord.HTTPException:
                pass  # the message was deleted: send it plainly
        message = await self.channel.send(content, allowed_mentions=NO_MENTIONS, **extra)
        self._view_shown = bool(extra)
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
        files = [discord.File(io.BytesIO(data), filename=name, description=caption[:1024] or None)
                 for name, data, caption in self.files]
        self.files = []
        kept = [(p.command, p.output_id, p.output_bytes) for p in self.parts if isinstance(p, _Tool) and p.output_id]
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
