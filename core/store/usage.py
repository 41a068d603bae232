"""Usage: what each person used, per server, UTC day and model, for /usage, /admin usage and the
daily budgets (core/budgets.py).

One row per (user, server, day, model) holds turns, tokens in and out (the model server's own
counts: `prompt_eval_count`, `eval_count`, the context summaries included), command seconds and
files sent. A turn adds to it as it goes (an upsert after each request to the model and each round
of commands, never a write per streamed piece), and whatever way it ended: a failed or stopped turn
counts what it used. Counted only at a turn's end, a turn kept waiting on long commands would hide
what it spent from the budget check of its person's next messages. A DM, or a caller outside
Discord, is stored with the server "" (not NULL: a unique index counts NULLs as distinct, so the
upsert would never find its row). What a turn uses counts on the day it is used.

Rows hold counts only, never content. They are kept USAGE_RETENTION_DAYS (400: a year can be set
beside the one before), dropped by the hourly retention sweep, and deleted at once by `forget`
(/forget). `clock` is the store's "now" for usage (UTC, naive): tests move it to another day
instead of waiting for midnight.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Callable, TypeVar

from peewee import EXCLUDED, AutoField, BigIntegerField, CharField, DateField, FloatField, IntegerField, fn

from .database import Database, Table, now

T = TypeVar("T")
USAGE_RETENTION_DAYS = 400
NO_SERVER = ""  # how a DM (or a caller outside Discord) is stored


class Usage(Table):
    """What one person used in one server, on one UTC day, with one model."""

    id = AutoField()
    day = DateField(index=True)
    user = CharField(max_length=191)
    server = CharField(max_length=191, default=NO_SERVER)
    model = CharField(max_length=191)
    turns = IntegerField(default=0)
    tokens_in = BigIntegerField(default=0)
    tokens_out = BigIntegerField(default=0)
    command_seconds = FloatField(default=0.0)
    files_sent = IntegerField(default=0)

    class Meta:
        table_name = "usage"
        indexes = ((("user", "server", "day", "model"), True), (("server", "day"), False))


TABLES = (Usage,)
_KEY = (Usage.user, Usage.server, Usage.day, Usage.model)
_COUNTS = (Usage.turns, Usage.tokens_in, Usage.tokens_out, Usage.command_seconds, Usage.files_sent)


@dataclass(frozen=True)
class Totals:
    """Counts added up over some rows."""

    turns: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    command_seconds: float = 0.0
    files_sent: int = 0

    @property
    def tokens(self) -> int:
        """What USER_DAILY_TOKENS counts: tokens read and written alike."""
        return self.tokens_in + self.tokens_out

    @classmethod
    def of(cls, row: Any) -> "Totals":
        """From a row of sums (None where nothing was summed; PostgreSQL sums integers as decimals)."""
        turns, tokens_in, tokens_out, seconds, files = (v or 0 for v in row)
        return cls(int(turns), int(tokens_in), int(tokens_out), float(seconds), int(files))


@dataclass(frozen=True)
class Day:
    """One day of a report, for the chart."""

    day: date
    turns: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass(frozen=True)
class Report:
    """Usage over `since`..`until` (UTC days, both included) in one server or all of them."""

    since: date
    until: date
    people: list[tuple[str, Totals]] = field(default_factory=list)  # the top users, most tokens first
    days: list[Day] = field(default_factory=list)  # every day of the span, in order, empty days included


class UsageLog:
    """The usage table's reads and writes. Its methods are synchronous: call them through `run`."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = now) -> None:
        self.database = database
        self.clock = clock

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call one of these methods on the store's threads, without blocking the event loop."""
        return await self.database.run(fn, *args, **kwargs)

    def today(self) -> date:
        return self.clock().date()

    def add(self, user: str, server: str | None, model: str, *, turns: int = 1, tokens_in: int = 0,
            tokens_out: int = 0, command_seconds: float = 0.0, files_sent: int = 0) -> None:
        """Add one turn's use to today's row for (user, server, model), made if it is the first."""
        values = {Usage.day: self.today(), Usage.user: user, Usage.server: server or NO_SERVER, Usage.model: model,
                  Usage.turns: turns, Usage.tokens_in: tokens_in, Usage.tokens_out: tokens_out,
                  Usage.command_seconds: command_seconds, Usage.files_sent: files_sent}
        added = {column: column + getattr(EXCLUDED, column.column_name) for column in _COUNTS}
        with self.database.write():
            Usage.insert(values).on_conflict(conflict_target=_KEY, update=added).execute()

    def spent(self, user: str, day: date | None = None) -> Totals:
        """A person's use on one day (default today) over every server and model: what budgets count."""
        return self.totals(user, day or self.today(), day or self.today())

    def totals(self, user: str, since: date, until: date | None = None) -> Totals:
        """A person's use from `since` to `until` (default today), every server and model."""
        query = (Usage.select(*(fn.SUM(c) for c in _COUNTS))
                 .where(Usage.user == user, Usage.day >= since, Usage.day <= (until or self.today())))
        return Totals.of(query.tuples().get())

    def report(self, server: str | None, days: int, top: int = 10) -> Report:
        """The last `days` days (today included) in one server (None: every server, DMs too): its
        `top` users by tokens, and each day's turns and tokens."""
        until = self.today()
        since = until - timedelta(days=days - 1)
        scope = [Usage.day >= since, Usage.day <= until]
        if server is not None:
            scope.append(Usage.server == server)
        tokens = fn.SUM(Usage.tokens_in + Usage.tokens_out)
        people = (Usage.select(Usage.user, *(fn.SUM(c) for c in _COUNTS)).where(*scope).group_by(Usage.user)
                  .order_by(tokens.desc(), Usage.user).limit(top).tuples())
        daily = {row[0]: row[1:] for row in
                 Usage.select(Usage.day, fn.SUM(Usage.turns), fn.SUM(Usage.tokens_in), fn.SUM(Usage.tokens_out))
                 .where(*scope).group_by(Usage.day).tuples()}
        return Report(since, until, [(row[0], Totals.of(row[1:])) for row in people],
                      [Day(d, *(int(v or 0) for v in daily.get(d, (0, 0, 0))))
                       for d in (since + timedelta(days=n) for n in range(days))])

    def forget(self, user: str, server: str | None = None) -> int:
        """Delete a person's rows, everywhere or in one server ("" for DMs); how many went."""
        query = Usage.delete().where(Usage.user == user)
        if server is not None:
            query = query.where(Usage.server == server)
        with self.database.write():
            return query.execute()

    def purge(self, older_than: timedelta) -> int:
        """Delete the days more than `older_than` before today; how many rows went."""
        with self.database.write():
            return Usage.delete().where(Usage.day < self.today() - older_than).execute()
