"""The sandbox face: what the rest of core needs from one private Linux box per conversation.

Everything above this layer (the terminal, the runtime, the admin commands)
talks to `Sandboxes` only, so the box behind it can change (Docker today; a
Kubernetes pod or a microVM tomorrow) without touching the tool loop. A new
backend passes `tests/test_sandbox_conformance.py` and nothing else changes.
"""
from __future__ import annotations

import abc
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

from . import sandbox_tools
from .config import Settings

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


class Sandboxes(abc.ABC):
    """One persistent sandbox per (user, session), and the bookkeeping that keeps them bounded.

    Every method is a coroutine that never blocks the event loop and never holds
    a thread for the length of a command: many users' commands run at once.
    Failures of the backend surface as `SandboxUnavailable` with one line a user can read.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._last_used: dict[str, float] = {}
        self._busy: dict[str, int] = {}
        # Sandboxes adopt() kept from an earlier process, by name: a command that process left running
        # may still run in them (the terminal ends it before their next command): name -> (user, session)
        self.leftovers: dict[str, tuple[str, str]] = {}

    def expect_adoption(self) -> None:
        """adopt() is about to run: until it has, start-ups and commands wait (see adoption_done)."""

    async def adoption_done(self) -> None:
        """Return once start-up adoption (if any) has decided which sandboxes stay."""

    @property
    def busybox(self) -> str | None:
        """The bot's own static busybox as every sandbox sees it (read-only, out of its reach), where the
        terminal's wrapper and kill run; None when the host has none: they then run the image's `sh`
        from PATH, which a sandbox can replace. The backend mounts it (ContainerManager._tool_binds);
        a backend that cannot returns None here."""
        return sandbox_tools.BUSYBOX if sandbox_tools.provide(Path(self.settings.upload_dir)) else None

    # -- identity ------------------------------------------------------------
    @abc.abstractmethod
    def name(self, user: str, session: str) -> str:
        """The sandbox's stable name: the same pair always gets the same sandbox back."""

    @abc.abstractmethod
    def upload_dir(self, user: str, session: str) -> Path:
        """The session's folder on this machine, seen as /data inside the sandbox."""

    # -- the face ------------------------------------------------------------
    @abc.abstractmethod
    async def start(self, user: str, session: str) -> None:
        """Make the sandbox run: reuse, restart, or create it (within the per-user cap)."""

    @abc.abstractmethod
    async def exec(self, user: str, session: str, argv: Sequence[str], on_output: OutputSink, *,
                   on_start: Callable[[], None] | None = None, recreate: bool = True) -> int:
        """Run argv to its end, streaming output to `on_output`; the exit code.

        `on_start()` is called once the process runs (after any sandbox start-up).
        With `recreate=False` a sandbox that is not running is an error, not started.

        Cancelling the call stops listening but does not kill the process: killing
        is the caller's business (a second exec), because no backend can kill an exec.
        """

    @abc.abstractmethod
    async def read_file(self, user: str, session: str, path: str, max_bytes: int) -> bytes:
        """A regular file's bytes; SandboxFileError if missing, not a file, or over max_bytes."""

    @abc.abstractmethod
    async def write_file(self, user: str, session: str, path: str, data: bytes) -> None:
        """Create or replace a file (its folder must exist)."""

    @abc.abstractmethod
    async def prepare_data(self, user: str, session: str) -> Path:
        """The session's /data folder, ready to be written (its own bounded disk where possible)."""

    @abc.abstractmethod
    async def delete_data(self, user: str, session: str) -> None:
        """Delete the session's /data for good (after its sandbox is removed)."""

    @abc.abstractmethod
    async def enforce_disk(self, names: set[str]) -> list[str]:
        """Stop those of these sandboxes that hold more than VM_DISK; the names stopped."""

    @abc.abstractmethod
    async def remove(self, user: str, session: str) -> bool:
        """Remove the sandbox and its private state (not /data); False if there was none."""

    # -- operations ------------------------------------------------------------
    @abc.abstractmethod
    async def ping(self) -> bool:
        """The backend answers."""

    @abc.abstractmethod
    async def adopt(self) -> tuple[list[str], list[str]]:
        """At start-up: keep sandboxes that match the configuration, remove the rest."""

    @abc.abstractmethod
    async def reap(self, idle_seconds: float | None = None) -> list[str]:
        """Remove sandboxes idle for longer than the limit (running ones included)."""

    @abc.abstractmethod
    async def info(self) -> list[SandboxInfo]:
        """Every sandbox of this deployment."""

    async def close(self) -> None:
        """Release connections; the sandboxes themselves stay for the next process to adopt."""

    # -- shared bookkeeping ------------------------------------------------------
    @asynccontextmanager
    async def in_use(self, user: str, session: str) -> AsyncIterator[None]:
        """Mark the sandbox busy: never reaped, recreated or evicted while a command needs it."""
        name = self.name(user, session)
        self._busy[name] = self._busy.get(name, 0) + 1
        self._last_used[name] = time.monotonic()
        try:
            yield
        finally:
            self._last_used[name] = time.monotonic()
            self._busy[name] -= 1
            if not self._busy[name]:
                del self._busy[name]

    def busy(self, name: str) -> bool:
        return bool(self._busy.get(name))

    async def share_disk(self, user: str, session: str) -> None:
        """Before a command: give this conversation its room within the person's total (USER_DISK)."""

    async def disk_note(self, user: str, session: str) -> str | None:
        """A line for the model and the person when their conversations' files fill their total."""
        return None

    def eviction_message(self, name: str) -> str | None:
        """Why the sandbox was stopped since its last command (once), or None."""
        return None

    def names_in_use(self, recent: float) -> set[str]:
        """Sandboxes running a command, or used within the last `recent` seconds."""
        now = time.monotonic()
        return set(self._busy) | {n for n, t in self._last_used.items() if now - t <= recent}

    def idle_for(self, name: str, now: float | None = None) -> float | None:
        last = self._last_used.get(name)
        return None if last is None else (now or time.monotonic()) - last
