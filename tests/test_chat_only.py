"""Chat-only mode's provider (core/sandbox/folder.py): the sandbox face with nothing behind it.

No Docker is involved at all. What a folder may hold from an earlier run with commands on (a link
a sandbox planted, a FIFO) is read without following or hanging; nothing outside /data exists.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from core import SandboxUnavailable, Settings
from core.errors import SandboxFileError, SandboxFileTooLarge
from core.sandbox.folder import COMMANDS_OFF, FolderProvider

pytestmark = pytest.mark.asyncio


@pytest.fixture
def provider(tmp_path: Path) -> FolderProvider:
    return FolderProvider(Settings(upload_dir=str(tmp_path / "uploads"), tools=False))


async def test_nothing_runs_and_the_lifecycle_has_nothing_to_do(provider: FolderProvider) -> None:
    box = await provider.start("alice", "general")
    with pytest.raises(SandboxUnavailable) as info:
        await box.exec(["true"])
    assert info.value.user_message == COMMANDS_OFF
    assert await provider.remove("alice", "general") is False
    assert await provider.adopt() == ([], []) and await provider.info() == [] and await provider.ping()
    assert await provider.reap() == [] and await provider.enforce_disk({box.name}) == []


async def test_files_in_data_are_read_and_written_without_following_links(provider: FolderProvider,
                                                                          tmp_path: Path) -> None:
    folder = await provider.prepare_data("alice", "general")
    assert folder == provider.data_dir("alice", "general") and oct(folder.parents[1].stat().st_mode)[-3:] == "700"
    box = provider.get("alice", "general")
    await box.write_file("/data/notes.txt", b"buy milk\n")
    assert await box.read_file("/data/notes.txt", 100) == b"buy milk\n"
    with pytest.raises(SandboxFileTooLarge):
        await box.read_file("/data/notes.txt", 4)
    secret = tmp_path / "host-secret"
    secret.write_text("not yours")
    (folder / "planted.png").symlink_to(secret)
    (folder / "sub").symlink_to(tmp_path)
    os.mkfifo(folder / "pipe")
    for path, words in [("/data/planted.png", "is not a regular file"), ("/data/sub/host-secret", "does not exist"),
                        ("/data/pipe", "is not a regular file"), ("/data/missing.txt", "does not exist"),
                        ("/etc/passwd", "only /data is kept"), ("/data/../etc/passwd", "only /data is kept")]:
        with pytest.raises(SandboxFileError) as info:
            await asyncio.wait_for(box.read_file(path, 100), 10)  # a FIFO must not hang the read
        assert words in str(info.value), (path, str(info.value))
    with pytest.raises(SandboxFileError):
        await box.write_file("/data/planted.png", b"overwrite the host's file")
    assert secret.read_text() == "not yours"


async def test_a_persons_files_are_weighed_and_deleted(provider: FolderProvider) -> None:
    for session in ("one", "two"):
        await provider.prepare_data("bob", session)
        await provider.get("bob", session).write_file("/data/blob", b"x" * 50_000)
    disk = await provider.user_disk("bob")
    assert sorted(s for s, _ in disk.parts) == ["one", "two"] and disk.total >= 100_000
    await provider.delete_data("bob", "one")
    assert not provider.data_dir("bob", "one").exists() and provider.data_dir("bob", "two").exists()
    assert [s for s, _ in (await provider.user_disk("bob")).parts] == ["two"]
