"""Persona and model per place: a channel (or thread), its parent channel, a server, or everywhere.

Operators set them at run time (the bot's /admin prompt and /admin model); they are stored in
the database, so they survive restarts, and kept in memory, so a turn never waits on a query to
learn them. The most specific place that sets a value wins; SYSTEM_PROMPT and OLLAMA_MODEL are
the fallbacks. A persona adds to the built-in instructions (core/prompt.py), never replaces them.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from peewee import CharField, DateTimeField, TextField

from .errors import EngineError
from .history import _Base, _now

if TYPE_CHECKING:
    from .config import Settings
    from .history import History

EVERYWHERE = "default"
KEEP = object()  # Places.set: leave this field as it is
PROMPT_MAX_CHARS = 4000  # operator text rides on every request: keep room for the conversation


class PlaceSetting(_Base):
    """What operators chose for one place; a None field means "as the wider place says"."""

    scope = CharField(max_length=191, primary_key=True)  # "channel:<id>", "server:<id>" or "default"
    prompt = TextField(null=True)
    model = CharField(max_length=191, null=True)
    updated_by = CharField(max_length=191, default="")
    updated_at = DateTimeField(default=_now)

    class Meta:
        table_name = "place_settings"


@dataclass(frozen=True)
class Place:
    """Where a conversation happens. Without a server it is a DM or a caller outside Discord."""

    channel: str | None = None
    parent: str | None = None  # a thread's channel: what its channel sets applies inside the thread
    server: str | None = None

    def scopes(self) -> list[str]:
        """Most specific first, ending with the bot-wide default."""
        found = [f"channel:{c}" for c in (self.channel, self.parent) if c]
        if self.server:
            found.append(f"server:{self.server}")
        return found + [EVERYWHERE]


def channel_scope(channel: str | int) -> str:
    return f"channel:{channel}"


def server_scope(server: str | int) -> str:
    return f"server:{server}"


@dataclass(frozen=True)
class Choice:
    """One value in effect, and the scope it comes from ("SYSTEM_PROMPT"/"OLLAMA_MODEL" for the env)."""

    value: str
    source: str


class Places:
    """All place settings of the process, loaded once, written through to the database."""

    def __init__(self, history: "History", settings: "Settings") -> None:
        self.history = history
        self.settings = settings
        self._rows: dict[str, PlaceSetting] | None = None
        self._loading = asyncio.Lock()

    async def _table(self) -> dict[str, PlaceSetting]:
        if self._rows is None:
            async with self._loading:
                if self._rows is None:
                    self._rows = await self.history.run(self._load)
        return self._rows

    def _load(self) -> dict[str, PlaceSetting]:
        self.history.db.create_tables([PlaceSetting], safe=True)
        return {row.scope: row for row in PlaceSetting.select()}

    async def prompt(self, place: Place) -> Choice:
        """The operator text for a turn here; an empty value when none applies."""
        fallback = self.settings.system_prompt
        return await self._nearest(place, "prompt") or Choice(fallback, "SYSTEM_PROMPT" if fallback else "")

    async def model(self, place: Place) -> Choice:
        return await self._nearest(place, "model") or Choice(self.settings.ollama_model, "OLLAMA_MODEL")

    async def _nearest(self, place: Place, field: str) -> Choice | None:
        """The value the most specific scope of `place` sets for `field`."""
        rows = await self._table()
        for scope in place.scopes():
            value = getattr(rows.get(scope), field, None)
            if value:
                return Choice(value, scope)
        return None

    async def own(self, scope: str) -> PlaceSetting | None:
        """What this exact scope sets (not what it inherits)."""
        return (await self._table()).get(scope)

    async def overrides(self) -> dict[str, PlaceSetting]:
        return dict(await self._table())

    async def model_overrides(self) -> int:
        """How many servers and channels use a model of their own (the bot-wide default not counted)."""
        return sum(1 for scope, row in (await self._table()).items() if row.model and scope != EVERYWHERE)

    async def set(self, scope: str, *, by: str, prompt: object = KEEP, model: object = KEEP) -> None:
        """Change one scope's prompt and/or model: a string sets it, None clears it, KEEP leaves it."""
        if isinstance(prompt, str):
            prompt = prompt.strip()
            if len(prompt) > PROMPT_MAX_CHARS:
                raise EngineError(f"The persona is {len(prompt)} characters long; the limit is {PROMPT_MAX_CHARS}.")
            prompt = prompt or None
        rows = await self._table()
        current = rows.get(scope)
        new_prompt = (current.prompt if current is not None else None) if prompt is KEEP else prompt
        new_model = (current.model if current is not None else None) if model is KEEP else model
        row = await self.history.run(self._save, scope, new_prompt, new_model, by)
        if row is None:
            rows.pop(scope, None)
        else:
            rows[scope] = row

    def _save(self, scope: str, prompt: object, model: object, by: str) -> PlaceSetting | None:
        with self.history._write():
            if prompt is None and model is None:
                PlaceSetting.delete().where(PlaceSetting.scope == scope).execute()
                return None
            values = {"prompt": prompt, "model": model, "updated_by": by, "updated_at": _now()}
            if not PlaceSetting.update(**values).where(PlaceSetting.scope == scope).execute():
                PlaceSetting.create(scope=scope, **values)
            return PlaceSetting.get_by_id(scope)
