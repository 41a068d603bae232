"""Real MCP servers for the tests and the benchmark: tests/mcp_server.py run over Streamable HTTP
(a child process on 127.0.0.1) or over stdio, and the MCP_CONFIG files that name them."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core import Settings
from core.mcp.config import load
from tests.scripted_server import free_port

SERVER = Path(__file__).with_name("mcp_server.py")
SOURCE = SERVER.read_text()


class HttpServer:
    """tests/mcp_server.py over Streamable HTTP, as a child process that can be killed and started again."""

    def __init__(self, name: str = "web", port: int | None = None, script: Path = SERVER) -> None:
        self.name = name
        self.port = port or free_port()
        self.script = script
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> "HttpServer":
        self.process = subprocess.Popen([sys.executable, str(self.script), "http", self.name, str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the MCP test server exited with {self.process.returncode}")
                time.sleep(0.1)
        raise RuntimeError("the MCP test server did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> "HttpServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_entry(server: HttpServer, **extra: Any) -> dict[str, Any]:
    return {"url": server.url, **extra}


def stdio_entry(name: str, **extra: Any) -> dict[str, Any]:
    """The server as the bot's own child process (this interpreter, which has the SDK)."""
    return {"command": sys.executable, "args": [str(SERVER), "stdio", name], **extra}


def sandboxed_entry(name: str, **extra: Any) -> dict[str, Any]:
    """The server run in the conversation's sandbox by the image's python3 (its source passed whole)."""
    return {"command": "python3", "args": ["-c", SOURCE, "stdio", name], "sandbox": True, **extra}


def with_servers(settings: Settings, folder: Path, servers: dict[str, dict[str, Any]]) -> Settings:
    """`settings` with an MCP_CONFIG file holding `servers`, read the way start-up reads it."""
    path = folder / "mcp.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return settings.replace(mcp_config=str(path), mcp_servers=load(str(path), {}))
