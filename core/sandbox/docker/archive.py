"""Files in and out of a container through the engine's archive endpoint: a one-file tar each way.

Reading asks the engine to stat the path first (no bytes move), refuses what is not a regular
file or is over the caller's limit, then streams the tar with a cap (the file may grow meanwhile)
and takes the one regular file out of it. Writing packs the bytes into a one-file tar for the
engine to unpack in the file's folder.
"""
from __future__ import annotations

import base64
import io
import json
import posixpath
import tarfile
import time
from typing import Any

from ...errors import SandboxFileError, SandboxFileTooLarge

# Go's os.FileMode type bits (dir, symlink, device, pipe, socket, char device, irregular), as the
# engine reports them in X-Docker-Container-Path-Stat: none set means a regular file.
GO_FILE_TYPE_BITS = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)
TAR_OVERHEAD = 64 * 1024  # headers and padding around one file in an archive
CHUNK = 1 << 16  # how much of the tar is read at a time


def parse_stat(path: str, status: int, header: str) -> dict[str, Any]:
    """The engine's stat of `path` from its answer to a HEAD on the archive endpoint."""
    if status == 404:
        raise SandboxFileError(f"{path} does not exist in the sandbox.")
    if status >= 400 or not header:
        raise SandboxFileError(f"{path} could not be read (Docker answered {status}).")
    return json.loads(base64.b64decode(header))


def check_stat(path: str, stat: dict[str, Any], max_bytes: int) -> None:
    """Refuse, before any byte moves, what is not a regular file or is over `max_bytes`."""
    if int(stat.get("mode", 0)) & GO_FILE_TYPE_BITS:
        raise SandboxFileError(f"{path} is not a regular file.")
    if int(stat.get("size", 0)) > max_bytes:
        raise SandboxFileTooLarge(f"{path} is {stat.get('size')} bytes, over the {max_bytes}-byte limit.")


def too_large(path: str, max_bytes: int) -> SandboxFileTooLarge:
    return SandboxFileTooLarge(f"{path} is over the {max_bytes}-byte limit.")


def unpack_one(path: str, body: bytes, max_bytes: int) -> bytes:
    """The one regular file of a tar the engine sent for `path`, at most max_bytes + 1 of it."""
    try:
        with tarfile.open(fileobj=io.BytesIO(body)) as archive:
            member = next((m for m in archive.getmembers() if m.isreg()), None)
            handle = archive.extractfile(member) if member is not None else None
            if handle is None:
                raise SandboxFileError(f"{path} is not a regular file.")
            return handle.read(max_bytes + 1)
    except (tarfile.TarError, EOFError) as exc:
        # The engine cuts its archive short when the file shrinks or grows as it is copied (the
        # sandbox may be writing it): a tool error the model can act on, not a failed turn.
        raise SandboxFileError(f"{path} changed while it was read; try again.") from exc


def pack_one(path: str, data: bytes) -> tuple[str, bytes]:
    """(the folder to unpack in, a one-file tar) that writes `data` at the absolute `path`."""
    if not path.startswith("/") or path.endswith("/"):
        raise SandboxFileError(f"{path} must be an absolute path to a file.")
    folder, base = posixpath.split(posixpath.normpath(path))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo(base)
        member.size, member.mode, member.mtime = len(data), 0o644, int(time.time())
        tar.addfile(member, io.BytesIO(data))
    return folder, buffer.getvalue()
