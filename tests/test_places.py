"""The store's places: typed scopes, their stored form (what databases already hold), and resolution
from the most specific place to the settings' fallbacks. No Docker, no Ollama."""
from __future__ import annotations

from pathlib import Path

import pytest

from core import EngineError, Place, Scope, Settings
from core.store import Store


def test_a_scope_has_one_stored_form_and_reads_back() -> None:
    scopes = {Scope.channel(10): "channel:10", Scope.server("1"): "server:1", Scope.everywhere(): "default"}
    for scope, stored in scopes.items():
        assert str(scope) == stored
        assert Scope.parse(stored) == scope
    assert Scope.channel(10) == Scope.channel("10") and hash(Scope.channel(10)) == hash(Scope.channel("10"))
    assert Scope.channel(10) != Scope.server(10)
    assert Scope.channel("a:b").id == "a:b" and Scope.parse("channel:a:b") == Scope.channel("a:b")
    for bad in ("", "channel:", "server", "guild:1", "everywhere", "default:1"):
        with pytest.raises(ValueError):
            Scope.parse(bad)
    for make in (lambda: Scope.channel(""), lambda: Scope("server"), lambda: Scope("everywhere", "1"),  # type: ignore[arg-type]
                 lambda: Scope("guild", "1")):  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            make()


def test_a_place_lists_its_scopes_most_specific_first() -> None:
    assert Place(channel="11", parent="10", server="1").scopes() == [
        Scope.channel(11), Scope.channel(10), Scope.server(1), Scope.everywhere()]
    assert Place(channel="dm-1").scopes() == [Scope.channel("dm-1"), Scope.everywhere()]
    assert Place().scopes() == [Scope.everywhere()]


@pytest.mark.asyncio
async def test_settings_an_older_version_stored_still_apply(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    Store(url).close()
    older = Store(url)  # rows as every earlier version wrote them: the scope as text
    older.database.db.execute_sql(
        "INSERT INTO place_settings (scope, prompt, model, updated_by, updated_at) VALUES "
        "('server:1', 'Be Ada.', 'llama3.1:8b', 'x', '2024-01-01'), ('channel:10', NULL, 'phi4', 'x', '2024-01-01'), "
        "('default', 'Be brief.', NULL, 'x', '2024-01-01'), ('nonsense', 'ignored', 'ignored', 'x', '2024-01-01')")
    older.close()
    store = Store(url, Settings(ollama_model="qwen3:8b", system_prompt="From the env."))
    try:
        places = store.places
        choice = await places.model(Place(channel="10", server="1"))
        assert (choice.value, choice.source) == ("phi4", Scope.channel(10))
        choice = await places.model(Place(channel="11", parent="10", server="1"))
        assert (choice.value, choice.source) == ("phi4", Scope.channel(10))
        choice = await places.model(Place(channel="12", server="1"))
        assert (choice.value, choice.source) == ("llama3.1:8b", Scope.server(1))
        choice = await places.model(Place(channel="20", server="2"))
        assert (choice.value, choice.source) == ("qwen3:8b", "OLLAMA_MODEL")
        choice = await places.prompt(Place(channel="10", server="1"))
        assert (choice.value, choice.source) == ("Be Ada.", Scope.server(1))
        choice = await places.prompt(Place(channel="dm"))
        assert (choice.value, choice.source) == ("Be brief.", Scope.everywhere())
        assert set(await places.overrides()) == {Scope.server(1), Scope.channel(10), Scope.everywhere()}
        assert await places.model_overrides() == 2
        # written back in the same form
        await places.set(Scope.server(2), by="t", model="phi4")
        await places.set(Scope.everywhere(), by="t", prompt=None)
        rows = dict(store.database.db.execute_sql("SELECT scope, model FROM place_settings").fetchall())
        assert rows == {"server:1": "llama3.1:8b", "channel:10": "phi4", "server:2": "phi4", "nonsense": "ignored"}
        assert (await places.own(Scope.server(2))).model == "phi4" and await places.own(Scope.everywhere()) is None
        choice = await places.prompt(Place(channel="dm"))
        assert (choice.value, choice.source) == ("From the env.", "SYSTEM_PROMPT")
        with pytest.raises(TypeError):
            await places.set("server:1", by="t", model=None)  # type: ignore[arg-type]
    finally:
        store.close()


@pytest.mark.asyncio
async def test_a_database_made_before_modes_gains_the_column_and_keeps_its_rows(tmp_path: Path) -> None:
    """The mode column is added when an older database opens (AddedColumn); its rows still apply."""
    import sqlite3
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # place_settings as versions before issue 19 made it
        db.execute("CREATE TABLE place_settings (scope VARCHAR(191) PRIMARY KEY, prompt TEXT, model VARCHAR(191), "
                   "updated_by VARCHAR(191) NOT NULL, updated_at DATETIME NOT NULL)")
        db.execute("INSERT INTO place_settings VALUES ('server:1', NULL, 'phi4', 'x', '2024-01-01')")
    store = Store(f"sqlite:///{path}")
    try:
        columns = {row[1] for row in store.database.db.execute_sql("PRAGMA table_info(place_settings)").fetchall()}
        assert "mode" in columns
        places = store.places
        assert (await places.model(Place(channel="10", server="1"))).value == "phi4"
        choice = await places.mode(Place(channel="10", server="1"))
        assert (choice.value, choice.source) == ("mention", "")
        await places.set(Scope.server(1), by="t", mode="thread")
        assert (await places.own(Scope.server(1))).model == "phi4"  # the model stays
    finally:
        store.close()


@pytest.mark.asyncio
async def test_the_mode_resolves_like_the_model_and_falls_back_to_free_response_channels(tmp_path: Path) -> None:
    """Channel, thread's channel, server, everywhere; then FREE_RESPONSE_CHANNEL_IDS (all); then mention."""
    url = f"sqlite:///{tmp_path}/chat.db"
    store = Store(url)
    try:
        places = store.places
        free = {20, 21}
        thread_in_20 = Place(channel="900", parent="20", server="1")
        assert [(c.value, c.source) for c in [await places.mode(Place(channel="20", server="1"), free),
                                              await places.mode(thread_in_20, free),
                                              await places.mode(Place(channel="22", server="1"), free)]] == [
            ("all", "FREE_RESPONSE_CHANNEL_IDS"), ("all", "FREE_RESPONSE_CHANNEL_IDS"), ("mention", "")]
        await places.set(Scope.server(1), by="t", mode="thread")
        choice = await places.mode(Place(channel="22", server="1"), free)
        assert (choice.value, choice.source) == ("thread", Scope.server(1))
        choice = await places.mode(thread_in_20, free)  # a setting of the server wins over the env's default
        assert (choice.value, choice.source) == ("thread", Scope.server(1))
        await places.set(Scope.channel(20), by="t", mode="mention")
        choice = await places.mode(thread_in_20, free)  # a thread follows its channel
        assert (choice.value, choice.source) == ("mention", Scope.channel(20))
        await places.set(Scope.channel(900), by="t", mode="all")
        assert (await places.mode(thread_in_20, free)).value == "all"
        await places.set(Scope.everywhere(), by="t", mode="all")
        choice = await places.mode(Place(channel="5", server="2"))
        assert (choice.value, choice.source) == ("all", Scope.everywhere())
        with pytest.raises(EngineError):
            await places.set(Scope.channel(20), by="t", mode="sometimes")
        # clearing the mode alone keeps the row while something else is set; the last field removes it
        await places.set(Scope.channel(20), by="t", prompt="Be brief.")
        await places.set(Scope.channel(20), by="t", mode=None)
        assert (await places.own(Scope.channel(20))).prompt == "Be brief."
        await places.set(Scope.channel(20), by="t", prompt=None)
        assert await places.own(Scope.channel(20)) is None
    finally:
        store.close()
    reopened = Store(url)  # stored: a restart keeps them
    try:
        assert (await reopened.places.mode(Place(channel="22", server="1"))).value == "thread"
        assert (await reopened.places.mode(Place(channel="900", parent="20", server="1"))).value == "all"
    finally:
        reopened.close()
