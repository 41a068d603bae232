"""The audit log: one row per command a sandbox ran, kept apart from the conversation (so /reset
never erases it) and dropped after AUDIT_RETENTION_DAYS. Each row names the server the command ran
for (None: a DM, or a row from before servers were recorded), so a server's managers read their
own server's only; a person's /forget blanks the command text of theirs and keeps the rest."""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable, Iterable, TypeVar

from peewee import AutoField, BooleanField, CharField, DateTimeField, FloatField, IntegerField, TextField

from .database import AddedColumn, Database, Table, now
from .reach import EVERYTHING, Reach

T = TypeVar("T")


class Audit(Table):
    """One command a sandbox ran."""

    id = AutoField()
    created_at = DateTimeField(default=now, index=True)
    user = CharField(max_length=191)
    session = CharField(max_length=191)
    server = CharField(max_length=191, null=True)  # the server (guild) id; None: a DM, or unknown (older rows)
    command = TextField()  # "" once its person asked to be forgotten
    exit_code = IntegerField(null=True)
    duration = FloatField(default=0.0)
    output_bytes = IntegerField(default=0)
    timed_out = BooleanField(default=False)
    cancelled = BooleanField(default=False)

    class Meta:
        table_name = "audit"
        indexes = ((("user", "session", "id"), False),)


TABLES = (Audit,)
ADDED_COLUMNS = (AddedColumn("audit", "server", CharField(max_length=191, null=True)),)


class AuditLog:
    """Every command run in a sandbox. Its methods are synchronous: call them through `run`."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call one of these methods on the store's threads, without blocking the event loop."""
        return await self.database.run(fn, *args, **kwargs)

    def add(self, user: str, session: str, command: str, *, exit_code: int | None, duration: float,
            output_bytes: int, timed_out: bool = False, cancelled: bool = False, server: str | None = None) -> None:
        with self.database.write():
            Audit.create(user=user, session=session, server=server, command=command, exit_code=exit_code,
                         duration=duration, output_bytes=output_bytes, timed_out=timed_out, cancelled=cancelled)

    def latest(self, user: str | None = None, session: str | None = None, limit: int = 20, *,
               reach: Reach = EVERYTHING) -> list[Audit]:
        """The latest commands within `reach`, newest first, narrowed to a user and/or a session."""
        query = Audit.select().order_by(Audit.id.desc()).limit(limit)
        if user is not None:
            query = query.where(Audit.user == user)
        if session is not None:
            query = query.where(Audit.session == session)
        if not reach.everywhere:
            query = query.where(reach.where(Audit.server))
        return list(query)

    def blank(self, user: str, reach: Reach = EVERYTHING, channels: Iterable[str] = ()) -> int:
        """Remove the command text of a person's rows within `reach` (they asked to be forgotten); the
        rows stay, for AUDIT_RETENTION_DAYS. The number of their rows kept. `channels`: the server's
        channels (and the person's conversations there), whose rows from before servers were
        recorded (no server) are the server's too: a channel belongs to one server for good."""
        mine = Audit.user == user
        wheres = [mine]
        if not reach.everywhere:
            old = sorted(set(channels))
            wheres = [mine & reach.where(Audit.server)] + [
                mine & Audit.server.is_null() & Audit.session.in_(old[start:start + 500])
                for start in range(0, len(old), 500)]  # well under every database's limit of parameters
        with self.database.write():
            kept = 0
            for where in wheres:
                Audit.update(command="").where(where & (Audit.command != "")).execute()
                kept += Audit.select().where(where).count()
            return kept

    def purge(self, older_than: timedelta) -> int:
        """Delete the rows older than `older_than`; the number deleted."""
        with self.database.write():
            return Audit.delete().where(Audit.created_at < now() - older_than).execute()
