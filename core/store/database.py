"""The database itself: connection (SQLite by default, PostgreSQL through DATABASE_URL), its own
thread pool, the write transaction, tables and the columns added to them since, closing.

Everything in the store is synchronous peewee; the engine calls it through `Database.run`, which
uses the store's own small thread pool (one thread for SQLite, its only writer), never asyncio's
shared default executor: a slow Docker daemon or a pile of uploads can then never delay storing
a message. The table families (history.py, audit.py, places.py) define their tables on `Table`
and write inside `Database.write()`; none of them connects, migrates or owns a thread.
"""
from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, ContextManager, Iterable, TypeVar

from peewee import DatabaseProxy, Field, Model
from playhouse.db_url import connect

T = TypeVar("T")
SERVER_DB_THREADS = 4  # PostgreSQL and MySQL take concurrent writers
SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "foreign_keys": 1, "busy_timeout": 5000}

# Every table is bound to this proxy; the Database opened last in the process is the one behind it.
_proxy = DatabaseProxy()


def now() -> datetime:
    """The store's clock: UTC without a time zone (how every timestamp column holds it)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Table(Model):
    """The base of every table of the store."""

    class Meta:
        database = _proxy


@dataclass(frozen=True)
class AddedColumn:
    """A column added to a table after databases were made with it (create_tables never alters a
    table): added when a database opens without it. The field must allow NULL or have a default."""

    table: str
    column: str
    field: Field


class Database:
    """One connection (per thread) to DATABASE_URL, its tables made and brought up to date."""

    def __init__(self, url: str, tables: Iterable[type[Table]] = (),
                 added_columns: Iterable[AddedColumn] = ()) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///"):]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            db = connect(url, pragmas=SQLITE_PRAGMAS)
        else:
            db = connect(url)
        _proxy.initialize(db)
        self.db = db  # the peewee database, for raw SQL (tests, benchmarks)
        with db.connection_context():
            db.create_tables(list(tables), safe=True)
            _add_missing_columns(db, added_columns)
        threads = 1 if self.is_sqlite else SERVER_DB_THREADS
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call one of the store's (synchronous) methods on its own threads, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def write(self) -> ContextManager[Any]:
        """A write transaction. SQLite's deferred transactions fail at once ("database is locked")
        when two threads both read and then write; BEGIN IMMEDIATE waits for the lock instead.
        Nested, it is a savepoint of the outer one."""
        if self.is_sqlite:
            return self.db.atomic(lock_type="IMMEDIATE")
        return self.db.atomic()

    def close(self) -> None:
        """Finish queued work, then close the pool's connection (peewee's are per thread) and the caller's.
        Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._close_connection).result()
        self._executor.shutdown(wait=True)
        self._close_connection()

    def _close_connection(self) -> None:
        if not self.db.is_closed():
            self.db.close()


def _add_missing_columns(db: Any, added: Iterable[AddedColumn]) -> None:
    """Columns added since a database was made."""
    missing = []
    for change in added:
        if change.column not in {c.name for c in db.get_columns(change.table)}:
            missing.append(change)
    if missing:
        from playhouse.migrate import SchemaMigrator, migrate
        migrator = SchemaMigrator.from_database(db)
        migrate(*(migrator.add_column(c.table, c.column, c.field) for c in missing))
