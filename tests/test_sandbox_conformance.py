"""What every sandbox provider must do: the face the terminal, the runtime and the tools rely on.

The tests take a provider from `provider_factory` and use only the face (core/sandbox/base.py):
`Provider` (get, start, remove, reap, info) and the `Sandbox` handles it gives (exec, read_file,
write_file, in_use). A new provider adds a fixture `<name>_provider` (a factory: Settings -> an
async context manager that builds the provider, yields it, closes it and removes what the test
made) and runs this file unchanged with SANDBOX_PROVIDERS=<name>; provider-specific checks
(labels, limits, host safety) live beside it.
"""
from __future__ import annotations

import asyncio
import os
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncContextManager, AsyncIterator, Callable

import pytest
import pytest_asyncio

from core import SandboxUnavailable, Settings
from core.errors import SandboxFileError, SandboxFileTooLarge
from core.sandbox import STDERR, STDOUT, Provider, Sandbox
from tests.conftest import remove_containers

if TYPE_CHECKING:
    import docker

pytestmark = pytest.mark.asyncio
PROVIDERS = [p for p in os.environ.get("SANDBOX_PROVIDERS", "docker").split(",") if p]
ProviderFactory = Callable[[Settings], AsyncContextManager[Provider]]


@pytest.fixture
def docker_provider(docker_client: docker.DockerClient) -> ProviderFactory:
    from core.sandbox.docker import DockerProvider

    @asynccontextmanager
    async def make(settings: Settings) -> AsyncIterator[Provider]:
        provider = DockerProvider(settings)
        try:
            yield provider
        finally:
            await provider.close()
            await asyncio.to_thread(remove_containers, docker_client, settings.vm_name_prefix)

    return make


@pytest.fixture(params=PROVIDERS)
def provider_factory(request: pytest.FixtureRequest) -> ProviderFactory:
    """The provider under test, by name: the fixture `<name>_provider`."""
    return request.getfixturevalue(f"{request.param}_provider")


@pytest_asyncio.fixture
async def provider(provider_factory: ProviderFactory, settings: Settings) -> AsyncIterator[Provider]:
    async with provider_factory(settings) as made:
        yield made


@pytest.fixture
def box(provider: Provider) -> Sandbox:
    return provider.get("alice", "s")


async def run(box: Sandbox, command: str) -> tuple[int, bytes, bytes]:
    out, err = bytearray(), bytearray()

    def sink(stream: int, data: bytes) -> None:
        assert stream in (STDOUT, STDERR)
        (out if stream == STDOUT else err).extend(data)

    code = await box.exec(["sh", "-c", command], sink)
    return code, bytes(out), bytes(err)


async def test_a_handle_names_its_sandbox_and_start_gives_the_same_one(provider: Provider) -> None:
    box = provider.get("alice", "s")
    assert (box.user, box.session, box.name) == ("alice", "s", provider.name("alice", "s"))
    assert provider.get("alice", "other").name != box.name and provider.get("bob", "s").name != box.name
    started = await provider.start("alice", "s")
    assert started.name == box.name
    assert [(i.user, i.session) for i in await provider.info()] == [("alice", "s")]


async def test_exec_streams_stdout_and_stderr_apart_and_returns_the_exit_code(provider: Provider) -> None:
    box = await provider.start("alice", "s")
    assert await run(box, "echo out; echo err >&2; exit 7") == (7, b"out\n", b"err\n")
    assert await box.exec(["sh", "-c", "echo unheard; exit 3"]) == 3  # no sink: the output is dropped


async def test_exec_reports_its_start_before_any_output(box: Sandbox) -> None:
    seen: list[str] = []
    code = await box.exec(["sh", "-c", "echo hi"], lambda _s, d: seen.append(d.decode()),
                          on_start=lambda: seen.append("started"))
    assert code == 0 and seen == ["started", "hi\n"]


async def test_exec_past_its_timeout_raises_timeout_error(box: Sandbox) -> None:
    await run(box, "true")
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await box.exec(["sleep", "30"], timeout=1)
    assert time.monotonic() - began < 10
    assert await run(box, "echo after") == (0, b"after\n", b"")  # the sandbox still serves


async def test_the_sandbox_persists_between_commands_and_is_private_to_its_session(provider: Provider,
                                                                                   box: Sandbox) -> None:
    await run(box, "echo kept > /root/note")
    assert await run(box, "cat /root/note") == (0, b"kept\n", b"")
    code, _, _ = await run(provider.get("alice", "other"), "cat /root/note")
    assert code != 0


async def test_files_go_in_and_come_out_byte_for_byte(box: Sandbox) -> None:
    data = os.urandom(200_000) + b"\x00\xff end"
    await box.write_file("/root/blob.bin", data)
    assert await box.read_file("/root/blob.bin", max_bytes=len(data)) == data
    code, out, _ = await run(box, "wc -c < /root/blob.bin")
    assert code == 0 and int(out) == len(data)
    await box.write_file("/root/blob.bin", b"replaced")
    assert await box.read_file("/root/blob.bin", max_bytes=100) == b"replaced"


async def test_reading_refuses_what_is_missing_a_folder_or_too_large(box: Sandbox) -> None:
    await run(box, "mkdir -p /root/dir && head -c 5000 /dev/zero > /root/big")
    for path, words in (("/root/missing", "does not exist"), ("/root/dir", "not a regular file"),
                        ("/root/big", "over the 4000-byte limit")):
        with pytest.raises(SandboxFileError) as info:
            await box.read_file(path, max_bytes=4000)
        assert words in str(info.value), path
    with pytest.raises(SandboxFileTooLarge):
        await box.read_file("/root/big", max_bytes=4000)


async def test_writing_refuses_a_relative_path_and_a_missing_folder(box: Sandbox) -> None:
    await run(box, "true")
    for path in ("root/x", "/root/"):
        with pytest.raises(SandboxFileError, match="must be an absolute path"):
            await box.write_file(path, b"x")
    with pytest.raises(SandboxFileError):
        await box.write_file("/root/no/such/folder/x", b"x")


async def test_remove_ends_the_sandbox_and_exec_can_bring_it_back(provider: Provider, box: Sandbox) -> None:
    await run(box, "echo x > /root/state")
    assert await provider.remove("alice", "s") is True
    assert await provider.remove("alice", "s") is False
    with pytest.raises(SandboxUnavailable):
        await box.exec(["true"], recreate=False)
    code, _, _ = await run(box, "cat /root/state")  # a fresh sandbox: its private state is gone
    assert code != 0


async def test_a_busy_sandbox_is_never_reaped(provider: Provider) -> None:
    busy = await provider.start("alice", "busy")
    idle = await provider.start("alice", "idle")
    async with busy.in_use():
        removed = await provider.reap(idle_seconds=0)
        assert removed == [idle.name]
        assert {i.name for i in await provider.info()} == {busy.name}
    assert await provider.reap(idle_seconds=0) == [busy.name]


async def test_delete_person_takes_every_sandbox_and_data_of_one_person_only(provider: Provider) -> None:
    for user, session in (("alice", "s"), ("alice", "t"), ("bob", "s")):
        await run(provider.get(user, session), f"echo {user} > /data/{session}")
    await provider.prepare_data("alice", "u")  # a /data no sandbox runs on
    assert await provider.delete_person("alice") == (2, 3)
    assert [(i.user, i.session) for i in await provider.info()] == [("bob", "s")]
    assert not any(provider.data_dir("alice", s).exists() for s in ("s", "t", "u"))
    assert await run(provider.get("bob", "s"), "cat /data/s") == (0, b"bob\n", b"")
    assert await provider.delete_person("alice") == (0, 0)
