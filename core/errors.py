"""Failures the engine reports to its caller, each with one line a person can act on."""
from __future__ import annotations

import httpx

# How the ollama client says the server cannot be reached or dropped the connection.
OLLAMA_UNREACHABLE: tuple[type[BaseException], ...] = (ConnectionError, httpx.HTTPError, OSError)


class EngineError(Exception):
    """Base of every failure a ChatSession reports; `str(e)` is safe to show a user."""


class OllamaUnavailable(EngineError):
    """Ollama could not be reached, or the connection dropped mid-reply."""


class ModelError(EngineError):
    """Ollama answered with an error (model missing, bad request, server failure)."""


class SandboxUnavailable(EngineError):
    """The Docker engine could not be reached or refused to run the session's container."""


class SandboxFileError(EngineError):
    """A file could not be read from or written into a sandbox (missing, too large, not a file)."""


class UploadError(EngineError):
    """An upload was refused (too large, unreadable, bad name)."""
