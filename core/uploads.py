"""Uploaded files: safe names, per-session folders, size caps, no half-written files."""
from __future__ import annotations

import os
import re
import shutil
import unicodedata
import uuid
from pathlib import Path
from typing import AsyncIterable, Iterable

import aiofiles
import aiofiles.os

from .errors import UploadError, WorkspaceError
from .sandbox.workspace import folder_usage, folder_usage_async
from .sizes import human_size

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


def _used(folder: Path) -> int:
    """What the folder holds now; an upload's refusal when it cannot be measured."""
    try:
        return folder_usage(folder)
    except WorkspaceError as exc:
        raise UploadError(str(exc)) from exc


async def _used_async(folder: Path) -> int:
    """The same, without blocking the event loop."""
    try:
        return await folder_usage_async(folder)
    except WorkspaceError as exc:
        raise UploadError(str(exc)) from exc


class UploadStore:
    """Puts files into a session's folder (mounted at /data in its container)."""

    def __init__(self, max_file_bytes: int, max_session_bytes: int) -> None:
        self.max_file = max_file_bytes
        self.max_session = max_session_bytes

    def _check(self, folder: Path, size: int, name: str, used: int | None = None) -> None:
        if size > self.max_file:
            raise UploadError(f"{name} is {human_size(size)}, over the {human_size(self.max_file)} limit per file.")
        used = _used(folder) if used is None else used
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
            self._check(folder, size_hint, clean, await _used_async(folder))
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
                self._check(folder, written, clean, await _used_async(folder))
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
