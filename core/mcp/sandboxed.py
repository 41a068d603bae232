"""The stdio transport of a server that runs in a conversation's own sandbox ("sandbox": true).

The SDK's stdio client starts a child process of the bot; here the process is started in the
sandbox instead (Sandbox.attach: a Docker exec with stdin attached), and its standard streams are
bridged to the memory streams the SDK's session reads and writes, one JSON-RPC message a line.
What the process prints is the sandbox's, so it is read as untrusted: lines are bounded, and a
line that is not a message is handed to the session as an error, not trusted.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio
import mcp_types
from mcp.shared.message import SessionMessage

from ..sandbox import Sandbox
from .config import ServerConfig

log = logging.getLogger(__name__)
MAX_LINE = 8 * 1024 ** 2  # bytes of one message from the sandbox; more ends the session
MAX_OWED = 16  # requests of the sandbox's server the session may owe answers to; its output waits meanwhile
STDERR_KEPT = 2000  # characters of the server's standard error kept for the log


@asynccontextmanager
async def sandbox_stdio(sandbox: Sandbox, config: ServerConfig) -> AsyncIterator[tuple]:
    """(read stream, write stream) of the session with `config`'s command run in `sandbox`."""
    errors = bytearray()

    def on_stderr(data: bytes) -> None:
        errors.extend(data[:STDERR_KEPT])
        del errors[:-STDERR_KEPT]

    to_session, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, from_session = anyio.create_memory_object_stream[SessionMessage](0)
    # The SDK answers each request of the server in a task of its own, which waits until its answer is
    # written: a server that asks without reading the answers would pile tasks up without end. So the
    # sandbox's output is read only while few answers are owed (its pipe fills, and it waits).
    owed = 0
    answered = anyio.Event()
    argv = [config.command, *config.args]
    async with sandbox.attach(argv, env=dict(config.env), workdir=config.cwd or "/data",
                              on_stderr=on_stderr) as process:

        async def reader() -> None:
            # The sandbox may send a line a few bytes at a time: each piece is looked at once (a
            # newline is searched for in the new bytes only), never the whole line again.
            buffer = bytearray()
            async with to_session:
                while True:
                    data = await process.read()
                    if data is None:
                        break
                    searched = len(buffer)
                    buffer += data
                    start = 0
                    while (end := buffer.find(b"\n", searched)) >= 0:
                        line = bytes(buffer[start:end])
                        start = searched = end + 1
                        if line.strip():
                            await to_session.send(await asked(_parse(line)))
                    del buffer[:start]
                    if len(buffer) > MAX_LINE:
                        await to_session.send(ValueError(f"a message of more than {MAX_LINE} bytes"))
                        break
            if errors:  # the sandbox's words, flattened to one line: never lines that pass for the bot's own
                words = "".join(c if c.isprintable() else " " for c in errors.decode("utf-8", "replace"))
                log.info("MCP server %s in %s ended; its last words: %s", config.name, sandbox.name,
                         " ".join(words.split())[-500:])

        async def asked(message: SessionMessage | Exception) -> SessionMessage | Exception:
            """A request of the server's, once fewer than MAX_OWED answers are owed. (Its cancelling
            one does not count as an answer: that would let it ask without end; a server that cancels
            sixteen of its own requests only stops its own session.)"""
            nonlocal owed
            if isinstance(message, SessionMessage) and isinstance(message.message, mcp_types.JSONRPCRequest):
                while owed >= MAX_OWED:
                    await answered.wait()
                owed += 1
            return message

        async def writer() -> None:
            nonlocal owed, answered
            async with from_session:
                async for message in from_session:
                    text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.write(text.encode() + b"\n")
                    if isinstance(message.message, (mcp_types.JSONRPCResponse, mcp_types.JSONRPCError)):
                        owed = max(0, owed - 1)  # an answer to one of the server's requests: delivered
                        answered.set()
                        answered = anyio.Event()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reader)
            tasks.start_soon(writer)
            try:
                yield read_stream, write_stream
            finally:
                tasks.cancel_scope.cancel()


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc
