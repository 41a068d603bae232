"""Attachments through the real dispatch: saved into /data, announced, capped, never half-written."""
from __future__ import annotations

from pathlib import Path

import discord.ext.test as dpytest
import discord.ext.test.backend as back
import pytest
from discord.ext import commands

from core import Runtime
from tests.bot.conftest import channel_messages
from tests.fake_ollama import FakeOllama, text

pytestmark = pytest.mark.asyncio


async def send_with_files(content: str, files: list[Path], member_index: int = 0):  # type: ignore[no-untyped-def]
    config = dpytest.get_config()
    attachments = [back.make_attachment(f) for f in files]
    message = back.make_message(content, config.members[member_index], config.channels[0], attachments=attachments)
    await dpytest.run_all_events()
    return message


async def test_attachment_with_text_is_saved_announced_and_discussed(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("buy milk\n")
    fake_ollama.script(text("Your notes say: buy milk."))
    message = await send_with_files(f"<@{bot.user.id}> summarise this", [notes])
    shown = [m.content for m in channel_messages(message.channel, bot)]
    assert shown[0] == "📎 notes.txt → `/data/notes.txt`"
    assert shown[-1] == "Your notes say: buy milk."
    folder = runtime.sandboxes.data_dir(str(message.author.id), str(message.channel.id))
    assert (folder / "notes.txt").read_text() == "buy milk\n"
    seen = fake_ollama.requests[0]["messages"][-1]["content"]
    assert seen.split("\n") == ["[uploaded: /data/notes.txt]", "[/data/notes.txt, 9 bytes]", "```", "buy milk", "```",
                                 "summarise this"]  # a small text file is quoted too (issue 11, item 5)
    cat = await runtime.terminal.execute(str(message.author.id), str(message.channel.id), "cat /data/notes.txt")
    assert cat.stdout == "buy milk\n"


async def test_attachment_alone_is_saved_without_a_model_turn(bot: commands.Bot, fake_ollama: FakeOllama,
                                                               tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    message = await send_with_files(f"<@{bot.user.id}>", [data])
    assert [m.content for m in channel_messages(message.channel, bot)] == ["📎 data.csv → `/data/data.csv`"]
    assert fake_ollama.requests == []


async def test_oversized_and_unreadable_files_get_a_clear_reply_and_leave_nothing(
        bot: commands.Bot, runtime: Runtime, tmp_path: Path) -> None:
    runtime.settings = runtime.settings.replace(upload_max_file_bytes=1000)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 1001)
    gone = tmp_path / "gone.txt"
    gone.write_text("soon deleted")
    attachments = [back.make_attachment(big), back.make_attachment(gone)]
    gone.unlink()  # Discord's CDN will not have it
    config = dpytest.get_config()
    message = back.make_message(f"<@{bot.user.id}>", config.members[0], config.channels[0], attachments=attachments)
    await dpytest.run_all_events()
    reply = channel_messages(message.channel, bot)[-1].content
    assert "big.bin is over the 1000 bytes limit per file" in reply
    assert "gone.txt could not be downloaded" in reply
    folder = runtime.sandboxes.data_dir(str(message.author.id), str(message.channel.id))
    assert not folder.exists() or list(folder.iterdir()) == []


async def test_session_cap_is_enforced(bot: commands.Bot, runtime: Runtime, tmp_path: Path) -> None:
    runtime.uploads.max_session = 1500
    first, second = tmp_path / "one.bin", tmp_path / "two.bin"
    first.write_bytes(b"1" * 1000)
    second.write_bytes(b"2" * 1000)
    message = await send_with_files(f"<@{bot.user.id}>", [first, second])
    reply = channel_messages(message.channel, bot)[-1].content
    assert "one.bin → `/data/one.bin`" in reply and "two.bin" in reply and "uploads" in reply
    folder = runtime.sandboxes.data_dir(str(message.author.id), str(message.channel.id))
    assert sorted(p.name for p in folder.iterdir()) == ["one.bin"]


async def test_a_hostile_data_folder_gets_one_line_and_stalls_nobody(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama, tmp_path: Path) -> None:
    import asyncio

    from core import ChatSession
    config = dpytest.get_config()
    owner = str(config.members[0].id), str(config.channels[0].id)
    built = await runtime.terminal.execute(*owner, (
        "d=/data/deep; i=0; while [ $i -lt 1500 ]; do d=$d/a; i=$((i+1)); done; mkdir -p $d && "
        "mkdir /data/many && cd /data/many && seq 1 90000 | xargs touch && "  # VM_INODES (100,000) holds them
        "dd if=/dev/zero of=/data/sparse bs=1 count=1 seek=1000000000000 2>/dev/null && ls /data/many | wc -l"),
        timeout=300)
    assert built.stdout.strip() == "90000", built

    async def plain_turn() -> float:
        fake_ollama.script(text("hi"))
        loop = asyncio.get_running_loop()
        began = loop.time()
        async with ChatSession(user="someone-else", session="elsewhere", runtime=runtime) as chat:
            assert "".join([p async for p in chat.chat_stream("hello")]) == "hi"
        return loop.time() - began

    await plain_turn()
    idle = min([await plain_turn() for _ in range(3)])
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    upload = asyncio.create_task(send_with_files(f"<@{bot.user.id}>", [notes]))
    await asyncio.sleep(0.02)  # the size check is under way
    during = await plain_turn()
    message = await upload
    await runtime.sandboxes.remove(*owner)  # pytest's own clean-up of old temp folders recurses: go deep here
    await runtime.sandboxes.delete_data(*owner)
    assert during - idle < 0.1, f"a plain turn took {during * 1000:.0f} ms during the upload, {idle * 1000:.0f} ms idle"
    shown = [m.content for m in channel_messages(message.channel, bot)]
    assert shown == ["📎 notes.txt → `/data/notes.txt`"]  # the 1 TB sparse file counts what it holds: nothing


async def test_a_refused_user_cannot_upload(bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama,
                                            tmp_path: Path) -> None:
    config = dpytest.get_config()
    member = config.members[1]
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset({member.id}))
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x" * 1000)
    message = await send_with_files(f"<@{bot.user.id}> keep this", [payload], member_index=1)
    assert [m.content for m in channel_messages(message.channel, bot)] == ["-# Sorry, I'm not available to you here."]
    folder = runtime.sandboxes.data_dir(str(member.id), str(message.channel.id))
    assert not folder.exists() or not any(folder.iterdir())
    assert fake_ollama.requests == []
