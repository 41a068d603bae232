"""The tools the model may call: their schema and the checks on what it sends."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Settings

EXECUTE_TERMINAL = "execute_terminal"


def tool_schemas(settings: Settings) -> list[dict[str, Any]]:
    return [{
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
    }]


@dataclass(frozen=True)
class ModelCall:
    """One tool call as the model sent it; `problem` says why it cannot run when its shape was wrong."""

    name: str
    arguments: dict[str, Any]
    problem: str | None = None

    def stored(self) -> dict[str, Any]:
        """Ollama's request shape (arguments always an object, so the next request stays valid)."""
        return {"function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class TerminalCall:
    command: str
    timeout: int | None


class ToolArgumentError(ValueError):
    """The model's call cannot run; the message goes back to the model as the tool result."""


def parse_call(name: str, arguments: dict[str, Any]) -> TerminalCall:
    """Check one tool call; raise ToolArgumentError with a message the model can act on.

    Arguments that were not an object never get here: core/model_client.py decodes JSON strings
    and turns anything else into a ModelCall.problem."""
    if name != EXECUTE_TERMINAL:
        raise ToolArgumentError(f"error: unknown tool {name!r}. The only tool is {EXECUTE_TERMINAL}(command, timeout?).")
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
