"""A streamed reply on its way to the caller: each chunk read cheaply (plain pieces without
pydantic, the rest leniently), and the turn's events crossing in batches: the same text in the
same order, fewer hops."""
from __future__ import annotations

import asyncio

import pydantic
import pytest

from core import ChatSession, Runtime
from core.events import Done, Notice, TextDelta, ThinkingDelta, ToolStarted
from core.model_client import Piece, TolerantChatResponse, chat_response
from core.outbox import Outbox
from tests.fake_ollama import FakeOllama, hang, text

def chunk(message: object, **extra: object) -> dict[str, object]:
    return {"model": "m", "created_at": "2025-01-01T00:00:00Z", "message": message, "done": False, **extra}


def test_plain_pieces_are_read_without_models_and_the_rest_leniently() -> None:
    assert chat_response(**chunk({"role": "assistant", "content": "Hel"})) == Piece("Hel")
    assert chat_response(**chunk({"role": "assistant", "content": "", "thinking": "hmm"})) == Piece("", "hmm")
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "execute_terminal",
                                                                            "arguments": "ls -la"}}]}
    read = chat_response(**chunk(call))
    assert isinstance(read, TolerantChatResponse) and read.message.tool_calls
    assert read.malformed[0].startswith("error: the arguments were not valid JSON")
    last = chat_response(**chunk({"role": "assistant", "content": ""}, done=True, prompt_eval_count=12, eval_count=3))
    assert isinstance(last, TolerantChatResponse) and last.prompt_eval_count == 12 and last.malformed == {}
    assert isinstance(chat_response(**chunk(None)), TolerantChatResponse)  # a null message: read as empty
    with pytest.raises(pydantic.ValidationError):  # text that is not text: the stream is unreadable, as before
        chat_response(**chunk({"role": "assistant", "content": 42}))


@pytest.mark.asyncio
async def test_pieces_put_while_the_caller_is_busy_come_as_one_event_in_order() -> None:
    box = Outbox()
    box.piece(ThinkingDelta, "let me ")
    box.piece(ThinkingDelta, "think")
    box.piece(TextDelta, "It ")
    box.piece(TextDelta, "is ")
    box.put(ToolStarted("execute_terminal", {"command": "ls"}))
    box.piece(TextDelta, "4")
    box.piece(TextDelta, "2.")
    box.put(Done("It is 42."))
    assert await box.take() == [ThinkingDelta("let me think"), TextDelta("It is "),
                                ToolStarted("execute_terminal", {"command": "ls"}), TextDelta("42."), Done("It is 42.")]
    box.piece(TextDelta, "more")  # a run taken already is never appended to
    assert await box.take() == [TextDelta("more")]


@pytest.mark.asyncio
async def test_the_first_piece_wakes_a_waiting_caller_at_once() -> None:
    box = Outbox()
    taken: list[list[object]] = []

    async def caller() -> None:
        taken.append(await box.take())

    waiting = asyncio.create_task(caller())
    await asyncio.sleep(0)  # the caller waits now
    box.piece(TextDelta, "first")
    await asyncio.sleep(0)  # one pass of the loop, as for a queue
    assert taken == [[TextDelta("first")]]
    await waiting
    box.put(Notice("later"))
    assert await box.take() == [Notice("later")]


@pytest.mark.asyncio
async def test_a_cancelled_take_leaves_the_box_usable() -> None:
    box = Outbox()
    waiting = asyncio.create_task(box.take())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    box.piece(TextDelta, "after")
    assert await box.take() == [TextDelta("after")]


@pytest.mark.asyncio
async def test_a_burst_of_pieces_reaches_the_caller_whole(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    answer = "".join(f" tok{i % 10}" for i in range(500))
    fake_ollama.script(text(answer, chunk_size=5))
    async with ChatSession(user="alice", session="burst") as chat:
        events = [e async for e in chat.events("go")]
    pieces = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(pieces) == answer and events[-1] == Done(answer)
    assert len(pieces) < 500  # pieces that came together crossed together


@pytest.mark.asyncio
async def test_the_first_piece_is_not_held_back(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(hang("The first half"))  # the stream stops after its first pieces, until released
    async with ChatSession(user="alice", session="first") as chat:
        events = chat.events("go")
        first = await asyncio.wait_for(events.__anext__(), 10)
        assert isinstance(first, TextDelta) and "The first half".startswith(first.text)
        fake_ollama.release()
        rest = [e async for e in events]
    assert first.text + "".join(e.text for e in rest if isinstance(e, TextDelta)) == "The first half"
