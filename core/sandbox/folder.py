"""The provider of chat-only mode (TOOLS=off): the sandbox face with no sandbox behind it.

Nothing runs and no Docker engine is ever asked: `exec` refuses with one line, the lifecycle calls
have nothing to do (nothing to start, adopt, reap or weigh). What stays is each conversation's
/data, a plain folder below UPLOAD_DIR where uploads are kept: the turn reads pictures back from it
for a vision model (in later turns too), `/files` lists and sends them, `/reset files:true` and
retention delete them. The folders are the Docker provider's own (its naming), so turning
commands on again finds every file where a sandbox expects it (its disk image takes them in).

Only the bot writes here in this mode, but a folder may hold what a sandbox wrote before (a link
to a host file, say): a file is read by descriptor, each part opened without following links.
"""
from __future__ import annotations

import asyncio
import errno
import os
import posixpath
import stat
import time
from pathlib import Path
from typing import Callable, Sequence

from ..config import Settings
from ..errors import SandboxFileError, SandboxFileTooLarge, SandboxUnavailable
from .base import OutputSink, Provider, Sandbox, SandboxInfo
from .docker import diskimage
from .docker.naming import sandbox_name, session_folder, user_folder
from .quota import UserDisk
from .workspace import folders_of, remove_folder

COMMANDS_OFF = "Commands are off here: this bot runs in chat-only mode (TOOLS=off)."
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO planted there cannot hang the open


class FolderSandbox(Sandbox):
    """One conversation's /data, and nothing else: no command runs."""

    provider: "FolderProvider"

    async def _exec(self, argv: Sequence[str], on_output: OutputSink, on_start: Callable[[], None] | None,
                    recreate: bool) -> int:
        raise SandboxUnavailable(COMMANDS_OFF, user=COMMANDS_OFF)

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        return await asyncio.to_thread(_read, self.data_dir, path, max_bytes)

    async def write_file(self, path: str, data: bytes) -> None:
        await asyncio.to_thread(_write, self.data_dir, path, data)


class FolderProvider(Provider):
    """Chat-only mode's provider: a plain /data folder per (user, session), no containers."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._root_ready = False

    def get(self, user: str, session: str) -> FolderSandbox:
        return FolderSandbox(self, user, session)

    def name(self, user: str, session: str) -> str:
        return sandbox_name(self.settings.vm_name_prefix, user, session)

    def data_dir(self, user: str, session: str) -> Path:
        return self._root() / user_folder(user) / session_folder(user, session)

    def _root(self) -> Path:
        """UPLOAD_DIR, reachable by its owner only (0700), as the Docker provider keeps it."""
        root = Path(self.settings.upload_dir).resolve()
        if not self._root_ready:
            root.mkdir(parents=True, exist_ok=True)
            root.chmod(0o700)
            self._root_ready = True
        return root

    # -- nothing to run, so nothing to start, adopt, reap or list -------------------
    async def start(self, user: str, session: str) -> FolderSandbox:
        return self.get(user, session)

    async def remove(self, user: str, session: str) -> bool:
        return False

    async def adopt(self) -> tuple[list[str], list[str]]:
        return [], []

    async def reap(self, idle_seconds: float | None = None) -> list[str]:
        """Nothing to remove but the memory of conversations used long ago (uploads, listings)."""
        limit = self.settings.vm_idle_timeout if idle_seconds is None else idle_seconds
        now = time.monotonic()
        for name in [n for n, t in list(self._last_used.items()) if not self.busy(n) and now - t >= limit]:
            del self._last_used[name]
        return []

    async def info(self) -> list[SandboxInfo]:
        return []

    async def ping(self) -> bool:
        return True  # nothing behind it that could be down

    async def enforce_disk(self, names: set[str]) -> list[str]:
        return []  # nothing writes here but uploads, which their own caps bound

    # -- /data ----------------------------------------------------------------------
    async def prepare_data(self, user: str, session: str) -> Path:
        return await asyncio.to_thread(self.prepare_data_sync, user, session)

    def prepare_data_sync(self, user: str, session: str) -> Path:
        folder = self.data_dir(user, session)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    async def delete_data(self, user: str, session: str) -> None:
        folder = self.data_dir(user, session)
        await asyncio.to_thread(diskimage.destroy, folder)  # a disk image a sandbox had, when commands were on
        await remove_folder(folder)

    async def delete_person(self, user: str) -> tuple[int, int]:
        """Every /data folder of the person (no sandboxes here), then their own folder."""
        root = self._root() / user_folder(user)
        folders = await asyncio.to_thread(folders_of, root)
        for folder in folders:
            await asyncio.to_thread(diskimage.destroy, folder)  # a disk image a sandbox had, when commands were on
            await remove_folder(folder)
        await remove_folder(root)
        return 0, len(folders)

    async def user_disk(self, user: str) -> UserDisk:
        return await asyncio.to_thread(diskimage.user_disk, self._root() / user_folder(user), self.settings)


# -- files, by descriptor (blocking: called off the loop) ------------------------------------
def _parts(path: str) -> list[str]:
    """`path` (absolute, as a sandbox names it) as the parts below /data; refused outside /data."""
    full = posixpath.normpath(path)
    if full != "/data" and not full.startswith("/data/"):
        raise SandboxFileError(f"{path} does not exist (only /data is kept in chat-only mode).")
    return [p for p in full[len("/data"):].split("/") if p]


def _open_folder(folder: Path, parts: list[str], path: str) -> int:
    """A descriptor of /data's folder `parts`, no link followed; SandboxFileError when there is none."""
    try:
        fd = os.open(folder, _DIR)
    except OSError:
        raise SandboxFileError(f"{path} does not exist.") from None
    for part in parts:
        try:
            child = os.open(part, _DIR, dir_fd=fd)
        except OSError:
            os.close(fd)
            raise SandboxFileError(f"{path} does not exist.") from None
        os.close(fd)
        fd = child
    return fd


def _read(folder: Path, path: str, max_bytes: int) -> bytes:
    parts = _parts(path)
    if not parts:
        raise SandboxFileError(f"{path} is not a regular file.")
    parent = _open_folder(folder, parts[:-1], path)
    try:
        try:
            fd = os.open(parts[-1], _FILE, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise SandboxFileError(f"{path} does not exist.") from None
            raise SandboxFileError(f"{path} is not a regular file.") from None  # a link (ELOOP), a socket...
    finally:
        os.close(parent)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SandboxFileError(f"{path} is not a regular file.")
        if info.st_size > max_bytes:
            raise SandboxFileTooLarge(f"{path} is {info.st_size} bytes, over the {max_bytes}-byte limit.")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:  # it grew since the stat
        raise SandboxFileTooLarge(f"{path} is over the {max_bytes}-byte limit.")
    return b"".join(chunks)


def _write(folder: Path, path: str, data: bytes) -> None:
    parts = _parts(path)
    if not parts:
        raise SandboxFileError(f"{path} must be a path to a file.")
    parent = _open_folder(folder, parts[:-1], path)
    try:
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=parent)
    except OSError as exc:
        raise SandboxFileError(f"{path} could not be written ({os.strerror(exc.errno or 0).lower()}).") from None
    finally:
        os.close(parent)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
