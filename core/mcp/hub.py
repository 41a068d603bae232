"""Every MCP server of the deployment: their connections, the tools offered in a conversation, the calls.

Shared servers (a URL, or a command run as the bot's child process) have one connection each,
opened at start. A sandboxed server (`"sandbox": true`) has one per conversation, run in that
conversation's own sandbox, opened on first use and let go (task and all) once it goes down, as it
does when its sandbox is reaped, removed or forgotten; its tools come from that instance only, since
what runs in a person's sandbox is theirs to change. In chat-only mode (TOOLS=off) there are no
sandboxes: sandboxed servers are not offered, and /admin tools says why; shared servers work as
anywhere else (they are the operator's own tools, not sandboxes).

A call is bounded by its server's timeout, and whatever goes wrong (the server is down, drops the
call, answers with an error) comes back as a `Called` the model reads: one server failing never
ends the turn, and the other tools keep working. Outages open one incident per server.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import EngineError
from .config import ServerConfig
from .tools import McpTool, Result, read_result

if TYPE_CHECKING:
    from ..config import Settings
    from ..incidents import Incidents
    from ..sandbox import Provider
    from .client import Connection

log = logging.getLogger(__name__)
FIRST_LISTING_WAIT = 10.0  # a turn waits this long, at most, for a shared server's first list of tools
SANDBOX_LISTING_WAIT = 60.0  # and for a sandboxed server started in its conversation's sandbox
NO_SANDBOX = "needs the Docker sandbox, which chat-only mode (TOOLS=off) does not have"


@dataclass
class Called:
    """What one MCP call came to."""

    result: Result | None = None  # the server's answer (its `error` set for an error result)
    problem: str = ""  # why there is no answer: the server unavailable, or refused the call
    timed_out: bool = False
    duration: float = 0.0


@dataclass
class ServerStatus:
    """One server as /admin tools shows it."""

    name: str
    transport: str  # "http" or "stdio"
    sandbox: bool
    state: str  # up, down, starting, connecting; "per conversation" / "unavailable" for sandboxed ones
    detail: str = ""
    since: float = 0.0
    tools: list[str] = field(default_factory=list)


class McpHub:
    """Built once by the Runtime; its connections' tasks run on the loop that first uses them."""

    def __init__(self, settings: "Settings", incidents: "Incidents", sandboxes: Callable[[], "Provider"]) -> None:
        self.settings = settings
        self.incidents = incidents
        self.sandboxes = sandboxes  # the runtime's provider now (tests may replace it)
        self.configs: dict[str, ServerConfig] = {c.name: c for c in settings.mcp_servers}
        self._shared: dict[str, Connection] = {}
        self._boxed: dict[tuple[str, str, str], Connection] = {}
        self._told: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()  # sandboxed connections being let go

    @property
    def names(self) -> list[str]:
        return list(self.configs)

    def usable(self, config: ServerConfig) -> bool:
        """A sandboxed server needs sandboxes (not in chat-only mode)."""
        return not config.sandbox or self.settings.tools

    def start(self) -> None:
        """Open the shared servers' sessions (each in its own task); say once what cannot run here."""
        for config in self.configs.values():
            if not self.usable(config):
                if config.name not in self._told:
                    self._told.add(config.name)
                    log.warning("MCP server %s is not offered: it %s", config.name, NO_SANDBOX)
            elif not config.sandbox:
                self._connection(config)

    async def close(self) -> None:
        connections = [*self._shared.values(), *self._boxed.values()]
        self._shared.clear()
        self._boxed.clear()
        await asyncio.gather(*(c.close() for c in connections), *self._closing, return_exceptions=True)

    async def forget(self, user: str, session: str) -> None:
        """The conversation's sandbox is going: end its sandboxed servers' sessions."""
        gone = [key for key in self._boxed if key[1:] == (user, session)]
        await asyncio.gather(*(self._boxed.pop(key).close() for key in gone), return_exceptions=True)

    # -- what a turn is offered ---------------------------------------------------------------
    async def offered(self, user: str, session: str, off: frozenset[str] = frozenset()) -> dict[str, McpTool]:
        """The tools the model may call in this conversation, by exposed name: every server's not
        turned off here (`off`), whose tools are known. A shared server still making its first
        connection is waited for a little; a sandboxed one is started in the conversation's sandbox."""
        if not self.configs:
            return {}
        self.start()
        wanted = [c for c in self.configs.values() if c.name not in off and self.usable(c)]
        connections = [self._connection(c, user, session) for c in wanted]  # a sandboxed one down was let go: anew
        pending = [c for c in connections if not c.listed.is_set() and c.state != "down"]
        if pending:
            wait = SANDBOX_LISTING_WAIT if any(not c.eager for c in pending) else FIRST_LISTING_WAIT
            try:
                await asyncio.wait_for(asyncio.gather(*(c.settled() for c in pending)), wait)
            except TimeoutError:
                log.info("MCP servers not listed in time for a turn: %s", ", ".join(c.label for c in pending
                                                                                   if not c.listed.is_set()))
        tools: dict[str, McpTool] = {}
        for connection in connections:
            tools.update(connection.tools)
        return tools

    def _connection(self, config: ServerConfig, user: str = "", session: str = "") -> "Connection":
        # The SDK is loaded only where a server is configured: it takes a good part of a second.
        from .client import Connection
        from .sandboxed import sandbox_stdio
        if not config.sandbox:
            connection = self._shared.get(config.name)
            if connection is None:
                connection = self._shared[config.name] = Connection(config, on_state=self._state)
            connection.start()
            return connection
        key = (config.name, user, session)
        connection = self._boxed.get(key)
        if connection is None:
            sandbox = self.sandboxes().get(user, session)
            connection = Connection(config, lambda: sandbox_stdio(sandbox, config), label=f"{config.name}@{sandbox.name}",
                                    eager=False, on_state=self._state)
            self._boxed[key] = connection
        connection.start()
        return connection

    def _state(self, connection: "Connection") -> None:
        """A shared server's outages as incidents, one per server (the first failure logged in full, the
        recovery too); a sandboxed one failing in somebody's sandbox is theirs, not the operators'. A
        sandboxed session that went down (its sandbox reaped, removed or forgotten, or its process
        ended) is let go with its task: the conversation's next turn starts a new one."""
        from .client import McpUnavailable
        if not connection.eager:
            if connection.state == "down":
                self._let_go(connection)
            return
        part = f"MCP server {connection.config.name}"
        if connection.state == "up":
            self.incidents.succeeded(part)
        elif connection.state == "down":
            self.incidents.failed(McpUnavailable(connection.config.name, connection.detail))

    def _let_go(self, connection: "Connection") -> None:
        """Forget a sandboxed connection and close it in a task of its own (this runs in its owner task)."""
        key = next((k for k, c in self._boxed.items() if c is connection), None)
        if key is None:
            return
        del self._boxed[key]
        closing = asyncio.get_running_loop().create_task(connection.close(), name=f"mcp-close-{connection.label}")
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    # -- a call -------------------------------------------------------------------------------
    async def call(self, tool: McpTool, arguments: dict[str, Any], user: str, session: str) -> Called:
        """Call `tool` within its server's timeout; never raises but for this task's cancellation."""
        config = self.configs[tool.server]
        connection = self._connection(config, user, session)
        began = time.monotonic()
        outcome = Called()
        try:
            async with asyncio.timeout(config.timeout):
                if config.sandbox:
                    async with self.sandboxes().get(user, session).in_use():
                        answer = await connection.call(tool, arguments)
                else:
                    answer = await connection.call(tool, arguments)
            outcome.result = read_result(answer)
        except TimeoutError:
            outcome.timed_out = True
            outcome.problem = f"no answer within {config.timeout:g} s"
        except EngineError as exc:  # unavailable, dropped, refused by the server, no sandbox
            outcome.problem = exc.user_message
        except Exception as exc:  # noqa: BLE001 - a server's odd answer (a result that fails validation…)
            log.warning("MCP call %s failed: %r", tool.exposed, exc)
            outcome.problem = f"the call failed: {type(exc).__name__}"
        outcome.duration = time.monotonic() - began
        return outcome

    # -- for /help and /admin tools -------------------------------------------------------------
    def known(self, user: str, session: str, off: frozenset[str] = frozenset()) -> dict[str, list[str]]:
        """The servers usable in this conversation and the tools known of each (none yet for a
        sandboxed one not started there), without starting anything."""
        known = {}
        for config in self.configs.values():
            if config.name in off or not self.usable(config):
                continue
            connection = self._boxed.get((config.name, user, session)) if config.sandbox \
                else self._shared.get(config.name)
            known[config.name] = sorted(t.shown for t in connection.tools.values()) if connection else []
        return known

    def status(self) -> list[ServerStatus]:
        rows = []
        for config in self.configs.values():
            row = ServerStatus(config.name, config.transport, config.sandbox, "starting")
            if not self.usable(config):
                row.state, row.detail = "unavailable", NO_SANDBOX
            elif config.sandbox:
                running = [c for key, c in self._boxed.items() if key[0] == config.name]
                up = [c for c in running if c.state == "up"]
                row.state = "per conversation"  # no tools named: each person's sandbox lists its own
                starting = len(running) - len(up)
                row.detail = f"{len(up)} running" + (f", {starting} starting" if starting else "")
            else:
                connection = self._shared.get(config.name)
                if connection is not None:
                    row.state, row.detail, row.since = connection.state, connection.detail, connection.since
                    row.tools = sorted(t.shown for t in connection.tools.values())
            rows.append(row)
        return rows
