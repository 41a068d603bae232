"""The OpenAI chat-completions API as a model backend: vLLM, llama.cpp's llama-server, LM Studio,
LiteLLM's proxy (MODEL_API=openai, or a model named `openai:<name>`).

The engine's messages are in Ollama's shape (the history's); they become OpenAI's on the way out:
an assistant's tool calls carry their ids and JSON-text arguments, each result names its call's
id (`tool_call_id`), pictures become `image_url` data URLs. A streamed answer comes back as the
face's pieces: text; `reasoning_content` as thinking; tool calls assembled from their deltas (split
by `index`, the name first, the arguments as JSON text cut anywhere), read as leniently as
Ollama's (broken JSON goes back to the model as the tool's error); and the token counts of the
usage chunk. What a model can do is read from /v1/models where the server says it (vLLM's
`max_model_len`; `capabilities` lists, `supports_*` flags), else from MODEL_CAPABILITIES.

Failures are one line each, as for Ollama: not reachable, stalled (nothing for the stall timeout),
cut mid-reply, 401/403, 404, 429 (retried once after its Retry-After), 5xx. The API key is never
logged, and is cut out of anything a server says back.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Mapping

import httpx
import openai

from .errors import EngineError, ModelError, OllamaUnavailable
from .images import sniff
from .incidents import OPENAI
from .model_backend import (MAX_CALL_CHARS, MAX_CALLS_KEPT, OPENAI_API, TOO_LONG_CALLS, UNREADABLE,
                            UNREADABLE_CHUNK, ModelBackend, Piece, StreamPiece, ToolCalls, Usage, repair_call)
from .tools import ModelCall

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)
MODELS_TTL = 300.0  # seconds a server's /v1/models answer is trusted
LIST_TIMEOUT = 10.0  # seconds to wait for it
RETRY_AFTER_DEFAULT = 1.0  # seconds before the one retry of a 429 that does not say how long to wait
RETRY_AFTER_MAX = 60.0  # a 429 that asks for a longer wait is not retried: the user is told at once
NO_KEY = "sk-no-key-required"  # what servers without keys (llama.cpp, LM Studio, vLLM) are sent
CONTEXT_KEYS = ("max_model_len", "context_length", "max_context_length", "context_window")
TOOL_WORDS = {"tools", "tool_use", "tool_calling", "function_calling"}
VISION_WORDS = {"vision", "image", "multimodal"}


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages in Ollama's shape (the history's), in OpenAI's. A call stored without an id (one an
    Ollama model made) gets one from its place in the request; results follow their calls in order
    (the window guarantees it), so each is sent under its call's id."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []  # the ids of the latest assistant message's calls still without a result
    for index, message in enumerate(messages):
        role = message["role"]
        content = message.get("content") or ""
        if role == "tool":
            out.append({"role": "tool", "tool_call_id": pending.pop(0) if pending else f"call_{index}",
                        "content": content})
            continue
        shaped: dict[str, Any] = {"role": role, "content": content}
        pictures = message.get("images")
        if pictures:
            shaped["content"] = [{"type": "text", "text": content},
                                 *({"type": "image_url", "image_url": {"url": data_url(p)}} for p in pictures)]
        calls = message.get("tool_calls")
        if calls:
            pending = []
            shaped["tool_calls"] = []
            for number, call in enumerate(calls):
                call_id = call.get("id") or f"call_{index}_{number}"
                pending.append(call_id)
                function = call.get("function") or {}
                shaped["tool_calls"].append({
                    "id": call_id, "type": "function",
                    "function": {"name": function.get("name") or "",
                                 "arguments": json.dumps(function.get("arguments") or {}, ensure_ascii=False)}})
        out.append(shaped)
    return out


def data_url(picture: str) -> str:
    """A picture (base64, as the engine prepares them: PNG or JPEG) as a data URL."""
    kind = sniff(base64.b64decode(picture[:16] + "=" * (-len(picture[:16]) % 4))) or "png"
    return f"data:image/{kind};base64,{picture}"


def described(entry: Mapping[str, Any]) -> tuple[frozenset[str] | None, int | None]:
    """What a /v1/models entry says of its model: its capabilities (None: nothing) and its context."""
    found: set[str] | None = None
    listed = entry.get("capabilities")
    if isinstance(listed, list):
        words = {str(w).lower() for w in listed}
        found = ({"tools"} if words & TOOL_WORDS else set()) | ({"vision"} if words & VISION_WORDS else set())
    for key, capability in (("supports_function_calling", "tools"), ("supports_tool_calling", "tools"),
                            ("supports_vision", "vision")):
        flag = entry.get(key)
        if isinstance(flag, bool):
            found = found if found is not None else set()
            if flag:
                found.add(capability)
    context = next((v for k in CONTEXT_KEYS if isinstance(v := entry.get(k), int) and v > 0), None)
    return (frozenset(found) if found is not None else None), context


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a 429 asks to wait (retry-after-ms, or Retry-After in seconds or as a date); None
    when it asks for longer than RETRY_AFTER_MAX."""
    wait = RETRY_AFTER_DEFAULT
    try:
        if headers.get("retry-after-ms"):
            wait = float(headers["retry-after-ms"]) / 1000
        elif headers.get("retry-after"):
            raw = headers["retry-after"].strip()
            try:
                wait = float(raw)
            except ValueError:
                wait = parsedate_to_datetime(raw).timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        wait = RETRY_AFTER_DEFAULT
    wait = max(wait, 0.0)
    return wait if wait <= RETRY_AFTER_MAX else None


class OpenAIBackend(ModelBackend[openai.AsyncOpenAI]):
    """An OpenAI-compatible server through the official SDK: one AsyncOpenAI (one connection pool)
    per event loop, without the SDK's own retries (a 429 is retried once here, nothing else is)."""

    api, label, part = OPENAI_API, "OpenAI API", OPENAI

    def __init__(self, settings: "Settings | Callable[[], Settings]") -> None:
        super().__init__(settings)
        self._listed: tuple[float, dict[str, dict[str, Any]]] | None = None

    @property
    def where(self) -> str:
        return self.settings.openai_base_url

    def _made_of(self) -> tuple[Any, ...]:
        s = self.settings
        return s.openai_base_url, s.openai_api_key, s.ollama_connect_timeout, s.ollama_stall_timeout

    def _new_client(self) -> openai.AsyncOpenAI:
        s = self.settings
        self._listed = None  # another server, maybe: its models are asked again
        # read: the longest silence allowed between two bytes of a reply (a hung server ends the turn)
        timeout = openai.Timeout(connect=s.ollama_connect_timeout, read=s.ollama_stall_timeout,
                                 write=s.ollama_stall_timeout, pool=s.ollama_connect_timeout)
        return openai.AsyncOpenAI(base_url=s.openai_base_url, api_key=s.openai_api_key or NO_KEY, timeout=timeout,
                                  max_retries=0)

    # -- chat -------------------------------------------------------------------------------------
    async def stream_chat(self, model: str, messages: list[dict[str, Any]],
                          tools: list[dict[str, Any]] | None) -> AsyncIterator[StreamPiece]:
        request: dict[str, Any] = {"model": model, "messages": openai_messages(messages), "stream": True,
                                   "stream_options": {"include_usage": True}}
        if tools:
            request["tools"] = tools
        started = False
        building = _Building(max(MAX_CALLS_KEPT, self.settings.max_tool_calls_per_round))
        usage = None  # the last counts the server sent (once, at the end, with include_usage)
        try:
            stream = await self._create(request)
            try:
                async for chunk in stream:
                    started = True
                    choices = chunk.choices
                    if choices:
                        choice = choices[0]
                        delta = choice.delta
                        if delta is not None:
                            content, extra = delta.content, delta.model_extra
                            thinking = (extra.get("reasoning_content") or extra.get("reasoning")) if extra else None
                            if content or thinking:
                                if not isinstance(content or "", str) or not isinstance(thinking or "", str):
                                    raise ValueError(f"a delta that is not text: {content!r}, {thinking!r}")
                                yield Piece(content or "", thinking)
                            if delta.tool_calls:
                                building.add(delta.tool_calls)
                        if choice.finish_reason and building.calls:
                            yield building.done()
                    usage = chunk.usage or usage
            finally:
                await stream.close()
            if building.calls:  # a server that ended the stream without a finish_reason
                yield building.done()
            if usage is not None:
                yield Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)
        except (openai.APIError, httpx.HTTPError, OSError, *UNREADABLE_CHUNK, TypeError, AttributeError) as exc:
            raise self._error(exc, model, started) from exc

    async def chat_once(self, model: str, messages: list[dict[str, Any]]) -> tuple[str, Usage]:
        try:
            answer = await self._create({"model": model, "messages": openai_messages(messages), "stream": False})
            content = answer.choices[0].message.content if answer.choices else ""
            counted = getattr(answer, "usage", None)
            used = Usage(getattr(counted, "prompt_tokens", 0) or 0, getattr(counted, "completion_tokens", 0) or 0)
        except (openai.APIError, httpx.HTTPError, OSError, *UNREADABLE_CHUNK, TypeError, AttributeError) as exc:
            raise self._error(exc, model, False) from exc
        return (content if isinstance(content, str) else ""), used

    async def _create(self, request: dict[str, Any]) -> Any:
        """chat.completions.create, once more after a 429's Retry-After (when it asks for a minute at most)."""
        try:
            return await self.client().chat.completions.create(**request)
        except openai.RateLimitError as exc:
            wait = retry_after(exc.response.headers)
            if wait is None:
                raise
            log.info("the model server at %s is rate limiting (429): retrying in %.1f s", self.where, wait)
            await asyncio.sleep(wait)
        return await self.client().chat.completions.create(**request)

    def _error(self, exc: BaseException, model: str, started: bool) -> EngineError:
        """What a failure of a request to `model` says, to operators and to users: one line each."""
        s, where, part = self.settings, self.where, self.part
        if isinstance(exc, openai.APIStatusError):
            status, detail = exc.status_code, self._detail(exc)
            if status in (401, 403):
                return ModelError(f"The model server at {where} refused the API key (HTTP {status}: {detail}): set "
                                  "OPENAI_API_KEY to a key it accepts.",
                                  user=f"The AI model server refused the bot's credentials (HTTP {status}); the "
                                       "bot's operator needs to check its API key.", part=part)
            if status == 404:
                return ModelError(f"The model {model!r} is not served at {where} (HTTP 404: {detail}): pick one "
                                  "that /v1/models lists (OPENAI_MODEL or /admin model), or check OPENAI_BASE_URL "
                                  "(it usually ends in /v1).",
                                  user=f"The model {model!r} is not on the AI model server: pick another with "
                                       "/admin model.", part=part)
            if status == 429:
                return ModelError(f"The model server at {where} is rate limiting the bot (HTTP 429): {detail}",
                                  user="The AI model server is busy (too many requests); try again in a minute.",
                                  part=part)
            if status >= 500:
                return ModelError(f"The model server at {where} failed (HTTP {status}): {detail}",
                                  user=f"The AI model server failed (HTTP {status}); try again in a minute.",
                                  part=part)
            return ModelError(f"The model server at {where} refused the request (HTTP {status}): {detail}",
                              user=f"The AI model server refused the request (HTTP {status}): {detail}", part=part)
        if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)):
            cause = exc.__cause__ if isinstance(exc, openai.APITimeoutError) else exc
            if type(cause).__name__ not in ("ConnectTimeout", "PoolTimeout"):
                log.debug("the model server at %s sent nothing for %g s", where, s.ollama_stall_timeout)
                return OllamaUnavailable(f"The AI model stopped answering (nothing for {s.ollama_stall_timeout:g} "
                                         "s). Please try again.", user="The AI model stopped answering. Please try "
                                                                       "again.", part=part)
        if isinstance(exc, (openai.APIConnectionError, httpx.HTTPError, OSError)):
            log.debug("the model server at %s failed: %r", where, exc)
            if started:
                return OllamaUnavailable("The connection to the model server dropped in the middle of the reply. "
                                         "Please try again.", user="The connection to the AI model dropped in the "
                                                                   "middle of the reply. Please try again.", part=part)
            return OllamaUnavailable(f"The model server (OpenAI API) is not reachable at {where}: start it, or set "
                                     "OPENAI_BASE_URL.", part=part)
        if isinstance(exc, openai.APIError):  # an error the server put inside the stream
            detail = self._redact(str(exc.message or "unknown error").splitlines()[0][:300])
            return ModelError(f"The model server at {where} could not answer: {detail}",
                              user=f"The AI model could not answer: {detail}", part=part)
        # a chunk that is not JSON, or not a chat chunk
        log.warning("the model server at %s sent an unreadable chunk: %s", where, self._redact(str(exc))[:500])
        return ModelError(UNREADABLE, user=UNREADABLE, part=part)

    def _detail(self, exc: "openai.APIStatusError") -> str:
        """The first line of what the server said, without the key."""
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else body
        text = str(message or exc.message or "no detail").strip()
        return self._redact((text.splitlines() or ["no detail"])[0][:300])

    def _redact(self, text: str) -> str:
        key = self.settings.openai_api_key
        return text.replace(key, "***") if key else text

    # -- what the server offers ----------------------------------------------------------------------
    async def _models(self, *, fresh: bool = False) -> dict[str, dict[str, Any]]:
        """The server's /v1/models entries by id, remembered for a few minutes (`fresh`: asked now)."""
        now = time.monotonic()
        if not fresh and self._listed is not None and now - self._listed[0] < MODELS_TTL:
            return self._listed[1]
        try:
            page = await asyncio.wait_for(self.client().models.list(), LIST_TIMEOUT)
            entries = {m.id: m.to_dict() for m in page.data if isinstance(getattr(m, "id", None), str)}
        except asyncio.TimeoutError as exc:
            raise OllamaUnavailable(f"The model server at {self.where} did not list its models within "
                                    f"{LIST_TIMEOUT:g} s.", part=self.part) from exc
        except (openai.APIError, httpx.HTTPError, OSError, *UNREADABLE_CHUNK, TypeError, AttributeError) as exc:
            raise self._error(exc, "", False) from exc
        self._listed = (now, entries)
        return entries

    async def _described(self, model: str) -> tuple[frozenset[str] | None, int | None]:
        try:
            entry = (await self._models()).get(model)
        except EngineError as exc:
            log.debug("could not ask %s what %s can do: %s", self.where, model, exc)
            return None, None
        return described(entry) if entry is not None else (None, None)

    async def capabilities(self, model: str) -> frozenset[str]:
        """What /v1/models says `model` can do, else what MODEL_CAPABILITIES says."""
        found, _context = await self._described(model)
        return found if found is not None else self.settings.model_capabilities

    async def context_length(self, model: str) -> int | None:
        return (await self._described(model))[1]

    async def context_tokens(self, model: str) -> tuple[int, str | None]:
        """The server's own context where it says it (vLLM's max_model_len), else OLLAMA_NUM_CTX."""
        most = await self.context_length(model)
        return (most, None) if most else await super().context_tokens(model)

    async def list_models(self) -> list[str]:
        return list(await self._models(fresh=True))

    async def problem(self, model: str, *, tools: bool) -> tuple[str | None, bool]:
        entries = await self._models(fresh=True)
        if model not in entries:
            return (f"the model {model!r} is not served at {self.where} (served: "
                    + (", ".join(entries) or "none") + ")"), False
        found, _context = described(entries[model])
        known = found is not None
        if tools and "tools" not in (found if known else self.settings.model_capabilities):
            said = "the server says so" if known else "MODEL_CAPABILITIES says so"
            return (f"the model {model!r} cannot call tools ({said}): choose a tool-capable model"
                    + ("" if known else ", or add tools to MODEL_CAPABILITIES if it can")), known
        return None, known


class _Building:
    """The tool calls of the message being streamed, folded from their deltas by index: at most
    `most` calls kept (the others counted) and MAX_CALL_CHARS of arguments in all."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.calls: dict[int, list[Any]] = {}  # index -> [id, name, pieces of the arguments' JSON text]
        self.more: set[int] = set()  # indexes of calls past `most`: counted, not kept
        self.chars = 0

    def add(self, deltas: list[Any]) -> None:
        """Fold one chunk's tool-call deltas in; EngineError once the arguments pass MAX_CALL_CHARS."""
        for delta in deltas:
            index = delta.index if isinstance(delta.index, int) else len(self.calls)
            entry = self.calls.get(index)
            if entry is None:
                if len(self.calls) >= self.most:
                    if len(self.more) < 1_000_000:
                        self.more.add(index)
                    continue
                entry = self.calls[index] = ["", "", []]
            if isinstance(delta.id, str) and delta.id and not entry[0]:
                entry[0] = delta.id
            function = delta.function
            if function is None:
                continue
            name = function.name
            if isinstance(name, str) and name and not entry[1].endswith(name):  # some servers repeat the whole name
                entry[1] = (entry[1] + name)[:1024]
            if function.arguments:
                piece = function.arguments if isinstance(function.arguments, str) else json.dumps(function.arguments)
                self.chars += len(piece)
                if self.chars > MAX_CALL_CHARS:
                    raise EngineError(f"the model sent over {MAX_CALL_CHARS} characters of tool-call arguments in "
                                      "one message", user=TOO_LONG_CALLS)
                entry[2].append(piece)

    def done(self) -> ToolCalls:
        """The calls built, in index order, their arguments read as Ollama's are (repair_call); the
        next message starts afresh."""
        calls = []
        for index in sorted(self.calls):
            call_id, name, pieces = self.calls[index]
            name, arguments, problem = repair_call({"function": {"name": name, "arguments": "".join(pieces)}})
            calls.append(ModelCall(name, arguments, problem, call_id or f"call_{uuid.uuid4().hex[:24]}"))
        built = ToolCalls(calls, len(self.more))
        self.calls, self.more, self.chars = {}, set(), 0
        return built
