"""Daily budgets per person: USER_DAILY_TOKENS and USER_DAILY_COMMAND_SECONDS (0: none), counted
over all of a person's servers for the UTC day, from the usage table (core/store/usage.py).

A turn is checked once, before it starts (Runtime.check_budget: one query, none when no budget
is set); past a budget it is refused with BudgetSpent, whose one line says which budget and when
it resets. The refused message is not stored (the line asks to send it again then), and a
running reply is left alone. A turn that crosses a budget midway finishes; the next is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from .errors import BudgetSpent
from .store import Totals

if TYPE_CHECKING:
    from .config import Settings

TOKENS = "tokens"
COMMAND_TIME = "command time"
REFUSAL = "You've used today's {amount}; it resets at 00:00 UTC (in {wait}): send your message again then."


def human_duration(seconds: float) -> str:
    """A duration as people write it: 45 s, 12 min 5 s, 3 h 12 min."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    if minutes:
        parts.append(f"{minutes} min")
    if secs and not hours:
        parts.append(f"{secs} s")
    return " ".join(parts)


def until_reset(at: datetime) -> str:
    """How long from `at` (naive UTC) until the next 00:00 UTC, in whole minutes rounded up."""
    midnight = datetime.combine(at.date() + timedelta(days=1), datetime.min.time())
    return human_duration(60 * math.ceil((midnight - at).total_seconds() / 60))


def week_start(day: date) -> date:
    """The Monday of `day`'s week: /usage's "this week"."""
    return day - timedelta(days=day.weekday())


@dataclass(frozen=True)
class Allowance:
    """One daily budget, and what of it is used today."""

    what: str  # TOKENS or COMMAND_TIME
    limit: float
    used: float

    @property
    def left(self) -> float:
        return max(0.0, self.limit - self.used)

    @property
    def spent(self) -> bool:
        return self.used >= self.limit

    @property
    def left_words(self) -> str:
        """What is left today, briefly: "198,710 left", "29 min 59 s left", "none left"."""
        if self.spent:
            return "none left"
        return f"{int(self.left):,} left" if self.what == TOKENS else f"{human_duration(self.left)} left"

    def amount(self, value: float) -> str:
        """`value` of this budget in words: "200,000 tokens", "30 min of command time"."""
        return f"{int(value):,} tokens" if self.what == TOKENS else f"{human_duration(value)} of command time"


def allowances(settings: "Settings", today: Totals) -> list[Allowance]:
    """The daily budgets that are set, with today's use of each."""
    found = []
    if settings.user_daily_tokens:
        found.append(Allowance(TOKENS, settings.user_daily_tokens, today.tokens))
    if settings.user_daily_command_seconds:
        found.append(Allowance(COMMAND_TIME, settings.user_daily_command_seconds, today.command_seconds))
    return found


def refusal(settings: "Settings", today: Totals, at: datetime) -> BudgetSpent | None:
    """The error refusing a turn at `at` (naive UTC) when a budget is used up; None when none is."""
    for allowance in allowances(settings, today):
        if allowance.spent:
            line = REFUSAL.format(amount=allowance.amount(allowance.limit), wait=until_reset(at))
            return BudgetSpent(line, user=line)
    return None


@dataclass(frozen=True)
class PersonalUsage:
    """What /usage shows a person: today, this week (since Monday), the budgets set and the wait
    until they reset."""

    today: Totals
    week: Totals
    allowances: list[Allowance]
    resets_in: str
