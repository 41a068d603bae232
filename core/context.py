"""The context budget: every request fits the model's context (num_ctx), whatever the conversation.

Ollama cuts a request that is longer than its context from the start, silently: the model then
loses the earliest turns or its own instructions. So each request is built to fit: the system
prompt, the tools, a reserve for the reply and the conversation's window together stay within
`num_ctx`. Tokens are estimated from characters with a safety margin, and the estimate is
corrected per model from what the server reports (`prompt_eval_count`). The window is built
newest first: the latest user message and the latest round of commands always (cut with a
visible note when they alone are too long), older command results shrunk to their head and
tail, and whole older turns while they fit. What falls out is summarised once in a few lines
(one extra model call, stored, refreshed when more falls out), so the model keeps the gist.
The stored history is never changed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .sizes import human_size
from .store import IMAGE_REFS, ROW_ID

CHARS_PER_TOKEN = 3.5  # a first guess for a model whose tokenizer has not been seen yet
SAFETY = 1.15  # estimates are this much above what the characters suggest
RATIO_BOUNDS = (1.0, 4.0)  # what a learned chars-per-token may be (a cached prompt reports too few tokens)
MESSAGE_OVERHEAD = 16  # characters' worth of a message's role markers and separators
IMAGE_TOKENS = 768  # what one picture costs a vision model, about
KEEP_OLD_RESULT = 300  # characters kept of a command result older than the latest round (head and tail)
MIN_KEPT = 400  # the least of a cut message that stays
REFRESH_FILL = 0.5  # a new summary leaves this much of the budget to the window, so it is not redone every turn

OLD_RESULT_CUT = "\n[… {size} cut here; rerun the command to see it all …]\n"
LATEST_RESULT_CUT = "\n[… {size} of this output cut to fit the model's context …]\n"
MESSAGE_CUT = "\n[… the rest of this message ({size}) was cut: it did not fit the model's context …]"
SUMMARY_HEAD = ("Summary of the earlier part of this conversation (those messages are no longer shown to you; "
                "ask the user if you need their details):\n")


class TokenCounter:
    """Characters to tokens, per model, learning from the server's own counts."""

    def __init__(self) -> None:
        self._ratio: dict[str, float] = {}

    def ratio(self, model: str) -> float:
        """Characters per token to plan with (the safety margin included)."""
        return self._ratio.get(model, CHARS_PER_TOKEN) / SAFETY

    def tokens(self, model: str, chars: int) -> int:
        return math.ceil(chars / self.ratio(model))

    def chars(self, model: str, tokens: int) -> int:
        return max(0, int(tokens * self.ratio(model)))

    def observe(self, model: str, chars: int, prompt_tokens: int) -> None:
        """A request of `chars` characters was `prompt_tokens` tokens to the server."""
        if prompt_tokens <= 0 or chars <= 0:
            return
        seen = chars / prompt_tokens
        if seen > 2 * RATIO_BOUNDS[1]:
            return  # implausible: the server reused a cached prefix and counted only the rest
        old = self._ratio.get(model, CHARS_PER_TOKEN)
        self._ratio[model] = min(max(0.5 * old + 0.5 * seen, RATIO_BOUNDS[0]), RATIO_BOUNDS[1])


def message_chars(message: dict[str, Any]) -> int:
    """What one message weighs, in characters of the request."""
    size = MESSAGE_OVERHEAD + len(message.get("content") or "")
    if message.get("tool_calls"):
        size += len(json.dumps(message["tool_calls"], ensure_ascii=False))
    if message.get("thinking"):
        size += len(message["thinking"])
    return size


def request_chars(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    return sum(message_chars(m) for m in messages) + (len(json.dumps(tools)) if tools else 0)


def cut_middle(text: str, keep: int, note: str) -> str:
    """`text` in about `keep` characters: its head and its tail, with `note` (naming how much was cut)
    between. Left whole when cutting would save little."""
    if len(text) <= keep + 200:
        return text
    half = max(keep // 2, 1)
    gone = text[half:len(text) - half]
    return text[:half] + note.format(size=human_size(len(gone.encode()))) + text[-half:]


@dataclass(frozen=True)
class Seen:
    """How much of a conversation the model saw in its latest request (for /sessions and /help)."""

    shown: int  # messages, command results not counted
    summarized: bool  # and a summary of the rest
    num_ctx: int


@dataclass
class Window:
    """What one request carries of the conversation, and what it left out."""

    messages: list[dict[str, Any]]
    chars: int  # what the window weighs
    first_id: int | None  # the oldest message kept (None: none with an id)
    dropped: bool  # messages of the loaded window were left out for lack of room
    notes: list[str] = field(default_factory=list)  # what was cut and why, for the log


def _units(messages: list[dict[str, Any]]) -> tuple[list[list[dict[str, Any]]], int]:
    """The messages as units that stay whole (a turn's user message; an assistant message with its
    results), and the index of the unit holding the latest user message."""
    units: list[list[dict[str, Any]]] = []
    for message in messages:
        if message["role"] == "tool" and units:
            units[-1].append(message)
        else:
            units.append([message])
    latest = max((i for i, u in enumerate(units) if u[0]["role"] == "user"), default=0)
    return units, latest


def _weigh(unit: list[dict[str, Any]], image_chars: int) -> int:
    return sum(message_chars(m) + image_chars * len(m.get(IMAGE_REFS) or []) for m in unit)


def _newest_that_fit(units: list[list[dict[str, Any]]], left: int,
                     image_chars: int) -> tuple[list[list[dict[str, Any]]], int, bool]:
    """The newest of `units` that fit in `left` characters, newest first; what is left; whether all fit."""
    kept = []
    for unit in reversed(units):
        weight = _weigh(unit, image_chars)
        if weight > left:
            return kept, left, False
        kept.append(unit)
        left -= weight
    return kept, left, True


def fit(messages: list[dict[str, Any]], budget: int, *, image_chars: int = 0) -> Window:
    """The newest part of `messages` (a valid window, oldest first) that fits `budget` characters.

    Always kept: the latest user message and the latest round (the unit after it that comes last),
    cut in the middle with a note when they alone are larger than the budget. Command results
    older than the latest round shrink to head and tail. Then whole units, newest first: the
    rest of the current turn, then earlier turns, until one does not fit.
    """
    messages = [dict(m) for m in messages]
    units, latest = _units(messages)
    if not units:
        return Window([], 0, None, False)
    head = units[latest]
    rounds = units[latest + 1:]
    last_round = rounds[-1] if rounds else []
    notes: list[str] = []
    for unit in units:
        if unit is last_round:
            continue
        for message in unit:
            if message["role"] == "tool":
                message["content"] = cut_middle(message["content"], KEEP_OLD_RESULT, OLD_RESULT_CUT)

    must = _weigh(head, image_chars) + _weigh(last_round, image_chars)
    if must > budget:  # the latest round's results first, then the user's own message, are cut to fit
        results = [m for m in last_round if m["role"] == "tool"]
        over = must - budget
        for message in sorted(results, key=lambda m: len(m["content"]), reverse=True):
            if over <= 0:
                break
            before = len(message["content"])
            room = before - over - len(LATEST_RESULT_CUT) - 16  # the note takes room too
            message["content"] = cut_middle(message["content"], max(MIN_KEPT, room), LATEST_RESULT_CUT)
            over -= before - len(message["content"])
        if over > 0:
            user = head[0]
            before = len(user["content"])
            keep = max(MIN_KEPT, before - over - len(MESSAGE_CUT) - 16)
            if keep < before:
                rest = user["content"][keep:]
                user["content"] = user["content"][:keep] + MESSAGE_CUT.format(size=human_size(len(rest.encode())))
                notes.append(f"the user's message was cut from {before} to {keep} characters")
        if results:
            notes.append("the latest command output was cut to fit")
        must = _weigh(head, image_chars) + _weigh(last_round, image_chars)

    kept_rounds, left, complete = _newest_that_fit(rounds[:-1], budget - must, image_chars)
    earlier: list[list[dict[str, Any]]] = []
    if complete:
        earlier, left, complete = _newest_that_fit(units[:latest], left, image_chars)
    # A window never opens on an answer whose question fell out: it opens on a user message.
    while earlier and earlier[-1][0]["role"] != "user":
        left += _weigh(earlier.pop(), image_chars)
        complete = False
    ordered = [*reversed(earlier), head, *reversed(kept_rounds), *([last_round] if last_round else [])]
    if not complete and not earlier and len(kept_rounds) < len(rounds) - 1:
        notes.append(f"{len(rounds) - 1 - len(kept_rounds)} earlier command rounds of this turn left out")
    out = [m for unit in ordered for m in unit]
    first_id = next((m.get(ROW_ID) for m in out if m.get(ROW_ID) is not None), None)
    for message in out:
        message.pop(ROW_ID, None)
    return Window(out, budget - left, first_id, not complete, notes)


def summary_request(previous: str | None, fallen: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The messages of the one extra call that summarises what fell out of the window (`fallen`,
    oldest first, as History.between gives them), within `budget` characters."""
    lines = []
    for row in fallen:
        role = row.get("role")
        text = row.get("content") or ""
        if role == "tool":
            text = cut_middle(text, KEEP_OLD_RESULT, OLD_RESULT_CUT)
            lines.append(f"[command result] {text}")
        elif role == "assistant" and row.get("tool_calls"):
            calls = json.loads(row["tool_calls"]) if isinstance(row["tool_calls"], str) else row["tool_calls"]
            commands = "; ".join(str((c.get("function") or {}).get("arguments", ""))[:200] for c in calls)
            lines.append(f"[assistant ran] {commands}" + (f"\n{text}" if text else ""))
        else:
            lines.append(f"[{role}] {text}")
    room = max(budget - len(previous or "") - 1200, 2000)
    body = "\n".join(lines)
    if len(body) > room:
        body = "[… older part left out …]\n" + body[-room:]
    prompt = ("Update the running summary of a chat between a user and an assistant that can run shell commands "
              "in a Linux container. Keep what matters later: the user's goals and preferences, facts learned, "
              "files made or changed (with paths), decisions, and open questions. At most 200 words, plain "
              "sentences, no preamble.\n\n")
    if previous:
        prompt += f"The summary so far:\n{previous}\n\n"
    prompt += f"Messages to fold into it:\n{body}"
    return [{"role": "user", "content": prompt}]
