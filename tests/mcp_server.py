"""A real MCP server written with the official SDK, for the tests and the benchmark.

    python tests/mcp_server.py stdio NAME              # on standard I/O (a child process)
    python tests/mcp_server.py http NAME PORT          # Streamable HTTP at http://127.0.0.1:PORT/mcp

Self-contained (the SDK and the standard library only): the sandboxed test runs this very source
with `python3 -c` inside a conversation's sandbox, whose image has Python and the SDK.
"""
from __future__ import annotations

import asyncio
import base64
import os
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

# A 1x1 red PNG: what a picture-returning tool sends.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


def build(name: str) -> MCPServer:
    server = MCPServer(name, log_level="WARNING")

    @server.tool(description="Search the web for a query and return the top result.")
    def search(q: str) -> str:
        return f"{name} result for {q!r}"

    @server.tool(description="Add two whole numbers.")
    def add(a: int, b: int = 2) -> int:
        return a + b

    @server.tool(description="Always fails with the message given.")
    def fail(message: str) -> str:
        raise ToolError(message)

    @server.tool(description="Wait for a number of seconds, then answer.")
    async def hang(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "woke up"

    @server.tool(description="The names of the environment variables this server sees.")
    def env_keys() -> str:
        return " ".join(sorted(os.environ))

    @server.tool(description="The value of a header of the HTTP request that carried this call.")
    def header(name: str, ctx: Context) -> str:
        request = getattr(ctx.request_context, "request", None)
        return request.headers.get(name, "(none)") if request is not None else "(not HTTP)"

    @server.tool(description="A long text of n characters.")
    def long(n: int) -> str:
        return "".join(chr(ord("a") + i % 26) for i in range(n))

    @server.tool(description="A small picture.")
    def picture() -> list:
        from mcp.types import ImageContent, TextContent
        return [TextContent(type="text", text="here is a red dot"),
                ImageContent(type="image", data=base64.b64encode(PNG).decode(), mime_type="image/png")]

    @server.tool(description="List the files in a folder.")
    def files(folder: str = "/data") -> str:
        return "\n".join(sorted(os.listdir(folder)))

    @server.tool(description="Read a text file.")
    def read(path: str) -> str:
        with open(path) as f:
            return f.read()

    @server.tool(description="Add a tool named extra, and say so to the listening clients.")
    async def grow(ctx: Context) -> str:
        server.add_tool(lambda: "extra here", name="extra", description="A tool added at run time.")
        await ctx.notify_tools_changed()  # to 2026-era clients listening for it
        try:  # and to a 2025-era session (the initialize handshake), the notification itself
            await ctx.request_context.session.send_tool_list_changed()
        except Exception:  # noqa: BLE001 - a 2026-era session has no such notification
            pass
        return "grown"

    return server


def main() -> None:
    transport, name = sys.argv[1], sys.argv[2]
    server = build(name)
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[3]))


if __name__ == "__main__":
    main()
