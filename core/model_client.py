"""The model servers: ModelServer, the one face the engine uses, and the Ollama backend behind it.

ModelServer picks the backend a model value names (core/model_backend.py: a plain name is MODEL_API's,
`openai:<name>` or `ollama:<name>` the other's) and builds each on first use: Ollama's here, the
OpenAI-compatible one in core/openai_backend.py.

The Ollama backend reads the stream leniently. The `ollama` client validates every streamed chunk
with pydantic, so one tool call whose arguments are a string or a list fails the whole stream
before the engine sees it, and the model never learns what it did wrong. Here each chat chunk is
repaired before validation: arguments sent as a JSON string are decoded, a `null` message is read
as an empty one, and a call that still makes no sense is kept with empty arguments and a note
saying why, which goes back to the model as the tool's error. A line that is not JSON at all still
fails the stream (the engine reports it as one line).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, NamedTuple

import httpx
import ollama
from pydantic import Field, model_validator

from .errors import OLLAMA_UNREACHABLE, EngineError, ModelError, OllamaUnavailable
from .incidents import OLLAMA
from .model_backend import (OLLAMA_API, OPENAI_API, UNREADABLE, UNREADABLE_CHUNK, ModelBackend, Piece, StreamPiece,
                            ToolCalls, Usage, model_value, repair_call, split_model)
from .tools import ModelCall

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)
CAPABILITIES_TTL = 300.0  # seconds a model's /api/show capabilities are trusted
LIST_TIMEOUT = 10.0  # seconds to wait for a server's list of models


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
                name, arguments, problem = repair_call(call)
                if problem:
                    malformed[index] = problem
                repaired.append({"function": {"name": name, "arguments": arguments}})
            message["tool_calls"] = repaired or None
        data["message"] = message
        data["malformed"] = malformed
        return data


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



class OllamaBackend(ModelBackend[ollama.AsyncClient]):
    """The Ollama server: one client (one connection pool) per event loop, and what each model can do,
    asked of /api/show and remembered for a few minutes."""

    api, label, part = OLLAMA_API, "Ollama", OLLAMA

    def __init__(self, settings: "Settings | Callable[[], Settings]") -> None:
        super().__init__(settings)
        self._capabilities: dict[str, tuple[float, frozenset[str]]] = {}
        self._context_lengths: dict[str, int | None] = {}

    @property
    def where(self) -> str:
        return self.settings.ollama_host

    def _made_of(self) -> tuple[Any, ...]:
        s = self.settings
        return s.ollama_host, s.ollama_connect_timeout, s.ollama_stall_timeout

    def _new_client(self) -> ollama.AsyncClient:
        s = self.settings
        # read: the longest silence allowed between two bytes of a reply (a hung server ends the turn)
        timeout = httpx.Timeout(connect=s.ollama_connect_timeout, read=s.ollama_stall_timeout,
                                write=s.ollama_stall_timeout, pool=s.ollama_connect_timeout)
        return ModelClient(host=s.ollama_host, timeout=timeout)

    async def stream_chat(self, model: str, messages: list[dict[str, Any]],
                          tools: list[dict[str, Any]] | None) -> AsyncIterator[StreamPiece]:
        s = self.settings
        kwargs: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
        if tools:
            kwargs["tools"] = tools
        if s.ollama_think is not None:
            kwargs["think"] = s.ollama_think
        if s.ollama_num_ctx:
            kwargs["options"] = {"num_ctx": s.ollama_num_ctx}
        if s.ollama_keep_alive:
            kwargs["keep_alive"] = s.ollama_keep_alive
        started = False
        try:
            stream = await self.client().chat(**kwargs)
            async for chunk in stream:
                started = True
                if type(chunk) is Piece:  # a plain piece of text or thinking: nearly every chunk
                    yield chunk
                    continue
                message = chunk.message
                if message.content or message.thinking:
                    yield Piece(message.content or "", message.thinking)
                if message.tool_calls:
                    malformed = getattr(chunk, "malformed", {})
                    yield ToolCalls([ModelCall(c.function.name, dict(c.function.arguments or {}), malformed.get(i))
                                     for i, c in enumerate(message.tool_calls)])
                if chunk.done:
                    yield Usage(chunk.prompt_eval_count or 0, chunk.eval_count or 0)
        except (ollama.ResponseError, *OLLAMA_UNREACHABLE, *UNREADABLE_CHUNK) as exc:
            raise self._error(exc, model, started) from exc

    async def chat_once(self, model: str, messages: list[dict[str, Any]]) -> tuple[str, Usage]:
        options = {"num_ctx": self.settings.ollama_num_ctx} if self.settings.ollama_num_ctx else None
        try:
            answer = await self.client().chat(model=model, messages=messages, stream=False, think=False,
                                              options=options)
        except (ollama.ResponseError, *OLLAMA_UNREACHABLE, *UNREADABLE_CHUNK) as exc:
            raise self._error(exc, model, False) from exc
        return answer.message.content or "", Usage(answer.prompt_eval_count or 0, answer.eval_count or 0)

    def _error(self, exc: BaseException, model: str, started: bool) -> EngineError:
        """What a failure of a request to `model` says, to operators and to users."""
        s = self.settings
        if isinstance(exc, ollama.ResponseError):
            if exc.status_code == 404:
                return ModelError(f"The model {model!r} is not on the Ollama server: run `ollama pull {model}` "
                                  "or pick another with /admin model.")
            detail = str(exc.error).splitlines()[0] if exc.error else "unknown error"
            if "does not support tools" in detail:
                return ModelError(f"The model {model!r} cannot use tools: choose a tool-capable model "
                                  "(OLLAMA_MODEL or /admin model).")
            return ModelError(f"Ollama could not answer: {detail[:300]}")
        if isinstance(exc, httpx.ReadTimeout):
            log.debug("ollama at %s sent nothing for %g s", s.ollama_host, s.ollama_stall_timeout)
            return OllamaUnavailable(f"The AI model stopped answering (nothing for {s.ollama_stall_timeout:g} s). "
                                     "Please try again.", user="The AI model stopped answering. Please try again.")
        if isinstance(exc, OLLAMA_UNREACHABLE):
            log.debug("ollama at %s failed: %r", s.ollama_host, exc)
            if started:
                return OllamaUnavailable("The connection to Ollama dropped in the middle of the reply. Please try "
                                         "again.", user="The connection to the AI model dropped in the middle of "
                                                        "the reply. Please try again.")
            return OllamaUnavailable(f"Ollama is not reachable at {s.ollama_host}: start it (ollama serve) or set "
                                     "OLLAMA_HOST.")
        # a line that is not JSON, or a chunk that is not a chat message
        log.warning("ollama at %s sent an unreadable chunk: %s", s.ollama_host, str(exc)[:500])
        return ModelError(UNREADABLE, user=UNREADABLE)

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

    async def list_models(self) -> list[str]:
        try:
            listed = await asyncio.wait_for(self.client().list(), LIST_TIMEOUT)
        except asyncio.TimeoutError as exc:
            raise OllamaUnavailable(f"Ollama at {self.where} did not list its models within {LIST_TIMEOUT:g} s.") \
                from exc
        except (ollama.ResponseError, *OLLAMA_UNREACHABLE, *UNREADABLE_CHUNK) as exc:
            raise self._error(exc, "", False) from exc
        return [m.model for m in listed.models if m.model]

    async def problem(self, model: str, *, tools: bool) -> tuple[str | None, bool]:
        names = await self.list_models()
        if not any(_same_model(model, name) for name in names):
            return (f"the model {model!r} is not pulled: run `ollama pull {model}` (pulled: "
                    + (", ".join(names) or "none") + ")"), False
        try:
            shown = await self.client().show(model)
        except (ollama.ResponseError, *OLLAMA_UNREACHABLE, *UNREADABLE_CHUNK) as exc:
            raise self._error(exc, model, False) from exc
        capabilities = getattr(shown, "capabilities", None)
        if tools and capabilities is not None and "tools" not in capabilities:
            return (f"the model {model!r} cannot call tools ({', '.join(capabilities) or 'no capabilities'}): "
                    "choose a tool-capable model, e.g. qwen3:8b or llama3.1:8b"), True
        return None, capabilities is not None


def _same_model(wanted: str, have: str) -> bool:
    with_tag = wanted if ":" in wanted else f"{wanted}:latest"
    return have in (wanted, with_tag)


class ModelOffer(NamedTuple):
    """What one backend offers: its models as /admin model takes them, or None when it cannot be asked."""

    api: str
    label: str
    where: str
    models: list[str] | None


class ModelServer:
    """The model servers as the engine uses them: the backend each model value names (MODEL_API's for a
    plain name), each built on first use. The OpenAI-compatible one exists only when OPENAI_BASE_URL
    is set."""

    def __init__(self, settings: "Settings | Callable[[], Settings]") -> None:
        self._settings = settings  # or where to read them (the Runtime's current ones)
        self._backends: dict[str, ModelBackend[Any]] = {}

    @property
    def settings(self) -> "Settings":
        source = self._settings
        return source() if callable(source) else source

    def apis(self) -> list[str]:
        """The backends this process can use, MODEL_API's first."""
        usable = [OLLAMA_API] + ([OPENAI_API] if self.settings.openai_base_url else [])
        return sorted(usable, key=lambda api: api != self.settings.model_api)

    def backend(self, api: str) -> ModelBackend[Any]:
        """The backend of `api`, built on first use; ModelError when it is not set up."""
        found = self._backends.get(api)
        if found is None:
            if api == OLLAMA_API:
                found = OllamaBackend(self._settings)
            elif api == OPENAI_API and self.settings.openai_base_url:
                from .openai_backend import OpenAIBackend  # the SDK is loaded only where a server is set
                found = OpenAIBackend(self._settings)
            else:
                line = (f"No OpenAI-compatible server is set (OPENAI_BASE_URL), so models named '{api}:…' cannot "
                        "answer; set it, or pick another model with /admin model.")
                raise ModelError(line, user=line)  # nothing to retry: the line says what to do
            self._backends[api] = found
        return found

    def pick(self, value: str) -> tuple[ModelBackend[Any], str]:
        """The backend a model value names, and the model's name there."""
        api, name = split_model(value, self.settings.model_api)
        return self.backend(api), name

    def value(self, api: str, name: str) -> str:
        """How a model of `api` is written in /admin model and stored (plain for MODEL_API's)."""
        return model_value(api, name, self.settings.model_api)

    def canonical(self, value: str) -> str:
        """A model value as it is stored: `ollama:qwen3:8b` is plain `qwen3:8b` where MODEL_API=ollama."""
        return self.value(*split_model(value, self.settings.model_api))

    def client(self) -> ollama.AsyncClient:
        """The Ollama backend's client of this event loop."""
        backend = self.backend(OLLAMA_API)
        assert isinstance(backend, OllamaBackend)
        return backend.client()

    async def capabilities(self, value: str) -> frozenset[str]:
        """What the model can do ("tools", "vision", …); empty when it cannot be known now."""
        try:
            backend, name = self.pick(value)
        except EngineError:
            return frozenset()
        return await backend.capabilities(name)

    async def context_length(self, value: str) -> int | None:
        """The most context the model holds, as its server says it; None when it does not."""
        try:
            backend, name = self.pick(value)
        except EngineError:
            return None
        return await backend.context_length(name)

    async def context_tokens(self, value: str) -> tuple[int, str | None]:
        """The context requests to the model are built to fit, and the setting that says it (None:
        its server's own figure)."""
        try:
            backend, name = self.pick(value)
        except EngineError:
            return self.settings.context_tokens, "OLLAMA_NUM_CTX"
        return await backend.context_tokens(name)

    async def problem(self, value: str, *, tools: bool) -> tuple[str | None, bool]:
        """Why the model cannot serve this bot, or None (see ModelBackend.problem)."""
        backend, name = self.pick(value)
        return await backend.problem(name, tools=tools)

    async def offers(self) -> list["ModelOffer"]:
        """What each usable backend offers now (asked together), MODEL_API's first."""
        async def ask(api: str) -> ModelOffer:
            backend = self.backend(api)
            try:
                names = await backend.list_models()
            except EngineError as exc:
                log.debug("%s at %s could not list its models: %s", backend.label, backend.where, exc)
                return ModelOffer(api, backend.label, backend.where, None)
            return ModelOffer(api, backend.label, backend.where, [self.value(api, n) for n in names])
        return list(await asyncio.gather(*(ask(api) for api in self.apis())))

    async def close(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            await backend.close()
