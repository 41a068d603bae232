"""A scripted OpenAI-compatible server on 127.0.0.1: /v1/chat/completions as server-sent events,
/v1/models, and the API's errors, as vLLM, llama.cpp's llama-server, LM Studio and LiteLLM speak it.

It runs aiohttp in its own thread and event loop, like a separate server, so the real `openai` SDK
is exercised end to end. It takes the same scripted answers as tests/fake_ollama.py (text(),
tool_calls(), error(), cut(), hang()…) and streams them the awkward way real servers do: a tool
call's id and name in its first delta, its arguments as JSON text cut every few characters (inside
strings and escapes too), two calls' deltas interleaved, `finish_reason` "tool_calls", then the
usage chunk (empty `choices`) when the request asked for it. A request a real server would refuse
(a result without its call's id, arguments that are not JSON text, an engine-only key) is
answered 400, naming what was wrong.

    with FakeOpenAI() as fake:
        fake.script(tool_calls(("execute_terminal", {"command": "ls"})), text("Done."))
        ... point OPENAI_BASE_URL at fake.url ...
        assert fake.requests[1]["messages"][-1]["tool_call_id"] == fake.call_ids[0]
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fake_ollama import Response, Script, is_summary_request, text
from tests.scripted_server import ScriptedServer

MESSAGE_KEYS = {"system": {"role", "content", "name"}, "user": {"role", "content", "name"},
                "assistant": {"role", "content", "name", "tool_calls", "reasoning_content"},
                "tool": {"role", "content", "tool_call_id"}}
DEFAULT_MODEL = "Qwen/Qwen3-8B"
ARGUMENT_PIECE = 3  # characters of a call's arguments per delta: cut anywhere, as real servers do


@dataclass
class Refusal(Response):
    """An HTTP error with headers (a 429's Retry-After) and an OpenAI error body."""

    headers: dict[str, str] = field(default_factory=dict)


def rate_limited(retry_after: str | None = "0.2") -> Refusal:
    return Refusal(status=429, error="Rate limit reached for requests",
                   headers={"Retry-After": retry_after} if retry_after is not None else {})


def raw_events(*datas: str, content: str = "") -> Response:
    """Content, then exactly these `data:` payloads (whatever they hold), then the usual end."""
    return Response(content=content, raw=list(datas))


def prompt_tokens(body: dict[str, Any]) -> int:
    """The request's size in tokens as the fake counts them (one per 3.6 characters of text)."""
    size = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content or ""}]
        size += sum(len(p.get("text") or "") for p in parts if isinstance(p, dict)) + 4
        size += len(json.dumps(message.get("tool_calls") or ""))
    size += len(json.dumps(body["tools"])) if body.get("tools") else 0
    return max(1, round(size / 3.6))


def request_problems(body: dict[str, Any]) -> list[str]:
    """Why a strict OpenAI-compatible server would refuse or misread this request; [] when valid."""
    problems: list[str] = []
    messages = body.get("messages") or []
    if not messages or messages[0].get("role") != "system":
        problems.append("the request does not open with the system prompt")
    if not any(m.get("role") == "user" for m in messages):
        problems.append("no user message")
    pending: list[str] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in MESSAGE_KEYS:
            problems.append(f"message {i}: unknown role {role!r}")
            continue
        extra = set(m) - MESSAGE_KEYS[role]
        if extra:
            problems.append(f"message {i}: keys the API does not know: {sorted(extra)}")
        content = m.get("content")
        if isinstance(content, list) and role == "user":
            for part in content:
                problems += _part_problems(i, part)
        elif not isinstance(content, str) and not (role == "assistant" and content is None and m.get("tool_calls")):
            problems.append(f"message {i}: content is not a string")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not pending:
                problems.append(f"message {i}: a tool result without a call")
            elif call_id != pending[0]:
                problems.append(f"message {i}: tool_call_id {call_id!r} is not the next call's ({pending[0]!r})")
            if pending:
                pending.pop(0)
            continue
        if pending:
            problems.append(f"message {i}: {len(pending)} tool call(s) before it have no result")
            pending = []
        for call in m.get("tool_calls") or []:
            if not isinstance(call.get("id"), str) or not call["id"]:
                problems.append(f"message {i}: a tool call without an id")
            if call.get("type") != "function":
                problems.append(f"message {i}: a tool call whose type is not 'function'")
            arguments = (call.get("function") or {}).get("arguments")
            try:
                if not isinstance(arguments, str) or not isinstance(json.loads(arguments), dict):
                    raise ValueError
            except ValueError:
                problems.append(f"message {i}: tool call arguments are not a JSON object in a string")
            pending.append(call.get("id"))
    if pending:
        problems.append(f"the last {len(pending)} tool call(s) have no result")
    ids = [c.get("id") for m in messages for c in m.get("tool_calls") or []]
    if len(ids) != len(set(ids)):
        problems.append("two tool calls share an id")
    return problems


def _part_problems(i: int, part: Any) -> list[str]:
    if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
        return [f"message {i}: a content part that is neither text nor image_url"]
    if part["type"] == "text":
        return [] if isinstance(part.get("text"), str) else [f"message {i}: a text part without text"]
    url = (part.get("image_url") or {}).get("url", "")
    head, comma, data = url.partition(",")
    if not (head.startswith("data:image/") and head.endswith(";base64") and comma):
        return [f"message {i}: an image_url that is not a base64 data URL"]
    try:
        base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        return [f"message {i}: an image_url whose data is not base64"]
    return []


def images_of(body: dict[str, Any]) -> list[list[bytes]]:
    """The pictures of each message of a request, decoded."""
    out = []
    for m in body.get("messages") or []:
        parts = m.get("content") if isinstance(m.get("content"), list) else []
        out.append([base64.b64decode(p["image_url"]["url"].partition(",")[2])
                    for p in parts if p.get("type") == "image_url"])
    return out


class FakeOpenAI(ScriptedServer[Script]):
    """The server. `script()` queues answers; `requests` records what clients sent (bodies), `headers`
    the headers they sent with them; `models` is what /v1/models lists, each id with the extra
    fields its entry carries (e.g. {"max_model_len": 32768}); `capabilities` what a model can do
    (default: tools, no vision), enforced as real servers do."""

    name = "fake OpenAI server"

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.models: dict[str, dict[str, Any]] = {DEFAULT_MODEL: {}}
        self.capabilities: dict[str, list[str]] = {}
        self.api_key: str | None = None  # when set, requests without `Authorization: Bearer <it>` get a 401
        self.strict = True  # refuse requests a real server would refuse (400)
        self.summary_requests: list[dict[str, Any]] = []
        self.call_ids: list[str] = []  # the ids of the calls streamed, in order
        self._headers: list[dict[str, str]] = []
        self._serial = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)

    @property
    def headers(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._headers)

    def start(self) -> "FakeOpenAI":
        return super().start()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    # -- endpoints ----------------------------------------------------------------------------
    def _refused_key(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "")
            return _error(401, f"Incorrect API key provided: {given.removeprefix('Bearer ')}", "invalid_api_key")
        return None

    async def _models(self, request: web.Request) -> web.Response:
        refused = self._refused_key(request)
        if refused is not None:
            return refused
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake", **extra}
            for name, extra in self.models.items()]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        refused = self._refused_key(request)
        if refused is not None:
            return refused
        if is_summary_request(body):
            with self._lock:
                self.summary_requests.append(body)
            summary = f"Earlier: {len(body['messages'][-1]['content'])} characters of conversation."
            return web.json_response(self._whole(body, text(summary)))
        with self._lock:
            self._headers.append(dict(request.headers))
        script = self.take(body)
        model = body.get("model", "")
        if model not in self.models:
            return _error(404, f"The model `{model}` does not exist.", "model_not_found")
        problems = request_problems(body) if self.strict else []
        if problems:
            return _error(400, "; ".join(problems), "invalid_request_error")
        can = self.capabilities.get(model, ["tools"])
        if any(images_of(body)) and "vision" not in can:
            return _error(400, f"{model} is not a multimodal model", "invalid_request_error")
        if body.get("tools") and "tools" not in can:
            return _error(400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                               "to be set", "invalid_request_error")
        if script is None:
            return _error(500, "fake OpenAI server: no scripted response", "server_error")
        answer = script(body) if callable(script) else script
        if answer.status != 200:
            return _error(answer.status, answer.error or "error", "error",
                          getattr(answer, "headers", None) or {})
        if not body.get("stream"):
            return web.json_response(self._whole(body, answer))
        return await self._stream(request, body, answer)

    async def _stream(self, request: web.Request, body: dict[str, Any], answer: Response) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        model = body["model"]
        serial = self._next()

        async def send(payload: Any) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await response.write(f"data: {data}\n\n".encode())
            if answer.delay:
                await asyncio.sleep(answer.delay)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": f"chatcmpl-{serial}", "object": "chat.completion.chunk", "created": 1700000000,
                    "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}], "usage": None}

        await send(chunk({"role": "assistant", "content": ""}))
        for piece in _pieces(answer.thinking or "", answer.chunk_size):
            await send(chunk({"reasoning_content": piece}))
        for piece in _pieces(answer.content, answer.chunk_size):
            await send(chunk({"content": piece}))
        for delta in self._call_deltas(answer, serial):
            await send(chunk({"tool_calls": [delta]}))
        for data in answer.raw:
            await send(data)
        if answer.ending == "error":
            await send({"error": {"message": answer.error, "type": "server_error", "code": 500}})
        elif answer.ending == "cut":
            if request.transport is not None:
                request.transport.abort()
            return response
        elif answer.ending == "hang":
            assert self._release is not None
            await self._release.wait()
        if answer.ending != "error":
            await send(chunk({}, "tool_calls" if answer.calls else "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                await send({"id": f"chatcmpl-{serial}", "object": "chat.completion.chunk", "created": 1700000000,
                            "model": model, "choices": [], "usage": self._usage(body, answer)})
            await send("[DONE]")
        await response.write_eof()
        return response

    def _call_deltas(self, answer: Response, serial: int) -> list[dict[str, Any]]:
        """Each call's id and name first, then its arguments' JSON text a few characters at a time;
        two calls' argument pieces interleave (each delta says its index)."""
        heads, tails = [], []
        for index, (name, arguments) in enumerate(answer.calls):
            call_id = f"call_{serial}_{index}_x{len(self.call_ids)}"
            with self._lock:
                self.call_ids.append(call_id)
            text_args = arguments if isinstance(arguments, str) else json.dumps(arguments)
            heads.append({"index": index, "id": call_id, "type": "function",
                          "function": {"name": name, "arguments": ""}})
            tails.append([{"index": index, "function": {"arguments": piece}}
                          for piece in _pieces(text_args, ARGUMENT_PIECE)])
        deltas = []
        for index, head in enumerate(heads):
            deltas.append(head)
            if index % 2 == 1 or index == len(heads) - 1:  # a pair's pieces interleave; then the next pair
                pair = tails[index - (index % 2):index + 1]
                for row in range(max(len(t) for t in pair)):
                    deltas += [t[row] for t in pair if row < len(t)]
        return deltas

    def _next(self) -> int:
        with self._lock:
            self._serial += 1
            return self._serial

    def _usage(self, body: dict[str, Any], answer: Response) -> dict[str, int]:
        prompt, completion = prompt_tokens(body), max(len(answer.content) // 4, 1)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _whole(self, body: dict[str, Any], answer: Response) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.calls:
            message["tool_calls"] = [{"id": f"call_w{i}", "type": "function",
                                      "function": {"name": n, "arguments": json.dumps(a)}}
                                     for i, (n, a) in enumerate(answer.calls)]
        return {"id": f"chatcmpl-{self._next()}", "object": "chat.completion", "created": 1700000000,
                "model": body.get("model", ""), "choices": [{"index": 0, "message": message, "logprobs": None,
                                                             "finish_reason": "tool_calls" if answer.calls
                                                             else "stop"}],
                "usage": self._usage(body, answer)}


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
            429: "rate_limit_error"}.get(status, "server_error")
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}},
                             status=status, headers=headers or {})


def _pieces(value: str, size: int) -> list[str]:
    return [value[i:i + size] for i in range(0, len(value), max(size, 1))]

