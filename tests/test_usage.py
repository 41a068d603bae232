"""Usage per person, server, day and model, counted from real turns (fake Ollama, real Docker), and
the daily budgets; the table itself on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest

from core import BudgetSpent, ChatSession, Done, FileReady, ModelError, Place, Replaced, Runtime, Scope, Stopped
from core.store import USAGE_RETENTION_DAYS, Store, Totals, Usage, UsageLog, now
from tests.conftest import require
from tests.fake_ollama import FakeOllama, answer_tokens, error, hang, prompt_tokens, text, tool_calls
from tests.test_concurrency import wait_until

POSTGRES = os.environ.get("TEST_POSTGRES_URL")
MONDAY = datetime(2030, 5, 6, 20, 48)  # 3 h 12 min before midnight UTC


def rows(user: str) -> list[Usage]:
    return list(Usage.select().where(Usage.user == user).order_by(Usage.day, Usage.server, Usage.model))


def at(moment: datetime) -> Any:
    return lambda: moment


async def say(chat: ChatSession, message: str) -> list[Any]:
    return [event async for event in chat.events(message)]


# -- the table, on both databases --------------------------------------------------------------------
@pytest.fixture
def prefix() -> str:
    """This test's people and servers are named apart: PostgreSQL's test database is shared."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(params=["sqlite", "postgresql"])
def usage(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> Iterator[UsageLog]:
    if request.param == "sqlite":
        store = Store(f"sqlite:///{tmp_path}/chat.db")
    else:
        require(None if POSTGRES else "needs TEST_POSTGRES_URL (set by .ci/run) for the PostgreSQL run")
        store = Store(POSTGRES)
    yield store.usage
    with store.database.write():
        Usage.delete().where(Usage.user.startswith(prefix)).execute()
    store.close()


def names(prefix: str, *plain: str) -> list[str]:
    return [f"{prefix}-{name}" for name in plain]


def test_one_row_per_person_server_day_and_model(usage: UsageLog, prefix: str) -> None:
    alice, one, two = names(prefix, "alice", "server1", "server2")
    usage.clock = at(MONDAY)
    usage.add(alice, one, "qwen3:8b", tokens_in=100, tokens_out=10, command_seconds=1.5, files_sent=1)
    usage.add(alice, one, "qwen3:8b", tokens_in=200, tokens_out=20, command_seconds=2.0)
    usage.add(alice, one, "llama3:8b", tokens_in=5)
    usage.add(alice, two, "qwen3:8b", tokens_in=7)
    usage.add(alice, None, "qwen3:8b", tokens_in=9)  # a DM
    usage.clock = at(MONDAY + timedelta(hours=4))  # past midnight: Tuesday
    usage.add(alice, one, "qwen3:8b", tokens_in=11, turns=2)
    monday, tuesday = MONDAY.date(), MONDAY.date() + timedelta(days=1)
    assert [(r.day, r.server, r.model, r.turns, r.tokens_in, r.tokens_out, r.command_seconds, r.files_sent)
            for r in rows(alice)] == [
        (monday, "", "qwen3:8b", 1, 9, 0, 0.0, 0),
        (monday, one, "llama3:8b", 1, 5, 0, 0.0, 0),
        (monday, one, "qwen3:8b", 2, 300, 30, 3.5, 1),
        (monday, two, "qwen3:8b", 1, 7, 0, 0.0, 0),
        (tuesday, one, "qwen3:8b", 2, 11, 0, 0.0, 0)]
    assert usage.spent(alice, monday) == Totals(5, 321, 30, 3.5, 1)  # every server and model of the day
    assert usage.spent(alice) == Totals(2, 11, 0, 0.0, 0)  # today, by the clock
    assert usage.totals(alice, monday) == Totals(7, 332, 30, 3.5, 1)


@pytest.mark.asyncio
async def test_turns_ending_at_once_all_count(usage: UsageLog, prefix: str) -> None:
    """The upsert is one statement: concurrent writers (PostgreSQL's four threads) never lose a turn."""
    alice, one = names(prefix, "alice", "server1")
    await asyncio.gather(*(usage.run(usage.add, alice, one, "qwen3:8b", tokens_in=10, tokens_out=1)
                           for _ in range(40)))
    assert [(r.turns, r.tokens_in, r.tokens_out) for r in rows(alice)] == [(40, 400, 40)]


def test_report_lists_a_servers_top_people_and_every_day(usage: UsageLog, prefix: str) -> None:
    alice, bob, carol, one, two = names(prefix, "alice", "bob", "carol", "server1", "server2")
    usage.clock = at(MONDAY - timedelta(days=7))  # a week before: outside a 7-day report
    usage.add(carol, one, "qwen3:8b", tokens_in=10 ** 6)
    usage.clock = at(MONDAY - timedelta(days=2))
    usage.add(alice, one, "qwen3:8b", tokens_in=100, tokens_out=10)
    usage.add(bob, two, "qwen3:8b", tokens_in=10 ** 5)  # another server
    usage.clock = at(MONDAY)
    usage.add(bob, one, "qwen3:8b", tokens_in=300, tokens_out=30, command_seconds=2.0)
    usage.add(bob, one, "llama3:8b", tokens_in=1)
    usage.add(alice, one, "qwen3:8b", tokens_in=50)
    report = usage.report(one, 7)
    assert (report.since, report.until) == (MONDAY.date() - timedelta(days=6), MONDAY.date())
    assert report.people == [(bob, Totals(2, 301, 30, 2.0, 0)), (alice, Totals(2, 150, 10, 0.0, 0))]
    assert [(d.day, d.turns, d.tokens_in, d.tokens_out) for d in report.days] == [
        (MONDAY.date() - timedelta(days=n), *((3, 351, 30) if n == 0 else (1, 100, 10) if n == 2 else (0, 0, 0)))
        for n in range(6, -1, -1)]
    assert usage.report(one, 1).people == [(bob, Totals(2, 301, 30, 2.0, 0)), (alice, Totals(1, 50, 0, 0.0, 0))]
    assert usage.report(one, 1, top=1).people == [(bob, Totals(2, 301, 30, 2.0, 0))]
    everywhere = dict(usage.report(None, 7).people)  # the bot's admins, in a DM: every server
    assert everywhere[bob] == Totals(3, 100_301, 30, 2.0, 0) and carol not in everywhere


def test_forget_deletes_a_persons_rows_everywhere_or_in_one_server(usage: UsageLog, prefix: str) -> None:
    alice, bob, one, two = names(prefix, "alice", "bob", "server1", "server2")
    for server in (one, two, None):
        usage.add(alice, server, "qwen3:8b", tokens_in=1)
    usage.add(bob, one, "qwen3:8b", tokens_in=1)
    assert usage.forget(alice, one) == 1
    assert [r.server for r in rows(alice)] == ["", two]
    assert usage.forget(alice) == 2
    assert rows(alice) == [] and [r.server for r in rows(bob)] == [one]


def test_purge_drops_the_days_past_retention(usage: UsageLog, prefix: str) -> None:
    alice, one = names(prefix, "alice", "server1")
    for days_ago in (USAGE_RETENTION_DAYS + 1, USAGE_RETENTION_DAYS, 0):
        usage.clock = at(MONDAY - timedelta(days=days_ago))
        usage.add(alice, one, "qwen3:8b", tokens_in=days_ago)
    usage.clock = at(MONDAY)
    assert usage.purge(timedelta(days=USAGE_RETENTION_DAYS)) >= 1
    assert [r.tokens_in for r in rows(alice)] == [USAGE_RETENTION_DAYS, 0]


# -- counted from real turns -------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_turn_counts_the_models_tokens_its_command_time_and_files(runtime: Runtime,
                                                                        fake_ollama: FakeOllama) -> None:
    scripted = [tool_calls(("execute_terminal", {"command": "sleep 1; echo hello > /data/a.txt"})),
                tool_calls(("send_file", {"path": "/data/a.txt"})), text("Here is the file you asked for.")]
    fake_ollama.script(*scripted)
    async with ChatSession(user="alice", session="10", place=Place(channel="10", server="42"),
                           runtime=runtime) as chat:
        events = await say(chat, "make a file and send it")
    assert [e.name for e in events if isinstance(e, FileReady)] == ["a.txt"]
    [row] = rows("alice")
    assert (row.day, row.server, row.model, row.turns, row.files_sent) == (runtime.usage.today(), "42", "qwen3:8b",
                                                                           1, 1)
    assert len(fake_ollama.requests) == 3
    assert row.tokens_in == sum(prompt_tokens(body) for body in fake_ollama.requests)
    assert row.tokens_out == sum(answer_tokens(answer) for answer in scripted)
    assert 1.0 <= row.command_seconds < 10  # the real `sleep 1`; sending the file is no command time


@pytest.mark.asyncio
async def test_the_context_summarys_tokens_count_too(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(history_window=4)
    answers = [text(f"answer number {n}") for n in range(5)]
    async with ChatSession(user="bob", session="11", runtime=runtime) as chat:
        for n, answer in enumerate(answers):
            fake_ollama.script(answer)
            await say(chat, f"question {n}")
    summaries = fake_ollama.summary_requests
    assert summaries, "what fell out of the window of 4 was summarised"
    [row] = rows("bob")
    assert (row.server, row.turns) == ("", 5)  # no server: stored as ""
    assert row.tokens_in == sum(prompt_tokens(body) for body in fake_ollama.requests + summaries)
    assert row.tokens_out == (sum(answer_tokens(a) for a in answers)
                              + sum(answer_tokens(fake_ollama.summarizer(body)) for body in summaries))


@pytest.mark.asyncio
async def test_rows_are_apart_per_server_model_and_day(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.fallback = lambda body: text("ok")
    runtime.usage.clock = at(MONDAY)
    await runtime.places.set(Scope.server("2"), by="test", model="llama3:8b")
    for place in (Place(channel="21", server="1"), Place(channel="22", server="2"), Place(channel="23"),
                  Place(channel="24", server="1")):
        async with ChatSession(user="carol", session=place.channel, place=place, runtime=runtime) as chat:
            await say(chat, "hi")
    runtime.usage.clock = at(MONDAY + timedelta(days=1))
    async with ChatSession(user="carol", session="21", place=Place(channel="21", server="1"), runtime=runtime) as chat:
        await say(chat, "hi again")
    monday, tuesday = MONDAY.date(), MONDAY.date() + timedelta(days=1)
    assert [(r.day, r.server, r.model, r.turns) for r in rows("carol")] == [
        (monday, "", "qwen3:8b", 1), (monday, "1", "qwen3:8b", 2), (monday, "2", "llama3:8b", 1),
        (tuesday, "1", "qwen3:8b", 1)]
    assert [body["model"] for body in fake_ollama.requests] == ["qwen3:8b", "llama3:8b", "qwen3:8b", "qwen3:8b",
                                                                "qwen3:8b"]


@pytest.mark.asyncio
async def test_stopped_and_failed_turns_count_what_they_used(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 30"})), error(500, "out of memory"))
    async with ChatSession(user="dave", session="30", runtime=runtime) as chat:
        turn = asyncio.create_task(say(chat, "a long one"))
        await wait_until(lambda: chat.phase is not None and chat.phase.value == "tool")
        await asyncio.sleep(1.0)
        assert await chat.stop()
        await turn
        [row] = rows("dave")
        assert (row.turns, row.tokens_in, row.tokens_out) == (1, prompt_tokens(fake_ollama.requests[0]), 1)
        assert 0.5 < row.command_seconds < 10  # the killed command ran until Stop
        with pytest.raises(ModelError):
            await say(chat, "again")
    [row] = rows("dave")
    assert (row.turns, row.tokens_in, row.tokens_out) == (2, prompt_tokens(fake_ollama.requests[0]), 1)


@pytest.mark.asyncio
async def test_retention_sweep_drops_old_usage_rows(runtime: Runtime) -> None:
    usage = runtime.usage
    usage.clock = at(now() - timedelta(days=USAGE_RETENTION_DAYS + 2))
    usage.add("erin", "1", "qwen3:8b", tokens_in=1)
    usage.clock = at(now() - timedelta(days=USAGE_RETENTION_DAYS - 2))
    usage.add("erin", "1", "qwen3:8b", tokens_in=2)
    usage.clock = now
    await runtime.background.retention_pass()
    assert [r.tokens_in for r in rows("erin")] == [2]


# -- budgets -----------------------------------------------------------------------------------------
TOKENS_REFUSAL = "You've used today's 100 tokens; it resets at 00:00 UTC (in 3 h 12 min): send your message again then."


@pytest.mark.asyncio
async def test_a_spent_token_budget_refuses_the_next_turn_until_midnight(runtime: Runtime,
                                                                         fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(user_daily_tokens=100)
    runtime.usage.clock = at(MONDAY)
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo hi"})), text("Done."))
    async with ChatSession(user="frank", session="40", place=Place(channel="40", server="1"), runtime=runtime) as chat:
        events = await say(chat, "run something")  # its first request alone passes the budget: it still finishes
        assert events[-1].text == "Done." and len(fake_ollama.requests) == 2
        stored = len(await chat.history())
        with pytest.raises(BudgetSpent) as refused:
            await say(chat, "and another thing")
        assert refused.value.user_message == TOKENS_REFUSAL
        assert len(fake_ollama.requests) == 2 and len(await chat.history()) == stored  # not asked, not kept
    async with ChatSession(user="frank", session="41", runtime=runtime) as dm:  # every server counts: a DM too
        with pytest.raises(BudgetSpent):
            await say(dm, "hello?")
    runtime.usage.clock = at(datetime(2030, 5, 7, 0, 0, 30))  # a new UTC day
    fake_ollama.script(text("Good morning."))
    async with ChatSession(user="frank", session="40", place=Place(channel="40", server="1"), runtime=runtime) as chat:
        assert (await say(chat, "and another thing"))[-1].text == "Good morning."


@pytest.mark.asyncio
async def test_a_spent_command_time_budget_refuses_the_next_turn(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(user_daily_command_seconds=1)
    runtime.usage.clock = at(MONDAY + timedelta(hours=3, minutes=11, seconds=30))  # 30 s before midnight
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 1"})), text("Slept."))
    async with ChatSession(user="gina", session="50", runtime=runtime) as chat:
        await say(chat, "sleep a second")
        with pytest.raises(BudgetSpent) as refused:
            await say(chat, "again")
    assert refused.value.user_message == ("You've used today's 1 s of command time; it resets at 00:00 UTC "
                                          "(in 1 min): send your message again then.")
    assert len(fake_ollama.requests) == 2


@pytest.mark.asyncio
async def test_a_refused_message_leaves_the_running_reply_alone(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    runtime.settings = runtime.settings.replace(user_daily_tokens=100)
    runtime.usage.clock = at(MONDAY)
    fake_ollama.script(hang("a long answer"))
    async with ChatSession(user="hana", session="60", runtime=runtime) as chat:
        first = asyncio.create_task(say(chat, "tell me everything"))
        await wait_until(lambda: len(fake_ollama.requests) == 1)
        await runtime.usage.run(runtime.usage.add, "hana", "1", "qwen3:8b", tokens_in=100)  # spent elsewhere meanwhile
        with pytest.raises(BudgetSpent) as refused:
            await say(chat, "hi")
        assert refused.value.user_message == TOKENS_REFUSAL
        fake_ollama.release()
        events = await first
    assert not any(isinstance(e, (Replaced, Stopped)) for e in events) and events[-1] == Done("a long answer")
    assert len(fake_ollama.requests) == 1
    assert [m["content"] for m in await chat.history()] == ["tell me everything", "a long answer"]
