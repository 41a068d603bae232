"""Text shaping for Discord: 2,000-character messages that never break a code block."""
from __future__ import annotations

from datetime import datetime, timezone

from core import Totals, human_duration, inline_code, thinking_line  # noqa: F401 - the wording is shared with run.py

LIMIT = 2000
FENCE = "```"


def split_message(text: str, limit: int = LIMIT) -> list[str]:
    """Split at line boundaries; a code block cut in two is closed and reopened with its language."""
    reserve = len(FENCE) + 1  # room to close a block that is open at the cut
    chunks: list[str] = []
    lines: list[str] = []
    size = 0
    fence: str | None = None  # the language tag of the open block, "" for none

    def cut() -> None:
        nonlocal lines, size
        body = lines + ([FENCE] if fence is not None else [])
        if any(line.strip() for line in lines):
            chunks.append("\n".join(body))
        lines = [FENCE + fence] if fence is not None else []
        size = len(lines[0]) + 1 if lines else 0

    for line in text.split("\n"):
        for piece in _hard_split(line, limit - reserve - 32):
            if lines and size + len(piece) + 1 + reserve > limit:
                cut()
            lines.append(piece)
            size += len(piece) + 1
            stripped = piece.strip()
            if stripped.startswith(FENCE):
                fence = stripped[len(FENCE):].strip() if fence is None else None
    if any(line.strip() for line in lines):
        chunks.append("\n".join(lines))
    return chunks or [""]


def _hard_split(line: str, width: int) -> list[str]:
    """A line longer than a message is cut at spaces where it can be, else anywhere."""
    if len(line) <= width:
        return [line]
    pieces = []
    while len(line) > width:
        at = line.rfind(" ", width // 2, width)
        at = at if at > 0 else width
        pieces.append(line[:at])
        line = line[at:].lstrip(" ") if at != width else line[at:]
    pieces.append(line)
    return pieces


def stamp(moment: datetime) -> str:
    """A moment (naive UTC) that Discord shows as a relative time in each reader's own time zone."""
    return f"<t:{int(moment.replace(tzinfo=timezone.utc).timestamp())}:R>"


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def totals_line(totals: Totals) -> str:
    """Usage added up, as /usage and /admin usage show it."""
    return (f"{plural(totals.turns, 'turn')} · {totals.tokens_in:,} tokens in · {totals.tokens_out:,} out · "
            f"{human_duration(totals.command_seconds)} of commands · {plural(totals.files_sent, 'file')} sent")
