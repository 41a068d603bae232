"""MCP_CONFIG (issue 20, item 1): the mcpServers file other clients use, read once at start; a bad
file stops start-up with one line naming the entry."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, Settings
from core.mcp.config import ServerConfig
from core.mcp.tools import exposed_names, parameters

ROOT = Path(__file__).resolve().parents[1]


def settings_with(tmp_path: Path, data: object, **env: str) -> Settings:
    path = tmp_path / "mcp.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return Settings.from_env({"MCP_CONFIG": str(path), **env})


def test_both_transports_and_their_options_are_read(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, {"mcpServers": {
        "search": {"url": "https://search.example/mcp", "headers": {"Authorization": "Bearer ${SEARCH_KEY}"},
                   "timeout": 15, "tools": {"exclude": ["admin"]}},
        "files": {"command": "python3", "args": ["-m", "files"], "env": {"ROOT": "/data"}, "sandbox": True,
                  "tools": {"include": ["read", "list"]}},
        "old": {"command": "x", "disabled": True},
    }}, SEARCH_KEY="s3cret")
    search, files = settings.mcp_servers
    assert (search.transport, search.url, dict(search.headers), search.timeout) == (
        "http", "https://search.example/mcp", {"Authorization": "Bearer s3cret"}, 15.0)
    assert search.offers("query") and not search.offers("admin")
    assert (files.transport, files.command, files.args, dict(files.env), files.sandbox) == (
        "stdio", "python3", ("-m", "files"), {"ROOT": "/data"}, True)
    assert files.offers("read") and not files.offers("write")
    assert "s3cret" not in repr(settings)  # secrets never in a log line of the settings


@pytest.mark.parametrize("servers, line", [
    ({"web": {"url": "ftp://x"}}, "server 'web': \"url\" must start with http:// or https://"),
    ({"web": {}}, "server 'web' needs either \"url\" (Streamable HTTP) or \"command\" (stdio), not neither"),
    ({"web": {"url": "http://a/mcp", "command": "x"}}, "not both"),
    ({"web": {"command": "x", "timout": 3}}, "server 'web': unknown key 'timout'"),
    ({"web": {"command": "x", "timeout": -1}}, "server 'web': \"timeout\" must be a number of seconds"),
    ({"web": {"command": "x", "args": "-v"}}, "server 'web': \"args\" must be a list of strings"),
    ({"my_web": {"command": "x"}}, "server 'my_web': a name is 1-24 letters, digits or '-'"),
    ({"web": {"url": "http://a/mcp", "sandbox": True}}, "\"sandbox\" is for stdio servers"),
    ({"web": {"url": "http://a/sse", "type": "sse"}}, "SSE is the legacy transport"),
    ({"web": {"command": "x", "env": {"K": "${NOT_SET_ANYWHERE}"}}}, "env.K uses ${NOT_SET_ANYWHERE}, which is not set"),
    ({"web": {"command": "x", "tools": {"include": "read"}}}, "\"tools\".\"include\" must be a list"),
])
def test_a_bad_entry_is_one_line_naming_it(tmp_path: Path, servers: dict, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_with(tmp_path, {"mcpServers": servers})
    message = str(caught.value)
    assert line in message and "\n" not in message and message.startswith("MCP_CONFIG (")


@pytest.mark.parametrize("content, line", [
    ("{not json", "is not valid JSON: Expecting property name enclosed in double quotes at line 1"),
    ('{"servers": []}', 'must hold an object {"mcpServers"'),
])
def test_a_bad_file_is_one_line(tmp_path: Path, content: str, line: str) -> None:
    with pytest.raises(ConfigError, match=line.replace("(", r"\(").replace("{", r"\{")):
        settings_with(tmp_path, content)


def test_a_bad_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"wiki": {"url": "http://wiki/mcp", "headers": {"X": 1}}}}))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "MCP_CONFIG": str(path), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "bot.discord_bot", "--check"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"Bad configuration: MCP_CONFIG ({path}): server 'wiki': \"headers\" must be an object of strings, "
        'like {"NAME": "value"}']


def test_tool_names_fit_and_never_collide() -> None:
    names = exposed_names("web", ["search", "search!", "get.page", "x" * 80])
    assert names["search"] == "web__search" and names["search!"] == "web__search_"
    assert names["get.page"] == "web__get_page"
    assert len(names["x" * 80]) == 64 and len(set(names.values())) == 4
    assert set(exposed_names("web", ["a_", "a?"]).values()) == {"web__a_", "web__a__2"}


def test_schemas_keep_what_ollama_drops_in_the_description() -> None:
    schema = {"type": "object", "required": ["q"], "$defs": {"Mode": {"enum": ["fast", "deep"], "type": "string"}},
              "properties": {"q": {"type": "string", "description": "The query"},
                             "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": 5},
                             "mode": {"$ref": "#/$defs/Mode"},
                             "where": {"type": "object", "properties": {"lat": {"type": "number"}}}}}
    out = parameters(schema)
    assert out["required"] == ["q"]
    assert out["properties"]["q"] == {"type": "string", "description": "The query"}
    assert out["properties"]["limit"] == {"type": ["integer", "null"], "description": "default: 5"}
    assert out["properties"]["mode"] == {"type": "string", "enum": ["fast", "deep"]}
    assert out["properties"]["where"]["description"] == "An object with lat (number)."


def test_the_server_config_repr_holds_no_secret() -> None:
    config = ServerConfig("web", url="https://x/mcp?key=abc", headers=(("Authorization", "Bearer t"),))
    assert "abc" not in repr(config) and "Bearer" not in repr(config)
