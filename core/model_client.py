"""The Ollama client, made tolerant of malformed model output.

The `ollama` client validates every streamed chunk with pydantic, so one tool call
whose arguments are a string or a list fails the whole stream before the engine
sees it, and the model never learns what it did wrong. Here each chat chunk is
repaired before validation: arguments sent as a JSON string are decoded, a
`null` message is read as an empty one, and a call that still makes no sense is
kept with empty arguments and a note saying why, which goes back to the model as
the tool's error. A line that is not JSON at all still fails the stream (the
engine reports it as one line).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
import ollama
from pydantic import Field, model_validator

from .errors import OLLAMA_UNREACHABLE

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)
CAPABILITIES_TTL = 300.0  # seconds a model's /api/show capabilities are trusted

ARGUMENTS_EXAMPLE = '{"command": "ls -la"}'


class TolerantChatResponse(ollama.ChatResponse):
    """A chat chunk whose malformed tool calls are kept, each with what was wrong (by index)."""

    # A factory, not `= {}`: pydantic deep-copies a mutable default for every chunk, which cost more
    # than the rest of the engine's work on a streamed piece.
    malformed: dict[int, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _repair(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        message = data.get("message")
        if message is None:
            data["message"] = {"role": "assistant", "content": ""}
            return data
        if not isinstance(message, dict):
            return data  # not a message at all: the stream is broken
        message = dict(message)
        if message.get("content") is None:
            message["content"] = ""
        message.setdefault("role", "assistant")
        calls = message.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            calls = [calls]  # one call sent bare, not in a list
        malformed: dict[int, str] = {}
        if calls is not None:
            repaired = []
            for index, call in enumerate(calls):
                name, arguments, problem = _repair_call(call)
                if problem:
                    malformed[index] = problem
                repaired.append({"function": {"name": name, "arguments": arguments}})
            message["tool_calls"] = repaired or None
        data["message"] = message
        data["malformed"] = malformed
        return data


def _repair_call(call: Any) -> tuple[str, dict[str, Any], str | None]:
    """(name, arguments as an object, what was wrong or None)."""
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
    if not isinstance(arguments, dict):
        kind = _KINDS.get(type(arguments), "not an object")
        return name, {}, (f"error: the arguments were {kind} ({_shorten(json.dumps(arguments))}), "
                          f"not an object like {ARGUMENTS_EXAMPLE}.")
    return name, arguments, None


_KINDS = {list: "a list", int: "a number", float: "a number", bool: "a boolean", str: "a string"}


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class Piece(NamedTuple):
    """A plain piece of a streamed reply: text and/or thinking, nothing else. Nearly every chunk is
    one, so it is read straight from the JSON, without the pydantic models ollama's client builds
    for each chunk (which cost more than the rest of the engine's work on a piece)."""

    content: str
    thinking: str | None = None


def chat_response(**part: Any) -> "Piece | ollama.ChatResponse":
    """One chat chunk, or a whole answer: a Piece when it is a plain piece of the reply (not the
    last chunk, no tool calls, text as text); anything else as a TolerantChatResponse."""
    message = part.get("message")
    if not part.get("done") and type(message) is dict and message.get("tool_calls") is None:
        content, thinking = message.get("content"), message.get("thinking")
        if type(content) is str and (thinking is None or type(thinking) is str):
            return Piece(content, thinking)
    return TolerantChatResponse(**part)


class ModelClient(ollama.AsyncClient):
    """ollama.AsyncClient whose chat chunks are read by chat_response: a streamed chat yields
    Pieces and (for its tool calls and its last chunk) TolerantChatResponses."""

    async def _request(self, cls: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if cls is ollama.ChatResponse:
            cls = chat_response
        return await super()._request(cls, *args, **kwargs)


class ModelServer:
    """The Ollama server as the engine uses it: one client (one connection pool) per event loop, and
    what each model can do, asked of /api/show and remembered for a few minutes."""

    def __init__(self, settings: "Settings") -> None:
        self.settings = settings
        self._client: tuple[asyncio.AbstractEventLoop, ollama.AsyncClient] | None = None
        self._capabilities: dict[str, tuple[float, frozenset[str]]] = {}
        self._context_lengths: dict[str, int | None] = {}

    def client(self) -> ollama.AsyncClient:
        """This event loop's client."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            s = self.settings
            # read: the longest silence allowed between two bytes of a reply (a hung server ends the turn)
            timeout = httpx.Timeout(connect=s.ollama_connect_timeout, read=s.ollama_stall_timeout,
                                    write=s.ollama_stall_timeout, pool=s.ollama_connect_timeout)
            self._client = (loop, ModelClient(host=s.ollama_host, timeout=timeout))
        return self._client[1]

    async def capabilities(self, model: str) -> frozenset[str]:
        """What `model` can do, per Ollama's /api/show ("tools", "vision", …); cached for a few
        minutes. Empty when the server does not say (older Ollama) or cannot be asked now."""
        now = time.monotonic()
        cached = self._capabilities.get(model)
        if cached is not None and now - cached[0] < CAPABILITIES_TTL:
            return cached[1]
        try:
            shown = await asyncio.wait_for(self.client().show(model), self.settings.ollama_connect_timeout + 5)
        except (*OLLAMA_UNREACHABLE, ollama.ResponseError, asyncio.TimeoutError) as exc:
            log.debug("could not ask Ollama what %s can do: %r", model, exc)
            return frozenset()
        found = frozenset(getattr(shown, "capabilities", None) or ())
        self._capabilities[model] = (now, found)
        info = getattr(shown, "modelinfo", None) or {}
        lengths = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int)]
        self._context_lengths[model] = lengths[0] if lengths else None
        return found

    async def context_length(self, model: str) -> int | None:
        """The most context `model` was trained for (Ollama's /api/show model_info), or None."""
        await self.capabilities(model)
        return self._context_lengths.get(model)

    async def close(self) -> None:
        """Let go of the client (a client of a loop already closed cannot be awaited from this one)."""
        if self._client is not None:
            client_loop, client = self._client
            self._client = None
            if client_loop is asyncio.get_running_loop():
                await client.close()
