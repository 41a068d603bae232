"""What a message's attachments add to its turn: pictures for a vision model, small text files quoted.

Every attachment is saved in /data first (core/uploads.py); this decides what else the model gets
straight away, so it can answer without a command: the paths of pictures (sent as images when the
model can see), and the text of small text files. In chat-only mode (TOOLS=off) the model has no
other way to a file: a longer text file is quoted in part, and any other file is named as unseen.
"""
from __future__ import annotations

import posixpath

from .images import sniff
from .sizes import human_size


def quoted_text(path: str, data: bytes, limit: int, *, cut: bool = False) -> str | None:
    """A small text file as a quoted block, or None (binary, not UTF-8, or too large; with `cut`, a
    larger one is quoted up to `limit` bytes, at a line's end where it can, and says so)."""
    if not data or limit <= 0 or b"\x00" in data or (len(data) > limit and not cut):
        return None
    shown = data[:limit]
    try:
        text = shown.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(shown) == len(data) or exc.start < len(shown) - 3:  # not UTF-8, not merely a character cut in two
            return None
        text = shown[:exc.start].decode("utf-8")
    head = f"[{path}, {human_size(len(data))}]"
    if len(shown) < len(data):
        line_end = text.rfind("\n")
        if line_end > len(text) // 2:
            text = text[:line_end]
        head = f"[{path}, {human_size(len(data))}; only its first {human_size(len(text.encode()))} are quoted]"
    fence = "```"
    while fence in text:  # a fence longer than any inside, so the quote cannot be closed early
        fence += "`"
    return f"{head}\n{fence}\n{text.rstrip()}\n{fence}"


def compose(text: str, saved: list[tuple[str, bytes]], inline_limit: int, *,
            commands: bool = True) -> tuple[str, list[str]]:
    """The turn's text (uploads named, small text files quoted, then what the user wrote) and the
    paths of the pictures among the uploads. Without `commands` (chat-only mode) files are named
    without their /data paths, which the model could not use."""
    if not saved:
        return text, []
    pictures = [path for path, data in saved if sniff(data)]
    named = [(path if commands else posixpath.basename(path), path, data) for path, data in saved]
    blocks = [f"[{'uploaded' if commands else 'attached'}: {', '.join(name for name, _, _ in named)}]"]
    for name, path, data in named:
        if path in pictures:
            continue
        quote = quoted_text(name, data, inline_limit, cut=not commands)
        if quote:
            blocks.append(quote)
        elif not commands:
            blocks.append(f"[{name}, {human_size(len(data))}: not shown to you, and you cannot open files here]")
    if text:
        blocks.append(text)
    return "\n".join(blocks), pictures
