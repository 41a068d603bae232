"""A TCP proxy on 127.0.0.1 in front of the Docker engine's unix socket, that a test can cut.

Point DOCKER_HOST at `proxy.url` and the engine talks to Docker through it; `cut()` drops every
open connection and stops listening (Docker "goes away"), `restore()` listens again on the same port.
"""
from __future__ import annotations

import asyncio
import contextlib

from tests.fake_ollama import free_port

DOCKER_SOCKET = "/var/run/docker.sock"


class SocketProxy:
    def __init__(self, target: str = DOCKER_SOCKET) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> "SocketProxy":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}
