"""Conversations: users, their sessions, the messages, the summaries of what fell out of the
context, and the window (the last messages, shaped into a valid request for the model)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, TypeVar

from peewee import (
    JOIN,
    AutoField,
    BooleanField,
    CharField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    TextField,
    fn,
)

from .database import AddedColumn, Database, Table, now
from .reach import EVERYTHING, Reach

T = TypeVar("T")
IMAGE_REFS = "image_refs"  # in a window message: /data paths of its images, replaced before a request
ROW_ID = "row_id"  # in a window message, when asked for: its id in the store (the context budget uses it)
INTERRUPTED_RESULT = "interrupted: the assistant was restarted before this command finished"


class User(Table):
    id = AutoField()
    key = CharField(max_length=191, unique=True)
    created_at = DateTimeField(default=now)

    class Meta:
        table_name = "users"


class Session(Table):
    id = AutoField()
    user = ForeignKeyField(User, backref="sessions", on_delete="CASCADE")
    key = CharField(max_length=191)
    # The server (guild) the conversation is in; None for a DM, and for rows older than the column
    # until the person talks there again (open_session fills it in).
    server = CharField(max_length=191, null=True)
    created_at = DateTimeField(default=now)
    last_active = DateTimeField(default=now)

    class Meta:
        table_name = "sessions"
        indexes = ((("user", "key"), True),)


class Message(Table):
    id = AutoField()
    session = ForeignKeyField(Session, backref="messages", on_delete="CASCADE")
    role = CharField(max_length=16)
    content = TextField(default="")
    tool_calls = TextField(null=True)  # JSON list in Ollama's shape
    tool_name = CharField(max_length=64, null=True)
    # False for an assistant reply cut short by a failure: kept for the record, never sent to the model.
    complete = BooleanField(default=True)
    images = TextField(null=True)  # a user message's images: JSON list of /data paths (never the bytes)
    created_at = DateTimeField(default=now)

    class Meta:
        table_name = "messages"
        # The window query: WHERE session_id = ? ORDER BY id DESC LIMIT n.
        indexes = ((("session", "id"), False),)


class Summary(Table):
    """What fell out of a long conversation's context, in a few lines: one per session, replaced as
    more falls out. It covers every message up to `upto` (an id of Message); the history itself is
    never changed."""

    session = ForeignKeyField(Session, primary_key=True, on_delete="CASCADE")
    upto = IntegerField()
    text = TextField()
    created_at = DateTimeField(default=now)

    class Meta:
        table_name = "summaries"


TABLES = (User, Session, Message, Summary)
ADDED_COLUMNS = (AddedColumn("messages", "images", TextField(null=True)),
                 AddedColumn("sessions", "server", CharField(max_length=191, null=True)))


@dataclass(frozen=True)
class SessionInfo:
    """One conversation as the admin commands list it."""

    id: int
    user: str
    session: str
    message_count: int
    last_active: datetime
    server: str | None = None  # None: a DM, or a conversation from before servers were recorded


class History:
    """Every conversation of the process. Its methods are synchronous: call them through `run`."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call one of these methods on the store's threads, without blocking the event loop."""
        return await self.database.run(fn, *args, **kwargs)

    # -- sessions ---------------------------------------------------------
    def open_session(self, user: str, session: str, server: str | None = None) -> int:
        """The id of the (user, session) pair, created on first use, in `server` (None: a DM or a
        caller outside Discord). A conversation stored before servers were recorded learns its
        server here; one never moves to another (a channel id belongs to one server for good)."""
        with self.database.write():
            user_row, _ = User.get_or_create(key=user)
            row, _ = Session.get_or_create(user=user_row, key=session, defaults={"server": server})
            if server is not None and row.server is None:
                Session.update(server=server).where(Session.id == row.id).execute()
        return row.id

    def find_session(self, user: str, session: str, reach: Reach = EVERYTHING) -> int | None:
        """The conversation's id, if it exists within `reach`; nothing is created."""
        condition = (User.key == user) & (Session.key == session)
        if not reach.everywhere:
            condition &= reach.where(Session.server)
        row = Session.select(Session.id).join(User).where(condition).first()
        return row.id if row else None

    def list_sessions(self, user: str | None = None, reach: Reach = EVERYTHING, *, matching: str = "",
                      limit: int | None = None) -> list[SessionInfo]:
        """Sessions with the number of messages people and the assistant wrote (not the commands'
        results, nor the assistant's rows that only call a command), most recently active first: one
        person's (everyone's with None) within `reach`, those whose channel id holds `matching`, at
        most `limit`."""
        count = fn.COUNT(Message.id)
        written = (Message.session == Session.id) & (Message.role != "tool") & (Message.content != "")
        query = (Session.select(Session.id, Session.key, Session.server, Session.last_active,
                                User.key.alias("user_key"), count.alias("n"))
                 .join(User).switch(Session).join(Message, JOIN.LEFT_OUTER, on=written)
                 .group_by(Session.id, Session.key, Session.server, Session.last_active, User.id, User.key)
                 .order_by(Session.last_active.desc(), Session.id.desc()))
        if user is not None:
            query = query.where(User.key == user)
        if not reach.everywhere:
            query = query.where(reach.where(Session.server))
        if matching:
            query = query.where(Session.key.contains(matching))
        if limit is not None:
            query = query.limit(limit)
        return [SessionInfo(row["id"], row["user_key"], row["key"], row["n"], row["last_active"], row["server"])
                for row in query.dicts()]

    def servers_of(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        """The server of each of these (user, session) pairs that has a conversation (DMs: None)."""
        wanted = set(keys)
        found: dict[tuple[str, str], str | None] = {}
        channels = sorted({session for _, session in wanted})
        for start in range(0, len(channels), 500):  # well under every database's limit of parameters
            query = (Session.select(User.key.alias("user_key"), Session.key, Session.server).join(User)
                     .where(Session.key.in_(channels[start:start + 500])))
            for row in query.dicts():
                key = (row["user_key"], row["key"])
                if key in wanted:
                    found[key] = row["server"]
        return found

    def idle(self, older_than: timedelta | datetime) -> list[tuple[int, str, str]]:
        """(id, user, session) of the conversations not used for longer than `older_than` (or since
        that time), oldest first."""
        cutoff = older_than if isinstance(older_than, datetime) else now() - older_than
        query = (Session.select(Session.id, User.key.alias("user_key"), Session.key).join(User)
                 .where(Session.last_active < cutoff).order_by(Session.last_active))
        return [(row["id"], row["user_key"], row["key"]) for row in query.dicts()]

    def idle_sessions(self, older_than: timedelta) -> list[tuple[str, str]]:
        """(user, session) pairs not used for longer than `older_than`, oldest first."""
        return [(user, session) for _, user, session in self.idle(older_than)]

    def delete_sessions(self, session_ids: Iterable[int], unused_since: datetime | None = None) -> tuple[int, int]:
        """Delete these conversations for good: their messages, summaries and rows, and a person
        left with none; (conversations, messages) deleted. `unused_since`: only those not used
        since then (a sweep's cutoff: one a message came to meanwhile stays)."""
        ids = sorted(set(session_ids))
        conversations = messages = 0
        with self.database.write():
            if unused_since is not None and ids:
                ids = [row.id for row in Session.select(Session.id).where(
                    Session.id.in_(ids) & (Session.last_active < unused_since))]
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                owners = {row.user_id for row in Session.select(Session.user).where(Session.id.in_(chunk))}
                Summary.delete().where(Summary.session.in_(chunk)).execute()
                messages += Message.delete().where(Message.session.in_(chunk)).execute()
                conversations += Session.delete().where(Session.id.in_(chunk)).execute()
                if owners:
                    still = Session.select(Session.user).where(Session.user.in_(list(owners)))
                    User.delete().where(User.id.in_(list(owners)) & User.id.not_in(still)).execute()
        return conversations, messages

    def export(self, session_id: int) -> dict[str, Any] | None:
        """One conversation as its person may take it away: where and when, its summary, and every
        message (role, content, tool calls, time); None if it is gone."""
        row = (Session.select(Session.key, Session.server, Session.created_at, Session.last_active)
               .where(Session.id == session_id).first())
        if row is None:
            return None
        summary = self.summary(session_id)
        messages = []
        for m in Message.select().where(Message.session == session_id).order_by(Message.id):
            messages.append({"role": m.role, "content": m.content,
                             "tool_calls": json.loads(m.tool_calls) if m.tool_calls else None,
                             "tool_name": m.tool_name, "complete": m.complete,
                             "images": json.loads(m.images) if m.images else [], "time": _iso(m.created_at)})
        return {"server": row.server, "channel": row.key, "created": _iso(row.created_at),
                "last_active": _iso(row.last_active), "summary": summary[1] if summary else None,
                "messages": messages}

    def clear(self, session_id: int) -> int:
        """Delete a session's messages (and the summary of them); the number deleted."""
        with self.database.write():
            Summary.delete().where(Summary.session == session_id).execute()
            return Message.delete().where(Message.session == session_id).execute()

    # -- summaries of what fell out of the context ---------------------------
    def summary(self, session_id: int) -> tuple[int, str] | None:
        """(the last message id it covers, its text), or None."""
        row = Summary.select(Summary.upto, Summary.text).where(Summary.session == session_id).first()
        return (row.upto, row.text) if row else None

    def save_summary(self, session_id: int, upto: int, text: str) -> None:
        with self.database.write():
            Summary.insert(session=session_id, upto=upto, text=text, created_at=now()).on_conflict(
                conflict_target=[Summary.session], update={Summary.upto: upto, Summary.text: text,
                                                           Summary.created_at: now()}).execute()

    def between(self, session_id: int, after: int, before: int, limit: int) -> list[dict[str, Any]]:
        """The complete messages with after < id < before, the newest `limit` of them, oldest first,
        as {"role", "content", "tool_name"} (for a summary: no calls, no images)."""
        rows = list(Message.select(Message.role, Message.content, Message.tool_name, Message.tool_calls)
                    .where((Message.session == session_id) & (Message.complete == True)  # noqa: E712
                           & (Message.id > after) & (Message.id < before))
                    .order_by(Message.id.desc()).limit(limit).dicts())
        rows.reverse()
        return rows

    def counts(self, session_id: int, after: int = 0) -> tuple[int, int]:
        """(complete messages in all, those after id `after`), people's and the assistant's only."""
        mine = (Message.session == session_id) & (Message.complete == True) & (Message.role != "tool")  # noqa: E712
        total = Message.select().where(mine).count()
        later = Message.select().where(mine & (Message.id > after)).count() if after else total
        return total, later

    # -- messages ---------------------------------------------------------
    def add_message(self, session_id: int, role: str, content: str = "", *,
                    tool_calls: list[dict[str, Any]] | None = None, tool_name: str | None = None,
                    complete: bool = True, images: list[str] | None = None) -> int:
        stamp = now()
        with self.database.write():
            row = Message.create(session=session_id, role=role, content=content,
                                 tool_calls=json.dumps(tool_calls) if tool_calls else None,
                                 tool_name=tool_name, complete=complete, created_at=stamp,
                                 images=json.dumps(images) if images else None)
            Session.update(last_active=stamp).where(Session.id == session_id).execute()
        return row.id

    def add_messages(self, session_id: int, rows: list[dict[str, Any]]) -> None:
        """Several rows in one transaction (a cancelled turn's closing tool results)."""
        with self.database.write():
            for row in rows:
                self.add_message(session_id, **row)

    def messages(self, session_id: int) -> list[Message]:
        """Every stored row of a session, oldest first (for tests and export)."""
        return list(Message.select().where(Message.session == session_id).order_by(Message.id))

    def window(self, session_id: int, limit: int, *, after: int = 0, ids: bool = False) -> list[dict[str, Any]]:
        """About the last `limit` complete messages, in Ollama's shape, oldest first: always a valid request.

        It always holds the latest user message: when the current turn alone is longer than
        `limit` (a model calling many tools), whole tool rounds are left out from the middle,
        never the user's message nor the latest round. It never opens on a tool result whose
        call fell outside it, prefers to open on a user message, and gives any call that has
        no result (a crash in between) an "interrupted" result.
        """
        complete = (Message.session == session_id) & (Message.complete == True)  # noqa: E712
        if after:  # what a summary already covers is left out
            complete &= Message.id > after
        columns = (Message.id, Message.role, Message.content, Message.tool_calls, Message.tool_name, Message.images)
        rows = list(Message.select(*columns).where(complete).order_by(Message.id.desc()).limit(limit).tuples())
        rows.reverse()
        start = next((i for i, r in enumerate(rows) if r[1] == "user"), None)
        # A user row in the tail is the latest one; without one, the current turn may be longer than the tail.
        last_user = None if start is not None or not rows else (
            Message.select(fn.MAX(Message.id)).where(complete & (Message.role == "user")).scalar())
        if last_user is not None:
            turn = list(Message.select(*columns).where(complete & (Message.id >= last_user))
                        .order_by(Message.id).tuples())
            rows = _fit_turn(turn, limit)
        else:
            if start is None:
                start = next((i for i, r in enumerate(rows) if r[1] != "tool"), len(rows))
            rows = rows[start:]
        out: list[dict[str, Any]] = []
        for row_id, role, content, tool_calls, tool_name, images in rows:
            message: dict[str, Any] = {"role": role, "content": content or ""}
            if ids:
                message[ROW_ID] = row_id
            if tool_calls:
                message["tool_calls"] = json.loads(tool_calls)
            if tool_name:
                message["tool_name"] = tool_name
            if images:
                message[IMAGE_REFS] = json.loads(images)  # the engine loads them, or drops the key
            out.append(message)
        return _with_results(out)

    def repair_interrupted(self, session_id: int) -> int:
        """Store the missing results of a tool round a crash cut short; the number added.

        Only the session's last round can be cut short (results are written before anything
        else happens in a session), so the rows are appended right where they belong.
        """
        with self.database.write():
            mine = Message.session == session_id
            # The last complete row that is not a result: the round's call, if a round was cut short.
            last = (Message.select(Message.id, Message.tool_calls)
                    .where(mine & (Message.complete == True) & (Message.role != "tool"))  # noqa: E712
                    .order_by(Message.id.desc()).first())
            if last is None or not last.tool_calls:
                return 0
            answered = Message.select().where(mine & (Message.id > last.id) & (Message.role == "tool")).count()
            calls = json.loads(last.tool_calls)
            for call in calls[answered:]:
                self.add_message(session_id, "tool", INTERRUPTED_RESULT, tool_name=_call_name(call))
            return max(len(calls) - answered, 0)


Row = tuple[int, str, str, "str | None", "str | None", "str | None"]


def _iso(stamp: datetime) -> str:
    """A stored time (UTC without a zone) as ISO 8601 with its zone."""
    return stamp.isoformat(timespec="seconds") + "Z"


def _fit_turn(turn: list[Row], limit: int) -> list[Row]:
    """The current turn (its user message first) in about `limit` rows: the user message, then the
    latest whole tool rounds that fit, the very latest always, even when it alone is longer."""
    head, rounds = turn[:1], []
    for row in turn[1:]:
        if row[1] != "tool" or not rounds:
            rounds.append([row])
        else:
            rounds[-1].append(row)
    kept: list[list[Row]] = []
    budget = limit - len(head)
    for unit in reversed(rounds):
        if kept and len(unit) > budget:
            break
        kept.append(unit)
        budget -= len(unit)
    return head + [row for unit in reversed(kept) for row in unit]


def _call_name(call: Any) -> str | None:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _with_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every tool call followed by exactly one result, and no result without a call: what a crash
    left half-done gets "interrupted" results, stray results are left out."""
    out: list[dict[str, Any]] = []
    pending: list[Any] = []

    def close_round() -> None:
        for call in pending:
            message = {"role": "tool", "content": INTERRUPTED_RESULT}
            name = _call_name(call)
            if name:
                message["tool_name"] = name
            out.append(message)
        pending.clear()

    for message in messages:
        if message["role"] == "tool":
            if pending:
                pending.pop(0)
                out.append(message)
            continue
        close_round()
        out.append(message)
        pending.extend(message.get("tool_calls") or [])
    close_round()
    return out
