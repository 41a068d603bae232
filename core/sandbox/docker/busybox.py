"""The bot's own static busybox, mounted read-only into every sandbox: the shell the terminal's
wrapper and kill run in, so that nothing a sandbox writes or installs can redirect them.

A sandbox owns its PATH and every file of its image: an `sh` it plants in /usr/local/bin would run
in place of the image's, and could ignore every timeout and Stop, or forge the wrapper's start
marker. So the terminal's own scripts run in a shell the sandbox cannot touch: the host's
busybox-static (Debian's, /bin/busybox), copied into UPLOAD_DIR/.tools (a host folder even when the
bot runs in a container) and bind-mounted read-only at /.llmbot. The folder is mounted, not the
file: a sandbox can rename the folder above a file mount and plant its own file in its place, but
not a mount point. It must be static: a dynamic one would load the sandbox's own libraries.

Without it (no busybox-static on the host, or it cannot be copied) the terminal falls back, with
one warning, to the image's `sh` from PATH: the kill then works only while the sandbox leaves its
`sh` alone. `bash scripts/run` and the Dockerfile install busybox-static. The scripts themselves and
the argv that runs them are the terminal's (core/sandbox/terminal.py).
"""
from __future__ import annotations

import logging
import os
import struct
import tempfile
from pathlib import Path

from .hostmount import mount_flags

log = logging.getLogger(__name__)

HOST_BUSYBOX = Path("/bin/busybox")
FOLDER = ".tools"  # in UPLOAD_DIR; conversation folders are [a-z0-9-] only, so none is called this
MOUNT = "/.llmbot"  # where each sandbox sees FOLDER, read-only
BUSYBOX = f"{MOUNT}/busybox"
PT_INTERP = 3  # the program header that names a dynamic loader
_MODE = 0o755

# UPLOAD_DIR (resolved) -> the folder mounted into sandboxes, or None: decided once per process, so
# every sandbox made by this process and the terminal's argv agree on whether the mount is there.
_decided: dict[Path, Path | None] = {}
_signature: dict[Path, tuple[int, int]] = {}  # the copy's (size, mtime) when this process last checked it
_broken: set[Path] = set()  # folders whose copy is gone and could not be put back (said once)


def static_problem(path: Path) -> str | None:
    """Why `path` is not a static ELF executable, or None: its program headers name no loader."""
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
                return f"{path} is not an ELF executable"
            wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
            if wide:
                offset, = struct.unpack_from(order + "Q", head, 32)
                size, count = struct.unpack_from(order + "HH", head, 54)
            else:
                offset, = struct.unpack_from(order + "I", head, 28)
                size, count = struct.unpack_from(order + "HH", head, 42)
            if size < 4 or count == 0:
                return f"{path} has no program headers"
            handle.seek(offset)
            table = handle.read(size * count)
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})"
    if len(table) < size * count:
        return f"{path} is cut short"
    for index in range(count):
        kind, = struct.unpack_from(order + "I", table, index * size)
        if kind == PT_INTERP:
            return f"{path} is dynamically linked (install busybox-static)"
    return None


def provide(upload_dir: Path) -> Path | None:
    """The folder holding the bot's busybox, ready to mount read-only at MOUNT, or None (then the
    terminal uses the image's `sh`). Decided on the first call, with one warning when it cannot be."""
    root = upload_dir.resolve()
    if root not in _decided:
        problem = static_problem(HOST_BUSYBOX)
        folder: Path | None = root / FOLDER
        if problem is None:
            problem = _install(HOST_BUSYBOX, root / FOLDER)
        if problem is not None:
            folder = None
            log.warning("%s: the terminal's timeouts and Stop run the sandbox image's own `sh` from its PATH, "
                        "which a sandbox can replace to outlive them", problem)
        _decided[root] = folder
    folder = _decided[root]
    if folder is not None:
        _heal(folder)
    return folder


def _heal(folder: Path) -> None:
    """Copy the busybox in again if someone removed or changed it since (sandboxes see the folder)."""
    try:
        now = (folder / "busybox").stat()
        if _signature.get(folder) == (now.st_size, now.st_mtime_ns):
            return
    except OSError:
        pass
    problem = _install(HOST_BUSYBOX, folder)
    if problem and folder not in _broken:
        _broken.add(folder)
        log.error("%s: commands in sandboxes fail until it is back", problem)
    elif not problem:
        _broken.discard(folder)


def _install(source: Path, folder: Path) -> str | None:
    """Put `source` at folder/busybox (0755), replaced atomically when it differs; None on success."""
    target = folder / "busybox"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(_MODE)  # the sandbox's own user (maybe not root) reads and runs it
        if "noexec" in (mount_flags(folder) or set()):
            return f"{folder} is on a noexec mount, so sandboxes could not run the bot's busybox"
        data = source.read_bytes()
        try:
            same = target.read_bytes() == data and (target.stat().st_mode & 0o7777) == _MODE
        except OSError:
            same = False
        if not same:
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=".busybox.")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(temporary, _MODE)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            log.info("copied %s to %s, mounted read-only at %s in every sandbox", source, target, BUSYBOX)
        now = target.stat()
    except OSError as exc:
        return f"could not copy {source} to {target} ({exc.strerror or exc})"
    _signature[folder] = (now.st_size, now.st_mtime_ns)
    return None
