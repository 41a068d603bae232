"""A person's conversations as files they can take away (/export): JSON, gzipped or split when large.

One file when it fits the place it is sent to (`limit`, e.g. a Discord channel's upload limit);
else the same JSON gzipped; else several gzipped files, each a valid document of its own holding
whole conversations where they fit (a conversation too long for one file is split by its
messages, each piece saying which part it is). Blocking (JSON and gzip): run it on a thread of its
own (Runtime.export_pool), never on the event loop nor on the store's thread (SQLite's only writer).
"""
from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from typing import Any

FORMAT = "llmbot-export-1"
GZIP_LEVEL = 6
SPLIT_MARGIN = 0.8  # a piece aims below the limit by this much: text compresses unevenly


class ExportTooLarge(Exception):
    """The export would need more files than `max_files`."""

    def __init__(self, files: int) -> None:
        super().__init__(f"the export needs {files} files")
        self.files = files


def document(user: str, conversations: list[dict[str, Any]], *, part: int = 1, parts: int = 1) -> dict[str, Any]:
    """The exported document: who, when, which part, and the conversations (oldest first)."""
    return {"format": FORMAT, "user": user,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "part": part, "parts": parts, "conversations": conversations}


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, indent=1).encode()


def export_files(user: str, conversations: list[dict[str, Any]], limit: int,
                 max_files: int = 20) -> list[tuple[str, bytes]]:
    """(file name, bytes) for each file, none over `limit`; ExportTooLarge past `max_files` files."""
    base = f"conversations-{user}"
    whole = _dump(document(user, conversations))
    if len(whole) <= limit:
        return [(f"{base}.json", whole)]
    packed = gzip.compress(whole, GZIP_LEVEL)
    if len(packed) <= limit:
        return [(f"{base}.json.gz", packed)]
    budget = max(1024, int(limit * len(whole) / len(packed) * SPLIT_MARGIN))  # raw bytes per piece
    while True:
        pieces = _pieces(conversations, budget)
        if len(pieces) > max_files:
            raise ExportTooLarge(len(pieces))
        files = [gzip.compress(_dump(document(user, piece, part=n, parts=len(pieces))), GZIP_LEVEL)
                 for n, piece in enumerate(pieces, 1)]
        if all(len(f) <= limit for f in files) or budget <= 1024:
            width = len(str(len(files)))
            return [(f"{base}-part{n:0{width}d}of{len(files)}.json.gz", f) for n, f in enumerate(files, 1)]
        budget //= 2


def _pieces(conversations: list[dict[str, Any]], budget: int) -> list[list[dict[str, Any]]]:
    """The conversations in groups of about `budget` raw bytes each; a longer one split by its
    messages into pieces marked {"piece": k, "pieces": n} (its other fields repeated)."""
    return _packed([piece for conversation in conversations for piece in _split(conversation, budget)], budget)


def _packed(items: list[Any], room: int) -> list[list[Any]]:
    """The items in their order, in groups of about `room` bytes of JSON each (one heavier than
    that alone in its group); one empty group when there are none."""
    groups: list[list[Any]] = [[]]
    size = 0
    for item in items:
        weight = len(_dump(item))
        if groups[-1] and size + weight > room:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += weight
    return groups


def _split(conversation: dict[str, Any], budget: int) -> list[dict[str, Any]]:
    if len(_dump(conversation)) <= budget:
        return [conversation]
    head = {k: v for k, v in conversation.items() if k != "messages"}
    chunks = _packed(conversation["messages"], max(1, budget - len(_dump(head))))
    return [{**head, "piece": n, "pieces": len(chunks), "messages": chunk} for n, chunk in enumerate(chunks, 1)]
