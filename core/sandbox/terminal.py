"""`execute_terminal`: one shell command in the session's container, like a terminal.

Docker cannot kill an exec, so every command runs under a small POSIX-sh
wrapper. Before it runs anything of the user's, the wrapper tells the host its
PID and start time on stdout (a marker line the host strips); a timeout or a
cancellation then kills, from a second exec, every process in the sandbox that
started at or after that moment: the command and whatever it started, setsid'd
and daemonised processes included. Background jobs from earlier commands
started before it, so they live on. The wrapper's first stage and the kill run
in the bot's own static busybox, mounted read-only (core/sandbox/docker/busybox.py), never
through the sandbox's PATH: nothing the sandbox can write redirects the kill or
forges the marker. (A host without busybox-static falls back, with a warning, to
the image's `sh` from PATH.) The user's part then runs in the image's /bin/sh; it
saves the working directory and the exported variables on exit and restores them
on the next call, so `cd` and `export` carry over the way they do in a terminal.

The terminal works on `Sandbox` handles (core/sandbox/base.py): the same code runs over any provider.
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Callable

from ..admission import FairGate
from ..config import Settings
from ..errors import EngineError, SandboxUnavailable
from .base import STDERR, STDOUT, Provider, Sandbox

log = logging.getLogger(__name__)

STATE_DIR = "/tmp/.agent"
# The trusted first stage, in the bot's own busybox (see core/sandbox/docker/busybox.py): $1 is the user's part
# below, $2 the user's command, $0 the busybox (for applets: nothing comes from PATH). It prints its PID
# and start time, records the start time as running, then becomes the image's own /bin/sh (exec keeps
# the PID and the start time) so the command runs with the image's shell and tools, not busybox's.
# Field 22 of /proc/PID/stat is the start time; after "(comm) " it is the 20th.
WRAPPER = r"""
__u=$1 __c=$2
read -r __st < /proc/$$/stat
set -- ${__st##*) }
printf '\036%s %s\n' "$$" "${20}"
[ -d /tmp/.agent ] || "$0" mkdir -p /tmp/.agent
printf '%s\n' "${20}" > /tmp/.agent/running
exec /bin/sh -c "$__u" sh "$__c"
"""
# The user's part, in the image's /bin/sh: $1 is the command. It restores the working directory and
# the exported variables the last command left, and saves them on exit, so `cd` and `export` carry over.
# It runs as one line (each line below is a whole command): the shell then numbers the command's lines
# from its own first one, as it would in a terminal (busybox counts from the script's start).
USER_PART = "; ".join(r"""
__c=$1
set --
__s=/tmp/.agent
if [ -r "$__s/env" ]; then . "$__s/env" 2>/dev/null; fi
__d=/data
if [ -r "$__s/cwd" ]; then IFS= read -r __d < "$__s/cwd"; fi
cd "$__d" 2>/dev/null || cd /data 2>/dev/null || cd /
trap '__rc=$?; pwd > "$__s/cwd"; export -p > "$__s/env"; rm -f "$__s/running"; exit $__rc' EXIT
eval "$__c"
""".strip().splitlines())
# $1: the command's start time; $0: the busybox (for rm). First every process but PID 1 (the init) and
# this script is stopped at once (kill -1 walks the process list under the lock fork needs, so no chain
# of forks can outrun it, and none can react while the others die), then every one that started at or
# after the command is killed, and the rest (background jobs of earlier commands, the keepalive) go on.
# Spared from the kill as well: the keepalive (the oldest child of PID 1: it can share the command's
# clock tick when the sandbox has just started). Start times and parents come from the kernel, only
# busybox's builtins run and rm by busybox's own path: nothing a sandbox writes or installs changes
# what is killed.
KILL = r"""
__t=$1
__keep=; __kept=
for __d in /proc/[0-9]*; do
  read -r __st < "$__d/stat" 2>/dev/null || continue
  set -- ${__st##*) }
  if [ "$2" = 1 ] && { [ -z "$__kept" ] || [ "${20}" -lt "$__kept" ]; }; then __keep=${__d#/proc/}; __kept=${20}; fi
done
__kill() {
  for __d in /proc/[0-9]*; do
    __p=${__d#/proc/}
    [ "$__p" = 1 ] || [ "$__p" = $$ ] || [ "$__p" = "$__keep" ] && continue
    read -r __st < "$__d/stat" 2>/dev/null || continue
    set -- ${__st##*) }
    [ "${20:-0}" -ge "$__t" ] 2>/dev/null && kill -KILL "$__p" 2>/dev/null
  done
}
kill -STOP -1 2>/dev/null
__kill; __kill
kill -CONT -1 2>/dev/null
"$0" rm -f /tmp/.agent/running
true
"""
# A command that was running when the bot stopped (a crash, a restart) leaves its start time in
# /tmp/.agent/running, which a command's own end removes: kill what it started, as KILL does.
LEFTOVERS = "read -r __t < /tmp/.agent/running 2>/dev/null || exit 0\n" + KILL.replace("__t=$1\n", "", 1)
GRACE_SECONDS = 3.0
FULL_OUTPUT_MAX = 8 * 1024 ** 2  # a cut command's whole output kept for the user, at most (per command)


def script(busybox: str | None, body: str, *args: str) -> list[str]:
    """The argv that runs one of the terminal's shell scripts with positional `args`.

    In the bot's busybox: its own `sh`, and `$0` is the busybox itself, so `"$0" rm ...` runs an
    applet by absolute path (ash's builtins, read, printf, kill, [, need none). Without it: the
    image's `sh` from PATH, and `$0` is `command`, so the same `"$0" rm ...` runs PATH's rm.
    """
    if busybox:
        return [busybox, "sh", "-c", body, busybox, *args]
    return ["sh", "-c", body, "command", *args]


class ShellErrors:
    """The shell's own error lines as a terminal shows them. The user's part runs the command through
    `eval`, which the shell names in its errors (dash: `sh: 1: eval: pip: not found`; busybox:
    `sh: eval: line 0: pip: not found`; bash, for syntax errors: `sh: eval: line 3: …`): the
    wrapper's words are taken out, leaving what `sh -c` prints (`sh: 1: pip: not found`,
    `sh: pip: not found`). Only lines that start so change; a line's start split across chunks is
    held until it is whole."""

    EVAL = re.compile(rb"^sh: (\d+: )?eval: (?:line \d+: )?", re.MULTILINE)
    HOLD = 24  # a line's start shorter than this may still turn out to be one of those

    def __init__(self) -> None:
        self.pending = b""  # the start of a line, held
        self.line_start = True  # whether the next byte starts a line

    def feed(self, data: bytes) -> bytes:
        data, self.pending = self.pending + data, b""
        head = b""
        if not self.line_start:  # the rest of a line already passed on: as it is
            end = data.find(b"\n") + 1
            if not end:
                return data
            head, data = data[:end], data[end:]
        last = data[data.rfind(b"\n") + 1:]
        if len(last) < self.HOLD and last.startswith(b"sh: "[:len(last)]):
            data, self.pending = data[:len(data) - len(last)], last
        self.line_start = not data or data.endswith(b"\n")
        return head + self._clean(data)

    def flush(self) -> bytes:
        """What is still held, when the command has ended."""
        rest, self.pending, self.line_start = self.pending, b"", True
        return self._clean(rest)

    def _clean(self, data: bytes) -> bytes:
        return self.EVAL.sub(lambda m: b"sh: " + (m.group(1) or b""), data) if b"eval: " in data else data


def full_output_cap(settings: Settings) -> int:
    return min(settings.send_file_max_bytes, FULL_OUTPUT_MAX)


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
    output_bytes: int = 0  # everything it printed, before the cap
    note: str = ""  # something the model must know that happened before this command
    full_output: bytes = b""  # stdout and stderr as they came, when the model's copy was cut (up to a cap)

    def for_model(self) -> str:
        if self.timed_out:
            head = (f"timed out after {self.timeout} s: the command was killed. "
                    "For long jobs, run them in the background with output to a file "
                    "(nohup CMD > /tmp/job.log 2>&1 &) and check on them later.")
        elif self.cancelled:
            head = "cancelled: the user sent a new message, so the command was stopped."
        else:
            head = f"exit code: {self.exit_code}"
        parts = [f"note: {self.note}", head] if self.note else [head]
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout}")
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr}")
        if not self.stdout and not self.stderr:
            parts.append("(no output)")
        return "\n".join(parts)


class Terminal:
    """Runs commands in a provider's sandboxes, at most MAX_RUNNING_COMMANDS at once and
    MAX_RUNNING_PER_USER of one person's; those waiting are served round robin by person."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.settings = provider.settings
        self.gate = FairGate(self.settings.max_running_commands, per_person=self.settings.max_running_per_user,
                             keep_one_free=True)
        # Commands whose contact with Docker broke before they could be killed: sandbox name -> start
        # time. They are killed before the sandbox's next command, once Docker answers again.
        self._unkilled: dict[str, int] = {}
        self._settling: dict[str, asyncio.Future[None]] = {}  # leftover clean-ups under way, by sandbox
        _ = provider.busybox  # decided now, so a host without busybox-static is warned about at start

    async def execute(self, user: str, session: str, command: str, timeout: int | None = None, *,
                      on_queued: Callable[[int], None] | None = None) -> CommandResult:
        """Run `command` once a slot is free; on cancellation, kill it in the sandbox before re-raising.

        `on_queued(n)` hears how many commands are ahead while this one waits for a slot (core/admission.py).
        """
        limit = min(max(int(timeout or self.settings.command_timeout), 1), self.settings.command_timeout_max)
        box = self.provider.get(user, session)
        async with box.in_use():
            async with self.gate.slot(user, on_queued):
                await self.settle(user, session)
                if box.name in self._unkilled:
                    await self._kill(box, self._unkilled.pop(box.name))
                before = box.eviction_message()  # it went over after its last command
                await box.share_disk()
                result = await self._run(box, command, limit)
                during = box.eviction_message()
        if during:  # stopped under this very command: that is its outcome
            raise SandboxUnavailable(during, user=during)
        full = await box.disk_note()  # USER_DISK: why a write may have failed
        result.note = " ".join(n for n in (before, full) if n)
        return result

    async def _run(self, box: Sandbox, command: str, limit: int) -> CommandResult:
        out, err = CappedBuffer(self.settings.output_limit), CappedBuffer(self.settings.output_limit)
        whole = bytearray()  # for the user, should the model's copy be cut
        whole_cap = full_output_cap(self.settings)
        loop = asyncio.get_running_loop()
        started: float | None = None  # when the process began: the timeout counts from here
        timed_out = False

        marker = _Marker()
        shell = {STDOUT: ShellErrors(), STDERR: ShellErrors()}  # on stdout too: `cmd 2>&1` sends them there

        def keep(stream: int, data: bytes) -> None:
            if data:
                (err if stream == STDERR else out).write(data)
                if len(whole) < whole_cap:
                    whole.extend(data[:whole_cap - len(whole)])

        def sink(stream: int, data: bytes) -> None:
            if stream == STDOUT and not marker.done:
                data = marker.feed(data)
            if data:
                keep(stream, shell[stream].feed(data))

        runner: asyncio.Future[int] | None = None
        try:
            budget_open = True  # the timeout below can be rescheduled only while its block runs
            async with asyncio.timeout(None) as budget:
                def on_start() -> None:
                    # Runs inside the exec's stream: raising here would orphan the started process.
                    nonlocal started
                    started = loop.time()
                    if budget_open and not budget.expired() and runner is not None and not runner.cancelled():
                        budget.reschedule(started + limit)

                argv = script(self.provider.busybox, WRAPPER, USER_PART, command)
                runner = asyncio.ensure_future(box.exec(argv, sink, on_start=on_start))
                try:
                    exit_code: int | None = await asyncio.shield(runner)
                finally:
                    budget_open = False
        except TimeoutError:
            timed_out = True
            exit_code = await self._stop(box, runner, marker)
        except asyncio.CancelledError:
            if runner is not None:
                await asyncio.shield(self._stop(box, runner, marker))
            raise
        except SandboxUnavailable:
            # The output stream broke (Docker went away): the command may still run in the sandbox.
            if marker.start is not None and not await self._kill(box, marker.start):
                self._unkilled[box.name] = marker.start
            raise
        for stream, held in shell.items():
            keep(stream, held.flush())
        cut = out.total > 2 * out.half or err.total > 2 * err.half
        return CommandResult(command, exit_code, out.text(), err.text(), loop.time() - (started or loop.time()),
                             timed_out=timed_out, timeout=limit, output_bytes=out.total + err.total,
                             full_output=bytes(whole) if cut else b"")

    async def _stop(self, box: Sandbox, runner: "asyncio.Future[int] | None", marker: "_Marker") -> int | None:
        """Kill what the command started, then let its output drain."""
        if runner is None:
            return None
        if marker.start is None and not runner.done():
            # It may have started with its first line still in flight: give that line a moment.
            try:
                await asyncio.wait_for(marker.seen.wait(), timeout=GRACE_SECONDS)
            except asyncio.TimeoutError:
                pass
        start = marker.start
        if start is None:  # the wrapper never ran (the sandbox was still starting): do not let it begin
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        else:
            await self._kill(box, start)
        if runner.done():
            return None if runner.cancelled() or runner.exception() else runner.result()
        try:
            return await asyncio.wait_for(asyncio.shield(runner), timeout=GRACE_SECONDS)
        except (asyncio.TimeoutError, EngineError):
            # Something still holds the output open: stop listening to it.
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            return None

    async def settle(self, user: str, session: str) -> None:
        """In a sandbox adopted from an earlier process, end the command that process left running
        (a crash or a restart cut it off) before anything else runs there. Once per sandbox."""
        await self.provider.adoption_done()
        box = self.provider.get(user, session)
        name = box.name
        task = self._settling.get(name)
        if task is None:
            if not self.provider.take_leftover(name):
                return
            task = self._settling[name] = asyncio.ensure_future(self._end_leftovers(box))
            task.add_done_callback(lambda _t: self._settling.pop(name, None))
        await asyncio.shield(task)

    async def settle_all(self) -> None:
        """settle() every adopted sandbox now (at start-up), a few at a time."""
        await self.provider.adoption_done()
        limit = asyncio.Semaphore(8)

        async def one(user: str, session: str) -> None:
            async with limit:
                await self.settle(user, session)

        await asyncio.gather(*(one(u, s) for u, s in self.provider.leftovers()))

    async def wait_settled(self) -> None:
        """Let the leftover clean-ups under way finish (a runtime closing waits for them)."""
        await asyncio.gather(*self._settling.values(), return_exceptions=True)

    async def _end_leftovers(self, box: Sandbox) -> None:
        await self._script(box, script(self.provider.busybox, LEFTOVERS), "end what an earlier process left running")

    async def _kill(self, box: Sandbox, start: int) -> bool:
        """Stop, then kill, every process started in the sandbox since `start`; False if it could not."""
        return await self._script(box, script(self.provider.busybox, KILL, str(start)), "kill a command")

    async def _script(self, box: Sandbox, argv: list[str], what: str) -> bool:
        """One of the terminal's own scripts, in a sandbox that must already run; False (logged) if it failed."""
        try:
            await box.exec(argv, timeout=GRACE_SECONDS * 2, recreate=False)
            return True
        except (EngineError, asyncio.TimeoutError) as exc:
            log.warning("could not %s in %s/%s: %s", what, box.user, box.session, exc)
            return False


class _Marker:
    """Reads the wrapper's first stdout line (its start time) before anything the command prints."""

    LINE = re.compile(rb"\x1e(\d+) (\d+)\n")

    def __init__(self) -> None:
        self.buffer = b""
        self.done = False
        self.start: int | None = None
        self.seen = asyncio.Event()

    def feed(self, data: bytes) -> bytes:
        """The bytes that belong to the command's own output."""
        self.buffer += data
        if b"\n" not in self.buffer and len(self.buffer) < 64:
            return b""
        self.done = True
        self.seen.set()
        match = self.LINE.match(self.buffer)
        if match is None:  # no /proc in this image: the output is all the command's
            log.warning("the sandbox wrapper gave no start marker; a timeout cannot kill this command")
            rest, self.buffer = self.buffer, b""
            return rest
        self.start = int(match.group(2))
        rest, self.buffer = self.buffer[match.end():], b""
        return rest
