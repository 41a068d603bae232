"""A turn's events as the lines a person reads: the one renderer behind the Discord bot and run.py.

`Reply.apply(event)` folds each event into a reply (text, thinking, a line per command or file,
notices); `Reply.render()` is its text. The wording lives here, and nothing here knows Discord:
the bot shows a Reply with paced message edits (bot/reply.py), run.py prints one as it grows.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .errors import EngineError
from .events import (Done, Event, FileReady, Ignored, ModelQueued, Notice, Replaced, Replacing, Stopped, TextDelta,
                     ThinkingDelta, ToolFinished, ToolQueued, ToolStarted)
from .mcp.tools import call_label, is_mcp_name
from .tools import EXECUTE_TERMINAL, SEND_FILE

NO_ANSWER = "-# (no answer)"
REPLACING = "-# ↩️ Stopped my previous reply to answer this instead."
REPLACED = "-# ⏹️ Stopped: a newer message took over."
THINKING = "-# 💭 thinking…"  # while a reasoning phase runs and its thinking is not shown
UNEXPECTED = "⚠️ Something went wrong on my side; the details are in the bot's log."
MODEL_WAIT = "-# ⏳ waiting for the model ({n} ahead)…"


def failure_line(error: BaseException) -> str:
    """What a person reads when a reply or a command failed: an engine error's own line, else a
    pointer to the log (never a traceback)."""
    return f"⚠️ {error.user_message}" if isinstance(error, EngineError) else UNEXPECTED


def inline_code(text: str, width: int = 80) -> str:
    """A command shown inline: one line, shortened, backticks neutralised."""
    flat = " ".join(text.split())
    if len(flat) > width:
        flat = flat[: width - 1] + "…"
    return "`" + flat.replace("`", "ˋ") + "`"


def thinking_line(thinking: str, width: int = 160) -> str:
    """Reasoning, collapsed to one small line (-# subtext) showing its latest words."""
    flat = " ".join(thinking.split())
    if len(flat) > width:
        flat = "…" + flat[-width:]
    return f"-# 💭 {flat}" if flat else ""


@dataclass
class ToolLine:
    """One tool call of the reply and the line that shows where it is."""

    command: str  # for a file (send_file): its name; for an MCP tool: the call, search__web("…")
    status: str = "running"  # queued, running, ok, failed, timeout, error, stopped
    exit_code: int | None = None
    ahead: int = 0  # while queued: commands before it
    kind: str = "command"  # or "file", or "mcp" (an MCP server's tool)
    why: str = ""  # when stopped: who or what stopped it (" by Ada", ": a newer message took over")
    output_id: str = ""  # the whole output is kept (the model's copy was cut): the bot offers it
    output_bytes: int = 0

    @property
    def settled(self) -> bool:
        return self.status not in ("queued", "running")

    def line(self) -> str:
        if self.kind == "file":
            name = inline_code(self.command or "(no name)")
            return {"running": f"-# 📎 sending {name}…", "ok": f"-# 📎 {name} attached below",
                    "stopped": f"-# ⏹️ {name} not sent{self.why}"}.get(self.status, f"-# ⚠️ {name} not sent")
        if self.kind == "mcp":
            return self._mcp_line()
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
            return f"-# ⏹️ {cmd} stopped{self.why}"
        mark = "✅" if self.status == "ok" else "❌"
        more = " · 📄 full output below" if self.output_id else ""
        return f"-# {mark} {cmd} → exit {self.exit_code}{more}"


    def _mcp_line(self) -> str:
        call = inline_code(self.command, 100)
        more = " · 📄 full output below" if self.output_id else ""
        return {"running": f"-# 🔧 {call}…", "ok": f"-# ✅ {call}{more}",
                "failed": f"-# ❌ {call} returned an error{more}", "error": f"-# ❌ {call} failed",
                "timeout": f"-# ⏱️ {call} timed out", "stopped": f"-# ⏹️ {call} stopped"}.get(self.status, f"-# 🔧 {call}…")


@dataclass
class NoticeLine:
    """A line of its own: a notice or an error, never glued to the answer's text."""

    text: str


class Reply:
    """A reply as it builds up from a turn's events. Subclasses show it: each change calls
    `changed()`; the mutators (add_text, tool_started, …) may be extended to print as they go."""

    def __init__(self, *, show_thinking: bool = False) -> None:
        self.show_thinking = show_thinking
        self.parts: list[str | ToolLine | NoticeLine] = []
        self.thinking = ""
        self.reasoning = False  # a reasoning phase runs now (its thinking arrives, nothing else yet)
        self.files: list[FileReady] = []  # for the person: attached (or saved) when the reply ends
        self.ignored = False  # the engine ignored the message (a reply was already streaming there)
        self.stopped_by: str | None = None  # who pressed Stop, for the line saying so
        self.model_wait: NoticeLine | None = None  # shown while the next request waits for the model

    def changed(self) -> None:
        """Called after every change that alters render(); the bot schedules an edit."""

    # -- the events -----------------------------------------------------------
    def apply(self, event: Event) -> None:
        """Fold one event of the turn into the reply: the one place each kind of event gets its words."""
        match event:
            case TextDelta():
                self.add_text(event.text)
            case ThinkingDelta():
                self.add_thinking(event.text)
            case ToolStarted() if event.name == SEND_FILE:
                self.tool_started(posixpath.basename(event.path) or event.path, kind="file")
            case ToolStarted() if is_mcp_name(event.name):
                self.tool_started(call_label(event.name, event.arguments), kind="mcp")
            case ToolStarted():
                self.tool_started(event.command if event.name == EXECUTE_TERMINAL else event.name)
            case ToolQueued():
                self.tool_queued(event.ahead)
            case ModelQueued():
                self.model_queued(event.ahead)
            case ToolFinished():
                self.tool_finished(exit_code=event.exit_code, timed_out=event.timed_out, error=event.error,
                                   output_id=event.full_output_id, output_bytes=event.full_output_bytes)
            case FileReady():
                self.add_file(event)
            case Notice():
                self.add_line(f"-# ℹ️ {event.text}")
            case Replacing():
                self.add_line(REPLACING)
            case Replaced():
                self.stopped(": a newer message took over", REPLACED)
            case Stopped():
                who = f" by {self.stopped_by}" if self.stopped_by else ""
                self.stopped(who, f"-# ⏹️ Stopped{who}.")
            case Done():
                self.finish()
            case Ignored():
                self.ignored = True

    # -- what happened ------------------------------------------------------------
    def add_text(self, text: str) -> None:
        self.reasoning = False
        if self.parts and isinstance(self.parts[-1], str):
            self.parts[-1] += text
        else:
            self.parts.append(text)
        self.changed()

    def add_line(self, line: str) -> None:
        """A line of its own (notices, errors)."""
        self.reasoning = False
        self.parts.append(NoticeLine(line))
        self.changed()

    def add_thinking(self, text: str) -> None:
        """Reasoning: shown collapsed when asked (SHOW_THINKING), else only a line saying it goes on."""
        self.thinking += text
        if self.show_thinking:
            self.changed()
        elif not self.reasoning and text.strip():
            self.reasoning = True
            self.changed()

    def tool_started(self, command: str, kind: str = "command") -> None:
        self.reasoning = False
        self.parts.append(ToolLine(command, kind=kind))
        self.changed()

    def tool_queued(self, ahead: int) -> None:
        """The current command waits for a free slot behind `ahead` others (0: it runs now)."""
        tool = self._current_tool()
        if tool is not None:
            tool.status, tool.ahead = ("queued", ahead) if ahead > 0 else ("running", 0)
        self.changed()

    def model_queued(self, ahead: int) -> None:
        """The next request to the model waits behind `ahead` others: one line says so, and goes
        once it starts (0)."""
        if ahead > 0 and self.model_wait is not None:
            self.model_wait.text = MODEL_WAIT.format(n=ahead)
        elif ahead > 0:
            self.model_wait = NoticeLine(MODEL_WAIT.format(n=ahead))
            self.parts.append(self.model_wait)
        elif not self._end_model_wait():
            return
        self.changed()

    def _end_model_wait(self) -> bool:
        """Take the waiting line away; False when none was shown."""
        line, self.model_wait = self.model_wait, None
        if line is None:
            return False
        self.parts = [p for p in self.parts if p is not line]
        return True

    def tool_finished(self, *, exit_code: int | None, timed_out: bool, error: bool, output_id: str = "",
                      output_bytes: int = 0) -> ToolLine | None:
        """The current tool came back; returns it (None if none was shown)."""
        tool = self._current_tool()
        if tool is not None:
            tool.exit_code = exit_code
            tool.output_id, tool.output_bytes = output_id, output_bytes
            tool.status = ("timeout" if timed_out else "error" if error or exit_code is None
                           else "ok" if exit_code == 0 else "failed")
        self.changed()
        return tool

    def add_file(self, file: FileReady) -> None:
        """A file for the person: handed over when the reply ends."""
        self.files.append(file)

    def stop_tools(self) -> None:
        """Commands still shown as running or queued were killed with the reply."""
        for part in self.parts:
            if isinstance(part, ToolLine) and not part.settled:
                part.status = "stopped"
        self.changed()

    def fail(self, line: str) -> None:
        """The reply ended early (stopped, replaced, an error): its commands stopped, no longer waiting
        for the model, and the line why."""
        self._end_model_wait()
        self.stop_tools()
        self.add_line(line)

    def stopped(self, why: str, line: str) -> None:
        """The reply was stopped (Stop, or a newer message): one ⏹️ line says so, the stopped
        command's own when one was running, else `line`."""
        tool = self._current_tool()
        if tool is None:
            self.fail(line)
            return
        self._end_model_wait()
        tool.why, self.reasoning = why, False
        self.stop_tools()

    def finish(self) -> None:
        """The model's answer is complete: an empty one still shows that it came."""
        reasoned, self.reasoning = self.reasoning, False
        if not self.text.strip():
            self.add_line(NO_ANSWER)
        elif reasoned:
            self.changed()  # the 💭 line goes

    def _current_tool(self) -> ToolLine | None:
        return next((p for p in reversed(self.parts) if isinstance(p, ToolLine) and not p.settled), None)

    # -- reading it ----------------------------------------------------------------
    @property
    def text(self) -> str:
        """The model's answer alone."""
        return "".join(p for p in self.parts if isinstance(p, str))

    @property
    def kept_outputs(self) -> list[tuple[str, str, int]]:
        """(command, output id, bytes) of each command whose whole output is kept for the person."""
        return [(p.command, p.output_id, p.output_bytes) for p in self.parts if isinstance(p, ToolLine) and p.output_id]

    def render(self) -> str:
        """Thinking (collapsed, when shown) above; text, tool lines and notices each on lines of their own."""
        blocks: list[str] = []
        if self.show_thinking and self.thinking.strip():
            blocks.append(thinking_line(self.thinking))
        for part in self.parts:
            if isinstance(part, ToolLine):
                blocks.append(part.line())
            elif isinstance(part, NoticeLine):
                blocks.append(part.text)
            elif part.strip():
                blocks.append(part.strip("\n"))
        if self.reasoning:
            blocks.append(THINKING)
        return "\n".join(blocks)
