"""What every sandbox backend must do: the face the terminal, the runtime and the bot rely on.

A new backend (a Kubernetes pod, a microVM) adds itself to `BACKENDS` and passes
this file unchanged; backend-specific checks (labels, limits) live beside it.
"""
from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Callable

import pytest
import pytest_asyncio

from core import SandboxUnavailable, Settings
from core.containers import ContainerManager
from core.errors import SandboxFileError
from core.sandbox import STDERR, STDOUT, Sandboxes
from tests.conftest import remove_containers

pytestmark = pytest.mark.asyncio
BACKENDS: dict[str, Callable[[Settings], Sandboxes]] = {"docker": ContainerManager}


@pytest_asyncio.fixture(params=sorted(BACKENDS))
async def box(request: pytest.FixtureRequest, settings: Settings, docker_client) -> AsyncIterator[Sandboxes]:
    sandboxes = BACKENDS[request.param](settings)
    try:
        yield sandboxes
    finally:
        await sandboxes.close()
        await asyncio.to_thread(remove_containers, docker_client, settings.vm_name_prefix)


async def run(box: Sandboxes, command: str, session: str = "s") -> tuple[int, bytes, bytes]:
    out, err = bytearray(), bytearray()

    def sink(stream: int, data: bytes) -> None:
        assert stream in (STDOUT, STDERR)
        (out if stream == STDOUT else err).extend(data)

    code = await box.exec("alice", session, ["sh", "-c", command], sink)
    return code, bytes(out), bytes(err)


async def test_exec_streams_stdout_and_stderr_apart_and_returns_the_exit_code(box: Sandboxes) -> None:
    await box.start("alice", "s")
    assert await run(box, "echo out; echo err >&2; exit 7") == (7, b"out\n", b"err\n")


async def test_exec_reports_its_start_before_any_output(box: Sandboxes) -> None:
    seen: list[str] = []
    code = await box.exec("alice", "s", ["sh", "-c", "echo hi"], lambda _s, d: seen.append(d.decode()),
                          on_start=lambda: seen.append("started"))
    assert code == 0 and seen == ["started", "hi\n"]


async def test_the_sandbox_persists_between_commands_and_is_private_to_its_session(box: Sandboxes) -> None:
    await run(box, "echo kept > /root/note")
    assert await run(box, "cat /root/note") == (0, b"kept\n", b"")
    code, _, _ = await run(box, "cat /root/note", session="other")
    assert code != 0


async def test_files_go_in_and_come_out_byte_for_byte(box: Sandboxes) -> None:
    data = os.urandom(200_000) + b"\x00\xff end"
    await box.write_file("alice", "s", "/root/blob.bin", data)
    assert await box.read_file("alice", "s", "/root/blob.bin", max_bytes=len(data)) == data
    code, out, _ = await run(box, "wc -c < /root/blob.bin")
    assert code == 0 and int(out) == len(data)


async def test_reading_refuses_what_is_missing_a_folder_or_too_large(box: Sandboxes) -> None:
    await run(box, "mkdir -p /root/dir && head -c 5000 /dev/zero > /root/big")
    for path, words in (("/root/missing", "does not exist"), ("/root/dir", "not a regular file"),
                        ("/root/big", "over the 4000-byte limit")):
        with pytest.raises(SandboxFileError) as info:
            await box.read_file("alice", "s", path, max_bytes=4000)
        assert words in str(info.value), path


async def test_remove_ends_the_sandbox_and_exec_can_bring_it_back(box: Sandboxes) -> None:
    await run(box, "echo x > /root/state")
    assert await box.remove("alice", "s") is True
    assert await box.remove("alice", "s") is False
    with pytest.raises(SandboxUnavailable):
        await box.exec("alice", "s", ["true"], lambda *_: None, recreate=False)
    code, _, _ = await run(box, "cat /root/state")  # a fresh sandbox: its private state is gone
    assert code != 0


async def test_a_busy_sandbox_is_never_reaped(box: Sandboxes) -> None:
    await box.start("alice", "busy")
    await box.start("alice", "idle")
    async with box.in_use("alice", "busy"):
        removed = await box.reap(idle_seconds=0)
        assert removed == [box.name("alice", "idle")]
        assert {i.name for i in await box.info()} == {box.name("alice", "busy")}
    assert await box.reap(idle_seconds=0) == [box.name("alice", "busy")]
