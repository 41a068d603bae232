"""The conversation engine: Ollama tool loop, SQL history, one Docker sandbox per session.

What callers (bot/, run.py) use is here: a Runtime and its ChatSessions, the events a turn
reports and the one renderer of them, the errors, the settings and the start-up checks.
"""
from .attachments import compose
from .budgets import Allowance, PersonalUsage, human_duration
from .config import ConfigError, Settings
from .context import Seen
from .errors import BudgetSpent, EngineError, ModelError, OllamaUnavailable, SandboxUnavailable, UploadError
from .events import (Done, Event, FileReady, Ignored, ModelQueued, Notice, Replaced, Replacing, Stopped, TextDelta,
                     ThinkingDelta, ToolFinished, ToolQueued, ToolStarted)
from .export import ExportTooLarge
from .preflight import print_checks, run_checks
from .rate import TooFast
from .registry import Phase
from .render import Reply, ToolLine, failure_line, inline_code, thinking_line
from .runtime import Forgotten, Runtime, get_runtime, set_runtime
from .session import ChatSession
from .store import Place, Reach, Report, Scope, Totals
from .usage_chart import render_usage_chart

__all__ = [
    "Allowance", "BudgetSpent", "ChatSession", "ConfigError", "Done", "EngineError", "Event", "ExportTooLarge",
    "FileReady", "Forgotten", "Ignored", "ModelError", "ModelQueued", "Notice", "OllamaUnavailable", "PersonalUsage",
    "Phase", "Place", "Reach", "Replaced", "Replacing", "Reply", "Report", "Runtime", "SandboxUnavailable", "Scope",
    "Seen", "Settings", "Stopped", "TextDelta", "ThinkingDelta", "TooFast", "ToolFinished", "ToolLine", "ToolQueued",
    "ToolStarted", "Totals", "UploadError", "compose", "failure_line", "get_runtime", "human_duration", "inline_code",
    "print_checks", "render_usage_chart", "run_checks", "set_runtime", "thinking_line",
]
