"""The conversation engine: Ollama tool loop, SQL history, one Docker sandbox per session.

What callers (bot/, run.py) use is here: a Runtime and its ChatSessions, the events a turn
reports and the one renderer of them, the errors, the settings and the start-up checks.
"""
from .attachments import compose
from .config import ConfigError, Settings
from .context import Seen
from .errors import EngineError, ModelError, OllamaUnavailable, SandboxUnavailable, UploadError
from .events import (Done, Event, FileReady, Ignored, Notice, Replaced, Replacing, Stopped, TextDelta, ThinkingDelta,
                     ToolFinished, ToolQueued, ToolStarted)
from .export import ExportTooLarge
from .preflight import print_checks, run_checks
from .registry import Phase
from .render import Reply, ToolLine, failure_line, inline_code, thinking_line
from .runtime import Forgotten, Runtime, get_runtime, set_runtime
from .session import ChatSession
from .store import Place, Reach, Scope

__all__ = [
    "ChatSession", "ConfigError", "Done", "EngineError", "Event", "ExportTooLarge", "FileReady", "Forgotten", "Ignored",
    "ModelError", "Notice", "OllamaUnavailable", "Phase", "Place", "Reach", "Replaced", "Replacing", "Reply", "Runtime",
    "SandboxUnavailable", "Scope", "Seen", "Settings", "Stopped", "TextDelta", "ThinkingDelta", "ToolFinished",
    "ToolLine", "ToolQueued",
    "ToolStarted", "UploadError", "compose", "failure_line", "get_runtime", "inline_code", "print_checks",
    "run_checks", "set_runtime", "thinking_line",
]
