"""How far an admin's view and actions go: one server's conversations and commands, or all of them.

A public bot sits in many servers: a server's managers see and act on their own server only,
the bot's admins (ADMIN_USER_IDS) on everything. Conversations and audit rows carry the server
(guild) id they happened in; DMs carry none, nor do rows written before the column existed
(unknown): those only `Reach.everything()` covers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reach:
    """Made with `Reach.within(server_id)` (a server's managers) or `Reach.everything()` (the bot's
    admins: every server, DMs, and rows of unknown server)."""

    server: str | None  # None: everything

    def __post_init__(self) -> None:
        if self.server is not None and (not isinstance(self.server, str) or not self.server):
            raise ValueError("a server's reach needs the server's id as a non-empty string")

    @classmethod
    def within(cls, server: str | int) -> "Reach":
        return cls(str(server))

    @classmethod
    def everything(cls) -> "Reach":
        return cls(None)

    @property
    def everywhere(self) -> bool:
        return self.server is None

    def covers(self, server: str | None) -> bool:
        """Whether a row of this server (None: a DM, or unknown) is within reach."""
        return self.server is None or server == self.server

    def where(self, column: Any) -> Any:
        """The SQL condition on a server column (None: no condition)."""
        return None if self.server is None else column == self.server

    def __str__(self) -> str:
        return "everything" if self.server is None else f"server:{self.server}"


EVERYTHING = Reach.everything()
