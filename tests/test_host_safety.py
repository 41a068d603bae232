"""Nothing a sandbox does may fill the host: its log, its /etc files, inodes, one person's total,
and the mounts its /data needs (real Docker engine, real disk images)."""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import docker
import pytest

from core import ChatSession, SandboxUnavailable, UploadError
from core.sandbox.docker import diskimage
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, text

pytestmark = pytest.mark.asyncio
MB = 1024 ** 2


def docker_root() -> str:
    return "/var/lib/docker" if os.path.exists("/var/lib/docker") else "/"


def host_bytes() -> int:
    return shutil.disk_usage(docker_root()).used


def host_inodes() -> int:
    stats = os.statvfs(docker_root())
    return stats.f_files - stats.f_ffree


def loop_backing_files() -> list[str]:
    found = []
    for device in Path("/sys/block").glob("loop*"):
        backing = device / "loop" / "backing_file"
        if backing.exists():
            found.append(backing.read_text().strip())
    return found


def needs_root() -> None:
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.skip("disk images need root and loop devices on the Docker host")


async def test_pid_1_output_leaves_no_log_on_the_host(tmp_path: Path, fake_ollama: FakeOllama,
                                                      docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, command_timeout=60, command_timeout_max=60)
    async with open_runtime(settings, docker_client) as rt:
        await rt.terminal.execute("alice", "s", "true")
        container = docker_client.containers.get(rt.sandboxes.name("alice", "s"))
        assert container.attrs["HostConfig"]["LogConfig"]["Type"] == "none"
        before = host_bytes()
        done = await rt.terminal.execute("alice", "s", "dd if=/dev/zero of=/proc/1/fd/1 bs=1M count=400 && echo written")
        assert done.stdout == "written\n"
        log_path = container.attrs.get("LogPath") or ""
        assert not log_path or not os.path.exists(log_path) or os.path.getsize(log_path) < MB
        assert host_bytes() - before < 16 * MB


async def test_etc_files_cannot_grow_on_the_host(tmp_path: Path, fake_ollama: FakeOllama,
                                                 docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, vm_disk=64 * MB, command_timeout=60, command_timeout_max=60)
    async with open_runtime(settings, docker_client) as rt:
        await rt.terminal.execute("alice", "s", "true")
        before = host_bytes()
        for name in ("hosts", "hostname", "resolv.conf"):
            wrote = await rt.terminal.execute("alice", "s", f"dd if=/dev/zero of=/etc/{name} bs=1M count=400")
            assert wrote.exit_code != 0 and "Read-only file system" in wrote.stderr, wrote.for_model()
        assert host_bytes() - before < 16 * MB
        seen = await rt.terminal.execute("alice", "s", "hostname; cat /etc/hostname; grep -c localhost /etc/hosts")
        lines = seen.stdout.splitlines()
        assert lines[0] == "sandbox" and lines[1] == "sandbox" and int(lines[2]) >= 1


async def test_files_are_bounded_in_the_sandbox_and_in_data(tmp_path: Path, fake_ollama: FakeOllama,
                                                            docker_client: docker.DockerClient) -> None:
    needs_root()
    settings = make_settings(tmp_path, fake_ollama.url, vm_inodes=20_000, command_timeout=60, command_timeout_max=60)
    async with open_runtime(settings, docker_client) as rt:
        rt.start_background()
        await rt.terminal.execute("alice", "s", "true")
        # /data: its image has room for VM_INODES files, whatever their size
        made = await rt.terminal.execute("alice", "s", "mkdir -p /data/many && cd /data/many && "
                                                       "seq 1 30000 | xargs touch; ls | wc -l")
        assert "No space left on device" in made.stderr
        assert int(made.stdout.split()[-1]) <= 20_000 * 1.01  # mkfs rounds up to whole inode tables
        await rt.terminal.execute("alice", "s", "rm -rf /data/many")
        # its own filesystem: the watch stops it, and removing it gives the host its inodes back
        before = host_inodes()
        with pytest.raises(SandboxUnavailable) as stopped:
            await rt.terminal.execute("alice", "s", "mkdir /root/many && cd /root/many && "
                                                    "seq 1 300000 | xargs touch; sleep 30")
        assert "files" in str(stopped.value) and "/data is kept" in str(stopped.value)
        for _ in range(50):
            if not docker_client.containers.list(all=True, filters={"name": rt.sandboxes.name("alice", "s")}):
                break
            await asyncio.sleep(0.2)
        assert host_inodes() - before < 30_000  # far fewer than the 300,000 it tried


async def test_one_persons_conversations_stay_within_their_total(tmp_path: Path, fake_ollama: FakeOllama,
                                                                 docker_client: docker.DockerClient) -> None:
    needs_root()
    settings = make_settings(tmp_path, fake_ollama.url, vm_disk=64 * MB, user_disk=130 * MB,
                             max_sandboxes_per_user=6, command_timeout=60, command_timeout_max=60)
    async with open_runtime(settings, docker_client) as rt:
        rt.start_background()
        results = []
        for n in range(6):
            results.append(await rt.terminal.execute("alice", f"t{n}", "dd if=/dev/zero of=/data/fill bs=1M count=50; "
                                                                       "sync; du -sk /data/fill"))
        disk = await rt.sandboxes.user_disk("alice")
        assert disk.total <= 130 * MB + MB, disk.line()
        assert len(disk.parts) == 6
        # the first two fit whole; later ones ran out of room, and were told why
        assert all(r.exit_code == 0 and "No space" not in r.stderr for r in results[:2]), [r.for_model() for r in results]
        assert any("No space left on device" in r.stderr for r in results[2:])
        last = results[-1].for_model()
        assert "Your conversations' files hold" in last and "of your 130 MB in all" in last
        # someone else is not affected
        bob = await rt.terminal.execute("bob", "t0", "dd if=/dev/zero of=/data/fill bs=1M count=50 && echo ok")
        assert bob.stdout == "ok\n"
        # deleting gives room back
        await rt.terminal.execute("alice", "t0", "rm /data/fill")
        again = await rt.terminal.execute("alice", "t5", "dd if=/dev/zero of=/data/more bs=1M count=30 && echo ok")
        assert again.stdout == "ok\n"


async def test_a_plain_data_folder_is_weighed_by_the_watch(tmp_path: Path, fake_ollama: FakeOllama,
                                                           docker_client: docker.DockerClient) -> None:
    # VM_DATA_HOST_DIR: the bot runs in a container whose data mount is not rshared, so /data is a
    # plain folder: the watch weighs it too.
    settings = make_settings(tmp_path, fake_ollama.url, vm_disk=256 * MB, vm_data_host_dir=str(tmp_path / "uploads"),
                             command_timeout=120, command_timeout_max=120)
    async with open_runtime(settings, docker_client) as rt:
        rt.start_background()
        folder = rt.sandboxes.data_dir("alice", "s")
        steps = "i=0; while [ $i -lt 10 ]; do dd if=/dev/zero of=/data/f$i bs=1M count=100 2>/dev/null; sync; " \
                "sleep 1; i=$((i+1)); done"
        with pytest.raises(SandboxUnavailable) as stopped:
            await rt.terminal.execute("alice", "s", steps)
        assert "more than its 256 MB of disk" in str(stopped.value)
        assert not os.path.ismount(folder)
        held = sum(f.stat().st_size for f in folder.iterdir())
        assert held <= 600 * MB  # well before 1 GB


async def test_mounts_follow_sandboxes(tmp_path: Path, fake_ollama: FakeOllama,
                                       docker_client: docker.DockerClient) -> None:
    needs_root()
    async with open_runtime(make_settings(tmp_path, fake_ollama.url, vm_disk=64 * MB), docker_client) as rt:
        await rt.terminal.execute("alice", "s", "echo kept > /data/x")
        folder = rt.sandboxes.data_dir("alice", "s")
        image = str(diskimage.image_for(folder))
        assert os.path.ismount(folder) and image in loop_backing_files()

        assert await rt.sandboxes.remove("alice", "s")
        assert not os.path.ismount(folder) and image not in loop_backing_files()
        back = await rt.terminal.execute("alice", "s", "cat /data/x")  # mounted again when it comes back
        assert back.stdout == "kept\n" and os.path.ismount(folder)

        assert await rt.sandboxes.reap(idle_seconds=0)  # idle: reaped, and its image unmounted
        assert not os.path.ismount(folder) and image not in loop_backing_files()

        await rt.terminal.execute("alice", "s", "true")
        await rt.stop_session("alice", "s")
        await rt.sandboxes.delete_data("alice", "s")  # /reset files:true
        assert not os.path.exists(image) and image not in loop_backing_files()
        assert not any(p.endswith("(deleted)") and str(tmp_path) in p for p in loop_backing_files())


async def test_an_upload_past_the_persons_total_says_where_their_files_are(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    needs_root()
    settings = make_settings(tmp_path, fake_ollama.url, vm_disk=64 * MB, user_disk=60 * MB,
                             upload_max_file_bytes=64 * MB, upload_max_session_bytes=64 * MB)
    async with open_runtime(settings, docker_client) as rt:
        await rt.terminal.execute("alice", "t0", "dd if=/dev/zero of=/data/fill bs=1M count=45")
        async with ChatSession(user="alice", session="t1", runtime=rt) as chat:
            assert await chat.save_upload("small.txt", b"fits\n") == "/data/small.txt"
            with pytest.raises(UploadError) as refused:
                await chat.save_upload("big.bin", b"\0" * (20 * MB))
        line = refused.value.user_message
        assert line.startswith("big.bin does not fit. Your conversations' files hold ")
        assert "of your 60 MB in all (`t0` 45 MB" in line and line.endswith(
            "`rm` them here, or `/reset files:true` in a conversation you no longer need.")
        assert not [p.name for p in rt.sandboxes.data_dir("alice", "t1").iterdir() if p.name != "small.txt"]


async def test_a_deleted_file_held_open_still_counts(tmp_path: Path, fake_ollama: FakeOllama,
                                                     docker_client: docker.DockerClient) -> None:
    # a file deleted while a process keeps writing to it has no name for a walk to find, yet takes host disk
    settings = make_settings(tmp_path, fake_ollama.url, vm_disk=64 * MB, command_timeout=60, command_timeout_max=60)
    async with open_runtime(settings, docker_client) as rt:
        rt.start_background()
        await rt.terminal.execute("alice", "s", "true")
        name = rt.sandboxes.name("alice", "s")
        before = host_bytes()
        hide = ("nohup sh -c 'exec 3>/root/hidden; rm /root/hidden; "
                "while :; do head -c 1048576 /dev/zero >&3; done' >/dev/null 2>&1 &")
        await rt.terminal.execute("alice", "s", hide)
        peak = 0
        for _ in range(100):
            peak = max(peak, host_bytes() - before)
            if not docker_client.containers.list(all=True, filters={"name": name}):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"still running, the host {peak // MB} MB fuller")
        assert host_bytes() - before < 16 * MB  # gone with the sandbox
        assert peak < 2048 * MB
        later = await rt.terminal.execute("alice", "s", "true")
        assert "more than its 64 MB of disk" in later.for_model()


async def test_reset_with_files_right_before_a_message_never_leaves_data_unbounded(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    needs_root()
    async with open_runtime(make_settings(tmp_path, fake_ollama.url, vm_disk=64 * MB), docker_client) as rt:
        await rt.terminal.execute("alice", "s", "echo old > /data/x")
        fake_ollama.script(text("hi"))
        async with ChatSession(user="alice", session="s", runtime=rt) as chat:
            await asyncio.gather(chat.reset(delete_files=True), rt.sandboxes.start("alice", "s"),
                                 return_exceptions=True)
        for _ in range(3):  # whichever came first, /data is its own image again, empty and bounded
            done = await rt.terminal.execute("alice", "s", "ls /data; df -k /data | tail -1")
            if done.exit_code == 0:
                break
        folder = rt.sandboxes.data_dir("alice", "s")
        assert os.path.ismount(folder)
        assert "x" not in done.stdout.split()
        assert int(done.stdout.split()[-5]) < 70 * 1024  # df's size column: the 64 MB image, not the host


async def test_an_image_still_attached_elsewhere_is_never_mounted_twice(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    needs_root()
    import subprocess
    async with open_runtime(make_settings(tmp_path, fake_ollama.url, vm_disk=64 * MB), docker_client) as rt:
        await rt.terminal.execute("alice", "s", "echo kept > /data/x")
        await rt.sandboxes.remove("alice", "s")
        folder = rt.sandboxes.data_dir("alice", "s")
        image = diskimage.image_for(folder)
        assert not os.path.ismount(folder)
        device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                                check=True).stdout.strip()  # what a sandbox's own view of it would hold
        try:
            with pytest.raises(SandboxUnavailable, match="still in use elsewhere"):
                await rt.sandboxes.prepare_data("alice", "s")
            assert not os.path.ismount(folder)
        finally:
            subprocess.run(["losetup", "-d", device], check=True)
        assert (await rt.terminal.execute("alice", "s", "cat /data/x")).stdout == "kept\n"


async def test_a_plain_folder_too_large_to_weigh_counts_as_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # without disk images (no root), one person's total weighs /data by walking it: a tree too large to
    # walk in time must not count as empty, or it would hide from USER_DISK
    from core import Settings
    from core.errors import UploadError
    from core.sandbox.docker import diskimage

    folder = tmp_path / "alice-1" / "s-2"
    folder.mkdir(parents=True)

    def too_slow(_folder: Path) -> int:
        raise UploadError("too many files to measure in time")

    monkeypatch.setattr(diskimage, "folder_usage", too_slow)
    disk = diskimage.user_disk(tmp_path / "alice-1", Settings(vm_disk=64 * MB))
    assert disk.parts == [("s", 64 * MB)]
