"""VM_DISK: what one sandbox writes, to /data or to its own filesystem, cannot fill the host."""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import docker
import pytest

from core import ChatSession, SandboxUnavailable
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, text

pytestmark = pytest.mark.asyncio
QUOTA = 64 * 1024 ** 2
MARGIN = 24 * 1024 ** 2


def host_used() -> int:
    """Bytes used on the filesystem that holds both the test's folders and Docker's."""
    return shutil.disk_usage("/var/lib/docker" if os.path.exists("/var/lib/docker") else "/").used


async def gone(client: docker.DockerClient, name: str, seconds: float = 8.0) -> None:
    for _ in range(int(seconds * 10)):
        if not client.containers.list(all=True, filters={"name": name}, sparse=True):  # sparse: no inspect of what is going
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} is still there")


async def test_data_is_a_hard_limit(tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    if os.geteuid() != 0:
        pytest.skip("a hard /data size needs root on the Docker host")
    async with open_runtime(make_settings(tmp_path, fake_ollama.url, vm_disk=QUOTA), docker_client) as rt:
        await rt.terminal.execute("alice", "s", "true")
        before = host_used()
        filled = await rt.terminal.execute("alice", "s", "dd if=/dev/zero of=/data/fill bs=1M count=128; sync; "
                                                         "ls -l /data/fill")
        assert filled.exit_code == 0 and "No space left on device" in filled.stderr
        size = int(filled.stdout.split()[4])
        assert size <= QUOTA and host_used() - before <= QUOTA + MARGIN
        # the files are the user's: they stay, and deleting some makes room again
        again = await rt.terminal.execute("alice", "s", "rm /data/fill && echo room > /data/ok && cat /data/ok")
        assert again.stdout == "room\n"


async def test_a_sandbox_over_its_disk_is_stopped_and_everyone_is_told(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, vm_disk=QUOTA, command_timeout=30)
    async with open_runtime(settings, docker_client) as rt:
        rt.start_background()
        await rt.terminal.execute("alice", "s", "echo kept > /data/kept.txt")
        name = rt.sandboxes.name("alice", "s")
        before = host_used()
        began = time.monotonic()
        with pytest.raises(SandboxUnavailable) as stopped:
            await rt.terminal.execute("alice", "s", "dd if=/dev/zero of=/root/fill bs=1M count=128; sync; sleep 20")
        assert time.monotonic() - began < 8  # within seconds of crossing, long before the command would end
        assert str(stopped.value).startswith("The sandbox was stopped: it held ")
        assert "more than its 64 MB of disk" in str(stopped.value) and "/data is kept" in str(stopped.value)
        await gone(docker_client, name)
        assert host_used() - before <= MARGIN  # what it wrote went with it

        # other sessions were served meanwhile, and this one comes back with /data intact
        fake_ollama.script(text("hi"))
        async with ChatSession(user="bob", session="s", runtime=rt) as chat:
            assert "".join([p async for p in chat.chat_stream("hello")]) == "hi"
        assert (await rt.terminal.execute("alice", "s", "cat /data/kept.txt")).stdout == "kept\n"

        # a sandbox that went over after its command ended is stopped too, and its next command says why;
        # the watch is run by hand here, so that a slow disk cannot make it catch the command mid-way
        rt.background.disk_watch.cancel()
        done = await rt.terminal.execute("alice", "s", "dd if=/dev/zero of=/root/fill bs=1M count=128; sync")
        assert done.exit_code == 0
        await rt.sandboxes.enforce_disk({name})
        await gone(docker_client, name)
        after = await rt.terminal.execute("alice", "s", "ls /root")
        assert after.for_model().startswith("note: The sandbox was stopped: it held ")
        assert after.stdout == ""  # a fresh filesystem: the big file is gone


async def test_a_bot_in_a_container_leaves_data_a_plain_folder(tmp_path: Path, fake_ollama: FakeOllama,
                                                                docker_client: docker.DockerClient) -> None:
    # VM_DATA_HOST_DIR says the bot runs in a container, whose mounts dockerd would never see.
    settings = make_settings(tmp_path, fake_ollama.url, vm_disk=QUOTA, vm_data_host_dir=str(tmp_path / "uploads"))
    async with open_runtime(settings, docker_client) as rt:
        written = await rt.terminal.execute("alice", "s", "echo hi > /data/x && cat /data/x")
        assert written.stdout == "hi\n"
        folder = rt.sandboxes.data_dir("alice", "s")
        assert not os.path.ismount(folder) and (folder / "x").read_text() == "hi\n"
        assert not list(folder.parent.glob("*.disk"))


async def test_the_disk_watch_says_once_that_docker_is_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from core import Runtime
    from tests.conftest import closed_port
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{closed_port()}")
    rt = Runtime(make_settings(tmp_path, "http://127.0.0.1:9"))
    rt.sandboxes._last_used["llmt-someone"] = time.monotonic()  # a sandbox in use: weighed every second
    try:
        with caplog.at_level("WARNING", logger="core.background"):
            rt.start_background()
            await asyncio.sleep(3.5)
    finally:
        await rt.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("disk watch")]
    assert lines == ["disk watch: Docker request failed: Docker is not reachable: start the Docker engine "
                     "(dockerd) or set DOCKER_HOST"]  # once, though it failed every second
