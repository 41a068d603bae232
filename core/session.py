"""ChatSession: the engine's public face, one conversation of one user."""
from __future__ import annotations

import asyncio
import json
import os
import posixpath
from pathlib import Path
from typing import Any, AsyncIterable, AsyncIterator, Iterable, Sequence

from .config import Settings
from .errors import EngineError, UploadError
from .events import Event, Ignored, Replacing, TextDelta
from .store import Place
from .registry import Phase
from .sandbox.quota import DELETE_SOME, UserDisk
from .sandbox.workspace import FileEntry
from .uploads import safe_filename

FORGETTING = "Your data is being deleted right now; send this again in a moment."
from .runtime import Runtime, get_runtime
from .tool_loop import TurnEnd
from .tools import data_path


class ChatSession:
    """`async with ChatSession(user=..., session=...) as chat:` then chat_stream / upload_document.

    The container and the history outlive the object: a new ChatSession for
    the same pair resumes both.
    """

    def __init__(self, user: str | int, session: str | int, *, place: Place | None = None,
                 file_limit: int = 0, settings: Settings | None = None, runtime: Runtime | None = None,
                 prewarm: bool = True) -> None:
        self.user = str(user)
        self.session = str(session)
        # Where persona and model come from, and the server the conversation is in (stored when it
        # opens; none for a DM); by default the session is its own channel, in no server.
        self.place = place or Place(channel=self.session)
        # The most one reply's files (send_file) may weigh where they are delivered, e.g. a Discord
        # channel's upload limit; 0: only SEND_FILE_MAX_BYTES.
        self.file_limit = file_limit
        self._settings = settings
        self._runtime = runtime
        # Start the sandbox in the background on opening, so the first command waits less; off for
        # what only looks at /data (a /files listing starts nothing).
        self.prewarm = prewarm
        self.session_id: int | None = None
        self._forgotten = False  # opened while the person's data here was being deleted: nothing opened

    async def __aenter__(self) -> "ChatSession":
        self._runtime = self._runtime or get_runtime(self._settings)
        self._runtime.start_background()
        if self._runtime.being_forgotten(self.user, self.place.server):
            self._forgotten, self.session_id = True, 0  # no conversation made, no sandbox started: refused below
            return self
        history = self._runtime.history
        self.session_id = await history.run(history.open_session, self.user, self.session, self.place.server)
        if self.prewarm:
            self._runtime.prewarm(self.user, self.session)
        return self

    def _refuse_while_forgotten(self, error: type[EngineError] = EngineError) -> None:
        """Nothing new of a person starts while their data here is being deleted (Runtime.forget_person)."""
        if self._forgotten or self.runtime.being_forgotten(self.user, self.place.server):
            raise error(FORGETTING)

    async def __aexit__(self, *exc_info: Any) -> None:
        return None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None or self.session_id is None:
            raise RuntimeError("use ChatSession inside `async with`")
        return self._runtime

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.session)

    @property
    def phase(self) -> Phase | None:
        """STREAMING, TOOL, or None when no reply is running."""
        return self.runtime.registry.phase(self.key)

    @property
    def upload_folder(self) -> Path:
        return self.runtime.sandboxes.data_dir(self.user, self.session)

    # -- uploads ----------------------------------------------------------
    def upload_document(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Copy a local file into the session's /data; returns its path inside the container."""
        folder = self.runtime.sandboxes.prepare_data_sync(self.user, self.session)
        target = self.runtime.uploads.copy(folder, path, overwrite=overwrite)
        return f"/data/{target.name}"

    async def save_upload(self, name: str, data: bytes | Iterable[bytes] | AsyncIterable[bytes], *,
                          size: int | None = None, overwrite: bool = False) -> str:
        """Stream bytes (e.g. a Discord attachment) into /data without blocking the loop."""
        self._refuse_while_forgotten(UploadError)
        rt = self.runtime
        box = rt.sandboxes.get(self.user, self.session)
        try:
            async with box.in_use():  # its image stays mounted meanwhile
                folder = await rt.sandboxes.prepare_data(self.user, self.session)
                await box.share_disk()  # the room USER_DISK leaves, for this one
                target = await rt.uploads.write(folder, name, data, size_hint=size, overwrite=overwrite)
        except UploadError as exc:
            disk = await self.disk_usage()
            if size is None and isinstance(data, (bytes, bytearray)):
                size = len(data)
            if disk.full or (size and size > disk.limit - disk.total):  # the person's total is what it ran into
                raise UploadError(f"{safe_filename(name)} does not fit. {disk.line()} {DELETE_SOME}") from exc
            raise
        return f"/data/{target.name}"

    async def list_files(self, path: str = "") -> list[FileEntry]:
        """What /data (or a folder in it) holds, newest first; links are listed, never followed."""
        return await self.runtime.list_files(self.user, self.session, path)

    async def disk_usage(self) -> UserDisk:
        """What this person's conversations hold in /data together, against USER_DISK."""
        return await self.runtime.user_disk(self.user)

    async def read_file(self, path: str, max_bytes: int, *, exact: bool = False) -> bytes:
        """A file of the sandbox (e.g. /data/report.pdf) through the sandbox backend, so a link
        planted in /data resolves inside the sandbox; SandboxFileError when missing or over max_bytes.
        `exact`: `path` is one list_files gave, used as it is (a name may end in a space or a newline)."""
        full = posixpath.normpath(posixpath.join("/data", path)) if exact else data_path(path)
        return await self.runtime.sandboxes.get(self.user, self.session).read_file(full, max_bytes)

    # -- chat -------------------------------------------------------------
    async def events(self, text: str, *, images: Sequence[str] = ()) -> AsyncIterator[Event]:
        """Everything a turn does, as events; raises EngineError with a message fit for a user
        (BudgetSpent, before anything starts, when the person has used up a daily budget).
        `images`: /data paths of pictures that came with the message (a vision model sees them)."""
        if not text or not text.strip():
            raise EngineError("The message is empty.")
        rt = self.runtime
        self._refuse_while_forgotten()
        await rt.check_budget(self.user)  # past a daily budget: refused; the message is not kept, a running reply stays
        generation = rt.registry.begin(self.key)
        if generation is None:
            yield Ignored()
            return
        task = asyncio.create_task(rt.turns.run(generation, self.session_id, self.user, self.session, text,
                                                 self.place, images=images, file_limit=self.file_limit),
                                   name=f"turn-{self.user}-{self.session}")
        rt.registry.attach(generation, task)
        if generation.previous is not None:
            yield Replacing()
        try:
            while True:
                for item in await generation.outbox.take():  # all that came since the last look, pieces joined
                    if isinstance(item, TurnEnd):
                        if item.error is not None:
                            raise item.error
                        return
                    yield item
        finally:
            if not task.done():  # the caller stopped listening: stop the turn too
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def chat_stream(self, text: str, *, images: Sequence[str] = ()) -> AsyncIterator[str]:
        """The reply's text as it streams; nothing at all when the message was ignored."""
        async for event in self.events(text, images=images):
            if isinstance(event, TextDelta):
                yield event.text

    async def stop(self) -> bool:
        """Stop the reply now running in this session (a Stop button): a running command is killed,
        the partial reply kept as incomplete. False when nothing was running."""
        return await self.runtime.registry.cancel(self.key, stopped=True)

    # -- management -------------------------------------------------------
    async def history(self) -> list[dict[str, Any]]:
        """Every stored message of this conversation, oldest first."""
        rows = await self.runtime.history.run(self.runtime.history.messages, self.session_id)
        return [{"role": r.role, "content": r.content, "tool_calls": r.tool_calls, "tool_name": r.tool_name,
                 "complete": r.complete, "images": json.loads(r.images) if r.images else [],
                 "created_at": r.created_at} for r in rows]

    async def remove_sandbox(self, *, delete_files: bool = False) -> bool:
        """Stop any running reply and remove the sandbox; with `delete_files`, this conversation's /data
        too. The history stays (a one-off run, run.py --attach, leaves nothing else behind). False
        when there was no sandbox."""
        removed = await self.runtime.stop_session(self.user, self.session)
        if delete_files:
            await self.runtime.sandboxes.delete_data(self.user, self.session)
        return removed

    async def reset(self, *, keep_container: bool = False, delete_files: bool = False) -> int:
        """Stop any running reply, clear the history, and (unless kept) recreate the container.

        `delete_files` also empties /data now (the sandbox is then always recreated, never kept
        with its folder gone); the audit log of commands is never touched.
        """
        self._refuse_while_forgotten()
        rt = self.runtime
        keep_container = keep_container and not delete_files
        if keep_container:
            await rt.registry.cancel(self.key)
        else:
            await self.remove_sandbox(delete_files=delete_files)
        removed = await rt.history.run(rt.history.clear, self.session_id)
        if not keep_container:
            rt.prewarm(self.user, self.session)
        return removed
