"""What a message's attachments add to its turn: pictures for a vision model, small text files quoted.

Every attachment is saved in /data first (core/uploads.py); this decides what else the model gets
straight away, so it can answer without a command: the paths of pictures (sent as images when the
model can see), and the text of small text files.
"""
from __future__ import annotations

from .images import sniff
from .sizes import human_size


def quoted_text(path: str, data: bytes, limit: int) -> str | None:
    """A small text file as a quoted block, or None (too large, binary, or not UTF-8)."""
    if not data or len(data) > limit or b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    fence = "```"
    while fence in text:  # a fence longer than any inside, so the quote cannot be closed early
        fence += "`"
    return f"[{path}, {human_size(len(data))}]\n{fence}\n" \
           f"{text.rstrip()}\n{fence}"


def compose(text: str, saved: list[tuple[str, bytes]], inline_limit: int) -> tuple[str, list[str]]:
    """The turn's text (uploads named, small text files quoted, then what the user wrote) and the
    paths of the pictures among the uploads."""
    if not saved:
        return text, []
    pictures = [path for path, data in saved if sniff(data)]
    blocks = [f"[uploaded: {', '.join(path for path, _ in saved)}]"]
    for path, data in saved:
        if path not in pictures and inline_limit:
            quote = quoted_text(path, data, inline_limit)
            if quote:
                blocks.append(quote)
    if text:
        blocks.append(text)
    return "\n".join(blocks), pictures
