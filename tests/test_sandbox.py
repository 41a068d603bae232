"""The container layer against the real Docker engine: lifecycle, limits, and execute_terminal."""
from __future__ import annotations

import asyncio
import time

import docker
import pytest

from core import ChatSession, Runtime, SandboxUnavailable
from core.sandbox.docker import DockerProvider
from core.sandbox.docker.naming import LABEL

pytestmark = pytest.mark.asyncio


async def run(rt: Runtime, command: str, user: str = "alice", session: str = "s1", timeout: int | None = None):
    return await rt.terminal.execute(user, session, command, timeout)


async def test_container_is_started_with_the_session_labelled_and_locked_down(runtime: Runtime,
                                                                              docker_client: docker.DockerClient) -> None:
    async with ChatSession(user="alice", session="s1", runtime=runtime):
        name = runtime.sandboxes.name("alice", "s1")
        for _ in range(100):  # started in the background by __aenter__, not by a command
            try:
                container = docker_client.containers.get(name)
                if container.status == "running":
                    break
            except docker.errors.NotFound:
                pass
            await asyncio.sleep(0.1)
        container.reload()
        assert container.status == "running"
        labels = container.labels
        assert labels[f"{LABEL}.user"] == "alice" and labels[f"{LABEL}.session"] == "s1"
        assert labels[f"{LABEL}.app"] == runtime.settings.vm_name_prefix
        assert labels[f"{LABEL}.config"] == runtime.sandboxes.config_hash()
        host = container.attrs["HostConfig"]
        assert host["Memory"] == runtime.settings.vm_memory
        assert host["MemorySwap"] == runtime.settings.vm_memory
        assert host["NanoCpus"] == int(runtime.settings.vm_cpus * 1e9)
        assert host["PidsLimit"] == runtime.settings.vm_pids
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["Init"] is True and host["Privileged"] is False
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        assert mounts["/data"]["Source"] == str(runtime.sandboxes.data_dir("alice", "s1"))
        env = container.attrs["Config"]["Env"]
        assert not any(e.startswith(("DISCORD_TOKEN", "OLLAMA_HOST", "DATABASE_URL")) for e in env)


async def test_execute_reports_exit_code_stdout_and_stderr(runtime: Runtime) -> None:
    result = await run(runtime, "echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    text = result.for_model()
    assert "exit code: 3" in text and "out" in text and "err" in text


async def test_every_call_reuses_the_same_container(runtime: Runtime) -> None:
    first = await run(runtime, "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo $$ > /tmp/marker")
    second = await run(runtime, "cat /tmp/marker")
    assert second.exit_code == 0 and second.stdout.strip().isdigit()
    assert first.stdout.splitlines()[0] == "sandbox"


async def test_cwd_and_exports_carry_over_like_a_terminal(runtime: Runtime) -> None:
    await run(runtime, "mkdir -p /tmp/work && cd /tmp/work && export GREETING='hello world'")
    result = await run(runtime, "pwd; echo \"$GREETING\"")
    assert result.stdout == "/tmp/work\nhello world\n"
    await run(runtime, "cd /data")
    assert (await run(runtime, "pwd")).stdout == "/data\n"
    # a failing command still keeps its directory change
    await run(runtime, "cd /tmp && false")
    assert (await run(runtime, "pwd")).stdout == "/tmp\n"


async def test_state_is_per_session(runtime: Runtime) -> None:
    await run(runtime, "cd /tmp && export ONLY_HERE=1", session="a")
    other = await run(runtime, "pwd; echo ${ONLY_HERE:-unset}", session="b")
    assert other.stdout == "/data\nunset\n"


async def test_timeout_kills_the_command_and_says_so(runtime: Runtime) -> None:
    started = time.monotonic()
    result = await run(runtime, "sleep 300; echo never", timeout=1)
    elapsed = time.monotonic() - started
    assert result.timed_out and elapsed < 8
    assert "timed out after 1 s" in result.for_model() and "never" not in result.stdout
    procs = await run(runtime, "ps -o args")
    assert "sleep 300" not in procs.stdout


async def test_timeout_cannot_exceed_the_configured_maximum(runtime: Runtime) -> None:
    result = await run(runtime, "true", timeout=10_000)
    assert result.timeout == runtime.settings.command_timeout_max


async def test_output_is_capped_keeping_head_and_tail(runtime: Runtime) -> None:
    limit = runtime.settings.output_limit
    result = await run(runtime, "i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done")
    assert result.stdout.startswith("line0\nline1\n")
    assert result.stdout.rstrip().endswith("line19999")
    assert "bytes cut from the middle" in result.stdout
    assert len(result.stdout) < limit + 200


async def test_commands_run_off_the_event_loop(runtime: Runtime) -> None:
    await run(runtime, "true")  # container up
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    both = await asyncio.gather(run(runtime, "sleep 1; echo a", session="s1"),
                                run(runtime, "sleep 1; echo b", user="bob", session="s1"))
    task.cancel()
    assert [r.stdout for r in both] == ["a\n", "b\n"]
    assert ticks >= 12  # the loop kept turning during the two one-second commands


async def test_background_jobs_keep_running_between_calls(runtime: Runtime) -> None:
    started = time.monotonic()
    result = await run(runtime, "nohup sh -c 'sleep 2; echo finished > /tmp/job.out' > /tmp/job.log 2>&1 &")
    assert result.exit_code == 0 and time.monotonic() - started < 2
    assert "sleep 2" in (await run(runtime, "ps -o args")).stdout
    await asyncio.sleep(2.5)
    assert (await run(runtime, "cat /tmp/job.out")).stdout == "finished\n"


async def test_a_removed_container_is_recreated_transparently(runtime: Runtime,
                                                             docker_client: docker.DockerClient) -> None:
    await run(runtime, "true")
    name = runtime.sandboxes.name("alice", "s1")
    old_id = docker_client.containers.get(name).id
    docker_client.containers.get(name).remove(force=True)
    result = await run(runtime, "echo back")
    assert result.stdout == "back\n"
    assert docker_client.containers.get(name).id != old_id


async def test_a_stopped_container_is_restarted(runtime: Runtime, docker_client: docker.DockerClient) -> None:
    await run(runtime, "true")
    container = docker_client.containers.get(runtime.sandboxes.name("alice", "s1"))
    container.stop(timeout=1)
    assert (await run(runtime, "echo again")).stdout == "again\n"


async def test_network_can_be_turned_off(runtime: Runtime, docker_client: docker.DockerClient) -> None:
    manager = DockerProvider(runtime.settings.replace(vm_network=False))
    try:
        await manager.start("net", "off")
    finally:
        await manager.close()
    container = docker_client.containers.get(manager.name("net", "off"))
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    await runtime.sandboxes.start("net", "on")
    on = docker_client.containers.get(runtime.sandboxes.name("net", "on"))
    assert on.attrs["HostConfig"]["NetworkMode"] != "none"


async def test_idle_running_containers_are_reaped(runtime: Runtime, docker_client: docker.DockerClient) -> None:
    await run(runtime, "true", session="idle")
    await run(runtime, "true", session="fresh")
    manager = runtime.sandboxes
    idle = manager.name("alice", "idle")
    manager._last_used[idle] -= 100
    removed = await manager.reap(idle_seconds=50)
    assert removed == [idle]
    names = {c.name for c in docker_client.containers.list(all=True)}
    assert idle not in names and manager.name("alice", "fresh") in names


async def test_containers_are_adopted_after_a_restart_and_reaped_when_idle(
        runtime: Runtime, docker_client: docker.DockerClient) -> None:
    await run(runtime, "echo kept > /tmp/kept")
    name = runtime.sandboxes.name("alice", "s1")
    original = docker_client.containers.get(name).id
    restarted = DockerProvider(runtime.settings)  # a new process: no memory of the container
    try:
        adopted, removed = await restarted.adopt()
        assert name in adopted and removed == []
        assert await restarted.reap(idle_seconds=3600) == []
        assert docker_client.containers.get(name).id == original
        assert await restarted.reap(idle_seconds=0) == [name]  # adopted containers are reaped too
    finally:
        await restarted.close()


async def test_a_configuration_change_recreates_at_session_start(runtime: Runtime,
                                                                docker_client: docker.DockerClient) -> None:
    await run(runtime, "true")
    name = runtime.sandboxes.name("alice", "s1")
    old = docker_client.containers.get(name).id
    changed = DockerProvider(runtime.settings.replace(vm_pids=128))
    try:
        adopted, removed = await changed.adopt()
        assert name in removed
        await changed.start("alice", "s1")
    finally:
        await changed.close()
    container = docker_client.containers.get(name)
    assert container.id != old and container.attrs["HostConfig"]["PidsLimit"] == 128


async def test_docker_unreachable_is_one_clear_error(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    manager = DockerProvider(runtime.settings)
    from core.sandbox import Terminal
    try:
        with pytest.raises(SandboxUnavailable) as info:
            await Terminal(manager).execute("alice", "s1", "true")
    finally:
        await manager.close()
    assert "Docker is not reachable" in str(info.value) and "\n" not in str(info.value)


async def test_the_runtime_reaps_idle_sandboxes_in_the_background(settings, docker_client) -> None:
    rt = Runtime(settings.replace(vm_idle_timeout=1))
    try:
        async with ChatSession(user="alice", session="reaped", runtime=rt):
            await rt.terminal.execute("alice", "reaped", "true")
        name = rt.sandboxes.name("alice", "reaped")
        assert docker_client.containers.get(name).status == "running"
        for _ in range(80):
            await asyncio.sleep(0.1)
            if not docker_client.containers.list(all=True, filters={"name": name}, sparse=True):  # sparse: no inspect of what is going
                break
        assert not docker_client.containers.list(all=True, filters={"name": name}, sparse=True)
    finally:
        await rt.close()
        from tests.conftest import remove_containers
        remove_containers(docker_client, settings.vm_name_prefix)


async def test_a_paused_sandbox_is_unpaused_before_the_command(runtime: Runtime,
                                                              docker_client: docker.DockerClient) -> None:
    await run(runtime, "true")
    container = docker_client.containers.get(runtime.sandboxes.name("alice", "s1"))
    container.pause()
    started = time.monotonic()
    result = await run(runtime, "echo awake", timeout=5)
    assert (result.exit_code, result.stdout, result.timed_out) == (0, "awake\n", False)
    assert time.monotonic() - started < 3
    container.reload()
    assert container.status == "running"


async def test_start_up_adoption_and_the_first_command_never_race(runtime: Runtime,
                                                                 docker_client: docker.DockerClient) -> None:
    users = ["u1", "u2", "u3", "u4", "u5"]
    for user in users:
        await run(runtime, "true", user=user)
    changed = Runtime(runtime.settings.replace(vm_pids=128))  # a restart with another configuration
    try:
        adoption = asyncio.create_task(changed.sandboxes.adopt())
        results = await asyncio.gather(*(changed.terminal.execute(u, "s1", "echo fresh") for u in users))
        await adoption
        assert [r.stdout for r in results] == ["fresh\n"] * 5
        for user in users:
            container = docker_client.containers.get(changed.sandboxes.name(user, "s1"))
            assert container.attrs["HostConfig"]["PidsLimit"] == 128
    finally:
        await changed.close()
