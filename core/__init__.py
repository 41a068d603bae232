"""The conversation engine: Ollama tool loop, SQL history, one Docker sandbox per session."""
from .config import ConfigError, Settings
from .errors import EngineError, ModelError, OllamaUnavailable, SandboxUnavailable, UploadError
from .runtime import Runtime, get_runtime, set_runtime
from .session import ChatSession
from .store import Place, Scope

__all__ = [
    "ChatSession", "ConfigError", "EngineError", "ModelError", "OllamaUnavailable", "Place", "Runtime",
    "SandboxUnavailable", "Scope", "Settings", "UploadError", "get_runtime", "set_runtime",
]
