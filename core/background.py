"""The engine's work between turns, on the event loop: two loops, started once per loop.

- the reaper: adopts the sandboxes a previous process left (once, first), then removes idle
  sandboxes every VM_IDLE_TIMEOUT/4 (1 to 60 s) and sweeps old audit and usage rows, conversations
  (HISTORY_RETENTION_DAYS) and /data folders hourly;
- the disk watch: weighs sandboxes against VM_DISK, those running a command every second, those
  used in the last minute every 5 s, all of them every 10 s; it outlives any failure and says so
  once a minute, not once a second. In chat-only mode (TOOLS=off) there is nothing to weigh and it
  does not run; the reaper's calls then go to a provider with no containers (no Docker is asked).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .erasure import erase
from .errors import EngineError
from .store import USAGE_RETENTION_DAYS, now

if TYPE_CHECKING:
    from .parts import Parts
    from .registry import SessionRegistry

log = logging.getLogger(__name__)
RETENTION_INTERVAL = 3600.0  # seconds between sweeps of old audit rows and old /data folders
DISK_WATCH_SECONDS = 1.0  # how often sandboxes in use are weighed against VM_DISK
DISK_WATCH_RECENT = 60.0  # "in use": running a command, or used within this many seconds
DISK_WATCH_RECENT_SECONDS = 5.0  # how often sandboxes used lately (but idle now) are weighed
DISK_WATCH_ALL_SECONDS = 10.0  # every sandbox (background jobs write too) this often


@dataclass
class Swept:
    """What one retention pass deleted."""

    audit_rows: int = 0
    usage_rows: int = 0  # past USAGE_RETENTION_DAYS
    conversations: int = 0  # HISTORY_RETENTION_DAYS: whole conversations, with their /data and sandbox
    folders: list[str] = field(default_factory=list)  # DATA_RETENTION_DAYS: /data folders of conversations kept


class Background:
    """The reaper and the disk watch of one engine. It reads the sandboxes, the terminal, the
    history and the settings from `parts` each time, so it follows a piece the Runtime replaces;
    `registry` tells it which conversations are answering now (their folders are never swept)."""

    def __init__(self, parts: "Parts", registry: "SessionRegistry") -> None:
        self.parts = parts
        self.registry = registry
        self.reaper: asyncio.Task[Any] | None = None
        self.disk_watch: asyncio.Task[Any] | None = None
        self._watch_problem: tuple[str, float] = ("", 0.0)

    def start(self) -> None:
        """Start the idle reaper (it adopts leftovers first) and the disk watch on this loop, once."""
        loop = asyncio.get_running_loop()
        if self.reaper is None or self.reaper.done() or self.reaper.get_loop() is not loop:
            self.parts.sandboxes.expect_adoption()  # no command may slip into a sandbox before adoption sorts it
            self.reaper = asyncio.create_task(self._reap_forever(), name="sandbox-reaper")
        if not self.parts.settings.tools:
            return  # chat only: no sandbox writes anything, so there is nothing to weigh
        if self.disk_watch is None or self.disk_watch.done() or self.disk_watch.get_loop() is not loop:
            self.disk_watch = asyncio.create_task(self._watch_disk_forever(), name="sandbox-disk-watch")

    async def stop(self) -> None:
        """Stop both loops (those of this event loop) and wait for them to end."""
        loop = asyncio.get_running_loop()
        for task in (self.reaper, self.disk_watch):
            if task is not None and not task.done() and task.get_loop() is loop:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.parts.sandboxes.release_adoption()  # a reaper stopped before it adopted leaves no one waiting

    async def _watch_disk_forever(self) -> None:
        """Weigh sandboxes against their bounds: those running a command every second, those used in
        the last minute every 5 s (background jobs), all of them every 10 s."""
        everyone_at = recent_at = 0.0
        while True:
            await asyncio.sleep(DISK_WATCH_SECONDS)
            containers = self.parts.sandboxes
            now = time.monotonic()
            names = containers.names_in_use(0.0)  # running a command now
            if now - recent_at >= DISK_WATCH_RECENT_SECONDS:
                recent_at = now
                names |= containers.names_in_use(DISK_WATCH_RECENT)
            if now - everyone_at >= DISK_WATCH_ALL_SECONDS:
                everyone_at = now
                names |= {i.name for i in await self._quietly(containers.info(), [])}
            if names:
                await self._quietly(containers.enforce_disk(names), [])

    async def _quietly(self, work: Any, default: Any) -> Any:
        """The watch outlives any failure, and says so once a minute, not once a second."""
        try:
            return await work
        except Exception as exc:  # noqa: BLE001
            line, now = str(exc) or type(exc).__name__, time.monotonic()
            if line != self._watch_problem[0] or now - self._watch_problem[1] >= 60:
                self._watch_problem = (line, now)
                log.warning("disk watch: %s", line, exc_info=not isinstance(exc, EngineError))
        return default

    async def _reap_forever(self) -> None:
        parts = self.parts
        interval = max(1.0, min(60.0, parts.settings.vm_idle_timeout / 4))
        try:
            adopted, removed = await parts.sandboxes.adopt()
            if adopted or removed:
                log.info("sandboxes at start-up: %d adopted, %d removed", len(adopted), len(removed))
            await parts.terminal.settle_all()  # commands the previous process left running end now
        except EngineError as exc:
            log.warning("could not look for leftover sandboxes: %s", exc)
        swept = -RETENTION_INTERVAL
        while True:
            if time.monotonic() - swept >= RETENTION_INTERVAL:
                swept = time.monotonic()
                try:
                    await self.retention_pass()
                except Exception:  # noqa: BLE001 - a failed sweep is retried next time
                    log.exception("retention sweep failed")
            await asyncio.sleep(interval)
            try:
                await parts.sandboxes.reap()
            except EngineError as exc:
                log.warning("idle sandbox check failed: %s", exc)

    def _in_use(self, user: str, session: str) -> bool:
        """A reply or a command (an upload, a listing) is at work in the conversation: never swept now."""
        containers = self.parts.sandboxes
        return self.registry.phase((user, session)) is not None or containers.busy(containers.name(user, session))

    async def retention_pass(self) -> Swept:
        """Drop audit rows past AUDIT_RETENTION_DAYS, usage rows past USAGE_RETENTION_DAYS,
        conversations unused for HISTORY_RETENTION_DAYS (when set) with their /data and sandbox, and
        /data folders unused for DATA_RETENTION_DAYS.

        Only whole conversations unused for at least a day go: a message of today is never purged,
        and neither is anything in a conversation that is at work now."""
        s, history, containers, audit = self.parts.settings, self.parts.history, self.parts.sandboxes, self.parts.audit
        swept = Swept(await audit.run(audit.purge, timedelta(days=s.audit_retention_days)))
        usage = self.parts.usage
        swept.usage_rows = await usage.run(usage.purge, timedelta(days=USAGE_RETENTION_DAYS))
        if s.history_retention_days > 0:
            cutoff = now() - timedelta(days=s.history_retention_days)  # a day at least: never today's
            stale = await history.run(history.idle, cutoff)
            swept.conversations = (await erase(self.parts, self.registry, stale, spare=self._in_use,
                                               unused_since=cutoff)).conversations
        for user, session in await history.run(history.idle_sessions, timedelta(days=s.data_retention_days)):
            if self._in_use(user, session):
                continue
            folder = containers.data_dir(user, session)
            if folder.exists():
                await containers.remove(user, session)
                await containers.delete_data(user, session)
                swept.folders.append(str(folder))
        if swept.audit_rows or swept.usage_rows or swept.conversations or swept.folders:
            log.info("retention: %d audit rows, %d usage rows, %d conversations and %d /data folders deleted",
                     swept.audit_rows, swept.usage_rows, swept.conversations, len(swept.folders))
        return swept
