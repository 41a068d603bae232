"""`execute_terminal`: one shell command in the session's container, like a terminal.

Docker cannot kill an exec, so every command runs under a small POSIX-sh
wrapper that records its process group; a timeout or a cancellation kills that
group from a second exec. The wrapper also saves the working directory and the
exported variables on exit and restores them on the next call, so `cd` and
`export` carry over between calls the way they do in a terminal.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import docker.errors

from .containers import ContainerManager, docker_errors, explain
from .errors import SandboxUnavailable

log = logging.getLogger(__name__)

STATE_DIR = "/tmp/.agent"
# $1 is the user's command. The exec'd shell is its own session and process-group
# leader, so `kill -KILL -<its pid>` ends it and everything it started in the foreground.
WRAPPER = r"""
__s=/tmp/.agent
[ -d "$__s" ] || mkdir -p "$__s"
echo $$ > "$__s/fg.pid"
if [ -r "$__s/env" ]; then . "$__s/env" 2>/dev/null; fi
__d=/data
if [ -r "$__s/cwd" ]; then IFS= read -r __d < "$__s/cwd"; fi
cd "$__d" 2>/dev/null || cd /data 2>/dev/null || cd /
trap '__rc=$?; pwd > "$__s/cwd"; export -p > "$__s/env"; exit $__rc' EXIT
eval "$1"
"""
KILL = f'p=$(cat {STATE_DIR}/fg.pid 2>/dev/null) && [ -n "$p" ] && kill -KILL -"$p" 2>/dev/null; true'
GRACE_SECONDS = 3.0


class CappedBuffer:
    """Keeps the first and last `limit/2` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.half:  # trim in batches, not on every chunk
                del self.tail[: len(self.tail) - self.half]

    def text(self) -> str:
        tail = self.tail[-self.half:] if len(self.tail) > self.half else self.tail
        dropped = self.total - len(self.head) - len(tail)
        head = self.head.decode("utf-8", "replace")
        if dropped <= 0:
            return head + tail.decode("utf-8", "replace")
        return f"{head}\n[... {dropped} bytes cut from the middle ...]\n{tail.decode('utf-8', 'replace')}"


@dataclass
class CommandResult:
    """What a command did; `for_model()` is the tool result the model reads."""

    command: str
    exit_code: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    cancelled: bool = False
    timeout: int = 0

    def for_model(self) -> str:
        if self.timed_out:
            head = (f"timed out after {self.timeout} s: the command was killed. "
                    "For long jobs, run them in the background with output to a file "
                    "(nohup CMD > /tmp/job.log 2>&1 &) and check on them later.")
        elif self.cancelled:
            head = "cancelled: the user sent a new message, so the command was stopped."
        else:
            head = f"exit code: {self.exit_code}"
        parts = [head]
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout}")
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr}")
        if not self.stdout and not self.stderr:
            parts.append("(no output)")
        return "\n".join(parts)


class _Run:
    """The host side of one exec: its stream, so it can be closed from another thread."""

    def __init__(self) -> None:
        self.stream: Any = None
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        if self.stream is not None:
            try:
                self.stream.close()
            except Exception:  # noqa: BLE001 - closing a dead socket is fine
                pass


class Terminal:
    """Runs commands in sandboxes made by a ContainerManager."""

    def __init__(self, containers: ContainerManager) -> None:
        self.containers = containers
        self.settings = containers.settings

    async def execute(self, user: str, session: str, command: str, timeout: int | None = None) -> CommandResult:
        """Run `command`; on cancellation, kill it in the container before re-raising."""
        limit = min(max(int(timeout or self.settings.command_timeout), 1), self.settings.command_timeout_max)
        name = self.containers.name(user, session)
        self.containers.mark_used(name, busy=1)
        try:
            for attempt in (1, 2):
                container = await asyncio.to_thread(self.containers.ensure_sync, user, session, allow_recreate=False)
                try:
                    return await self._run(container, command, limit)
                except (docker.errors.NotFound, docker.errors.APIError) as exc:
                    # The container vanished or stopped under us: recreate it once and retry.
                    if attempt == 2 or not _is_gone(exc):
                        raise SandboxUnavailable(f"The command could not run: {explain(exc)}") from exc
                    log.warning("sandbox %s is gone (%s); recreating", name, explain(exc))
                except docker_errors() as exc:
                    self.containers.forget_client()
                    raise SandboxUnavailable(f"The command could not run: {explain(exc)}") from exc
            raise AssertionError("unreachable")
        finally:
            self.containers.mark_used(name, busy=-1)

    async def _run(self, container: Any, command: str, limit: int) -> CommandResult:
        api = self.containers.client.api
        started = time.monotonic()
        exec_id = (await asyncio.to_thread(
            api.exec_create, container.id, ["sh", "-c", WRAPPER, "sh", command], stdout=True, stderr=True))["Id"]
        run = _Run()
        out, err = CappedBuffer(self.settings.output_limit), CappedBuffer(self.settings.output_limit)
        reader = asyncio.ensure_future(asyncio.to_thread(self._read, api, exec_id, run, out, err))
        timed_out = cancelled = False
        try:
            await asyncio.wait_for(asyncio.shield(reader), timeout=limit)
        except asyncio.TimeoutError:
            timed_out = True
            await self._stop(container, run, reader)
        except asyncio.CancelledError:
            cancelled = True
            await asyncio.shield(self._stop(container, run, reader))
            raise
        try:
            exit_code = (await asyncio.to_thread(api.exec_inspect, exec_id)).get("ExitCode")
        except docker_errors():
            exit_code = None
        return CommandResult(command, exit_code, out.text(), err.text(), time.monotonic() - started,
                             timed_out=timed_out, cancelled=cancelled, timeout=limit)

    @staticmethod
    def _read(api: Any, exec_id: str, run: _Run, out: CappedBuffer, err: CappedBuffer) -> None:
        run.stream = api.exec_start(exec_id, stream=True, demux=True)
        if run.closed.is_set():
            run.close()
            return
        try:
            for stdout, stderr in run.stream:
                if stdout:
                    out.write(stdout)
                if stderr:
                    err.write(stderr)
        except Exception:  # noqa: BLE001 - a stream closed by _stop ends this way
            if not run.closed.is_set():
                raise

    async def _stop(self, container: Any, run: _Run, reader: asyncio.Future) -> None:
        """Kill the command's process group in the container, then let the reader finish."""
        try:
            await asyncio.to_thread(container.exec_run, ["sh", "-c", KILL])
        except docker_errors() as exc:
            log.warning("could not kill a command in %s: %s", container.name, exc)
        try:
            await asyncio.wait_for(asyncio.shield(reader), timeout=GRACE_SECONDS)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001
            # Something detached still holds the output open: stop listening to it.
            run.close()
            try:
                await asyncio.wait_for(asyncio.shield(reader), timeout=GRACE_SECONDS)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass


def _is_gone(exc: BaseException) -> bool:
    if isinstance(exc, docker.errors.NotFound):
        return True
    text = str(getattr(exc, "explanation", "") or exc).lower()
    return "is not running" in text or "no such container" in text or "is paused" in text or "restarting" in text
