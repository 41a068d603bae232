"""The store's places: typed scopes, their stored form (what databases already hold), and resolution
from the most specific place to the settings' fallbacks. No Docker, no Ollama."""
from __future__ import annotations

from pathlib import Path

import pytest

from core import Place, Scope, Settings
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
