"""The sandbox face: what the rest of core needs from one private Linux box per conversation.

Two objects, after inspect_ai's sandbox environments. A `Provider` owns the sandboxes of one
deployment: their lifecycle (start, get, adopt, reap, remove, info), their /data folders, and the
watch that keeps them within their disk. A `Sandbox` is the handle of one of them, for one
(user, session), with what a command or a tool does there: `exec`, `read_file`, `write_file`, and `attach` for a process that
keeps talking over its standard input and output (an MCP server run in the sandbox).

Everything above this layer (the terminal, the runtime, the tool loop) talks to these two only,
so the box behind them can change (Docker today; a Kubernetes pod or a microVM tomorrow) without
touching the tool loop. A new provider passes `tests/test_sandbox_conformance.py` and nothing
else changes. Failures surface as the engine's errors, each with one line a user can read:
`SandboxUnavailable` (the provider cannot be reached or cannot run the sandbox), `SandboxFileError`
(a file that cannot be read or written; `SandboxFileTooLarge` past the caller's limit); an `exec`
past its `timeout` raises the builtin `TimeoutError`.
"""
from __future__ import annotations

import abc
import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncContextManager, AsyncIterator, Callable, Sequence

from ..config import Settings
from ..errors import SandboxUnavailable
from .quota import UserDisk

STDOUT, STDERR = 1, 2
OutputSink = Callable[[int, bytes], None]  # (STDOUT or STDERR, bytes)


@dataclass(frozen=True)
class SandboxInfo:
    """What the admin commands show about a sandbox."""

    name: str
    user: str
    session: str
    status: str
    idle_seconds: float | None


def _discard(_stream: int, _data: bytes) -> None:
    pass


class Attached(abc.ABC):
    """A process running in a sandbox with its standard input and output attached (Sandbox.attach)."""

    @abc.abstractmethod
    async def read(self) -> bytes | None:
        """The next piece of its standard output; None once it has ended (the process exited or the
        sandbox went away). Its standard error goes to the `on_stderr` given to attach."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send bytes to its standard input; SandboxUnavailable when it is gone."""


class Sandbox(abc.ABC):
    """One conversation's sandbox, as commands and tools use it.

    A handle is cheap (no I/O): `Provider.get(user, session)` makes one whenever it is needed, and
    the sandbox behind it starts on first use. Every method is a coroutine that never blocks the
    event loop and never holds a thread for the length of a command.
    """

    def __init__(self, provider: "Provider", user: str, session: str) -> None:
        self.provider = provider
        self.user = user
        self.session = session
        self.name = provider.name(user, session)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -- what runs there ----------------------------------------------------------------
    async def exec(self, argv: Sequence[str], on_output: OutputSink | None = None, *, timeout: float | None = None,
                   on_start: Callable[[], None] | None = None, recreate: bool = True) -> int:
        """Run argv to its end, streaming its output to `on_output(STDOUT or STDERR, bytes)`; the exit code.

        `on_start()` is called once the process runs (after any sandbox start-up). With
        `recreate=False` a sandbox that is not running is an error (SandboxUnavailable), not started.
        After `timeout` seconds the call raises TimeoutError. Like a cancellation, that stops
        listening but does not kill the process: no provider can kill an exec, so killing is the
        caller's business (a second exec: see terminal.py).
        """
        sink = on_output or _discard
        if timeout is None:
            return await self._exec(argv, sink, on_start, recreate)
        async with asyncio.timeout(timeout):
            return await self._exec(argv, sink, on_start, recreate)

    @abc.abstractmethod
    async def _exec(self, argv: Sequence[str], on_output: OutputSink, on_start: Callable[[], None] | None,
                    recreate: bool) -> int:
        """exec() without its timeout: what each provider implements."""

    def attach(self, argv: Sequence[str], *, env: dict[str, str] | None = None, workdir: str = "/data",
               on_stderr: Callable[[bytes], None] | None = None) -> AsyncContextManager[Attached]:
        """Start argv in the sandbox (starting the sandbox first if need be) with its standard input and
        output attached, for as long as the block runs; leaving it closes the input (a stdio server then
        exits). A provider without a long-running sandbox refuses with SandboxUnavailable."""
        raise SandboxUnavailable("Processes cannot run in this sandbox (it has no container).",
                                 user="Tools that run in your sandbox need the sandbox (this bot runs without one).")

    @abc.abstractmethod
    async def read_file(self, path: str, max_bytes: int) -> bytes:
        """A regular file's bytes; SandboxFileError if missing or not a regular file,
        SandboxFileTooLarge if over max_bytes."""

    @abc.abstractmethod
    async def write_file(self, path: str, data: bytes) -> None:
        """Create or replace a file at an absolute path (its folder must exist); SandboxFileError if it cannot."""

    # -- its bookkeeping ----------------------------------------------------------------
    def in_use(self) -> AsyncContextManager[None]:
        """Mark the sandbox busy while the block runs: never reaped, recreated or evicted meanwhile,
        and its /data stays mounted."""
        return self.provider._using(self.name)

    @property
    def data_dir(self) -> Path:
        """Its /data folder on this machine."""
        return self.provider.data_dir(self.user, self.session)

    async def share_disk(self) -> None:
        """Before a command: give this conversation its room within the person's total (USER_DISK)."""

    async def disk_note(self) -> str | None:
        """A line for the model and the person when their conversations' files fill their total."""
        return None

    def eviction_message(self) -> str | None:
        """Why the sandbox was stopped since its last command (said once), or None."""
        return None


class Provider(abc.ABC):
    """One persistent sandbox per (user, session), and the bookkeeping that keeps them bounded.

    Every method is a coroutine that never blocks the event loop and never holds a thread for
    the length of a command: many users' commands run at once. Failures of the backend surface
    as `SandboxUnavailable` with one line a user can read.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._last_used: dict[str, float] = {}
        self._busy: dict[str, int] = {}
        # Sandboxes adopt() kept from an earlier process, by name: a command that process left running
        # may still run in them (the terminal ends it before their next command): name -> (user, session)
        self._leftovers: dict[str, tuple[str, str]] = {}

    # -- handles -----------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, user: str, session: str) -> Sandbox:
        """The handle of (user, session)'s sandbox; nothing is started or asked."""

    @abc.abstractmethod
    def name(self, user: str, session: str) -> str:
        """The sandbox's stable name: the same pair always gets the same sandbox back."""

    @abc.abstractmethod
    def data_dir(self, user: str, session: str) -> Path:
        """The session's folder on this machine, seen as /data inside the sandbox."""

    @property
    def busybox(self) -> str | None:
        """The bot's own static busybox as every sandbox sees it (read-only, out of its reach), where the
        terminal's wrapper and kill run; None when there is none: they then run the image's `sh` from
        PATH, which a sandbox can replace."""
        return None

    # -- lifecycle ---------------------------------------------------------------------
    @abc.abstractmethod
    async def start(self, user: str, session: str) -> Sandbox:
        """Make the sandbox run (reuse, restart, or create it, within the per-user cap); its handle."""

    @abc.abstractmethod
    async def remove(self, user: str, session: str) -> bool:
        """Remove the sandbox and its private state (not /data); False if there was none."""

    @abc.abstractmethod
    async def adopt(self) -> tuple[list[str], list[str]]:
        """At start-up: keep sandboxes that match the configuration, remove the rest; (kept, removed)."""

    @abc.abstractmethod
    async def reap(self, idle_seconds: float | None = None) -> list[str]:
        """Remove sandboxes idle for longer than the limit (running ones included); the names removed."""

    @abc.abstractmethod
    async def info(self) -> list[SandboxInfo]:
        """Every sandbox of this deployment."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """The backend answers."""

    async def close(self) -> None:
        """Release connections; the sandboxes themselves stay for the next process to adopt."""

    def expect_adoption(self) -> None:
        """adopt() is about to run: until it has, start-ups and commands wait (see adoption_done)."""

    def release_adoption(self) -> None:
        """Adoption will not run after all (the process stops first): nothing may wait for it."""

    async def adoption_done(self) -> None:
        """Return once start-up adoption (if any) has decided which sandboxes stay."""

    def leftovers(self) -> list[tuple[str, str]]:
        """(user, session) of the sandboxes adoption kept whose last command may still run."""
        return list(self._leftovers.values())

    def take_leftover(self, name: str) -> bool:
        """Whether `name` was one of leftovers(); it no longer is (its command is being ended)."""
        return self._leftovers.pop(name, None) is not None

    # -- /data -------------------------------------------------------------------------
    @abc.abstractmethod
    async def prepare_data(self, user: str, session: str) -> Path:
        """The session's /data folder, ready to be written (its own bounded disk where possible)."""

    @abc.abstractmethod
    def prepare_data_sync(self, user: str, session: str) -> Path:
        """The same, for synchronous callers (ChatSession.upload_document)."""

    @abc.abstractmethod
    async def delete_data(self, user: str, session: str) -> None:
        """Delete the session's /data for good (its sandbox goes first)."""

    @abc.abstractmethod
    async def delete_person(self, user: str) -> tuple[int, int]:
        """Delete every sandbox and /data of one person (they asked to be forgotten), those of
        conversations the history does not know too; (sandboxes, /data folders) deleted."""

    @abc.abstractmethod
    async def user_disk(self, user: str) -> UserDisk:
        """What one person's conversations hold in /data, against USER_DISK."""

    # -- the watch ---------------------------------------------------------------------
    @abc.abstractmethod
    async def enforce_disk(self, names: set[str]) -> list[str]:
        """Stop those of these sandboxes that hold more than they may; the names stopped."""

    def names_in_use(self, recent: float) -> set[str]:
        """Sandboxes running a command, or used within the last `recent` seconds."""
        now = time.monotonic()
        return set(self._busy) | {n for n, t in self._last_used.items() if now - t <= recent}

    def busy(self, name: str) -> bool:
        """A command (or an upload, a listing) needs this sandbox now."""
        return bool(self._busy.get(name))

    def idle_for(self, name: str, now: float | None = None) -> float | None:
        last = self._last_used.get(name)
        return None if last is None else (now or time.monotonic()) - last

    @asynccontextmanager
    async def _using(self, name: str) -> AsyncIterator[None]:
        """Sandbox.in_use(): the count of what needs the sandbox, and when it was last used."""
        self._busy[name] = self._busy.get(name, 0) + 1
        self._last_used[name] = time.monotonic()
        try:
            yield
        finally:
            self._last_used[name] = time.monotonic()
            self._busy[name] -= 1
            if not self._busy[name]:
                del self._busy[name]

