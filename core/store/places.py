"""Persona and model per place: a channel (or thread), its parent channel, a server, or everywhere.

Operators set them at run time (the bot's /admin prompt and /admin model); they are stored in
the database, so they survive restarts, and kept in memory, so a turn never waits on a query to
learn them. The most specific place that sets a value wins; SYSTEM_PROMPT and OLLAMA_MODEL (or
OPENAI_MODEL, with MODEL_API=openai) are the fallbacks. A persona adds to the built-in
instructions (core/prompt.py), never replaces them.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from peewee import CharField, DateTimeField, TextField

from ..errors import EngineError
from .database import Database, Table, now

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)
KEEP = object()  # Places.set: leave this field as it is
PROMPT_MAX_CHARS = 4000  # operator text rides on every request: keep room for the conversation
_EVERYWHERE_STORED = "default"  # how the bot-wide scope has always been stored


@dataclass(frozen=True)
class Scope:
    """Where a setting applies: one channel (a thread follows its channel), one server, or
    everywhere (the bot-wide default: DMs, and servers without a setting of their own).

    Made with `Scope.channel(id)`, `Scope.server(id)` or `Scope.everywhere()`. `str(scope)` is
    its stored form ("channel:<id>", "server:<id>", "default"); `Scope.parse` reads it back.
    """

    CHANNEL: ClassVar[str] = "channel"
    SERVER: ClassVar[str] = "server"
    EVERYWHERE: ClassVar[str] = "everywhere"

    kind: Literal["channel", "server", "everywhere"]
    id: str = ""  # the channel's or the server's id; "" for everywhere

    def __post_init__(self) -> None:
        if self.kind in (Scope.CHANNEL, Scope.SERVER):
            if not isinstance(self.id, str) or not self.id:
                raise ValueError(f"a {self.kind} scope needs the {self.kind}'s id as a non-empty string")
        elif self.kind != Scope.EVERYWHERE or self.id:
            raise ValueError(f"not a scope: {self.kind!r}, {self.id!r}")

    @classmethod
    def channel(cls, channel: str | int) -> "Scope":
        return cls(cls.CHANNEL, str(channel))  # type: ignore[arg-type]

    @classmethod
    def server(cls, server: str | int) -> "Scope":
        return cls(cls.SERVER, str(server))  # type: ignore[arg-type]

    @classmethod
    def everywhere(cls) -> "Scope":
        return cls(cls.EVERYWHERE)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, stored: str) -> "Scope":
        """The scope `str(scope)` gave; ValueError for anything else."""
        if stored == _EVERYWHERE_STORED:
            return cls.everywhere()
        kind, colon, ref = stored.partition(":")
        if colon and kind in (cls.CHANNEL, cls.SERVER) and ref:
            return cls(kind, ref)  # type: ignore[arg-type]
        raise ValueError(f"not a stored scope: {stored!r}")

    def __str__(self) -> str:
        return _EVERYWHERE_STORED if self.kind == Scope.EVERYWHERE else f"{self.kind}:{self.id}"


class PlaceSetting(Table):
    """What operators chose for one place; a None field means "as the wider place says"."""

    scope = CharField(max_length=191, primary_key=True)  # str(Scope): "channel:<id>", "server:<id>" or "default"
    prompt = TextField(null=True)
    model = CharField(max_length=191, null=True)
    updated_by = CharField(max_length=191, default="")
    updated_at = DateTimeField(default=now)

    class Meta:
        table_name = "place_settings"


TABLES = (PlaceSetting,)


@dataclass(frozen=True)
class Place:
    """Where a conversation happens. Without a server it is a DM or a caller outside Discord."""

    channel: str | None = None
    parent: str | None = None  # a thread's channel: what its channel sets applies inside the thread
    server: str | None = None

    def scopes(self) -> list[Scope]:
        """Most specific first, ending with the bot-wide default."""
        found = [Scope.channel(c) for c in (self.channel, self.parent) if c]
        if self.server:
            found.append(Scope.server(self.server))
        return found + [Scope.everywhere()]


@dataclass(frozen=True)
class Choice:
    """One value in effect, and where it comes from: the Scope that sets it, or the name of the
    setting it falls back to ("SYSTEM_PROMPT", "OLLAMA_MODEL"; "" when no persona applies at all)."""

    value: str
    source: Scope | str


class Places:
    """All place settings of the process, loaded once, written through to the database."""

    def __init__(self, database: Database, settings: "Settings") -> None:
        self.database = database
        self.settings = settings
        self._rows: dict[Scope, PlaceSetting] | None = None
        self._loading = asyncio.Lock()

    async def _table(self) -> dict[Scope, PlaceSetting]:
        if self._rows is None:
            async with self._loading:
                if self._rows is None:
                    self._rows = await self.database.run(self._load)
        return self._rows

    def _load(self) -> dict[Scope, PlaceSetting]:
        rows = {}
        for row in PlaceSetting.select():
            try:
                rows[Scope.parse(row.scope)] = row
            except ValueError:
                log.warning("ignoring the place setting of an unknown scope %r", row.scope)
        return rows

    async def prompt(self, place: Place) -> Choice:
        """The operator text for a turn here; an empty value when none applies."""
        fallback = self.settings.system_prompt
        return await self._nearest(place, "prompt") or Choice(fallback, "SYSTEM_PROMPT" if fallback else "")

    async def model(self, place: Place) -> Choice:
        """The model for a turn here: a plain name is MODEL_API's, `openai:<name>` or `ollama:<name>` the
        other backend's (core/model_backend.py); OLLAMA_MODEL or OPENAI_MODEL where no place sets one."""
        return await self._nearest(place, "model") or Choice(*self.settings.default_model)

    async def _nearest(self, place: Place, field: str) -> Choice | None:
        """The value the most specific scope of `place` sets for `field`."""
        rows = await self._table()
        for scope in place.scopes():
            value = getattr(rows.get(scope), field, None)
            if value:
                return Choice(value, scope)
        return None

    async def own(self, scope: Scope) -> PlaceSetting | None:
        """What this exact scope sets (not what it inherits)."""
        return (await self._table()).get(_checked(scope))

    async def overrides(self) -> dict[Scope, PlaceSetting]:
        return dict(await self._table())

    async def model_overrides(self) -> int:
        """How many servers and channels use a model of their own (the bot-wide default not counted)."""
        return sum(1 for scope, row in (await self._table()).items() if row.model and scope.kind != Scope.EVERYWHERE)

    async def set(self, scope: Scope, *, by: str, prompt: object = KEEP, model: object = KEEP) -> None:
        """Change one scope's prompt and/or model: a string sets it, None clears it, KEEP leaves it."""
        _checked(scope)
        if isinstance(prompt, str):
            prompt = prompt.strip()
            if len(prompt) > PROMPT_MAX_CHARS:
                raise EngineError(f"The persona is {len(prompt)} characters long; the limit is {PROMPT_MAX_CHARS}.")
            prompt = prompt or None
        rows = await self._table()
        current = rows.get(scope)
        new_prompt = (current.prompt if current is not None else None) if prompt is KEEP else prompt
        new_model = (current.model if current is not None else None) if model is KEEP else model
        row = await self.database.run(self._save, str(scope), new_prompt, new_model, by)
        if row is None:
            rows.pop(scope, None)
        else:
            rows[scope] = row

    def _save(self, scope: str, prompt: object, model: object, by: str) -> PlaceSetting | None:
        with self.database.write():
            if prompt is None and model is None:
                PlaceSetting.delete().where(PlaceSetting.scope == scope).execute()
                return None
            values = {"prompt": prompt, "model": model, "updated_by": by, "updated_at": now()}
            if not PlaceSetting.update(**values).where(PlaceSetting.scope == scope).execute():
                PlaceSetting.create(scope=scope, **values)
            return PlaceSetting.get_by_id(scope)


def _checked(scope: Scope) -> Scope:
    """A Scope, never its stored string (a caller still passing "server:1" would match nothing)."""
    if not isinstance(scope, Scope):
        raise TypeError(f"a Scope is needed (Scope.channel/server/everywhere), not {scope!r}")
    return scope
