"""The conversations' /data folders on this machine: which there are, what they hold, how much.

Each conversation's /data is a folder below UPLOAD_DIR (one folder per person, one per
conversation inside it; the provider names them). A sandbox's root writes there, so nothing here
trusts what it finds: the listing walks by descriptor and never follows a link, sizes come from
`du` in a process of its own that a time box can kill, and deletion is `rm` in its own process.
"""
from __future__ import annotations

import asyncio
import errno
import os
import stat
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import aiofiles.os

from ..errors import NotAFolder, WorkspaceError


# -- the folders ---------------------------------------------------------------------------------
def folders_of(user_root: Path) -> list[Path]:
    """The /data folders of one person (each conversation's), on this machine."""
    try:
        return [p for p in user_root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                and not p.name.endswith(".moving")]
    except OSError:
        return []


def session_of(folder: Path) -> str:
    """The session a /data folder belongs to, as its name spells it (exact for Discord ids)."""
    return folder.name.rsplit("-", 1)[0]


# -- sizes ---------------------------------------------------------------------------------------
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
        raise WorkspaceError("The size of this conversation's files could not be measured; please try again.") \
            from None


TOO_MANY_FILES = ("This conversation's /data holds too many files to measure in time; delete some "
                  "(ask me to clean up /data) and send the file again.")


def folder_usage(folder: Path, seconds: float = USAGE_SECONDS) -> int:
    """Bytes `folder` takes on disk, for callers that may block (the synchronous upload_document)."""
    if not folder.exists():
        return 0
    try:
        done = subprocess.run(_du_command(folder), capture_output=True, timeout=seconds, check=False)
    except subprocess.TimeoutExpired:
        raise WorkspaceError(TOO_MANY_FILES) from None
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
        raise WorkspaceError(TOO_MANY_FILES) from None
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
        raise WorkspaceError(f"The files could not all be deleted: {error.decode(errors='replace').strip()[:200]}")


# -- the listing ---------------------------------------------------------------------------------
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


def _refusal(shown: str, error: OSError, opened: bool = False) -> WorkspaceError:
    """One line for a path that changed, vanished or was swapped while it was walked."""
    if not opened and error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # gone, a file, a link
        return NotAFolder(f"{shown} is not a folder.")
    reason = os.strerror(error.errno).lower() if error.errno else "it changed while it was read"
    return WorkspaceError(f"{shown} could not be listed ({reason}); try again.")


def list_folder(folder: Path, relative: str = "") -> list[FileEntry]:
    """What /data (or a folder inside it) holds, newest first, never leaving the sandbox's tree.

    The sandbox's root writes here and can swap any folder for a link to a host folder between a
    check and a use, so the walk goes by descriptor: each part is opened relative to its parent with
    O_NOFOLLOW|O_DIRECTORY (a link is refused, not followed), the listing reads that descriptor, and
    entries are stat'ed without following. A race is a one-line WorkspaceError/NotAFolder, never a
    traceback. Blocking: call off the loop."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise WorkspaceError("Paths stay inside /data: no '..'.")
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
