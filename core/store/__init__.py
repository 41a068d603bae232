"""The store: one database and its table families, each behind its own object.

    store = Store(settings.database_url, settings)
    sid = await store.history.run(store.history.open_session, "alice", "general")
    await store.audit.run(store.audit.add, "alice", "general", "ls", exit_code=0, duration=0.1, output_bytes=3)
    model = (await store.places.model(Place(channel="10", server="1"))).value
    await store.places.set(Scope.server(1), by="admin", model="qwen3:8b")
    store.close()

- `database.py`: the connection (SQLite with WAL, or PostgreSQL), its thread pool (`run`), the
  write transaction, the tables made and the columns added since, closing.
- `history.py`: users, sessions, messages, summaries, and the window sent to the model.
- `audit.py`: every command a sandbox ran, and its retention.
- `places.py`: persona, model, mode and MCP servers per channel, server or everywhere (a typed `Scope`).
- `usage.py`: what each person used, per server, UTC day and model (turns, tokens, command time,
  files), for /usage, /admin usage and the daily budgets.
- `reach.py`: how far an admin sees: one server's conversations and commands, or everything.

The synchronous calls (History's, AuditLog's, UsageLog's) run on the store's threads through their `run`;
Places' calls are coroutines already. Table and column names are those of every earlier version,
so an existing database opens unchanged (a column added since is added when it opens).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import audit as _audit, history as _history, places as _places, usage as _usage
from .audit import Audit, AuditLog
from .database import AddedColumn, Database, Table, now
from .history import (
    IMAGE_REFS,
    INTERRUPTED_RESULT,
    ROW_ID,
    History,
    Message,
    Session,
    SessionInfo,
    Summary,
    User,
)
from .places import ALL, KEEP, MENTION, MODES, PROMPT_MAX_CHARS, THREAD, Choice, Place, Places, PlaceSetting, Scope
from .usage import NO_SERVER, USAGE_RETENTION_DAYS, Day, Report, Totals, Usage, UsageLog
from .reach import EVERYTHING, Reach

if TYPE_CHECKING:
    from ..config import Settings

T = TypeVar("T")
TABLES = (*_history.TABLES, *_audit.TABLES, *_places.TABLES, *_usage.TABLES)


class Store:
    """Everything the process keeps in its database: open once (per process or test), close at the end."""

    def __init__(self, url: str, settings: "Settings | None" = None) -> None:
        if settings is None:
            from ..config import Settings
            settings = Settings(database_url=url)
        self.database = Database(url, TABLES,
                                 (*_history.ADDED_COLUMNS, *_places.ADDED_COLUMNS, *_audit.ADDED_COLUMNS))
        self.history = History(self.database)
        self.audit = AuditLog(self.database)
        self.places = Places(self.database, settings)  # its fallbacks: SYSTEM_PROMPT and OLLAMA_MODEL
        self.usage = UsageLog(self.database)  # what each person used, per server, day and model

    @property
    def url(self) -> str:
        return self.database.url

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call any of the store's synchronous methods on its threads, without blocking the event loop."""
        return await self.database.run(fn, *args, **kwargs)

    def close(self) -> None:
        """Finish queued work and close the connections; closing twice is harmless."""
        self.database.close()


__all__ = [
    "ALL", "EVERYTHING", "IMAGE_REFS", "INTERRUPTED_RESULT", "KEEP", "MENTION", "MODES", "NO_SERVER",
    "PROMPT_MAX_CHARS", "ROW_ID", "THREAD", "USAGE_RETENTION_DAYS", "AddedColumn", "Audit", "AuditLog", "Choice",
    "Database", "Day", "History", "Message", "Place", "PlaceSetting", "Places", "Reach", "Report", "Scope", "Session",
    "SessionInfo", "Store", "Summary", "Table", "Totals", "Usage", "UsageLog", "User", "now",
]
