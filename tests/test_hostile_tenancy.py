"""Issue 17 attacked in the engine, as a hostile person would: budgets dodged with the Stop button or
with a long turn in another channel, a message slipped in while their data is being deleted, an
export that holds everyone's database work, and a server's /admin forget that misses rows from
before servers were recorded. Real Docker, the real store, the fake Ollama over HTTP."""
from __future__ import annotations

import asyncio
import random
import string
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest

import core.runtime
from core import BudgetSpent, ChatSession, EngineError, Place, Reach, Runtime, Settings, TextDelta
from core.registry import Phase
from core.store import Usage
from tests.conftest import make_settings
from tests.fake_ollama import FakeOllama, command_agent, hang, prompt_tokens, text, tool_calls
from tests.test_concurrency import wait_until

pytestmark = pytest.mark.asyncio
MONDAY = datetime(2030, 5, 6, 20, 48)


@pytest.fixture
def settings(tmp_path: Path, fake_ollama: FakeOllama) -> Settings:
    return make_settings(tmp_path, fake_ollama.url, max_sandboxes_per_user=6)


def usage_rows(user: str) -> list[Usage]:
    return list(Usage.select().where(Usage.user == user))


def containers(docker_client: docker.DockerClient, runtime: Runtime, user: str) -> list[Any]:
    return docker_client.containers.list(all=True, filters={"label": [f"llmbot.app={runtime.settings.vm_name_prefix}",
                                                                      f"llmbot.user={user}"]})


async def talk(runtime: Runtime, user: str, session: str, server: str | None, message: str) -> list[Any]:
    """One turn of `user` in `session` of `server` (None: a DM, or a row from before servers were recorded)."""
    async with ChatSession(user=user, session=session, place=Place(channel=session, server=server),
                           runtime=runtime) as chat:
        return [event async for event in chat.events(message)]


# -- budgets ------------------------------------------------------------------------------------------
async def test_stopping_a_reply_just_before_its_end_still_costs_its_tokens(runtime: Runtime,
                                                                           fake_ollama: FakeOllama) -> None:
    """The model server counts tokens only in a stream's last line: a reply stopped before it (the
    whole answer read meanwhile) must not come for free, or a daily budget is never spent."""
    runtime.settings = runtime.settings.replace(user_daily_tokens=100)
    runtime.usage.clock = lambda: MONDAY
    fake_ollama.script(hang("Here is the whole long essay you asked for. " * 20))
    async with ChatSession(user="mallory", session="70", runtime=runtime) as chat:
        seen: list[Any] = []

        async def listen() -> None:
            async for event in chat.events("write me a long essay"):
                seen.append(event)

        turn = asyncio.create_task(listen())
        await wait_until(lambda: any(isinstance(e, TextDelta) for e in seen))
        assert await chat.stop()
        await turn
        fake_ollama.release()
        [row] = usage_rows("mallory")
        assert row.turns == 1
        assert row.tokens_in >= prompt_tokens(fake_ollama.requests[0])  # what the server read, at least
        assert row.tokens_out >= 1
        with pytest.raises(BudgetSpent):
            [event async for event in chat.events("and another one")]
    assert len(fake_ollama.requests) == 1


async def test_a_long_turn_in_one_channel_does_not_hide_what_it_spent_from_another(runtime: Runtime,
                                                                                  fake_ollama: FakeOllama) -> None:
    """Usage written only when a turn ends lets a person keep a turn waiting on a long command (or
    on the command gate) and start turn after turn elsewhere, each passing the budget."""
    runtime.settings = runtime.settings.replace(user_daily_tokens=100)
    runtime.usage.clock = lambda: MONDAY
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 30"})))
    fake_ollama.fallback = lambda body: text("answered although the budget is spent")
    async with ChatSession(user="mallory", session="71", place=Place(channel="71", server="1"),
                           runtime=runtime) as first:
        async def slow() -> list[Any]:
            return [event async for event in first.events("something slow")]

        long_turn = asyncio.create_task(slow())
        await wait_until(lambda: first.phase is Phase.TOOL)
        # its first request alone read more than the whole budget (the tools' schemas are long)
        assert prompt_tokens(fake_ollama.requests[0]) > 100
        try:
            async with ChatSession(user="mallory", session="72", place=Place(channel="72", server="2"),
                                   runtime=runtime) as second:
                with pytest.raises(BudgetSpent):
                    [event async for event in second.events("meanwhile, in another server")]
            assert len(fake_ollama.requests) == 1
        finally:
            await first.stop()
            await asyncio.gather(long_turn, return_exceptions=True)


# -- deleting a person's data while they write ----------------------------------------------------------
async def test_a_message_sent_while_a_person_is_forgotten_leaves_nothing_behind(runtime: Runtime,
                                                                                fake_ollama: FakeOllama,
                                                                                docker_client: docker.DockerClient
                                                                                ) -> None:
    """A server's manager forgets someone who keeps writing: a turn that starts in the middle of the
    deletion (after their sandbox and /data went, before their rows) must not bring them back."""
    fake_ollama.fallback = command_agent
    await talk(runtime, "alice", "c1", "1", "echo before > /data/a.txt")
    provider = runtime.sandboxes
    real = provider.delete_data
    late: list[Any] = []

    async def delete_data(user: str, session: str) -> None:
        await real(user, session)
        if not late:  # the person writes again, right now
            try:
                late.append(await talk(runtime, "alice", "c1", "1", "echo SECRET-AFTER > /data/b.txt"))
            except EngineError as exc:
                late.append(exc)

    provider.delete_data = delete_data  # type: ignore[method-assign]
    try:
        forgotten = await runtime.forget_person("alice", Reach.within(1), channels=["c1"])
    finally:
        del provider.delete_data
    await asyncio.sleep(0.5)  # a sandbox start-up, had one been asked for, would be under way by now
    assert forgotten.conversations == 1
    assert runtime.history.list_sessions("alice") == []
    assert containers(docker_client, runtime, "alice") == []
    assert not runtime.sandboxes.data_dir("alice", "c1").exists()
    [said] = late
    assert isinstance(said, EngineError) and "being deleted" in said.user_message  # told, in one line
    assert {r.command for r in runtime.store.audit.latest("alice")} == {""}
    assert usage_rows("alice") == []
    # once it is done, they may start again
    await talk(runtime, "alice", "c1", "1", "echo again")
    assert [i.session for i in runtime.history.list_sessions("alice")] == ["c1"]


# -- rows from before servers were recorded ---------------------------------------------------------------
async def test_a_servers_forget_reaches_its_channels_rows_from_before_servers_were_recorded(
        runtime: Runtime, fake_ollama: FakeOllama) -> None:
    """After the upgrade, old conversations and audit rows have no server (NULL, as the migration
    adds the column). A channel belongs to one server for good: when A's manager forgets someone,
    what they did in A's channels before the upgrade goes too, and the answer counts it."""
    fake_ollama.fallback = command_agent
    await talk(runtime, "alice", "c1", None, "echo OLD-SECRET-1")  # before the upgrade: no server stored
    await talk(runtime, "alice", "c2", None, "echo OLD-SECRET-2")  # never used again since
    await talk(runtime, "alice", "c1", "1", "echo new")  # after it: c1 learns its server, its old audit row does not
    await talk(runtime, "alice", "elsewhere", None, "echo a DM or another server's")

    forgotten = await runtime.forget_person("alice", Reach.within(1), channels=["c1", "c2", "c3"])

    assert (forgotten.conversations, forgotten.audit_rows_kept) == (2, 3)
    assert [i.session for i in runtime.history.list_sessions("alice")] == ["elsewhere"]
    assert {r.session: r.command for r in runtime.store.audit.latest("alice", "c1")} == {"c1": ""}
    assert sorted((r.session, r.command) for r in runtime.store.audit.latest("alice")) == [
        ("c1", ""), ("c1", ""), ("c2", ""), ("elsewhere", "echo a DM or another server's")]


# -- /export ---------------------------------------------------------------------------------------------
def noise(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(string.ascii_letters + "      ") for _ in range(size))


async def test_building_an_export_never_holds_the_stores_thread(runtime: Runtime) -> None:
    """SQLite's store has one thread, every conversation's writer: a large export's JSON and gzip
    work on it would stall every other person's messages while it lasts (and /export is anyone's)."""
    rng = random.Random(17)
    sid = runtime.history.open_session("mallory", "c1")
    runtime.history.add_messages(sid, [{"role": "user", "content": noise(rng, 20_000)} for _ in range(50)])
    loop = asyncio.get_running_loop()
    real = core.runtime.export_files
    writes: list[int] = []

    def export_files(*args: Any, **kwargs: Any) -> Any:
        """While the files are built, someone else's message is stored (at most 10 s of waiting)."""
        stored = asyncio.run_coroutine_threadsafe(runtime.history.run(runtime.history.open_session, "bob", "c9"),
                                                  loop)
        writes.append(stored.result(timeout=10))
        return real(*args, **kwargs)

    core.runtime.export_files = export_files  # type: ignore[assignment]
    try:
        files = await runtime.export_person("mallory", 256 * 1024)
    finally:
        core.runtime.export_files = real  # type: ignore[assignment]
    assert len(files) > 1 and len(writes) == 1
