"""A hostile user against the real engine: what one sandbox does stays in that sandbox."""
from __future__ import annotations

import asyncio
import stat
import subprocess

import docker
import pytest

from core import Runtime, SandboxUnavailable
from core.sandbox.docker import DockerProvider
from core.sandbox.docker.hostmount import mount_flags
from core.sandbox.docker.naming import LABEL, legacy_slug
from tests.conftest import make_settings, open_runtime

pytestmark = pytest.mark.asyncio
FETCH = "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3"  # busybox-static's wget crashes; nc does not


async def run(rt: Runtime, command: str, user: str = "alice", session: str = "s", timeout: int | None = None):
    return await rt.terminal.execute(user, session, command, timeout)


async def processes(rt: Runtime, user: str = "alice", session: str = "s") -> str:
    return (await run(rt, "ps -o args", user, session)).stdout


# -- timeouts cannot be defeated from inside -----------------------------------------------------
async def test_setsid_and_daemons_do_not_outlive_a_timeout(runtime: Runtime) -> None:
    result = await run(runtime, "setsid sh -c 'while :; do :; done' & "
                                "nohup sh -c 'sleep 1000' > /dev/null 2>&1 & "
                                "(setsid sh -c 'sleep 1001' &) ; sleep 100", timeout=2)
    assert result.timed_out and "the command was killed" in result.for_model()
    left = await processes(runtime)
    for survivor in ("do :; done", "sleep 1000", "sleep 1001", "sleep 100"):
        assert survivor not in left, left


async def test_tampering_cannot_redirect_the_kill_and_earlier_background_jobs_live_on(
        runtime: Runtime, docker_client: docker.DockerClient) -> None:
    started = await run(runtime, "nohup sh -c 'sleep 300' > /tmp/job.log 2>&1 &")
    assert started.exit_code == 0
    result = await run(runtime, "echo 1 > /tmp/.agent/fg.pid; echo 1 > /tmp/.agent/kill.pid; "
                                "sleep 100", timeout=2)
    assert result.timed_out
    container = docker_client.containers.get(runtime.sandboxes.name("alice", "s"))
    assert container.status == "running"
    left = await processes(runtime)
    assert "sleep 300" in left and "sleep 100" not in left  # the job from before survived, the command did not
    assert (await run(runtime, "echo still here")).stdout == "still here\n"


# -- exact identity --------------------------------------------------------------------------------
async def test_ids_that_look_alike_get_their_own_sandbox_and_folder(runtime: Runtime) -> None:
    lookalike = "alice#(;{|"
    names = {runtime.sandboxes.name(u, "s") for u in ("alice", lookalike)}
    folders = {runtime.sandboxes.data_dir(u, "s") for u in ("alice", lookalike)}
    assert len(names) == 2 and len(folders) == 2
    await run(runtime, "echo mine > /data/secret.txt")
    theirs = await run(runtime, "cat /data/secret.txt", user=lookalike)
    assert theirs.exit_code != 0 and "mine" not in theirs.stdout and "No such file" in theirs.stderr


async def test_a_container_whose_labels_do_not_match_is_never_reused(runtime: Runtime,
                                                                     docker_client: docker.DockerClient) -> None:
    name = runtime.sandboxes.name("mallory", "s")
    planted = docker_client.containers.run(
        "llmbot-test:latest", ["sleep", "600"], name=name, detach=True,
        labels={f"{LABEL}.app": runtime.settings.vm_name_prefix, f"{LABEL}.user": "alice", f"{LABEL}.session": "s"})
    with pytest.raises(SandboxUnavailable) as refused:
        await runtime.sandboxes.start("mallory", "s")
    assert "taken by another" in str(refused.value)
    with pytest.raises(SandboxUnavailable):
        await run(runtime, "echo hi", user="mallory")
    planted.reload()
    assert planted.status == "running" and planted.labels[f"{LABEL}.user"] == "alice"


async def test_an_old_style_folder_of_a_numeric_id_moves_to_its_exact_name(runtime: Runtime) -> None:
    root = runtime.sandboxes.data_dir("123", "456").parents[1]
    old = root / legacy_slug("123") / legacy_slug("456")
    old.mkdir(parents=True)
    (old / "report.csv").write_text("a,b\n")
    assert (await run(runtime, "cat /data/report.csv", user="123", session="456")).stdout == "a,b\n"
    assert not old.exists()


# -- no setuid file reaches the host -----------------------------------------------------------------
async def test_a_setuid_file_planted_in_data_does_not_give_root_on_the_host(runtime: Runtime) -> None:
    planted = await run(runtime, "cp /bin/busybox /data/rootsh && chmod 4755 /data/rootsh && ls -l /data/rootsh")
    assert planted.exit_code == 0 and planted.stdout.startswith("-rws")
    path = runtime.sandboxes.data_dir("alice", "s") / "rootsh"
    assert path.stat().st_mode & stat.S_ISUID  # the bit is there on the host...
    root = runtime.sandboxes.data_dir("alice", "s").parents[1]
    assert stat.S_IMODE(root.stat().st_mode) == 0o700  # ...but no other account can reach the file
    with pytest.raises(PermissionError):  # as nobody, the file cannot even be reached
        await asyncio.to_thread(subprocess.run, [str(path), "id", "-u"], user=65534, group=65534,
                                extra_groups=[], capture_output=True, text=True, cwd="/")


async def test_data_is_mounted_nosuid_nodev_in_every_sandbox(tmp_path, fake_ollama, docker_client) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, vm_data_nosuid=True)
    root = tmp_path / "uploads"
    try:
        async with open_runtime(settings, docker_client) as rt:
            mounts = (await run(rt, "grep ' /data ' /proc/mounts")).stdout.split()
            assert {"nosuid", "nodev"} <= set(mounts[3].split(",")), mounts
            assert {"nosuid", "nodev"} <= mount_flags(root)
            planted = await run(rt, "cp /bin/busybox /data/rootsh && chmod 4755 /data/rootsh && "
                                    "mknod /data/disk b 8 0 2>&1; ls -l /data")
            assert "-rwsr-xr-x" in planted.stdout  # the bits are written, but nothing honours them here
    finally:
        subprocess.run(["umount", str(root)], check=False)


async def test_operators_can_choose_the_runtime_and_user_namespace(tmp_path, fake_ollama, docker_client) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, vm_runtime="runc", vm_userns="host")
    async with open_runtime(settings, docker_client) as rt:
        await rt.sandboxes.start("alice", "s")
        host = docker_client.containers.get(rt.sandboxes.name("alice", "s")).attrs["HostConfig"]
        assert host["Runtime"] == "runc" and host["UsernsMode"] == "host"
    assert DockerProvider(settings).config_hash() != DockerProvider(settings.replace(vm_runtime="")).config_hash()


# -- network isolation -------------------------------------------------------------------------------
async def test_sandboxes_cannot_reach_each_other(runtime: Runtime, docker_client: docker.DockerClient) -> None:
    served = await run(runtime, "echo from-a > /data/index.html; "
                                "(nohup httpd -f -p 8080 -h /data > /dev/null 2>&1 &); sleep 0.5; "
                                f"{FETCH} 127.0.0.1 8080")
    assert served.stdout.endswith("\r\n\r\nfrom-a\n")  # the server works
    await run(runtime, "true", user="bob")
    network = runtime.sandboxes.network_name
    a = docker_client.containers.get(runtime.sandboxes.name("alice", "s"))
    b = docker_client.containers.get(runtime.sandboxes.name("bob", "s"))
    assert set(a.attrs["NetworkSettings"]["Networks"]) == {network} == set(b.attrs["NetworkSettings"]["Networks"])
    assert docker_client.networks.get(network).attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    address = a.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    fetched = await run(runtime, f"{FETCH} {address} 8080", user="bob")
    assert fetched.exit_code != 0 and "from-a" not in fetched.stdout
