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

import json
from typing import Any

import ollama
from pydantic import model_validator

ARGUMENTS_EXAMPLE = '{"command": "ls -la"}'


class TolerantChatResponse(ollama.ChatResponse):
    """A chat chunk whose malformed tool calls are kept, each with what was wrong (by index)."""

    malformed: dict[int, str] = {}

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


class ModelClient(ollama.AsyncClient):
    """ollama.AsyncClient whose chat chunks are TolerantChatResponse."""

    async def _request(self, cls: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if cls is ollama.ChatResponse:
            cls = TolerantChatResponse
        return await super()._request(cls, *args, **kwargs)
