"""The terminal's wrapper and kill run in the bot's own busybox, which no sandbox can redirect (item 9).

A hostile sandbox plants its own `sh` and `kill` in /usr/local/bin (first on PATH) that do nothing;
the kill must still end the command. Processes are read from /proc by a fresh exec of the image's
busybox by absolute path, never through the planted sh.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from pathlib import Path

import docker
import pytest

from core import Runtime
from core.sandbox.docker import busybox
from core.sandbox.terminal import script
from tests.conftest import make_settings, open_runtime

# Planted tools: exit 0 at once, whatever they are asked to do.
PLANT = ("mkdir -p /usr/local/bin && for t in sh kill; do "
         "printf '#!/bin/busybox true\\n' > /usr/local/bin/$t && chmod 755 /usr/local/bin/$t; done")
LIST = 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f" 2>/dev/null; echo; done'


async def run(rt: Runtime, command: str, timeout: int | None = None, session: str = "s"):
    return await rt.terminal.execute("alice", session, command, timeout)


def container(rt: Runtime, docker_client: docker.DockerClient, session: str = "s"):  # type: ignore[no-untyped-def]
    return docker_client.containers.get(rt.sandboxes.name("alice", session))


async def processes(rt: Runtime, docker_client: docker.DockerClient) -> list[str]:
    """Every process's command line, read from /proc by the image's own busybox (absolute path)."""
    done = await asyncio.to_thread(container(rt, docker_client).exec_run, ["/bin/busybox", "sh", "-c", LIST])
    assert done.exit_code == 0, done.output
    return [line for line in done.output.decode().splitlines() if line.strip()]


async def plant(rt: Runtime, docker_client: docker.DockerClient) -> None:
    """Plant the do-nothing sh and kill, and check they really are what PATH finds now."""
    assert (await run(rt, PLANT)).exit_code == 0
    probe = await asyncio.to_thread(container(rt, docker_client).exec_run, ["sh", "-c", "echo real sh"])
    assert probe.exit_code == 0 and probe.output == b"", probe.output  # a PATH-based sh is now a no-op


@pytest.mark.asyncio
async def test_a_planted_sh_cannot_outlive_a_timeout(runtime: Runtime, docker_client: docker.DockerClient) -> None:
    assert runtime.sandboxes.busybox == busybox.BUSYBOX
    await plant(runtime, docker_client)
    result = await run(runtime, "sleep 1006", timeout=2)
    assert result.timed_out and "the command was killed" in result.for_model()
    left = await processes(runtime, docker_client)
    assert not any("sleep 1006" in line for line in left), left
    assert (await run(runtime, "echo still here")).stdout == "still here\n"


@pytest.mark.asyncio
async def test_a_planted_sh_cannot_outlive_stop(runtime: Runtime, docker_client: docker.DockerClient) -> None:
    await plant(runtime, docker_client)
    task = asyncio.ensure_future(run(runtime, "sleep 1007"))
    for _ in range(100):
        if any(line.startswith("sleep 1007") for line in await processes(runtime, docker_client)):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the command never started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    left = await processes(runtime, docker_client)
    assert not any("sleep 1007" in line for line in left), left


@pytest.mark.asyncio
async def test_a_planted_sh_cannot_keep_what_a_crash_left_running(runtime: Runtime,
                                                                   docker_client: docker.DockerClient) -> None:
    await plant(runtime, docker_client)
    box = container(runtime, docker_client)
    # What a bot killed mid-command leaves: the command still runs, its start time in /tmp/.agent/running.
    left_behind = ('/bin/busybox sleep 1008 > /dev/null 2>&1 & read -r st < /proc/$!/stat; set -- ${st##*) }; '
                   'echo "${20}" > /tmp/.agent/running')
    assert (await asyncio.to_thread(box.exec_run, ["/bin/busybox", "sh", "-c", left_behind])).exit_code == 0
    assert any("sleep 1008" in line for line in await processes(runtime, docker_client))
    runtime.sandboxes._leftovers[box.name] = ("alice", "s")  # as adopt() records a sandbox it kept  # noqa: SLF001
    await runtime.terminal.settle("alice", "s")
    left = await processes(runtime, docker_client)
    assert not any("sleep 1008" in line for line in left), left
    gone = await asyncio.to_thread(box.exec_run, ["/bin/busybox", "test", "-e", "/tmp/.agent/running"])
    assert gone.exit_code != 0  # and the record of it went with it


@pytest.mark.asyncio
async def test_commands_keep_the_image_shell_and_cd_and_export_carry_over(runtime: Runtime) -> None:
    shell = await run(runtime, "readlink /proc/$$/exe; echo \"$0|$#|$PATH\"")
    exe, args = shell.stdout.splitlines()
    assert exe == "/bin/busybox" and not exe.startswith(busybox.MOUNT)  # the image's own /bin/sh
    assert args == "sh|0|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "\x1e" not in shell.stdout  # the start marker is the host's, never the command's
    assert (await run(runtime, "cd /tmp && export GREETING='hello there'")).exit_code == 0
    assert (await run(runtime, 'pwd; echo "$GREETING"')).stdout == "/tmp\nhello there\n"
    # The image's own tools, found on the image's PATH (busybox applets do not stand in for them).
    made = await run(runtime, "mkdir -p /usr/local/bin && printf '#!/bin/sh\\necho image tool\\n' "
                              "> /usr/local/bin/imagetool && chmod 755 /usr/local/bin/imagetool")
    assert made.exit_code == 0, made
    assert (await run(runtime, "imagetool")).stdout == "image tool\n"


@pytest.mark.asyncio
async def test_the_sandbox_cannot_change_or_move_the_mounted_busybox(runtime: Runtime,
                                                                     docker_client: docker.DockerClient) -> None:
    attempts = {
        "overwrite": "echo x > /.llmbot/busybox",
        "remove": "rm -f /.llmbot/busybox",
        "chmod": "chmod 777 /.llmbot/busybox",
        "add": "cp /bin/busybox /.llmbot/sh",
        "move the folder": "mv /.llmbot /.elsewhere",
        "remove the folder": "rmdir /.llmbot",
        "remount": "mount -o remount,rw /.llmbot",
    }
    for what, command in attempts.items():
        result = await run(runtime, command)
        assert result.exit_code != 0, (what, result)
    mount = next(m for m in container(runtime, docker_client).attrs["Mounts"] if m["Destination"] == busybox.MOUNT)
    assert mount["RW"] is False
    copy = Path(runtime.settings.upload_dir) / busybox.FOLDER / "busybox"
    assert copy.read_bytes() == busybox.HOST_BUSYBOX.read_bytes()
    # And after all that, the kill still holds against a planted sh.
    await plant(runtime, docker_client)
    assert (await run(runtime, "sleep 1009", timeout=2)).timed_out
    assert not any("sleep 1009" in line for line in await processes(runtime, docker_client))


# -- without busybox-static: one warning, and today's PATH-based sh ---------------------------------
@pytest.mark.asyncio
async def test_without_a_static_busybox_the_terminal_warns_once_and_uses_the_image_sh(
        tmp_path: Path, fake_ollama, docker_client: docker.DockerClient,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(busybox, "HOST_BUSYBOX", Path(sys.executable).resolve())  # dynamically linked
    settings = make_settings(tmp_path, fake_ollama.url)
    with caplog.at_level(logging.WARNING, logger="core.sandbox.docker.busybox"):
        async with open_runtime(settings, docker_client) as rt:
            assert rt.sandboxes.busybox is None
            assert (await run(rt, "cd /tmp; export A=1")).exit_code == 0
            assert (await run(rt, 'pwd; echo "$A"')).stdout == "/tmp\n1\n"
            assert (await run(rt, "sleep 1010", timeout=2)).timed_out
            assert not any("sleep 1010" in line for line in await processes(rt, docker_client))
            assert busybox.MOUNT not in {m["Destination"] for m in container(rt, docker_client).attrs["Mounts"]}
    warnings = [r for r in caplog.records if "dynamically linked" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


# -- the copy -------------------------------------------------------------------------------------
def test_only_a_static_elf_counts() -> None:
    assert busybox.static_problem(Path("/bin/busybox")) is None
    assert "dynamically linked" in (busybox.static_problem(Path(sys.executable).resolve()) or "")
    assert "not an ELF" in (busybox.static_problem(Path(__file__)) or "")
    assert "cannot be read" in (busybox.static_problem(Path("/nonexistent/busybox")) or "")


def test_the_copy_is_made_once_and_put_back_when_it_changes(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    folder = busybox.provide(root)
    assert folder == root.resolve() / busybox.FOLDER
    copy = folder / "busybox"
    assert copy.read_bytes() == Path("/bin/busybox").read_bytes()
    assert copy.stat().st_mode & 0o777 == 0o755 and folder.stat().st_mode & 0o777 == 0o755
    copy.write_bytes(b"#!/bin/sh\necho forged\n")
    assert busybox.provide(root) == folder
    assert copy.read_bytes() == Path("/bin/busybox").read_bytes()
    shutil.rmtree(folder)
    assert busybox.provide(root) == folder and copy.is_file()
    assert not [p for p in folder.iterdir() if p.name != "busybox"]  # no temporary file left


def test_scripts_never_name_a_command_from_path() -> None:
    argv = script(busybox.BUSYBOX, "body", "1")
    assert argv == [busybox.BUSYBOX, "sh", "-c", "body", busybox.BUSYBOX, "1"]
    assert script(None, "body") == ["sh", "-c", "body", "command"]


@pytest.mark.asyncio
async def test_a_chain_of_forks_does_not_outlive_a_timeout(runtime: Runtime) -> None:
    # each process forks the next and exits at once: a single pass over /proc never sees them all alive
    chain = ("c() { ( i=$((i+1)); [ $((i%50)) = 0 ] && echo $i > /root/n$1; c $1 ) & }; "
             "c a; c b; c c; c d; sleep 100")
    done = await runtime.terminal.execute("alice", "forks", chain, timeout=3)
    assert done.timed_out
    await asyncio.sleep(1)
    first = await runtime.terminal.execute("alice", "forks", "cat /root/na /root/nb /root/nc /root/nd 2>/dev/null")
    await asyncio.sleep(2)
    second = await runtime.terminal.execute("alice", "forks", "cat /root/na /root/nb /root/nc /root/nd 2>/dev/null")
    assert first.stdout == second.stdout  # nothing counts on after the kill


# Commands whose errors come from the shell itself (issue 19): they read as the image's `sh -c` prints them.
SHELL_ERRORS = ["pip install requests", "echo a; cd /nonexistent", "nosuchcmd 2>&1", "echo (", "x=1\nnosuch2"]


@pytest.mark.asyncio
async def test_shell_errors_read_as_the_images_own_shell_prints_them(runtime: Runtime,
                                                                     docker_client: docker.DockerClient) -> None:
    assert (await run(runtime, "pip install requests")).stderr == "sh: pip: not found\n"  # not `sh: eval: line 0:`
    for command in SHELL_ERRORS:
        ours = await run(runtime, command)
        theirs = await asyncio.to_thread(container(runtime, docker_client).exec_run, ["sh", "-c", command],
                                         demux=True)
        out, err = ((part or b"").decode() for part in theirs.output)
        assert (ours.exit_code, ours.stdout, ours.stderr) == (theirs.exit_code, out, err), command
        assert "eval" not in ours.stdout + ours.stderr


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_errors_under_eval_read_as_sh_c_prints_them_in_other_shells(shell: str) -> None:
    """The images' other usual /bin/sh (Debian's dash, bash): the same command run directly and under
    eval, as the user's part runs it; the eval run's error lines, cleaned, are the direct run's."""
    import subprocess
    from core.sandbox.terminal import ShellErrors
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"no {shell} on this machine")
    for command in ["nosuchcmd_19", "true\nnosuchcmd_19", "cd /nonexistent_19", "echo ("]:
        direct = subprocess.run([path, "-c", command, "sh"], capture_output=True)
        wrapped = subprocess.run([path, "-c", 'eval "$1"', "sh", command], capture_output=True)
        cleaner = ShellErrors()
        cleaned = b"".join(cleaner.feed(wrapped.stderr[i:i + 3]) for i in range(0, len(wrapped.stderr), 3))
        cleaned += cleaner.flush()
        if shell == "bash" and command == "echo (":  # bash -c names itself (`sh: -c: line 1: …`): no eval either way
            assert cleaned == b"sh: syntax error near unexpected token `newline'\nsh: `echo ('\n", cleaned
            continue
        assert cleaned == direct.stderr, (command, wrapped.stderr)


def test_only_the_start_of_a_shell_error_line_changes() -> None:
    from core.sandbox.terminal import ShellErrors
    sample = (b"progress sh: 1: eval: kept\nsh: 1: eval: pip: not found\n"
              b"sh: eval: line 0: cd: x\nsh: eval: line 4: syntax error\nsh: 12 eval: kept\nsh:")
    for size in (1, 2, 5, 7, 64):
        cleaner = ShellErrors()
        out = b"".join(cleaner.feed(sample[i:i + size]) for i in range(0, len(sample), size)) + cleaner.flush()
        assert out == (b"progress sh: 1: eval: kept\nsh: 1: pip: not found\n"
                       b"sh: cd: x\nsh: syntax error\nsh: 12 eval: kept\nsh:"), size
