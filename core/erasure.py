"""Deleting conversations for good: what a person asks to be forgotten (/forget, /admin forget) and
what HISTORY_RETENTION_DAYS lets go, along one path, so neither keeps what the other deletes.

In order: every running reply of those conversations stops (its partial answer is stored as it
ends, and so deleted with the rest); each sandbox and its /data go through the provider, under
its locks (mounts and disk images released); what the process keeps in memory about them (cut
outputs, what the model saw) is dropped; then the history rows (messages, summaries, the
conversations) in one transaction. The audit log is not touched here: it has its own retention.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from .parts import Parts
    from .registry import SessionRegistry

# (its id in the history, or None when only a sandbox or a folder is left of it; user; session)
Conversation = tuple["int | None", str, str]


@dataclass
class Erased:
    """What was deleted."""

    conversations: int = 0
    messages: int = 0
    sandboxes: int = 0
    folders: int = 0


async def erase(parts: "Parts", registry: "SessionRegistry", conversations: Iterable[Conversation], *,
                spare: Callable[[str, str], bool] | None = None, unused_since: datetime | None = None) -> Erased:
    """Delete these conversations and everything of theirs but the audit rows. For a sweep (nobody
    asked): `spare(user, session)` keeps one that got to work meanwhile, and `unused_since` keeps
    the history of one used since then (the sweep's cutoff); the running replies are then left alone."""
    todo = list(conversations)
    erased = Erased()
    if spare is None:
        for _, user, session in todo:  # first: nothing of theirs runs any more
            await registry.cancel((user, session))
    sandboxes = parts.sandboxes
    present = {(c.user, c.session) for c in await sandboxes.info()} if todo else set()
    done = []
    for sid, user, session in todo:
        key = (user, session)
        if spare is not None and spare(user, session):  # a message came in since they were picked
            continue
        done.append(sid)
        if sandboxes.data_dir(user, session).exists():
            erased.folders += 1
        if key in present:
            erased.sandboxes += 1
        await sandboxes.delete_data(user, session)  # the sandbox goes first, under the provider's locks
        parts.outputs.forget(key)
        parts.context_seen.pop(key, None)
        parts.told_no_vision.discard(key)
    ids = [sid for sid in done if sid is not None]
    if ids:
        erased.conversations, erased.messages = await parts.history.run(parts.history.delete_sessions, ids,
                                                                        unused_since)
    return erased
