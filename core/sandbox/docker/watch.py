"""The disk watch's Docker half: weigh each sandbox from the host side, and stop those over their bounds.

The runtime calls `DockerProvider.enforce_disk(names)` every second for the sandboxes in use (and
for all of them less often); this is what it does. Sandboxes are weighed at the same time, each
within a time box (core/sandbox/quota.py), so one slow sandbox cannot blind the watch to the
others: what it wrote to its own filesystem (overlay2's upper layer, where this process can read
it, and the files its processes hold open after deleting them), and its /data (statfs of its disk
image, or a walk of a plain folder). A sandbox over VM_DISK or VM_INODES is stopped (removed: what
it wrote outside /data goes with it), and one person is kept within USER_DISK.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ...errors import SandboxUnavailable
from .. import quota
from . import diskimage
from .engine import DOCKER_ERRORS, REQUEST_TIMEOUT, explain, reported_as_unavailable
from .naming import LABEL, row_name

if TYPE_CHECKING:
    from .provider import DockerProvider

log = logging.getLogger(__name__)


class DiskWatch:
    """The weighing and the evictions of one DockerProvider, with what they remember between passes."""

    def __init__(self, provider: "DockerProvider") -> None:
        self.provider = provider
        self._evicted: dict[str, str] = {}  # name -> why it was stopped (over VM_DISK, VM_INODES or USER_DISK)
        self._uppers: dict[str, str | None] = {}  # container id -> its upper layer on this host, if readable
        self._pids: dict[str, int] = {}  # container id -> its first process, on this host
        self._data_seen: dict[str, int] = {}  # name -> its /data bytes at the last weighing
        self._slow: set[str] = set()  # sandboxes whose files could not be counted in time at the last weighing
        self._evictions: set[asyncio.Future[None]] = set()  # removals of sandboxes stopped by the watch

    async def enforce_disk(self, names: set[str]) -> list[str]:
        """Stop (remove) each of these sandboxes that holds more than VM_DISK or VM_INODES, or that
        cannot be weighed in time; keep each person within USER_DISK. The names removed.

        Sandboxes are weighed at the same time, each within a time box, so one slow sandbox
        cannot blind the watch to the others. Removing a sandbox frees what it wrote outside /data
        at once; /data stays (and cannot grow past its image where it has one).
        """
        with reported_as_unavailable():
            every = await self.provider._list()  # noqa: SLF001
        rows = [r for r in every if row_name(r) in names]
        existing = {r.get("Id") for r in every}
        for cid in [c for c in self._uppers if c not in existing]:
            del self._uppers[cid]
            self._pids.pop(cid, None)
        limit = asyncio.Semaphore(quota.MEASURE_AT_ONCE)

        async def weigh(row: dict[str, Any]) -> quota.Weight | None:
            async with limit:
                return await self._weigh(row)

        weights = await asyncio.gather(*(weigh(r) for r in rows), return_exceptions=True)
        self._slow &= {row_name(r) for r in every}  # forgotten only once the sandbox is gone
        removed: list[str] = []
        measured = [w for w in weights if isinstance(w, quota.Weight)]
        for weight in measured:
            reason = quota.over(weight, self.provider.settings)
            if reason:
                await self._evict(weight.name, reason)
                removed.append(weight.name)
        for user in {w.user for w in measured}:
            removed += await self._keep_user_within(user, [w for w in measured if w.user == user and w.name not in removed])
        return removed

    def eviction_message(self, name: str) -> str | None:
        """Why `name` was stopped since this was last asked (said once), or None."""
        reason = self._evicted.pop(name, None)
        if reason is None:
            return None
        return (f"The sandbox was stopped: it {reason}. What it wrote outside /data is gone; /data is kept. "
                "Delete what you do not need in /data before writing more.")

    async def settled(self) -> None:
        """Wait for the removals of the sandboxes the watch stopped."""
        await asyncio.gather(*self._evictions, return_exceptions=True)

    # -- weighing ------------------------------------------------------------------------
    async def _weigh(self, row: dict[str, Any]) -> quota.Weight | None:
        """What one sandbox holds; None when the engine cannot say now (not the sandbox's doing).

        The walks of what the sandbox wrote are time-boxed: a sandbox whose files cannot be counted
        in time twice in a row (one slow pass may be the host's load) is `slow`, and counts as over.
        """
        labels = row["Labels"]
        user, session = labels.get(f"{LABEL}.user", ""), labels.get(f"{LABEL}.session", "")
        weight = quota.Weight(row_name(row), user, session)
        folder = self.provider.data_dir(user, session)
        try:
            upper = await asyncio.wait_for(self._upper_dir(row), REQUEST_TIMEOUT)
            if upper is None:  # the engine's files are out of reach (a remote engine): ask it, bytes only
                state = await asyncio.wait_for(self.provider.engine.inspect_size(weight.name),
                                               quota.MEASURE_SECONDS * 4)
                weight.root_bytes = int(state.get("SizeRw") or 0)
        except (*DOCKER_ERRORS, SandboxUnavailable):
            return None  # gone meanwhile, or the engine is busy: weighed next time
        try:
            async with asyncio.timeout(quota.MEASURE_SECONDS):
                if upper is not None:
                    deadline = time.monotonic() + quota.MEASURE_SECONDS
                    (weight.root_bytes, weight.root_files), hidden = await asyncio.gather(
                        quota.weigh_tree(upper), self._unlinked(row, deadline))
                    weight.root_bytes += hidden[0]
                    weight.root_files = (weight.root_files or 0) + hidden[1]
                used = diskimage.usage(folder)
                if used is not None:
                    weight.data_image = True
                    weight.data_bytes, weight.data_files = used
                elif folder.is_dir():
                    weight.data_bytes, weight.data_files = await quota.weigh_tree(folder)
        except (TimeoutError, quota.TooSlow):
            weight.slow = weight.name in self._slow
            self._slow.add(weight.name)
            return weight if weight.slow else None
        self._slow.discard(weight.name)
        return weight

    async def _upper_dir(self, row: dict[str, Any], *, fresh: bool = False) -> str | None:
        """The host folder of what the sandbox wrote to its own filesystem (overlay2's upper layer),
        when this process can read it, and its first process; cached by container id."""
        cid = row.get("Id", "")
        if cid not in self._uppers or fresh:
            state = await self.provider.engine.inspect(cid)
            upper = ((state.get("GraphDriver") or {}).get("Data") or {}).get("UpperDir")
            self._uppers[cid] = upper if upper and os.path.isdir(upper) else None
            self._pids[cid] = int((state.get("State") or {}).get("Pid") or 0)
        return self._uppers[cid]

    async def _unlinked(self, row: dict[str, Any], deadline: float) -> tuple[int, int]:
        """What the sandbox's processes hold open after deleting it (see quota.unlinked_open)."""
        cid = row.get("Id", "")
        loop = asyncio.get_running_loop()
        for fresh in (False, True):  # a restarted sandbox has a new first process: ask the engine again
            if fresh:
                await self._upper_dir(row, fresh=True)
            pid = self._pids.get(cid, 0)
            if pid:
                found = await loop.run_in_executor(self.provider._disk_pool, quota.unlinked_open, pid, cid,  # noqa: SLF001
                                                   deadline)
                if found is not None:
                    return found
        return (0, 0)  # its processes are out of sight here (the bot in a container of its own)

    # -- stopping ------------------------------------------------------------------------
    async def _keep_user_within(self, user: str, weights: list[quota.Weight]) -> list[str]:
        """USER_DISK: the person's images get their shares; a sandbox whose plain /data grew while
        the person is over their total is stopped."""
        provider = self.provider
        root = provider.user_root(user)
        disk = await asyncio.get_running_loop().run_in_executor(
            provider._disk_pool, diskimage.rebalance, root, provider.settings, provider._active(root))  # noqa: SLF001
        removed = []
        for weight in weights:
            grew = weight.data_bytes > self._data_seen.get(weight.name, weight.data_bytes)
            self._data_seen[weight.name] = weight.data_bytes
            if not weight.data_image and grew and disk.total > disk.limit:
                await self._evict(weight.name, f"wrote more to /data while {disk.over_clause()}")
                removed.append(weight.name)
        return removed

    async def _evict(self, name: str, reason: str) -> None:
        """Stop a sandbox for going over: the reason is recorded at once, the removal (seconds for a
        tree of many files) goes on in the background, so the watch weighs the others meanwhile."""
        log.warning("stopping %s: it %s", name, reason)
        self._evicted[name] = reason
        self._data_seen.pop(name, None)
        self.provider._up.discard(name)  # noqa: SLF001
        task = asyncio.ensure_future(self._remove_evicted(name))
        self._evictions.add(task)
        task.add_done_callback(self._evictions.discard)

    async def _remove_evicted(self, name: str) -> None:
        provider = self.provider
        try:
            async with provider._locks.hold(name):  # noqa: SLF001
                await provider._delete(name)  # noqa: SLF001
            await provider.release_data()
        except (*DOCKER_ERRORS, SandboxUnavailable) as exc:
            log.warning("could not remove %s: %s", name, explain(exc))
