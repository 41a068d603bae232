"""Long conversations fit the model (issue 18): a context budget for every request, old command
results compacted, what falls out summarised once, nothing silently cut. The fake Ollama reports
`prompt_eval_count` from the request's size, as a tokenizer would."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docker
import pytest

from core import ChatSession
from core.context import (KEEP_OLD_RESULT, MESSAGE_CUT, TokenCounter, cut_middle, fit, message_chars,
                          request_chars)
from core.store import ROW_ID
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import CHARS_PER_TOKEN, FakeOllama, request_problems, text, tool_calls

SYSTEM = {"role": "system", "content": "rules"}


def size(body: dict[str, Any]) -> int:
    """A request's characters: what the model's context must hold."""
    return request_chars(body["messages"], body.get("tools"))


def turn(n: int, output: str, row: int) -> list[dict[str, Any]]:
    call = [{"function": {"name": "execute_terminal", "arguments": {"command": f"job {n}"}}}]
    return [{"role": "user", "content": f"question {n}", ROW_ID: row},
            {"role": "assistant", "content": "", "tool_calls": call, ROW_ID: row + 1},
            {"role": "tool", "content": output, "tool_name": "execute_terminal", ROW_ID: row + 2},
            {"role": "assistant", "content": f"answer {n}", ROW_ID: row + 3}]


def test_the_window_keeps_the_latest_turn_whole_and_shrinks_older_results() -> None:
    history = [m for n in range(5) for m in turn(n, f"out{n}:" + "x" * 5000, 10 * n)][:-1]  # the last turn is on
    window = fit(history, 9000)
    messages = window.messages
    assert messages[-3]["content"] == "question 4" and messages[-1]["content"].startswith("out4:")
    assert len(messages[-1]["content"]) == 5005  # the latest round is whole
    older = [m["content"] for m in messages[:-3] if m["role"] == "tool"]
    assert older and all(len(c) < KEEP_OLD_RESULT + 100 and "rerun the command to see it" in c for c in older)
    assert window.chars <= 9000 and messages[0]["role"] == "user"
    assert not request_problems({"messages": [SYSTEM, *messages]})
    assert all(ROW_ID not in m for m in messages)
    assert history[2]["content"] == "out0:" + "x" * 5000  # what it was given is left as it was


def test_whole_turns_fall_out_oldest_first_and_it_says_so() -> None:
    history = [m for n in range(10) for m in turn(n, "y" * 200, 10 * n)]
    everything = fit(history, 100_000)
    assert not everything.dropped and everything.first_id == 0 and len(everything.messages) == 40
    some = fit(history, sum(message_chars(m) for m in history[-12:]) + 10)
    assert some.dropped and some.first_id == 70
    assert [m["content"] for m in some.messages if m["role"] == "user"] == ["question 7", "question 8",
                                                                           "question 9"]


def test_a_message_larger_than_the_budget_is_cut_with_a_note_never_the_rules() -> None:
    big = "z" * 50_000
    window = fit([{"role": "user", "content": big, ROW_ID: 1}], 8000)
    [message] = window.messages
    assert len(message["content"]) <= 8000
    assert message["content"].endswith(MESSAGE_CUT.format(size="41 KB"))
    assert window.notes and "cut" in window.notes[0]


def test_a_huge_latest_output_is_cut_in_the_middle_before_the_question() -> None:
    history = turn(1, "head" + "o" * 60_000 + "tail", 1)[:-1]
    window = fit(history, 10_000)
    user, call, result = window.messages
    assert user["content"] == "question 1" and "cut to fit the model's context" in result["content"]
    assert result["content"].startswith("head") and result["content"].endswith("tail")
    assert window.chars <= 10_000


def test_tokens_are_learned_per_model_within_bounds() -> None:
    counter = TokenCounter()
    start = counter.tokens("m", 3500)
    assert start > 1000  # a safety margin over 3.5 characters a token
    counter.observe("m", 3000, 1500)  # a dense tokenizer: 2 characters a token
    assert counter.tokens("m", 3500) > start and counter.tokens("other", 3500) == start
    counter.observe("m", 100_000, 10)  # a cached prompt: implausible, ignored
    assert counter.tokens("m", 3500) > start
    for _ in range(20):
        counter.observe("m", 10_000, 1000)  # 10 a token: more than any tokenizer, bounded
    assert counter.tokens("m", 4000) >= 1000


def test_cut_middle_leaves_short_text_alone() -> None:
    assert cut_middle("short", 10, "[{size}]") == "short"
    cut = cut_middle("a" * 1000 + "b" * 1000, 100, "[{size}]")
    assert cut.startswith("a" * 50) and cut.endswith("b" * 50) and "[2 KB]" in cut


@pytest.fixture
def budget_settings(tmp_path: Path, fake_ollama: FakeOllama):  # type: ignore[no-untyped-def]
    return make_settings(tmp_path, fake_ollama.url, ollama_num_ctx=8192, reply_reserve_tokens=2048,
                         history_window=200, command_timeout=20)


@pytest.mark.asyncio
async def test_thirty_long_turns_stay_within_the_context(budget_settings: Any, fake_ollama: FakeOllama,
                                                        docker_client: docker.DockerClient) -> None:
    num_ctx = budget_settings.ollama_num_ctx
    async with open_runtime(budget_settings, docker_client) as rt:
        async with ChatSession(user="alice", session="long", runtime=rt) as chat:
            for n in range(30):
                fake_ollama.script(tool_calls(("execute_terminal", {"command": f"yes row{n} | head -c 12288"})),
                                   text(f"done {n}"))
                said = "".join([p async for p in chat.chat_stream(f"make output number {n}")])
                assert said == f"done {n}"
        rows = rt.history.messages(chat.session_id)
    assert len(rows) == 30 * 4 and sum(len(r.content) for r in rows if r.role == "tool") > 30 * 12_000  # all kept
    requests = fake_ollama.requests
    assert len(requests) == 60
    for i, body in enumerate(requests):
        messages = body["messages"]
        assert size(body) <= 3 * num_ctx, (i, size(body))
        assert body["options"]["num_ctx"] == num_ctx
        assert messages[0]["role"] == "system" and "execute_terminal" in messages[0]["content"]
        assert sorted(t["function"]["name"] for t in body["tools"]) == ["execute_terminal", "send_file"]
        user = [m for m in messages if m["role"] == "user"]
        assert user[-1]["content"] == f"make output number {i // 2}"
        assert not request_problems(body), request_problems(body)
        if i % 2:  # the request after the command: its whole output is there
            assert messages[-1]["role"] == "tool" and len(messages[-1]["content"]) >= 12_288
    # what fell out was summarised, and the summary reused: far fewer summaries than requests
    summaries = fake_ollama.summary_requests
    assert 1 <= len(summaries) <= 15
    carried = [b for b in requests if b["messages"][1]["content"].startswith("Summary of the earlier part")]
    assert len(carried) >= 40
    for body in summaries:
        assert size(body) <= 3 * num_ctx and body["options"]["num_ctx"] == num_ctx
    # and the estimate was corrected from the server's own counts
    assert abs(rt.tokens.ratio("qwen3:8b") * 1.15 - CHARS_PER_TOKEN) < 0.6


@pytest.mark.asyncio
async def test_a_summary_is_made_once_and_reused(budget_settings: Any, fake_ollama: FakeOllama,
                                                 docker_client: docker.DockerClient) -> None:
    settings = budget_settings.replace(history_window=6)
    async with open_runtime(settings, docker_client) as rt:
        async with ChatSession(user="alice", session="s", runtime=rt) as chat:
            for n in range(6):
                fake_ollama.script(text(f"answer {n}"))
                await _say(chat, f"question {n}")
        stored = rt.history.summary(chat.session_id)
    summaries = fake_ollama.summary_requests
    # question 3 pushes the first messages out of the window of 6: one summary, then it is reused until
    # more falls out than the window's spare room (half of it) allows
    assert len(summaries) == 2
    assert "question 0" in summaries[0]["messages"][0]["content"]
    assert "The summary so far" in summaries[1]["messages"][0]["content"]
    assert stored is not None and stored[1].startswith("Earlier: ")
    for body in fake_ollama.requests[3:]:
        assert body["messages"][1]["content"].startswith("Summary of the earlier part")
    assert [m["content"] for m in fake_ollama.requests[-1]["messages"] if m["role"] == "user"][-1] == "question 5"


@pytest.mark.asyncio
async def test_with_summaries_off_nothing_extra_is_asked(budget_settings: Any, fake_ollama: FakeOllama,
                                                         docker_client: docker.DockerClient) -> None:
    settings = budget_settings.replace(history_window=4, summary=False)
    async with open_runtime(settings, docker_client) as rt:
        async with ChatSession(user="alice", session="s", runtime=rt) as chat:
            for n in range(5):
                fake_ollama.script(text(f"answer {n}"))
                await _say(chat, f"question {n}")
    assert fake_ollama.summary_requests == []
    assert all(b["messages"][1]["role"] == "user" for b in fake_ollama.requests)


@pytest.mark.asyncio
async def test_a_fifty_kb_message_reaches_the_model_cut_with_a_note_and_is_stored_whole(
        budget_settings: Any, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    big = "".join(f"line {i}: " + "w" * 40 + "\n" for i in range(1100))
    assert len(big) > 50_000
    async with open_runtime(budget_settings, docker_client) as rt:
        fake_ollama.script(text("got it"))
        async with ChatSession(user="alice", session="big", runtime=rt) as chat:
            assert await _say(chat, big) == "got it"
        stored = [r.content for r in rt.history.messages(chat.session_id) if r.role == "user"]
    body = fake_ollama.requests[0]
    user = body["messages"][-1]["content"]
    assert user.startswith("line 0: ") and len(user) < len(big)
    assert "the rest of this message" in user and "was cut: it did not fit the model's context" in user
    assert size(body) <= 3 * budget_settings.ollama_num_ctx
    assert body["messages"][0]["content"].startswith("You are a helpful assistant")  # the rules, whole
    assert stored == [big]


@pytest.mark.asyncio
async def test_the_turn_log_line_says_what_the_model_saw(budget_settings: Any, fake_ollama: FakeOllama,
                                                         docker_client: docker.DockerClient,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    async with open_runtime(budget_settings, docker_client) as rt:
        fake_ollama.script(text("hi"))
        with caplog.at_level("INFO", logger="core.tool_loop"):
            async with ChatSession(user="alice", session="log", runtime=rt) as chat:
                await _say(chat, "hello")
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("turn user=alice")]
    body = fake_ollama.requests[0]
    measured = json.loads(json.dumps(body)) and round(
        sum(len(m.get("content") or "") + len(json.dumps(m.get("tool_calls") or "")) + 4 for m in body["messages"])
        + len(json.dumps(body["tools"]))) / CHARS_PER_TOKEN
    assert f"{round(measured)} measured; 1 messages shown" in line
    assert "tokens estimated" in line and "context: " in line


async def _say(chat: ChatSession, message: str) -> str:
    return "".join([p async for p in chat.chat_stream(message)])
