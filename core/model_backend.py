"""The model face: what the engine asks of a model server, whichever API the server speaks.

Two backends implement it: Ollama's own API (core/model_client.py) and the OpenAI chat-completions
API that vLLM, llama.cpp's llama-server, LM Studio and LiteLLM's proxy speak
(core/openai_backend.py). The tool loop, the history, the window and the events stay one path for
both: requests carry messages in Ollama's shape (the history's own), and a streamed answer comes
back as the same three kinds of piece, whatever the wire looked like. Each backend turns its
failures into EngineErrors with one line a person can read, so the turn handles them one way.

A model is named by one string, as /admin model and the place settings store it: a plain name is
a model of MODEL_API's backend, and `openai:<name>` or `ollama:<name>` names one of the other.
"""
from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from typing import Any, AsyncIterator, Callable, Generic, NamedTuple, TypeVar

from .config import Settings
from .tools import ModelCall

C = TypeVar("C")  # a backend's client

OLLAMA_API, OPENAI_API = "ollama", "openai"
APIS = (OLLAMA_API, OPENAI_API)
ARGUMENTS_EXAMPLE = '{"command": "ls -la"}'
UNREADABLE = "The AI model sent a reply that could not be read. Please try again."
# Tool calls of one model message kept (and answered) in the history, at the least: the rest are
# counted in the turn's notice, never stored, so a model in a loop cannot fill every later request.
MAX_CALLS_KEPT = 128
MAX_CALL_CHARS = 4 * 1024 ** 2  # characters of one message's tool-call arguments a backend reads, at most
TOO_LONG_CALLS = ("The AI model sent tool calls longer than 4 MB in one message, so they were not run. Please "
                  "try again, or ask for less at once.")


# -- the pieces a streamed answer comes as ------------------------------------------------------
class Piece(NamedTuple):
    """A plain piece of a streamed reply: text and/or thinking. Nearly every chunk is one, so each
    backend makes it as cheaply as it can (Ollama's: straight from the JSON, without pydantic)."""

    content: str
    thinking: str | None = None


class ToolCalls(NamedTuple):
    """The tool calls of one model message, whole (arguments decoded, or the problem with them said),
    and how many more it made that the backend counted without keeping (past MAX_CALLS_KEPT)."""

    calls: list[ModelCall]
    more: int = 0


class Usage(NamedTuple):
    """The end of a request: its size in tokens as the server counted them, and the answer's."""

    prompt_tokens: int
    answer_tokens: int


StreamPiece = Piece | ToolCalls | Usage


class ModelBackend(ABC, Generic[C]):
    """One model server. Every method raises EngineError (OllamaUnavailable: not reachable, stalled,
    cut; ModelError: it answered with an error), each with `part` set to the backend's `part`.

    `settings` is the settings or where to read them: the Runtime hands over a getter, so settings
    replaced on it (tests, the admin) are the ones the next request uses, and a client is made
    again when what it was made from (the address, the key, the timeouts) changed."""

    api: str  # "ollama" or "openai": how a model value names it
    label: str  # how people read it: "Ollama", "OpenAI API"
    part: str  # what core/incidents.py calls it when it is down

    def __init__(self, settings: Settings | Callable[[], Settings]) -> None:
        self._settings = settings
        self._client: tuple[asyncio.AbstractEventLoop, tuple[Any, ...], C] | None = None
        self._retired: list[tuple[asyncio.AbstractEventLoop, tuple[Any, ...], C]] = []

    @property
    def settings(self) -> Settings:
        source = self._settings
        return source if isinstance(source, Settings) else source()

    def client(self) -> C:
        """This event loop's client (one connection pool), made again when its settings changed."""
        loop, made_of = asyncio.get_running_loop(), self._made_of()
        if self._client is None or self._client[0] is not loop or self._client[1] != made_of:
            if self._client is not None:
                self._retired.append(self._client)
            self._client = (loop, made_of, self._new_client())
        return self._client[2]

    @abstractmethod
    def _made_of(self) -> tuple[Any, ...]:
        """The settings a client is made from."""

    @abstractmethod
    def _new_client(self) -> C:
        """A client for the current settings."""

    @property
    @abstractmethod
    def where(self) -> str:
        """The server's address, for operators' lines (never a key)."""

    @abstractmethod
    def stream_chat(self, model: str, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None) -> AsyncIterator[StreamPiece]:
        """The answer to `messages` (Ollama's shape) as it streams: Pieces, then the ToolCalls of the
        message if it called any, then its Usage (when the server says it)."""

    @abstractmethod
    async def chat_once(self, model: str, messages: list[dict[str, Any]]) -> tuple[str, Usage]:
        """A short answer in one piece, without tools or thinking (the summary of a long conversation),
        and what it cost (the person's usage counts it)."""

    @abstractmethod
    async def capabilities(self, model: str) -> frozenset[str]:
        """What `model` can do ("tools", "vision", …); empty when it cannot be asked now."""

    @abstractmethod
    async def context_length(self, model: str) -> int | None:
        """The most context `model` holds, as the server says it; None when it does not."""

    async def context_tokens(self, model: str) -> tuple[int, str | None]:
        """The context requests to `model` are built to fit, and the setting that says it (None: the
        server's own figure). By default the setting (OLLAMA_NUM_CTX)."""
        return self.settings.context_tokens, "OLLAMA_NUM_CTX"

    @abstractmethod
    async def list_models(self) -> list[str]:
        """The models the server offers now."""

    @abstractmethod
    async def problem(self, model: str, *, tools: bool) -> tuple[str | None, bool]:
        """Why `model` cannot serve this bot (not there; no tool calling when `tools`), or None; and
        whether the server said what the model can do (rather than a setting or nothing)."""

    async def close(self) -> None:
        """Let go of the clients (one of a loop already closed cannot be awaited from this one)."""
        clients = self._retired + ([self._client] if self._client is not None else [])
        self._client, self._retired = None, []
        for loop, _made_of, client in clients:
            if loop is asyncio.get_running_loop():
                await client.close()  # type: ignore[attr-defined]


# -- model values -----------------------------------------------------------------------------
def split_model(value: str, default_api: str) -> tuple[str, str]:
    """(api, name) of a model value: `openai:<name>`, `ollama:<name>`, or a name of `default_api`'s."""
    api, colon, name = value.partition(":")
    if colon and api in APIS and name:
        return api, name
    return default_api, value


def model_value(api: str, name: str, default_api: str) -> str:
    """How a model is stored and typed: plain for MODEL_API's backend, `api:name` for the other."""
    return name if api == default_api else f"{api}:{name}"


# -- tool calls, read leniently, whichever API sent them ---------------------------------------
# What a chunk the JSON reader cannot take raises, besides ValueError: nesting thousands deep.
UNREADABLE_CHUNK: tuple[type[BaseException], ...] = (ValueError, RecursionError)

def repair_call(call: Any) -> tuple[str, dict[str, Any], str | None]:
    """(name, arguments as an object, what was wrong or None) of one call in Ollama's shape,
    `{"function": {"name", "arguments"}}`, whose arguments may be an object or JSON text."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return "", {}, "error: the tool call had no function; call it as execute_terminal(" + ARGUMENTS_EXAMPLE + ")."
    name = function.get("name")
    name = name if isinstance(name, str) else ""
    arguments = function.get("arguments")
    if arguments is None:
        return name, {}, None
    if isinstance(arguments, str):
        if not arguments.strip():
            return name, {}, None
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return name, {}, (f"error: the arguments were not valid JSON ({_shorten(arguments)}); "
                              f"send an object like {ARGUMENTS_EXAMPLE}.")
        except RecursionError:  # JSON nested thousands deep: Python's reader gives up
            return name, {}, ("error: the arguments were nested too deeply to read; send an object like "
                              f"{ARGUMENTS_EXAMPLE}.")
    if not isinstance(arguments, dict):
        kind = _KINDS.get(type(arguments), "not an object")
        return name, {}, (f"error: the arguments were {kind} ({_shorten(json.dumps(arguments))}), "
                          f"not an object like {ARGUMENTS_EXAMPLE}.")
    return name, arguments, None


_KINDS = {list: "a list", int: "a number", float: "a number", bool: "a boolean", str: "a string"}


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
