"""The store's history: per-pair storage, resumption, the bounded window, indexes, columns added since —
on SQLite and PostgreSQL."""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from core.store import Audit, History, Message, Reach, Session, Store, Summary, User
from tests.conftest import require

POSTGRES = os.environ.get("TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path}/chat.db")
    else:
        require(None if POSTGRES else "needs TEST_POSTGRES_URL (set by .ci/run) for the PostgreSQL run")
        s = Store(POSTGRES)
    yield s
    if request.param == "postgresql":
        with s.database.write():
            Summary.delete().execute()
            Message.delete().execute()
            Session.delete().execute()
            User.delete().execute()
            Audit.delete().execute()
    s.close()


@pytest.fixture
def history(store: Store) -> History:
    return store.history


def test_pairs_are_isolated_and_resumable(history: History) -> None:
    a = history.open_session("alice", "general")
    b = history.open_session("bob", "general")
    c = history.open_session("alice", "other")
    assert len({a, b, c}) == 3
    history.add_message(a, "user", "alice here")
    history.add_message(b, "user", "bob here")
    assert history.open_session("alice", "general") == a  # resumes, does not duplicate
    assert [m["content"] for m in history.window(a, 10)] == ["alice here"]
    assert [m["content"] for m in history.window(b, 10)] == ["bob here"]
    assert history.window(c, 10) == []


def test_window_is_bounded_and_keeps_the_newest(history: History) -> None:
    s = history.open_session("u", str(uuid.uuid4()))
    for i in range(30):
        history.add_message(s, "user" if i % 2 == 0 else "assistant", f"m{i}")
    window = history.window(s, 10)
    assert len(window) <= 10
    assert window[-1]["content"] == "m29"
    assert window[0]["role"] == "user"


def test_window_never_opens_on_an_orphan_tool_result(history: History) -> None:
    s = history.open_session("u", "tools")
    history.add_message(s, "user", "list files")
    calls = [{"function": {"name": "execute_terminal", "arguments": {"command": "ls"}}}]
    history.add_message(s, "assistant", "", tool_calls=calls)
    history.add_message(s, "tool", "exit code: 0", tool_name="execute_terminal")
    history.add_message(s, "assistant", "done")
    for limit in range(2, 5):
        window = history.window(s, limit)
        assert window, limit
        assert window[0]["role"] != "tool", (limit, window)
    full = history.window(s, 10)
    assert full[1]["tool_calls"] == calls and full[2]["tool_name"] == "execute_terminal"


def test_incomplete_rows_are_kept_but_never_sent(history: History) -> None:
    s = history.open_session("u", "partial")
    history.add_message(s, "user", "hello")
    history.add_message(s, "assistant", "half a rep", complete=False)
    assert [m["content"] for m in history.window(s, 10)] == ["hello"]
    assert [m.content for m in history.messages(s)] == ["hello", "half a rep"]


def test_list_and_clear(history: History) -> None:
    s = history.open_session("lister", "one")
    history.open_session("lister", "two")
    history.add_message(s, "user", "x")
    infos = {i.session: i for i in history.list_sessions("lister")}
    assert infos["one"].message_count == 1 and infos["two"].message_count == 0
    assert history.clear(s) == 1
    assert history.window(s, 10) == []


def test_sessions_count_what_people_and_the_assistant_wrote(history: History) -> None:
    """Not the commands' results, nor an assistant row that only asked for a command (issue 19)."""
    s = history.open_session("counter", "one")
    history.add_message(s, "user", "run it")
    history.add_message(s, "assistant", "", tool_calls=[{"function": {"name": "execute_terminal", "arguments": {}}}])
    history.add_message(s, "tool", "exit code: 0", tool_name="execute_terminal")
    history.add_message(s, "assistant", "Let me look.", tool_calls=[{"function": {"name": "execute_terminal"}}])
    history.add_message(s, "tool", "exit code: 0", tool_name="execute_terminal")
    history.add_message(s, "assistant", "Done.")
    history.add_message(s, "assistant", "half an answ", complete=False)  # stopped: people saw it
    [info] = history.list_sessions("counter")
    assert info.message_count == 4


def test_sqlite_uses_wal_and_the_window_index(tmp_path: Path) -> None:
    h = Store(f"sqlite:///{tmp_path}/chat.db")
    assert h.database.db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    s = h.history.open_session("u", "s")
    plan = " ".join(str(row) for row in h.database.db.execute_sql(
        "EXPLAIN QUERY PLAN SELECT role FROM messages WHERE session_id = ? AND complete = 1 ORDER BY id DESC LIMIT 5",
        (s,)).fetchall())
    assert "USING INDEX" in plan and "session_id_id" in plan, plan
    h.close()


def test_schema_is_created_automatically(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/chat.db"
    Store(url).close()
    assert (tmp_path / "nested/dir/chat.db").exists()
    h = Store(url)  # a second start over existing tables is fine
    assert h.history.open_session("a", "b") > 0
    assert {"users", "sessions", "messages", "summaries", "audit", "place_settings"} <= set(h.database.db.get_tables())
    h.close()


def test_concurrent_writers_from_many_threads(history: History) -> None:
    """Several conversations start and write at once (the bot does this from worker threads)."""
    from concurrent.futures import ThreadPoolExecutor

    def conversation(n: int) -> int:
        sid = history.open_session(f"racer{n % 3}", f"room{n}")
        for i in range(5):
            history.add_message(sid, "user", f"{n}-{i}")
        return sid

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(conversation, range(24)))
    assert len(set(ids)) == 24
    assert all(len(history.window(sid, 10)) == 5 for sid in ids)


def test_a_database_from_before_images_gains_the_column(store: Store) -> None:
    """create_tables never alters a table: a store made by an older version gets `images` added."""
    store.database.db.execute_sql("ALTER TABLE messages DROP COLUMN images")
    url = store.url
    store.close()
    again = Store(url)
    try:
        assert "images" in {c.name for c in again.database.db.get_columns("messages")}
        sid = again.history.open_session("u", "s")
        again.history.add_message(sid, "user", "look", images=["/data/a.png"])
        assert again.history.window(sid, 10) == [{"role": "user", "content": "look", "image_refs": ["/data/a.png"]}]
    finally:
        again.close()


def test_conversations_carry_their_server_and_old_ones_learn_it(history: History) -> None:
    server_1, dm = history.open_session("u", "c1", "1"), history.open_session("u", "d1")
    old = history.open_session("u", "old")  # as stored before servers were recorded
    assert history.open_session("u", "old", "3") == old  # its person talks there again: it learns its server
    assert history.open_session("u", "old", "4") == old and history.open_session("u", "old") == old  # and keeps it
    history.open_session("v", "c1", "1")
    assert {i.session: i.server for i in history.list_sessions("u")} == {"c1": "1", "d1": None, "old": "3"}
    assert [i.session for i in history.list_sessions("u", Reach.within(1))] == ["c1"]
    assert sorted(i.user for i in history.list_sessions(None, Reach.within(1))) == ["u", "v"]
    assert history.list_sessions(None, Reach.within(2)) == []
    assert history.find_session("u", "c1", Reach.within(1)) == server_1
    assert history.find_session("u", "c1", Reach.within(2)) is None
    assert history.find_session("u", "d1", Reach.within(1)) is None
    assert history.find_session("u", "d1", Reach.everything()) == dm
    assert history.servers_of([("u", "c1"), ("u", "d1"), ("u", "nowhere"), ("w", "c1")]) == {
        ("u", "c1"): "1", ("u", "d1"): None}
    assert [i.session for i in history.list_sessions("u", matching="ol", limit=5)] == ["old"]


def test_deleting_conversations_takes_their_messages_summaries_and_a_person_left_with_none(
        history: History) -> None:
    a, b = history.open_session("gone", "a", "1"), history.open_session("gone", "b")
    keep = history.open_session("stays", "a", "1")
    for sid in (a, b, keep):
        history.add_message(sid, "user", "hello")
        history.add_message(sid, "assistant", "hi")
    history.save_summary(a, 1, "they greeted")
    assert history.delete_sessions([a]) == (1, 2)
    assert history.summary(a) is None and history.find_session("gone", "a") is None
    assert User.select().where(User.key == "gone").count() == 1  # b is still theirs
    assert history.delete_sessions([b, b]) == (1, 2)
    assert User.select().where(User.key == "gone").count() == 0
    assert [m["content"] for m in history.window(keep, 10)] == ["hello", "hi"]
    assert history.delete_sessions([]) == (0, 0)
    # a sweep deletes only what is still unused since its cutoff: a message that came in meanwhile keeps it
    cutoff = datetime.now(timezone.utc).replace(tzinfo=None)
    history.add_message(keep, "user", "still here")
    assert history.delete_sessions([keep], unused_since=cutoff) == (0, 0)
    assert history.find_session("stays", "a") == keep


def test_a_database_from_before_servers_gains_the_columns(store: Store) -> None:
    """Conversations and audit rows stored before servers were recorded: NULL, the bot's admins' only."""
    sid = store.history.open_session("u", "c1")
    store.audit.add("u", "c1", "ls", exit_code=0, duration=0.1, output_bytes=1)
    store.database.db.execute_sql("ALTER TABLE sessions DROP COLUMN server")
    store.database.db.execute_sql("ALTER TABLE audit DROP COLUMN server")
    url = store.url
    store.close()
    again = Store(url)
    try:
        assert "server" in {c.name for c in again.database.db.get_columns("sessions")}
        assert "server" in {c.name for c in again.database.db.get_columns("audit")}
        assert [(i.id, i.server) for i in again.history.list_sessions("u")] == [(sid, None)]
        assert again.history.list_sessions("u", Reach.within(1)) == []
        assert [r.server for r in again.audit.latest("u")] == [None]
        assert again.audit.latest("u", reach=Reach.within(1)) == []
        again.audit.add("u", "c1", "pwd", exit_code=0, duration=0.1, output_bytes=1, server="1")
        assert [r.command for r in again.audit.latest(reach=Reach.within(1))] == ["pwd"]
        assert again.audit.blank("u", Reach.within(1)) == 1
        assert [r.command for r in again.audit.latest("u")] == ["", "ls"]
    finally:
        again.close()
