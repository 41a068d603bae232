"""Splitting long replies for Discord's 2,000-character limit."""
from __future__ import annotations

import pytest

from bot.formatting import inline_code, split_message, thinking_line


def fences_balanced(chunk: str) -> bool:
    return sum(1 for line in chunk.split("\n") if line.strip().startswith("```")) % 2 == 0


def test_short_text_is_one_message() -> None:
    assert split_message("hello\nworld") == ["hello\nworld"]


def test_long_text_splits_at_line_boundaries() -> None:
    lines = [f"line {i} " + "x" * 50 for i in range(200)]
    chunks = split_message("\n".join(lines))
    assert len(chunks) > 1 and all(len(c) <= 2000 for c in chunks)
    assert "\n".join(chunks).split("\n") == lines  # nothing lost, no line cut


def test_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i})  # " + "y" * 40 for i in range(120))
    text = f"Here you go:\n```python\n{code}\n```\nDone."
    chunks = split_message(text)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk) <= 2000 and fences_balanced(chunk), chunk[-80:]
    assert chunks[1].startswith("```python\n")
    assert chunks[0].endswith("\n```")
    body = [l for c in chunks for l in c.split("\n") if not l.startswith("```")]
    assert body == [l for l in text.split("\n") if not l.startswith("```")]


def test_a_single_huge_line_is_cut_anyway() -> None:
    chunks = split_message("z" * 5000)
    assert all(len(c) <= 2000 for c in chunks) and "".join(chunks) == "z" * 5000


@pytest.mark.parametrize("limit", [100, 500, 2000])
def test_limits_hold_for_mixed_content(limit: int) -> None:
    text = ("para " * 30 + "\n```sh\n" + "echo hi\n" * 40 + "```\n") * 5
    for chunk in split_message(text, limit):
        assert len(chunk) <= limit and fences_balanced(chunk)


def test_inline_code_is_one_safe_line() -> None:
    assert inline_code("echo `id`\nrm -rf /tmp/x") == "`echo ˋidˋ rm -rf /tmp/x`"
    assert len(inline_code("a" * 500)) <= 82


def test_thinking_is_collapsed_to_one_short_subtext_line() -> None:
    line = thinking_line("word " * 200)
    assert line.startswith("-# 💭 …") and "\n" not in line and len(line) < 180
