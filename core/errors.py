"""Failures the engine reports to its caller, each with one line a person can act on."""
from __future__ import annotations

import httpx

# How the ollama client says the server cannot be reached or dropped the connection.
OLLAMA_UNREACHABLE: tuple[type[BaseException], ...] = (ConnectionError, httpx.HTTPError, OSError)


class EngineError(Exception):
    """Base of every failure a ChatSession reports.

    `str(e)` is the whole story for operators and logs (hosts, models, Docker's words);
    `e.user_message` is what a user may read: the line given as `user=`, else the class's
    own short line, else `str(e)` when that is already fit for anyone.
    """

    user_line: str | None = None
    part: str | None = None  # the part it says is down (core/incidents.py), None for one message's trouble

    def __init__(self, detail: str, *, user: str | None = None, part: str | None = None) -> None:
        super().__init__(detail)
        self._user = user
        if part is not None:
            self.part = part

    @property
    def user_message(self) -> str:
        return self._user or self.user_line or str(self)


class OllamaUnavailable(EngineError):
    """The model server (Ollama, or an OpenAI-compatible one: `part` says which) could not be reached,
    stopped answering, or the connection dropped mid-reply."""

    user_line = "The AI model is unavailable right now; try again in a minute."
    part = "Ollama"


class ModelError(EngineError):
    """The model server answered with an error (model missing, bad request, server failure)."""

    user_line = "The AI model could not answer right now; try again in a minute."
    part = "Ollama"


class SandboxUnavailable(EngineError):
    """The Docker engine could not be reached or refused to run the session's container."""

    user_line = "Commands cannot run right now (the sandbox is unavailable); try again in a minute."


class SandboxFileError(EngineError):
    """A file could not be read from or written into a sandbox (missing, too large, not a file)."""


class SandboxFileTooLarge(SandboxFileError):
    """The file is over the size the caller allowed (read_file's max_bytes)."""


class UploadError(EngineError):
    """An upload was refused (too large, unreadable, bad name)."""


class WorkspaceError(EngineError):
    """A conversation's /data could not be listed, measured or deleted (a path that changed, vanished
    or leaves /data; a tree too large to measure in time)."""


class NotAFolder(WorkspaceError):
    """A /data path that was to be listed names a file (or a link), not a folder."""


class BudgetSpent(EngineError):
    """A person has used up a daily budget (USER_DAILY_TOKENS, USER_DAILY_COMMAND_SECONDS): the turn
    is refused before it asks the model, and the message is not kept (the line says to send it again)."""
