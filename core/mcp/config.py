"""MCP_CONFIG: the operator's MCP servers, in the `mcpServers` JSON that Claude Desktop, Cursor and
VS Code use, read once at start. A bad file stops start-up with one line naming the entry.

    {"mcpServers": {
        "search": {"url": "https://search.example/mcp", "headers": {"Authorization": "Bearer ${SEARCH_KEY}"}},
        "files":  {"command": "python3", "args": ["-m", "files_server"], "sandbox": true,
                   "tools": {"exclude": ["delete"]}, "timeout": 20}}}

`${NAME}` in a header, an env value, an argument or a URL is taken from the bot's environment, so
secrets can stay in .env; a name that is not set there is an error.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..config import ConfigError

DEFAULT_TIMEOUT = 60.0  # seconds a call may take before it ends as timed out
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,23}$")  # no "_": the model sees server__tool
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Keys other clients write into the same file, which mean nothing here.
FOREIGN_KEYS = frozenset({"type", "description", "autoApprove", "alwaysAllow", "disabled", "transportType",
                          "envFile", "icon"})
KEYS = frozenset({"url", "headers", "command", "args", "env", "cwd", "tools", "timeout", "sandbox"})


@dataclass(frozen=True)
class ServerConfig:
    """One MCP server as the file describes it (hashable: it rides in the frozen Settings)."""

    name: str
    url: str = ""  # Streamable HTTP
    headers: tuple[tuple[str, str], ...] = ()
    command: str = ""  # stdio
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    include: frozenset[str] | None = None  # None: every tool the server lists
    exclude: frozenset[str] = frozenset()
    timeout: float = DEFAULT_TIMEOUT
    sandbox: bool = False  # stdio only: run in the conversation's own sandbox, one per conversation

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"

    def offers(self, tool: str) -> bool:
        """Whether the file lets the model see this tool of the server."""
        return (self.include is None or tool in self.include) and tool not in self.exclude

    def __repr__(self) -> str:  # never the headers or the env: they hold secrets
        where = self.url.split("?")[0] if self.url else self.command
        return f"ServerConfig({self.name!r}, {self.transport}, {where!r}{', sandbox' if self.sandbox else ''})"


def load(path: str, environ: Mapping[str, str] | None = None) -> tuple[ServerConfig, ...]:
    """The servers of the file at `path`; ConfigError with one line when it cannot be used."""
    where = f"MCP_CONFIG ({path})"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    return parse(data, where, os.environ if environ is None else environ)


def parse(data: Any, where: str, environ: Mapping[str, str]) -> tuple[ServerConfig, ...]:
    servers = data.get("mcpServers", data.get("servers")) if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(f'{where} must hold an object {{"mcpServers": {{"name": {{...}}, ...}}}}')
    parsed = []
    for name, entry in servers.items():
        if isinstance(entry, dict) and entry.get("disabled") is True:
            continue
        parsed.append(_server(str(name), entry, f"{where}: server {name!r}", environ))
    return tuple(parsed)


def _server(name: str, entry: Any, where: str, environ: Mapping[str, str]) -> ServerConfig:
    if not NAME.match(name):
        raise ConfigError(f"{where}: a name is 1-24 letters, digits or '-' (no '_': tools are shown as "
                          f"name__tool)")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object with a \"url\" or a \"command\"")
    unknown = sorted(set(entry) - KEYS - FOREIGN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(KEYS))})")
    if entry.get("type") == "sse" or str(entry.get("transportType", "")) == "sse":
        raise ConfigError(f"{where}: SSE is the legacy transport; give the server's Streamable HTTP URL (…/mcp)")
    url, command = entry.get("url"), entry.get("command")
    if bool(url) == bool(command):
        raise ConfigError(f"{where} needs either \"url\" (Streamable HTTP) or \"command\" (stdio), not "
                          f"{'both' if url else 'neither'}")
    expand = lambda text, key: _expand(text, f"{where}: {key}", environ)  # noqa: E731
    timeout = entry.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise ConfigError(f"{where}: \"timeout\" must be a number of seconds between 0 and 3600, got {timeout!r}")
    sandbox = entry.get("sandbox", False)
    if not isinstance(sandbox, bool):
        raise ConfigError(f"{where}: \"sandbox\" must be true or false")
    include, exclude = _tools(entry.get("tools"), where)
    common = dict(name=name, include=include, exclude=exclude, timeout=float(timeout), sandbox=sandbox)
    if url:
        if not isinstance(url, str) or not re.match(r"^https?://\S+$", url.strip()):
            raise ConfigError(f"{where}: \"url\" must start with http:// or https://")
        if sandbox:
            raise ConfigError(f"{where}: \"sandbox\" is for stdio servers (a \"command\"), not URLs")
        for key in ("command", "args", "env", "cwd"):
            if key in entry:
                raise ConfigError(f"{where}: {key!r} is for stdio servers; this one has a \"url\"")
        return ServerConfig(url=expand(url.strip(), "url"), headers=_pairs(entry.get("headers"), where, "headers",
                                                                            expand), **common)
    if not isinstance(command, str) or not command.strip():
        raise ConfigError(f"{where}: \"command\" must be a non-empty string")
    if "headers" in entry:
        raise ConfigError(f"{where}: \"headers\" are for URL servers; this one has a \"command\"")
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{where}: \"args\" must be a list of strings")
    cwd = entry.get("cwd", "")
    if not isinstance(cwd, str):
        raise ConfigError(f"{where}: \"cwd\" must be a string")
    return ServerConfig(command=expand(command.strip(), "command"), args=tuple(expand(a, "args") for a in args),
                        env=_pairs(entry.get("env"), where, "env", expand), cwd=cwd, **common)


def _pairs(value: Any, where: str, key: str, expand: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{where}: \"{key}\" must be an object of strings, like {{\"NAME\": \"value\"}}")
    return tuple((k, expand(v, f"{key}.{k}")) for k, v in value.items())


def _tools(value: Any, where: str) -> tuple[frozenset[str] | None, frozenset[str]]:
    if value is None:
        return None, frozenset()
    if not isinstance(value, dict) or set(value) - {"include", "exclude"}:
        raise ConfigError(f"{where}: \"tools\" must be an object with \"include\" and/or \"exclude\" lists")
    found = []
    for key in ("include", "exclude"):
        names = value.get(key)
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise ConfigError(f"{where}: \"tools\".\"{key}\" must be a list of tool names")
        found.append(None if names is None else frozenset(names))
    return found[0], found[1] or frozenset()


def _expand(text: str, where: str, environ: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{where} uses ${{{name}}}, which is not set in the environment or .env")
        return environ[name]
    return VARIABLE.sub(value, text)
