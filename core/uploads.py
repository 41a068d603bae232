"""Uploaded files: safe names, per-session folders, size caps, no half-written files."""
from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import stat
import subprocess
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, Iterable

import aiofiles
import aiofiles.os

from .errors import NotAFolder, UploadError

MAX_NAME = 120


def safe_filename(name: str) -> str:
    """A plain file name from whatever a user or a client sent: no folders, no tricks."""
    name = unicodedata.normalize("NFC", str(name)).replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if ch.isprintable() and ch not in '<>:"|?*')
    name = re.sub(r"\s+", " ", name).strip().lstrip(".").strip()
    if not name:
        return "upload"
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    if len(name) > MAX_NAME:
        ext = ext[:16]
        stem = (stem or "upload")[: MAX_NAME - len(ext) - 1]
        name = f"{stem}.{ext}" if ext else stem
    return name


def _free_path(folder: Path, name: str, overwrite: bool) -> Path:
    target = folder / name
    if overwrite or not target.exists():
        return target
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    for n in range(1, 10_000):
        candidate = folder / (f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}")
        if not candidate.exists():
            return candidate
    raise UploadError(f"Too many files named {name!r} in this session.")


USAGE_SECONDS = 5.0  # longer than any honest /data needs; a hostile tree gets a clear refusal instead


def _du_command(folder: Path) -> list[str]:
    # du walks iteratively in C (no recursion limit), counts allocated blocks (a 1 TB sparse file
    # counts what it really holds), never follows links, and runs in its own process: a hostile
    # tree costs a process we can kill, not the event loop or a thread the bot needs.
    return ["du", "-s", "-B1", "-P", "-x", str(folder)]


def _parse_du(folder: Path, output: bytes) -> int:
    """du's total, less the folder's own directory block (an empty /data uses nothing)."""
    try:
        return max(0, int(output.split()[0]) - os.lstat(folder).st_blocks * 512)
    except (IndexError, ValueError, OSError):
        raise UploadError("The size of this conversation's files could not be measured; please try again.") from None


TOO_MANY_FILES = ("This conversation's /data holds too many files to measure in time; delete some "
                  "(ask me to clean up /data) and send the file again.")


def folder_usage(folder: Path, seconds: float = USAGE_SECONDS) -> int:
    """Bytes `folder` takes on disk, for callers that may block (the synchronous upload_document)."""
    if not folder.exists():
        return 0
    try:
        done = subprocess.run(_du_command(folder), capture_output=True, timeout=seconds, check=False)
    except subprocess.TimeoutExpired:
        raise UploadError(TOO_MANY_FILES) from None
    return _parse_du(folder, done.stdout)


async def folder_usage_async(folder: Path, seconds: float = USAGE_SECONDS) -> int:
    """The same, without blocking the event loop or holding a thread for the walk."""
    if not await aiofiles.os.path.exists(folder):
        return 0
    process = await asyncio.create_subprocess_exec(*_du_command(folder), stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.DEVNULL)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=seconds)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise UploadError(TOO_MANY_FILES) from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return _parse_du(folder, output)


async def remove_folder(folder: Path) -> None:
    """Delete a folder tree however deep or large (rm walks iteratively, in its own process)."""
    if not await aiofiles.os.path.exists(folder):
        return
    process = await asyncio.create_subprocess_exec("rm", "-rf", "--one-file-system", "--", str(folder),
                                                   stderr=asyncio.subprocess.PIPE)
    _, error = await process.communicate()
    if process.returncode != 0:
        raise UploadError(f"The files could not all be deleted: {error.decode(errors='replace').strip()[:200]}")


class UploadStore:
    """Puts files into a session's folder (mounted at /data in its container)."""

    def __init__(self, max_file_bytes: int, max_session_bytes: int) -> None:
        self.max_file = max_file_bytes
        self.max_session = max_session_bytes

    def _check(self, folder: Path, size: int, name: str, used: int | None = None) -> None:
        if size > self.max_file:
            raise UploadError(f"{name} is {human_size(size)}, over the {human_size(self.max_file)} limit per file.")
        used = folder_usage(folder) if used is None else used
        if used + size > self.max_session:
            raise UploadError(
                f"{name} ({human_size(size)}) would take this conversation over its {human_size(self.max_session)} of uploads "
                f"({human_size(used)} used).")

    def copy(self, folder: Path, source: str | os.PathLike[str], *, name: str | None = None,
             overwrite: bool = False) -> Path:
        """Copy a local file in; the final name may gain a -N suffix to avoid clobbering."""
        src = Path(source)
        if not src.is_file():
            raise UploadError(f"{src.name or src} is not a readable file.")
        clean = safe_filename(name or src.name)
        folder.mkdir(parents=True, exist_ok=True)
        self._check(folder, src.stat().st_size, clean)
        target = _free_path(folder, clean, overwrite)
        part = folder / f".{uuid.uuid4().hex}.part"
        try:
            shutil.copyfile(src, part)
            os.replace(part, target)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise UploadError(f"{clean} could not be saved: {exc.strerror or exc}.") from exc
        return target

    async def write(self, folder: Path, name: str, chunks: AsyncIterable[bytes] | Iterable[bytes] | bytes, *,
                    size_hint: int | None = None, overwrite: bool = False) -> Path:
        """Stream bytes in with aiofiles; a file over the cap or cut short leaves nothing behind."""
        clean = safe_filename(name)
        await aiofiles.os.makedirs(folder, exist_ok=True)
        if size_hint is not None:
            self._check(folder, size_hint, clean, await folder_usage_async(folder))
        part = folder / f".{uuid.uuid4().hex}.part"
        written = 0
        try:
            async with aiofiles.open(part, "wb") as fh:
                async for chunk in _aiter(chunks):
                    written += len(chunk)
                    if written > self.max_file:
                        raise UploadError(f"{clean} is over the {human_size(self.max_file)} limit per file.")
                    await fh.write(chunk)
            if size_hint is None:
                self._check(folder, written, clean, await folder_usage_async(folder))
            target = _free_path(folder, clean, overwrite)
            await aiofiles.os.replace(part, target)
            return target
        except UploadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure mid-write: tell the user, keep nothing
            raise UploadError(f"{clean} could not be saved: {exc}.") from exc
        finally:
            if part.exists():
                part.unlink(missing_ok=True)


async def _aiter(chunks: AsyncIterable[bytes] | Iterable[bytes] | bytes):  # type: ignore[no-untyped-def]
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        yield bytes(chunks)
    elif hasattr(chunks, "__aiter__"):
        async for chunk in chunks:  # type: ignore[union-attr]
            yield chunk
    else:
        for chunk in chunks:  # type: ignore[union-attr]
            yield chunk


def human_size(size: int) -> str:
    """Sizes as people read them in a chat line."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 ** 2:
        return f"{size / 1024:.0f} KB"
    value, unit = (size / 1024 ** 3, "GB") if size >= 1024 ** 3 else (size / 1024 ** 2, "MB")
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


@dataclass(frozen=True)
class FileEntry:
    """One entry of a /data listing."""

    path: str  # relative to /data
    size: int
    modified: float  # seconds since the epoch
    kind: str  # "file", "folder" or "link" (a symbolic link is listed, never followed)


LIST_MAX = 500
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def shown_name(name: str) -> str:
    """A name as one line a person can read: control and invisible format characters (a newline, a
    right-to-left override) become visible escapes, so a sandbox cannot forge or disguise a line."""
    out = []
    for ch in name:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") or (ch.isspace() and ch != " "):
            out.append(ch.encode("unicode_escape").decode("ascii"))  # "\\n", "\\x1b", "\\u202e"
        else:
            out.append(ch)
    return "".join(out)


def _refusal(shown: str, error: OSError, opened: bool = False) -> UploadError:
    """One line for a path that changed, vanished or was swapped while it was walked."""
    if not opened and error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # gone, a file, a link
        return NotAFolder(f"{shown} is not a folder.")
    reason = os.strerror(error.errno).lower() if error.errno else "it changed while it was read"
    return UploadError(f"{shown} could not be listed ({reason}); try again.")


def list_folder(folder: Path, relative: str = "") -> list[FileEntry]:
    """What /data (or a folder inside it) holds, newest first, never leaving the sandbox's tree.

    The sandbox's root writes here and can swap any folder for a link to a host folder between a
    check and a use, so the walk goes by descriptor: each part is opened relative to its parent with
    O_NOFOLLOW|O_DIRECTORY (a link is refused, not followed), the listing reads that descriptor, and
    entries are stat'ed without following. A race is a one-line UploadError/NotAFolder, never a
    traceback. Blocking: call off the loop."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UploadError("Paths stay inside /data: no '..'.")
    shown = shown_name("/data/" + "/".join(parts)).rstrip("/")
    try:
        fd = os.open(folder, _OPEN_DIR)
    except FileNotFoundError:
        if parts:
            raise NotAFolder(f"{shown} is not a folder.") from None
        return []  # nothing uploaded yet
    except OSError as exc:
        raise _refusal(shown, exc) from None
    try:
        for part in parts:
            try:
                child = os.open(part, _OPEN_DIR, dir_fd=fd)
            except OSError as exc:
                raise _refusal(shown, exc) from None
            os.close(fd)
            fd = child
        entries = []
        try:
            with os.scandir(fd) as listing:
                for entry in listing:
                    if entry.name.startswith(".") and entry.name.endswith(".part"):
                        continue  # an upload being written
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted since the folder was read: not there any more
                    mode = info.st_mode
                    kind = "link" if stat.S_ISLNK(mode) else "folder" if stat.S_ISDIR(mode) else "file"
                    entries.append(FileEntry("/".join([*parts, entry.name]), info.st_size if kind == "file" else 0,
                                             info.st_mtime, kind))
                    if len(entries) >= LIST_MAX:
                        break
        except OSError as exc:  # the folder itself was opened: whatever happens now, it is no file to send
            raise _refusal(shown, exc, opened=True) from None
    finally:
        os.close(fd)
    return sorted(entries, key=lambda e: e.modified, reverse=True)
