"""The tools the model may call: their schema and the checks on what it sends.

The sandbox's own (execute_terminal, send_file) and the MCP servers' (core/mcp/), each checked
by a parser of its kind; the tool loop looks up a call's kind by its name.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Iterable

from .config import Settings
from .mcp.tools import McpTool, call_text

EXECUTE_TERMINAL = "execute_terminal"
SEND_FILE = "send_file"
MAX_FILES_PER_REPLY = 10  # Discord's attachments per message


def tool_schemas(settings: Settings, mcp_tools: Iterable[McpTool] = ()) -> list[dict[str, Any]]:
    """What the model is offered: the sandbox's tools (unless TOOLS=off), then the MCP tools on here."""
    own = [_terminal_schema(settings), _send_file_schema(settings)] if settings.tools else []
    return own + [tool.schema() for tool in mcp_tools]


def _send_file_schema(settings: Settings) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": SEND_FILE,
            "description": (
                "Send a file from the container to the user: it is attached to your reply (images show "
                "inline). Use it for charts, generated or converted files, and long outputs saved to a file, "
                f"instead of pasting them. At most {MAX_FILES_PER_REPLY} files per reply."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "The file's path; relative paths start in /data."},
                    "caption": {"type": "string", "description": "Optional: one line saying what the file is."},
                },
                "required": ["path"],
            },
        },
    }


def _terminal_schema(settings: Settings) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": EXECUTE_TERMINAL,
            "description": (
                "Run a shell command (sh -c) in this conversation's persistent Linux container and return "
                "its exit code, stdout and stderr. The working directory and exported variables carry over "
                "between calls. Uploaded files are in /data."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The shell command to run."},
                    "timeout": {
                        "type": "integer",
                        "description": f"Seconds before the command is killed (default {settings.command_timeout}, "
                                       f"at most {settings.command_timeout_max}).",
                    },
                },
                "required": ["command"],
            },
        },
    }


@dataclass(frozen=True)
class ModelCall:
    """One tool call as the model sent it; `problem` says why it cannot run when its shape was wrong."""

    name: str
    arguments: dict[str, Any]
    problem: str | None = None
    id: str = ""  # the call's id where the API gives one (OpenAI's): its result is sent back under it

    def stored(self) -> dict[str, Any]:
        """Ollama's request shape (arguments always an object, so the next request stays valid), with
        the call's id when it has one."""
        call: dict[str, Any] = {"function": {"name": self.name, "arguments": self.arguments}}
        if self.id:
            call["id"] = self.id
        return call


@dataclass(frozen=True)
class TerminalCall:
    command: str
    timeout: int | None


@dataclass(frozen=True)
class SendFileCall:
    path: str  # absolute, normalised
    caption: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def command(self) -> str:
        """How the audit and the log name it."""
        return f"send_file {self.path}"


class ToolArgumentError(ValueError):
    """The model's call cannot run; the message goes back to the model as the tool result."""


@dataclass(frozen=True)
class McpCall:
    """A checked call of an MCP server's tool."""

    tool: McpTool
    arguments: dict[str, Any]

    @property
    def command(self) -> str:
        """How the audit and the log name it: `server__tool {"q": "…"}`."""
        return call_text(self.tool.exposed, self.arguments)


def unknown_tool(name: str, known: Iterable[str]) -> str:
    """The result the model reads when it calls a tool it was not offered here."""
    names = sorted(known)
    offered = f"The tools here are: {', '.join(names)}." if names else "No tools are available here."
    return f"error: unknown tool {name!r}. {offered}"


def parse_mcp(tool: McpTool, arguments: dict[str, Any]) -> McpCall:
    """The server checks the arguments against its schema; here only what the model can fix at once:
    the required ones, so the error names them."""
    required = tool.input_schema.get("required") or []
    missing = [r for r in required if isinstance(r, str) and r not in arguments]
    if missing:
        raise ToolArgumentError(f"error: {tool.exposed} needs {', '.join(repr(m) for m in missing)} "
                                "in its arguments.")
    return McpCall(tool, arguments)


def parse_terminal(arguments: dict[str, Any]) -> TerminalCall:
    """Check an execute_terminal call; ToolArgumentError with a message the model can act on.

    Arguments that were not an object never get here: the model backends decode JSON text
    (core/model_backend.py: repair_call) and turn anything else into a ModelCall.problem."""
    if not isinstance(arguments, dict):
        raise ToolArgumentError("error: the arguments must be an object like {\"command\": \"ls -la\"}.")
    command = arguments.get("command")
    if not isinstance(command, str) or not command.strip():
        raise ToolArgumentError("error: 'command' is required and must be a non-empty string, e.g. {\"command\": \"ls -la\"}.")
    timeout = arguments.get("timeout")
    if timeout is not None:
        try:
            timeout = int(timeout)
        except (TypeError, ValueError):
            raise ToolArgumentError("error: 'timeout' must be a whole number of seconds.") from None
        if timeout <= 0:
            raise ToolArgumentError("error: 'timeout' must be a positive number of seconds.")
    return TerminalCall(command=command, timeout=timeout)


def data_path(path: str) -> str:
    """A sandbox path as the model or a user writes it: relative paths start in /data."""
    return posixpath.normpath(posixpath.join("/data", path.strip()))


def parse_send_file(arguments: dict[str, Any]) -> SendFileCall:
    path = arguments.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ToolArgumentError("error: 'path' is required, e.g. {\"path\": \"/data/chart.png\"}.")
    caption = arguments.get("caption") or ""
    if not isinstance(caption, str):
        raise ToolArgumentError("error: 'caption' must be a string.")
    full = data_path(path)
    if full.endswith("/") or posixpath.basename(full) in ("", ".", ".."):
        raise ToolArgumentError(f"error: {path!r} is a folder; send_file sends one file.")
    return SendFileCall(path=full, caption=" ".join(caption.split())[:200])
