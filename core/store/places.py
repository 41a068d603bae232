"""Persona, model, mode and MCP servers per place: a channel (or thread), its parent channel, a
server, or everywhere.

Operators set them at run time (the bot's /admin prompt, /admin model, /admin channel and /admin
tools); they are stored in the database, so they survive restarts, and kept in memory, so a turn
never waits on a query to learn them. The most specific place that sets a value wins;
SYSTEM_PROMPT, OLLAMA_MODEL (or OPENAI_MODEL, with MODEL_API=openai) and FREE_RESPONSE_CHANNEL_IDS
are the fallbacks. A persona adds to the built-in instructions (core/prompt.py), never replaces
them. The mode says which messages in a channel are answered: on a mention (or a reply), every
message, or each mention in a thread of its own. MCP servers are on everywhere unless a place
turns one off; each server is decided by the most specific place that says anything about it (a
channel can turn on what its server turned off).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Collection, Literal

from peewee import CharField, DateTimeField, TextField

from ..errors import EngineError
from .database import AddedColumn, Database, Table, now

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)
KEEP = object()  # Places.set: leave this field as it is
PROMPT_MAX_CHARS = 4000  # operator text rides on every request: keep room for the conversation
_EVERYWHERE_STORED = "default"  # how the bot-wide scope has always been stored
# Which messages in a channel are answered: mentions and replies only; every message; or a mention
# starts a thread for its answer (in the bot's own threads, every message).
MENTION, ALL, THREAD = "mention", "all", "thread"
MODES = (MENTION, ALL, THREAD)


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
    mode = CharField(max_length=16, null=True)  # one of MODES
    tools = TextField(null=True)  # MCP servers turned on or off here: JSON {"server name": true or false}
    updated_by = CharField(max_length=191, default="")
    updated_at = DateTimeField(default=now)

    class Meta:
        table_name = "place_settings"


TABLES = (PlaceSetting,)
ADDED_COLUMNS = (AddedColumn("place_settings", "mode", CharField(max_length=16, null=True)),
                 AddedColumn("place_settings", "tools", TextField(null=True)))


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

    async def mode(self, place: Place, free_response: Collection[int] = ()) -> Choice:
        """Which messages are answered here (one of MODES). Where no scope sets it, a channel (or a
        thread's channel) in `free_response` (FREE_RESPONSE_CHANNEL_IDS) answers all, others mentions."""
        found = await self._nearest(place, "mode")
        if found is not None:
            return found
        if any(c and c.isdigit() and int(c) in free_response for c in (place.channel, place.parent)):
            return Choice(ALL, "FREE_RESPONSE_CHANNEL_IDS")
        return Choice(MENTION, "")

    async def _nearest(self, place: Place, field: str) -> Choice | None:
        """The value the most specific scope of `place` sets for `field`."""
        rows = await self._table()
        for scope in place.scopes():
            value = getattr(rows.get(scope), field, None)
            if value:
                return Choice(value, scope)
        return None

    async def tools_off(self, place: Place) -> frozenset[str]:
        """The MCP servers turned off here: for each server, the most specific place that sets it decides."""
        return frozenset(server for server, (on, _) in (await self.tool_choices(place)).items() if not on)

    async def tool_choices(self, place: Place) -> dict[str, tuple[bool, Scope]]:
        """Each MCP server some place around this one turns on or off: (on, the scope that decides)."""
        rows = await self._table()
        decided: dict[str, tuple[bool, Scope]] = {}
        for scope in place.scopes():
            for server, on in _servers(rows.get(scope)).items():
                decided.setdefault(server, (on, scope))
        return decided

    async def tool_servers(self, scope: Scope) -> dict[str, bool]:
        """What this exact scope sets for MCP servers (not what it inherits)."""
        return _servers(await self.own(scope))

    async def set_tool_server(self, scope: Scope, server: str, on: bool | None, *, by: str) -> None:
        """Turn one MCP server on or off in this scope; None: as the wider place says again."""
        servers = await self.tool_servers(scope)
        if on is None:
            servers.pop(server, None)
        else:
            servers[server] = on
        await self.set(scope, by=by, tools=servers or None)

    async def own(self, scope: Scope) -> PlaceSetting | None:
        """What this exact scope sets (not what it inherits)."""
        return (await self._table()).get(_checked(scope))

    async def overrides(self) -> dict[Scope, PlaceSetting]:
        return dict(await self._table())

    async def model_overrides(self) -> int:
        """How many servers and channels use a model of their own (the bot-wide default not counted)."""
        return sum(1 for scope, row in (await self._table()).items() if row.model and scope.kind != Scope.EVERYWHERE)

    async def set(self, scope: Scope, *, by: str, prompt: object = KEEP, model: object = KEEP,
                  mode: object = KEEP, tools: object = KEEP) -> None:
        """Change one scope's prompt, model, mode and/or MCP servers (a dict of on/off): a value sets
        it, None clears it, KEEP leaves it."""
        _checked(scope)
        if mode is not KEEP and mode is not None and mode not in MODES:
            raise EngineError(f"Not a mode: {mode!r}; pick one of {', '.join(MODES)}.")
        if isinstance(prompt, str):
            prompt = prompt.strip()
            if len(prompt) > PROMPT_MAX_CHARS:
                raise EngineError(f"The persona is {len(prompt)} characters long; the limit is {PROMPT_MAX_CHARS}.")
            prompt = prompt or None
        rows = await self._table()
        current = rows.get(scope)
        new_prompt = (current.prompt if current is not None else None) if prompt is KEEP else prompt
        new_model = (current.model if current is not None else None) if model is KEEP else model
        new_mode = (current.mode if current is not None else None) if mode is KEEP else mode
        new_tools = (current.tools if current is not None else None) if tools is KEEP else \
            (json.dumps(tools, sort_keys=True) if tools else None)
        row = await self.database.run(self._save, str(scope), new_prompt, new_model, new_mode, new_tools, by)
        if row is None:
            rows.pop(scope, None)
        else:
            rows[scope] = row

    async def forget_author(self, user: str, scopes: Callable[[Scope], bool] | None = None) -> int:
        """Take a person's id off the settings they last changed (they asked to be forgotten; the
        settings are their place's and stay), in the scopes `scopes` accepts (None: everywhere).
        The number of settings changed."""
        rows = await self._table()
        mine = [scope for scope, row in rows.items() if row.updated_by == user and (scopes is None or scopes(scope))]
        if mine:
            await self.database.run(self._unsign, [str(scope) for scope in mine])
            for scope in mine:
                rows[scope].updated_by = ""
        return len(mine)

    def _unsign(self, scopes: list[str]) -> None:
        with self.database.write():
            PlaceSetting.update(updated_by="").where(PlaceSetting.scope.in_(scopes)).execute()

    def _save(self, scope: str, prompt: object, model: object, mode: object, tools: object,
              by: str) -> PlaceSetting | None:
        with self.database.write():
            if prompt is None and model is None and mode is None and tools is None:
                PlaceSetting.delete().where(PlaceSetting.scope == scope).execute()
                return None
            values = {"prompt": prompt, "model": model, "mode": mode, "tools": tools, "updated_by": by,
                      "updated_at": now()}
            if not PlaceSetting.update(**values).where(PlaceSetting.scope == scope).execute():
                PlaceSetting.create(scope=scope, **values)
            return PlaceSetting.get_by_id(scope)


def _servers(row: PlaceSetting | None) -> dict[str, bool]:
    """A row's MCP servers turned on or off; {} when it says nothing (or what it holds is unreadable)."""
    if row is None or not row.tools:
        return {}
    try:
        value = json.loads(row.tools)
    except ValueError:
        return {}
    return {str(k): bool(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _checked(scope: Scope) -> Scope:
    """A Scope, never its stored string (a caller still passing "server:1" would match nothing)."""
    if not isinstance(scope, Scope):
        raise TypeError(f"a Scope is needed (Scope.channel/server/everywhere), not {scope!r}")
    return scope
