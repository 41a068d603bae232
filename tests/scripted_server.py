"""What the test suite's fake HTTP servers share (tests/fake_ollama.py, tests/fake_openai.py): a real
aiohttp server on 127.0.0.1, on a loop and thread of its own, answering from a queue of scripts.

A subclass names its routes (`routes`) and reads the next script with `take(body)`, which also
records the request; `release()` lets every stream scripted to hang finish.
"""
from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Generic, TypeVar

from aiohttp import web

S = TypeVar("S")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ScriptedServer(Generic[S]):
    """`script()` queues answers; `requests` records what clients sent (bodies); `fallback` answers
    when nothing is scripted."""

    name = "scripted server"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.fallback: S | None = None
        self._requests: list[dict[str, Any]] = []
        self._queue: list[S] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None

    def routes(self, app: web.Application) -> None:
        """Add the server's endpoints to `app`."""
        raise NotImplementedError

    # -- scripting ----------------------------------------------------------------------------
    def script(self, *responses: S) -> None:
        with self._lock:
            self._queue.extend(responses)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def take(self, body: dict[str, Any]) -> S | None:
        """Record a request and hand back the script that answers it (the fallback when none is queued)."""
        with self._lock:
            self._requests.append(body)
            return self._queue.pop(0) if self._queue else self.fallback

    def release(self) -> None:
        """Let every hanging stream finish (streams scripted to hang later hang again)."""
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._rotate_release)

    def _rotate_release(self) -> None:
        assert self._release is not None
        self._release.set()
        self._release = asyncio.Event()

    async def hang(self) -> None:
        """Wait until release() (a stream scripted to hang)."""
        assert self._release is not None
        await self._release.wait()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Any:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._release = asyncio.Event()
            app = web.Application()
            self.routes(app)
            self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)  # no log lines after a test ends
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"the {self.name} did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self.release()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
