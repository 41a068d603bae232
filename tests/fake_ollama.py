"""A scripted Ollama server on 127.0.0.1 that speaks the real /api/chat NDJSON protocol.

It runs aiohttp in its own thread and event loop, like a separate server, so the
real `ollama` client (sync or async) is exercised end to end from any test.

    with FakeOllama() as fake:
        fake.script(tool_calls(("execute_terminal", {"command": "ls"})), text("Done."))
        ... point OLLAMA_HOST at fake.url ...
        assert fake.requests[1]["messages"][-1]["role"] == "tool"
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Union

from aiohttp import web

from tests.scripted_server import ScriptedServer, free_port  # noqa: F401 - free_port: the tests import it from here


@dataclass
class Response:
    """One scripted answer: the pieces to stream and how the stream ends."""

    content: str = ""
    thinking: str | None = None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    chunk_size: int = 4
    delay: float = 0.0
    status: int = 200
    error: str | None = None  # with status != 200: an HTTP error; with 200: an error line in the stream
    ending: str = "done"  # "done", "error", "cut", "hang"
    raw: list[str] = field(default_factory=list)  # lines sent verbatim after the content (malformed output)


Script = Union[Response, Callable[[dict[str, Any]], Response]]


def text(content: str, chunk_size: int = 4, thinking: str | None = None, delay: float = 0.0) -> Response:
    return Response(content=content, thinking=thinking, chunk_size=chunk_size, delay=delay)


def tool_calls(*calls: tuple[str, dict[str, Any]], content: str = "", delay: float = 0.0) -> Response:
    return Response(content=content, calls=list(calls), delay=delay)


def error(status: int, message: str) -> Response:
    return Response(status=status, error=message)


def stream_error(after_text: str, message: str) -> Response:
    return Response(content=after_text, error=message, ending="error")


def cut(after_text: str) -> Response:
    return Response(content=after_text, ending="cut")


def hang(after_text: str = "") -> Response:
    return Response(content=after_text, ending="hang")


def raw_lines(*lines: str, content: str = "") -> Response:
    """Content, then exactly these NDJSON lines (whatever they hold), then the usual done line."""
    return Response(content=content, raw=list(lines))


def chunk_line(message: Any, **extra: Any) -> str:
    """One streamed line with this `message` value, however malformed."""
    return json.dumps({"model": "qwen3:8b", "created_at": _now(), "message": message, "done": False, **extra})


IMAGE_KEY_LEAK = "image_refs"


def request_problems(body: dict[str, Any]) -> list[str]:
    """Why a real server or model would reject or misread this /api/chat request; [] when valid.

    The rules real chat templates rely on: the system prompt first, every assistant tool call
    followed by exactly one tool result (before anything else), no result without a call,
    arguments that are JSON objects, and at least one user message.
    """
    problems: list[str] = []
    messages = body.get("messages") or []
    if not messages or messages[0].get("role") != "system":
        problems.append("the request does not open with the system prompt")
    if not any(m.get("role") == "user" for m in messages):
        problems.append("no user message")
    pending = 0
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            problems.append(f"message {i}: unknown role {role!r}")
        if not isinstance(m.get("content", ""), str):
            problems.append(f"message {i}: content is not a string")
        for image in m.get("images") or []:
            try:
                base64.b64decode(image, validate=True)
            except (TypeError, ValueError, binascii.Error):
                problems.append(f"message {i}: an image that is not base64")
        if IMAGE_KEY_LEAK in m:
            problems.append(f"message {i}: an engine-only key {IMAGE_KEY_LEAK!r} reached the request")
        if role == "tool":
            if pending == 0:
                problems.append(f"message {i}: a tool result without a call")
            else:
                pending -= 1
            continue
        if pending:
            problems.append(f"message {i}: {pending} tool call(s) before it have no result")
            pending = 0
        for call in m.get("tool_calls") or []:
            if not isinstance(call.get("function", {}).get("arguments"), dict):
                problems.append(f"message {i}: tool call arguments are not an object")
            pending += 1
    if pending:
        problems.append(f"the last {pending} tool call(s) have no result")
    return problems


CHARS_PER_TOKEN = 3.6  # the fake's tokenizer: what it reports as prompt_eval_count


def prompt_tokens(body: dict[str, Any]) -> int:
    """The request's size in tokens, as a tokenizer would count it (about one per 3.6 characters)."""
    size = sum(len(m.get("content") or "") + len(json.dumps(m.get("tool_calls") or "")) + 4
               for m in body.get("messages") or [])
    size += len(json.dumps(body["tools"])) if body.get("tools") else 0
    return max(1, round(size / CHARS_PER_TOKEN))


def answer_tokens(answer: Response) -> int:
    """What the fake reports as an answer's eval_count: a token per 4 characters, at least one."""
    return max(len(answer.content) // 4, 1)


def is_summary_request(body: dict[str, Any]) -> bool:
    """The engine's own call that summarises what fell out of a conversation's context."""
    messages = body.get("messages") or []
    return (not body.get("tools") and len(messages) == 1 and messages[0].get("role") == "user"
            and str(messages[0].get("content", "")).startswith("Update the running summary"))


def command_agent(body: dict[str, Any]) -> Response:
    """A model that runs the user's message as one command, then answers with the result's first line.

    As `FakeOllama.fallback` it serves any number of concurrent sessions, whatever order they ask in.
    """
    last = body["messages"][-1]
    if last["role"] == "user":
        return tool_calls(("execute_terminal", {"command": last["content"]}))
    if last["role"] == "tool":
        return text("result: " + (last["content"].splitlines() or [""])[0])
    return text("?")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _pieces(value: str, size: int) -> list[str]:
    return [value[i:i + size] for i in range(0, len(value), max(size, 1))]


class FakeOllama(ScriptedServer[Script]):
    """The server. `script()` queues answers; `requests` records what clients sent."""

    name = "fake ollama"

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.models: list[str] = ["qwen3:8b"]
        self.capabilities: dict[str, list[str]] = {}
        self.context_lengths: dict[str, int] = {}  # what /api/show says a model was trained for (default 40960)
        self.shown: list[str] = []  # the models /api/show was asked about, in order
        self.strict_models = False
        self.summary_requests: list[dict[str, Any]] = []  # the engine's context summaries, answered apart
        self.summarizer: Callable[[dict[str, Any]], Response] = lambda body: text(
            f"Earlier: {len(body['messages'][-1]['content'])} characters of conversation.")

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self._chat)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/show", self._show)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/", self._root)

    def start(self) -> "FakeOllama":
        return super().start()

    def __enter__(self) -> "FakeOllama":
        return self.start()

    # -- endpoints ------------------------------------------------------------
    async def _root(self, _request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.3"})

    async def _tags(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": [self._model_entry(name) for name in self.models]})

    async def _show(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("model") or body.get("name")
        with self._lock:
            self.shown.append(name)
        if name not in self.models:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        return web.json_response({
            "modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
            "details": self._model_entry(name)["details"],
            "model_info": {"general.architecture": "qwen3",
                           "qwen3.context_length": self.context_lengths.get(name, 40960)},
            "capabilities": self.capabilities.get(name, ["completion", "tools"]),
            "modified_at": _now(),
        })

    @staticmethod
    def _model_entry(name: str) -> dict[str, Any]:
        return {"name": name, "model": name, "size": 5_200_000_000, "digest": "0" * 64, "modified_at": _now(),
                "details": {"parent_model": "", "format": "gguf", "family": "qwen3", "families": ["qwen3"],
                            "parameter_size": "8.2B", "quantization_level": "Q4_K_M"}}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if is_summary_request(body):  # the engine's context summary: answered like a model would, unscripted
            with self._lock:
                self.summary_requests.append(body)
                answer = self.summarizer(body)
            return web.json_response(self._final(body.get("model", ""), answer, whole=True, body=body))
        script = self.take(body)
        model = body.get("model", "")
        if self.strict_models and model not in self.models:
            return web.json_response({"error": f'model "{model}" not found, try pulling it first'}, status=404)
        if any(m.get("images") for m in body.get("messages") or []) \
                and "vision" not in self.capabilities.get(model, ["completion", "tools"]):
            return web.json_response({"error": "this model is missing data required for image input"}, status=500)
        if body.get("tools") and "tools" not in self.capabilities.get(model, ["completion", "tools"]):
            return web.json_response({"error": f"registry.ollama.ai/library/{model} does not support tools"},
                                     status=400)
        if script is None:
            return web.json_response({"error": "fake ollama: no scripted response"}, status=500)
        answer = script(body) if callable(script) else script
        if answer.status != 200:
            return web.json_response({"error": answer.error}, status=answer.status)
        if body.get("stream", True) is False:
            return web.json_response(self._final(model, answer, whole=True, body=body))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)

        async def send(obj: dict[str, Any]) -> None:
            await response.write((json.dumps(obj) + "\n").encode())
            if answer.delay:
                await asyncio.sleep(answer.delay)

        for piece in _pieces(answer.thinking or "", answer.chunk_size):
            await send(self._chunk(model, {"role": "assistant", "content": "", "thinking": piece}))
        for piece in _pieces(answer.content, answer.chunk_size):
            await send(self._chunk(model, {"role": "assistant", "content": piece}))
        if answer.calls:
            await send(self._chunk(model, {"role": "assistant", "content": "", "tool_calls": self._calls(answer)}))
        for line in answer.raw:
            await response.write((line + "\n").encode())
        if answer.ending == "error":
            await response.write((json.dumps({"error": answer.error}) + "\n").encode())
        elif answer.ending == "cut":
            if request.transport is not None:
                request.transport.abort()
            return response
        elif answer.ending == "hang":
            assert self._release is not None
            release = self._release
            await release.wait()
            await response.write((json.dumps(self._final(model, answer, body=body)) + "\n").encode())
        else:
            await response.write((json.dumps(self._final(model, answer, body=body)) + "\n").encode())
        await response.write_eof()
        return response

    @staticmethod
    def _calls(answer: Response) -> list[dict[str, Any]]:
        return [{"function": {"name": name, "arguments": arguments}} for name, arguments in answer.calls]

    @staticmethod
    def _chunk(model: str, message: dict[str, Any]) -> dict[str, Any]:
        return {"model": model, "created_at": _now(), "message": message, "done": False}

    def _final(self, model: str, answer: Response, whole: bool = False,
               body: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": answer.content if whole else ""}
        if whole and answer.thinking:
            message["thinking"] = answer.thinking
        if whole and answer.calls:
            message["tool_calls"] = self._calls(answer)
        return {"model": model, "created_at": _now(), "message": message, "done": True, "done_reason": "stop",
                "total_duration": 1_000_000, "load_duration": 100_000,
                "prompt_eval_count": prompt_tokens(body) if body is not None else 10,
                "prompt_eval_duration": 200_000, "eval_count": answer_tokens(answer),
                "eval_duration": 500_000}
