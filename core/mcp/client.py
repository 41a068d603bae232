"""One MCP session per server, owned by one task: opened, listed, watched, reopened and closed there.

The SDK's sessions live in anyio task groups and cancel scopes, which must be left by the task
that entered them (python-sdk #79, #577, #922, #1156). So each `Connection` has a task of its own
that enters the `Client`, lists the tools, listens for the server's list-changed events, probes
it now and then, and, when the session drops, leaves it and opens a new one with backoff. Calls
come from the turns' own tasks and only send requests over the session that task holds open: a
request waits on its own response, never on the owner, and a turn that is stopped cancels just
its request (the SDK tells the server).

A sandboxed server's connection (one per conversation) is lazy: it opens on first use and, once
down, opens again only when a call asks, so it never restarts a sandbox nobody uses.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator, Callable

import anyio
import httpx2
import mcp_types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from ..errors import EngineError
from .config import ServerConfig
from .tools import McpTool, exposed_names

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0  # opening a session and listing its tools
HEALTH_INTERVAL = 30.0  # an idle shared session is probed (and its tools listed again) this often
BACKOFF_FIRST, BACKOFF_MOST = 1.0, 60.0  # seconds between attempts to reopen a session that failed
MAX_TOOLS = 128  # tools taken from one server: their schemas ride on every request
RELIST_GAP = 2.0  # seconds at least between two listings: a flood of list-changed events is listed a few times
CLIENT_INFO = mcp_types.Implementation(name="llmbot", version="1")

# How a session says it is gone: the transport dropped or could not be reached.
DROPPED: tuple[type[BaseException], ...] = (httpx2.HTTPError, OSError, EOFError, SubscriptionLost,
                                            anyio.ClosedResourceError, anyio.BrokenResourceError)


class McpUnavailable(EngineError):
    """An MCP server cannot be reached or dropped the call: a tool error the model reads, and one
    incident per server for operators (its `part`)."""

    def __init__(self, server: str, detail: str) -> None:
        super().__init__(f"MCP server {server!r} is unavailable: {detail}",
                         user=f"the tool server {server!r} is unavailable right now ({detail})")
        self.part = f"MCP server {server}"


class McpRefused(EngineError):
    """The server answered the call with a protocol error (unknown tool, bad arguments…)."""


def describe(exc: BaseException) -> str:
    """One line for why a session failed, from the innermost cause (anyio groups wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.error.message
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, httpx2.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


@asynccontextmanager
async def _http(url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
    """Streamable HTTP with the file's headers on every request (the SDK's default timeouts); the HTTP
    client closes with the session (the SDK leaves one it was handed open)."""
    async with create_mcp_http_client(headers=headers or None) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams


class Connection:
    """One server's session (or, sandboxed, one conversation's), as the hub and the calls see it.

    `state` is "starting", "connecting", "up", "down" or "closed"; `detail` says why it is down;
    `tools` are the server's tools the file lets the model see, by their exposed names.
    """

    def __init__(self, config: ServerConfig, transport: Callable[[], Any] | None = None, *, label: str = "",
                 eager: bool = True, on_state: Callable[["Connection"], None] | None = None,
                 mode: str = "auto") -> None:
        self.config = config
        self.label = label or config.name
        self.eager = eager  # reopen with backoff, probe while idle; a sandboxed one waits for a call instead
        self.state = "starting"
        self.detail = ""
        self.since = time.time()
        self.tools: dict[str, McpTool] = {}
        self.listed = asyncio.Event()  # the tools were listed at least once
        self._transport = transport  # makes a fresh transport per session; None: from the config
        self._on_state = on_state
        self._mode = mode  # the SDK's: "auto" finds the server's era ("legacy": the 2025 handshake only)
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._relist = False
        self._listed_at = 0.0  # when the tools were last listed (time.monotonic)
        self._broken: str | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"<Connection {self.label} {self.state}>"

    # -- what the hub and the calls use ----------------------------------------------------
    def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._own(), name=f"mcp-{self.label}")

    async def call(self, tool: McpTool, arguments: dict[str, Any]) -> Any:
        """The server's CallToolResult. McpUnavailable when the session cannot be had or drops;
        McpRefused when the server answers with a protocol error. The caller bounds the time."""
        client = await self.session()
        try:
            return await client.call_tool(tool.name, arguments)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                self.broken("the connection closed during a call")
                raise McpUnavailable(self.config.name, "the connection closed during the call") from exc
            raise McpRefused(f"the server refused the call: {exc.error.message}") from exc
        except DROPPED as exc:
            self.broken(describe(exc))
            raise McpUnavailable(self.config.name, describe(exc)) from exc

    async def session(self) -> Client:
        """The open session; a session that is down is opened again first (once, now)."""
        self.reopen()
        while self.state in ("starting", "connecting"):
            await self._changed.wait()
        if self.state != "up" or self._client is None:
            raise McpUnavailable(self.config.name, self.detail or self.state)
        return self._client

    def reopen(self) -> None:
        """Open a session that is down again now, without waiting for a call or the backoff."""
        self.start()
        if self.state == "down":
            self._set("connecting", self.detail)
            self._wake.set()

    async def settled(self) -> None:
        """Return once the tools were listed, or the session failed to open."""
        while not self.listed.is_set() and self.state not in ("down", "closed"):
            await self._changed.wait()

    def broken(self, why: str) -> None:
        """A call saw the session drop: the owner opens a new one."""
        if self.state == "up" and self._broken is None:
            self._broken = why
            self._wake.set()

    async def close(self) -> None:
        """End the session (in its own task) and the task."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._set("closed", "")

    # -- the owner task --------------------------------------------------------------------
    def _set(self, state: str, detail: str = "") -> None:
        if state != self.state:
            self.since = time.time()
        self.state, self.detail = state, detail
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self._on_state is not None:
            self._on_state(self)

    async def _own(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            self._broken = None
            was_up = False
            try:
                async with AsyncExitStack() as stack:
                    async with asyncio.timeout(max(CONNECT_TIMEOUT, self.config.timeout)):
                        client = await stack.enter_async_context(self._new_client())
                        await self._list(client)
                    self._client, was_up, failures = client, True, 0
                    self._set("up")
                    log.info("MCP server %s: connected (%s), %d tools", self.label, client.protocol_version,
                             len(self.tools))
                    why = await self._watch(client, stack)
            except BaseException as exc:  # noqa: BLE001 - anyio wraps the transport's failures in groups
                self._client = None
                task = asyncio.current_task()
                # Closing, or the process ending: go. Anything else (a transport's failure, which anyio may
                # deliver as a cancellation of this task's scope) is a session that dropped.
                if self._closing or (task is not None and task.cancelling()) \
                        or isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                why = describe(exc)
            self._client = None
            self._set("down", why)
            log.warning("MCP server %s: %s %s", self.label, "dropped:" if was_up else "cannot connect:", why)
            if not self.eager:
                await self._wake.wait()  # a call asks for it again (session() set "connecting")
                continue
            if not was_up:
                failures += 1
            delay = 0.0 if was_up else min(BACKOFF_MOST, BACKOFF_FIRST * 2 ** (failures - 1))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            if self.state == "down":
                self._set("connecting", why)

    def _new_client(self) -> Client:
        config = self.config
        if self._transport is not None:
            server: Any = self._transport()
        elif config.url:
            server = _http(config.url, dict(config.headers))
        else:
            from mcp import StdioServerParameters
            server = StdioServerParameters(command=config.command, args=list(config.args), env=dict(config.env),
                                           cwd=config.cwd or None)
        return Client(server, cache=None, client_info=CLIENT_INFO, message_handler=self._on_message, mode=self._mode)

    async def _list(self, client: Client) -> None:
        """The server's tools (every page), those the file allows, by their exposed names."""
        listed: list[Any] = []
        cursor: str | None = None
        for _ in range(20):
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if not cursor or len(listed) >= MAX_TOOLS:
                break
        allowed = [t for t in listed if self.config.offers(t.name)][:MAX_TOOLS]
        names = exposed_names(self.config.name, [t.name for t in allowed])
        tools = {names[t.name]: McpTool(self.config.name, t.name, names[t.name], (t.description or "").strip()[:1024],
                                        t.input_schema or {"type": "object"}) for t in allowed}
        if self.listed.is_set() and set(tools) != set(self.tools):
            log.info("MCP server %s: tools now %s", self.label, ", ".join(sorted(tools)) or "none")
        self.tools = tools
        self._listed_at = time.monotonic()
        self.listed.set()

    async def _watch(self, client: Client, stack: AsyncExitStack) -> str:
        """Serve the open session until it should be opened again; why."""
        events: asyncio.Task[None] | None = None
        if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    subscription = await stack.enter_async_context(client.listen(tools_list_changed=True))
                events = asyncio.create_task(self._events(subscription), name=f"mcp-{self.label}-events")
            except (ListenNotSupportedError, MCPError, SubscriptionLost, TimeoutError) as exc:
                log.debug("MCP server %s: no list-changed events (%s)", self.label, describe(exc))
        try:
            while True:
                try:
                    async with asyncio.timeout(HEALTH_INTERVAL if self.eager else None):
                        await self._wake.wait()
                except TimeoutError:
                    self._relist = True  # the probe: list the tools again (a dead server fails it)
                self._wake.clear()
                if self._broken is not None:
                    return self._broken
                if self._relist:
                    await self._gap()  # changes said meanwhile are listed together, after it
                    if self._broken is not None:
                        return self._broken
                    self._relist = False
                    async with asyncio.timeout(max(CONNECT_TIMEOUT, self.config.timeout)):
                        await self._list(client)
        finally:
            if events is not None:
                events.cancel()
                await asyncio.gather(events, return_exceptions=True)

    async def _gap(self) -> None:
        """Wait until RELIST_GAP has passed since the last listing (a drop still ends the wait)."""
        deadline = self._listed_at + RELIST_GAP
        while self._broken is None and (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    await self._wake.wait()
            except TimeoutError:
                return
            self._wake.clear()

    async def _events(self, subscription: Any) -> None:
        """A 2026-era session's change events: the tools are listed again; a lost stream is a drop."""
        try:
            async for _ in subscription:
                self._relist = True
                self._wake.set()
            why = "the server closed its event stream"
        except SubscriptionLost:
            why = "the connection dropped"
        if self._broken is None:
            self._broken = why
            self._wake.set()

    async def _on_message(self, message: Any) -> None:
        """Earlier sessions' notifications: a list change has the tools listed again."""
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._relist = True
            self._wake.set()
