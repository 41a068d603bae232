"""Uploads: safe names, no clobbering, /data in the session's own container only, size caps."""
from __future__ import annotations

from pathlib import Path

import pytest

from core import ChatSession, Runtime, UploadError
from core.uploads import safe_filename

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("raw, safe", [
    ("notes.txt", "notes.txt"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\boot.ini", "boot.ini"),
    ("/abs/path/report.pdf", "report.pdf"),
    (".hidden", "hidden"),
    ("..", "upload"),
    ("", "upload"),
    ("a\x00b\nc.txt", "abc.txt"),
    ("x" * 300 + ".csv", "x" * 116 + ".csv"),
])
async def test_safe_filename(raw: str, safe: str) -> None:
    assert safe_filename(raw) == safe


async def test_upload_lands_in_data_of_that_session_only(runtime: Runtime, tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("secret notes\n")
    async with ChatSession(user="alice", session="docs") as chat:
        path = chat.upload_document(source)
        assert path == "/data/notes.txt"
        assert (await runtime.terminal.execute("alice", "docs", f"cat {path}")).stdout == "secret notes\n"
    other = await runtime.terminal.execute("bob", "docs", "ls -A /data")
    assert other.stdout == ""
    assert not (runtime.containers.upload_dir("bob", "docs") / "notes.txt").exists()


async def test_no_clobbering_without_intent(runtime: Runtime, tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    async with ChatSession(user="alice", session="dup") as chat:
        source.write_text("one")
        assert chat.upload_document(source) == "/data/a.txt"
        source.write_text("two")
        assert chat.upload_document(source) == "/data/a-1.txt"
        source.write_text("three")
        assert chat.upload_document(source, overwrite=True) == "/data/a.txt"
        folder = chat.upload_folder
    assert (folder / "a.txt").read_text() == "three" and (folder / "a-1.txt").read_text() == "two"


async def test_caps_and_unreadable_files_are_refused_and_leave_nothing(runtime: Runtime, tmp_path: Path) -> None:
    runtime.uploads.max_file = 1000
    runtime.uploads.max_session = 1500
    async with ChatSession(user="alice", session="caps") as chat:
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 1001)
        with pytest.raises(UploadError, match="limit per file"):
            chat.upload_document(big)
        with pytest.raises(UploadError, match="limit per file"):
            await chat.save_upload("big.bin", [b"x" * 600, b"x" * 600])
        ok = tmp_path / "ok.bin"
        ok.write_bytes(b"y" * 900)
        chat.upload_document(ok)
        with pytest.raises(UploadError, match="uploads"):
            chat.upload_document(ok)
        with pytest.raises(UploadError, match="not a readable file"):
            chat.upload_document(tmp_path / "missing.txt")
        assert sorted(p.name for p in chat.upload_folder.iterdir()) == ["ok.bin"]


async def test_async_upload_streams_chunks(runtime: Runtime) -> None:
    async def chunks():
        for piece in (b"hello ", b"from ", b"discord"):
            yield piece

    async with ChatSession(user="alice", session="stream") as chat:
        path = await chat.save_upload("../msg.txt", chunks())
        assert path == "/data/msg.txt"
        assert (chat.upload_folder / "msg.txt").read_bytes() == b"hello from discord"
