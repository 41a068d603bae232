"""What a sandbox and a person may hold on the host, and how it is weighed.

Each sandbox is bounded in bytes (VM_DISK) and files (VM_INODES): its /data by its
own disk image (a hard limit: docker/diskimage.py), its own filesystem by the watch, which weighs it
from the host side (Docker's upper layer, by `du` in a process of its own that a
time box can kill) so that no sandbox can slow the watch down for the others: a
sandbox whose files cannot be counted in time, twice in a row, counts as over. One person's /data
folders together are bounded by USER_DISK (`UserDisk`): where the folders are disk images,
each gets only its share of what is left (writes past it fail with ENOSPC);
elsewhere a sandbox whose /data grows while its person is over is stopped.
"""
from __future__ import annotations

import asyncio
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Settings
from ..sizes import human_size

MEASURE_SECONDS = 3.0  # one sandbox's weighing, at most; longer counts as over
MEASURE_AT_ONCE = 8  # sandboxes weighed at the same time
DELETE_SOME = "`rm` them here, or `/reset files:true` in a conversation you no longer need."


class TooSlow(Exception):
    """The weighing did not finish in time (a tree of very many files): counts as over."""


async def du(path: str | os.PathLike[str], *, files: bool = False, seconds: float = MEASURE_SECONDS) -> int:
    """Bytes allocated below `path` (or, with files=True, the number of inodes), from `du` in its own
    process: it walks iteratively in C, never follows links, stays on one filesystem, and is killed
    when the time box runs out (TooSlow)."""
    argv = ["du", "-s", "-x", "-P", "--inodes" if files else "-B1", str(path)]
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.DEVNULL)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=seconds)
    except asyncio.TimeoutError:
        raise TooSlow(str(path)) from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    try:
        return int(output.split()[0])
    except (IndexError, ValueError):
        return 0  # gone meanwhile


async def weigh_tree(path: str | os.PathLike[str], seconds: float = MEASURE_SECONDS) -> tuple[int, int]:
    """(bytes, files) below `path`: both walks at once, under one time box."""
    size, files = await asyncio.gather(du(path, seconds=seconds), du(path, files=True, seconds=seconds))
    return size, files


def container_procs(pid: int, container_id: str) -> list[str] | None:
    """The processes of the container whose first process is `pid` (from its cgroup), or None when
    `pid` is no longer that container's (it restarted) or this host's /proc cannot tell."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _number, controllers, path = line.split(":", 2)
        if container_id not in path:
            continue
        for folder in ([Path("/sys/fs/cgroup") / path.lstrip("/")] if controllers == "" else
                       [Path("/sys/fs/cgroup") / c / path.lstrip("/") for c in controllers.split(",")]):
            try:
                return (folder / "cgroup.procs").read_text().split()
            except OSError:
                continue
    return None


def unlinked_open(pid: int, container_id: str, deadline: float) -> tuple[int, int] | None:
    """(bytes, files) of files in the sandbox's own filesystem that its processes hold open (or
    mapped) after deleting them: they take host disk, but no walk of names finds them. None when
    this host cannot see the sandbox's processes (or `pid` is no longer its first); TooSlow when
    the count does not finish by `deadline` (monotonic). Blocking: run it off the loop."""
    procs = container_procs(pid, container_id)
    if procs is None:
        return None
    try:
        device = os.stat(f"/proc/{pid}/root/").st_dev  # the sandbox's root filesystem (its overlay)
    except OSError:
        return None
    seen: set[int] = set()
    size = files = 0
    for proc in procs:
        for kind in ("fd", "map_files"):
            try:
                entries = os.listdir(f"/proc/{proc}/{kind}")
            except OSError:
                continue
            for entry in entries:
                if time.monotonic() > deadline:
                    raise TooSlow(f"the open files of {container_id[:12]}")
                try:
                    info = os.stat(f"/proc/{proc}/{kind}/{entry}")
                except OSError:
                    continue
                if info.st_nlink == 0 and info.st_dev == device and stat.S_ISREG(info.st_mode) \
                        and info.st_ino not in seen:
                    seen.add(info.st_ino)
                    size += info.st_blocks * 512
                    files += 1
    return size, files


@dataclass
class Weight:
    """What one sandbox holds: its own filesystem and its /data."""

    name: str
    user: str
    session: str
    root_bytes: int = 0
    root_files: int | None = None  # None: not countable here (the engine's files are out of reach)
    data_bytes: int = 0
    data_files: int = 0
    data_image: bool = False  # /data is a disk image of its own (a hard limit)
    slow: bool = False

    @property
    def bytes(self) -> int:
        return self.root_bytes + self.data_bytes

    @property
    def files(self) -> int:
        """Files the watch bounds: its own filesystem's, and /data's where no image bounds them already."""
        return (self.root_files or 0) + (0 if self.data_image else self.data_files)


def over(weight: Weight, settings: Settings) -> str | None:
    """Why this sandbox must stop (a clause after "it "), or None."""
    if weight.slow:
        return f"held so many files that they could not be counted in {MEASURE_SECONDS:g} s"
    if weight.bytes > settings.vm_disk:
        return f"held {human_size(weight.bytes)}, more than its {human_size(settings.vm_disk)} of disk"
    if weight.files > settings.vm_inodes:
        return f"held {weight.files:,} files, more than its {settings.vm_inodes:,}"
    return None


def conversation_label(session: str) -> str:
    """How a conversation is named to its person: a Discord channel id as a channel link."""
    return f"<#{session}>" if session.isdigit() else f"`{session}`"


@dataclass
class UserDisk:
    """One person's /data folders together, against USER_DISK."""

    limit: int
    parts: list[tuple[str, int]] = field(default_factory=list)  # (session as its folder spells it, bytes)

    @property
    def total(self) -> int:
        return sum(size for _session, size in self.parts)

    @property
    def nearly_full(self) -> bool:
        """Worth telling the person when they look at their files."""
        return self.total >= 0.8 * self.limit

    @property
    def full(self) -> bool:
        """Nothing more fits (within what ext4 keeps for its own bookkeeping)."""
        return self.total >= self.limit - max(2 * 1024 ** 2, self.limit // 50)

    def limits(self, folder: Path) -> bool:
        """The total is what keeps this conversation's /data from taking more now: it has almost no room
        left, though its own disk would have more."""
        if self.full:
            return True
        if not os.path.ismount(folder):
            return False
        stats = os.statvfs(folder)
        room, own = stats.f_bavail * stats.f_frsize, (stats.f_bfree - min(stats.f_blocks // 50, 4096)) * stats.f_frsize
        return room < 1024 ** 2 and own > 2 * 1024 ** 2

    def line(self) -> str:
        """One line a person reads: how much of their total their conversations hold, and where."""
        parts = sorted(self.parts, key=lambda p: p[1], reverse=True)
        shown = ", ".join(f"{conversation_label(s)} {human_size(b)}" for s, b in parts[:5])
        more = f" and {len(parts) - 5} more" if len(parts) > 5 else ""
        return (f"Your conversations' files hold {human_size(self.total)} of your {human_size(self.limit)} "
                f"in all ({shown}{more}).")

    def over_clause(self) -> str:
        return (f"this person's conversations held {human_size(self.total)}, over their "
                f"{human_size(self.limit)} in all")

    def full_line(self) -> str:
        return f"{self.line()} New files do not fit until some are deleted: {DELETE_SOME[0].lower()}{DELETE_SOME[1:]}"
