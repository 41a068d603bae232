"""MCP tools as the model sees them: `server__tool` names, Ollama schemas, results as text.

Two servers may both have a `search` tool: the model sees `web__search` and `wiki__search`, and
the name leads back to the server and its own tool name. Ollama's request model keeps only a
small part of JSON Schema for parameters (type, description, enum, items, required), so each
property is folded into that shape here: `anyOf` of simple types becomes a list of types, and
what would be dropped (defaults, formats, an object's own fields) is said in the description.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

SEPARATOR = "__"
MAX_NAME = 64  # what OpenAI-style function names allow; Ollama's templates follow it
MAX_DESCRIPTION = 1024
MAX_ARGUMENTS_SHOWN = 500  # characters of a call's arguments in the audit log
MAX_PICTURES = 10  # pictures kept from one result: what one reply can attach (Discord's files per message)


@dataclass(frozen=True)
class McpTool:
    """One tool of one server, under the name the model calls it by."""

    server: str
    name: str  # the server's own name for it
    exposed: str  # server__tool
    description: str
    input_schema: dict[str, Any]

    @property
    def shown(self) -> str:
        """Its name where people read it (/help, /admin tools): as the model calls it, without the
        server's prefix, so only letters, digits, '_' and '-' (never a line, a link or a mention)."""
        return self.exposed.partition(SEPARATOR)[2]

    def schema(self) -> dict[str, Any]:
        """The tool as an Ollama (OpenAI-style) function."""
        return {"type": "function", "function": {"name": self.exposed, "description": self.description,
                                                 "parameters": parameters(self.input_schema)}}


@dataclass
class Picture:
    """An image a tool returned: for a vision model, and for the person as a file."""

    data: bytes = field(repr=False)
    mime_type: str

    @property
    def extension(self) -> str:
        return {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}.get(
            self.mime_type.lower(), "img")


@dataclass
class Result:
    """What a call came to, read from the server's CallToolResult."""

    text: str
    error: bool
    pictures: list[Picture] = field(default_factory=list)


def is_mcp_name(name: str) -> bool:
    """A name the model was offered for an MCP tool (server__tool)."""
    server, sep, tool = name.partition(SEPARATOR)
    return bool(server and sep and tool)


def exposed_names(server: str, tools: list[str]) -> dict[str, str]:
    """server__tool for each of the server's tool names, within what function names may hold
    (letters, digits, '_' and '-', at most 64): other characters become '_', and a name that
    becomes another's gets a number."""
    taken: set[str] = set()
    names = {}
    for tool in tools:
        base = f"{server}{SEPARATOR}{re.sub(r'[^A-Za-z0-9_-]', '_', tool)}"[:MAX_NAME]
        name, n = base, 2
        while name in taken:
            suffix = f"_{n}"
            name, n = base[:MAX_NAME - len(suffix)] + suffix, n + 1
        taken.add(name)
        names[tool] = name
    return names


def parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """An MCP inputSchema as the parameters Ollama keeps."""
    defs = {**(schema.get("$defs") or {}), **(schema.get("definitions") or {})}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    out: dict[str, Any] = {"type": "object",
                           "properties": {name: _property(_resolved(p, defs), defs) for name, p in properties.items()}}
    required = schema.get("required")
    if isinstance(required, list):
        out["required"] = [r for r in required if isinstance(r, str)]
    return out


def _resolved(schema: Any, defs: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """A property with its local $ref replaced by the definition it names."""
    if not isinstance(schema, dict):
        return {}
    ref = schema.get("$ref")
    if isinstance(ref, str) and depth < 5:
        target = defs.get(ref.rsplit("/", 1)[-1])
        if isinstance(target, dict):
            return _resolved({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, defs, depth + 1)
    return schema


def _types(schema: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    found: list[str] = []
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key) or []:
            for k in _types(_resolved(option, defs), defs):
                if k not in found:
                    found.append(k)
    return found


def _property(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    types = _types(schema, defs)
    if types:
        out["type"] = types[0] if len(types) == 1 else types
    notes = [str(schema.get("description") or schema.get("title") or "").strip()]
    enum = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if isinstance(enum, list):
        out["enum"] = enum
    if "items" in schema:
        out["items"] = _resolved(schema["items"], defs)
    nested = schema.get("properties")
    if isinstance(nested, dict) and nested:
        fields = {k: " or ".join(_types(_resolved(v, defs), defs)) or "any" for k, v in nested.items()}
        notes.append("An object with " + ", ".join(f"{k} ({t})" for k, t in fields.items()) + ".")
    for key, label in (("format", "format"), ("minimum", "at least"), ("maximum", "at most"),
                       ("pattern", "matching")):
        if key in schema:
            notes.append(f"{label} {schema[key]}")
    if "default" in schema and schema["default"] is not None:
        notes.append(f"default: {json.dumps(schema['default'])}")
    description = "; ".join(n for n in notes if n)
    if description:
        out["description"] = description[:MAX_DESCRIPTION]
    return out


def read_result(result: Any) -> Result:
    """The text the model reads from a CallToolResult, and the pictures in it."""
    texts: list[str] = []
    pictures: list[Picture] = []
    unkept = 0
    for part in result.content or []:
        kind = getattr(part, "type", "")
        if kind == "text":
            texts.append(part.text)
        elif kind == "image" and len(pictures) >= MAX_PICTURES:
            unkept += 1  # never decoded, saved or shown: nobody could be shown it
        elif kind == "image":
            try:
                pictures.append(Picture(base64.b64decode(part.data, validate=True), part.mime_type))
                texts.append(f"[picture {len(pictures)}: {part.mime_type}]")
            except (binascii.Error, ValueError):
                texts.append("[a picture that was not valid base64]")
        elif kind == "audio":
            texts.append(f"[audio ({part.mime_type}) not shown]")
        elif kind == "resource_link":
            texts.append(f"[link: {part.uri}" + (f" ({part.name})" if getattr(part, "name", "") else "") + "]")
        elif kind == "resource":
            resource = part.resource
            text = getattr(resource, "text", None)
            texts.append(text if text is not None else f"[binary resource {resource.uri} not shown]")
    structured = getattr(result, "structured_content", None)
    if structured is not None and not any(t.strip() for t in texts):
        texts.append(json.dumps(structured, ensure_ascii=False))
    if unkept:
        texts.append(f"[{unkept} more pictures not kept: at most {MAX_PICTURES} from one call]")
    return Result("\n".join(texts), bool(getattr(result, "is_error", False)), pictures)


def call_text(exposed: str, arguments: dict[str, Any]) -> str:
    """How the audit and the log name a call: `server__tool {"q": "…"}`, cut to a sane length."""
    shown = json.dumps(arguments, ensure_ascii=False, separators=(", ", ": "))
    if len(shown) > MAX_ARGUMENTS_SHOWN:
        shown = shown[:MAX_ARGUMENTS_SHOWN - 1] + "…"
    return f"{exposed} {shown}"


def call_label(exposed: str, arguments: dict[str, Any], width: int = 60) -> str:
    """How the progress line shows a call: search__web("weather in Paris"), the values in order."""
    values = ", ".join(json.dumps(v, ensure_ascii=False) for v in arguments.values())
    flat = " ".join(values.split())
    if len(flat) > width:
        flat = flat[:width - 1] + "…"
    return f"{exposed}({flat})"
