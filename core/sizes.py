"""Sizes as people read them: one function, used wherever a size reaches a chat line or a log."""
from __future__ import annotations


def human_size(size: int) -> str:
    """Sizes as people read them in a chat line."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 ** 2:
        return f"{size / 1024:.0f} KB"
    value, unit = (size / 1024 ** 3, "GB") if size >= 1024 ** 3 else (size / 1024 ** 2, "MB")
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"
