"""Fault injection: replays every fault of issue 9 against the running engine and prints a table.

    python bench/faults.py          # needs the Docker engine and the test image (bash tests/images/build.sh)

Each fault runs against a fresh engine (fake Ollama over HTTP, real Docker, SQLite), then the
same conversation sends one more message. The table says:
- line: what the user is shown for the faulty turn (the error, else the tool errors, else the answer);
- valid: the follow-up request the model server received passes `request_problems` (every call
  has its result, arguments are objects...) and ends with the user's latest message;
- lost: history rows lost: messages the user sent that are not stored, tool calls left without a
  result, and reply text the user saw that is not kept;
- leaked: sandboxes of the run beyond one per conversation;
- host bytes / inodes added (the four rows of a sandbox trying to fill the host, issue 16): what
  the filesystem holding Docker's data (/var/lib/docker) gained in bytes in use
  (shutil.disk_usage) and inodes in use (statvfs f_files - f_ffree) from just before the hostile
  turn to just after it (the sandbox already running), and the peak seen meanwhile; for one
  person's conversations, also their /data total against USER_DISK.
The exit code is 0 only when every row is valid with nothing lost or leaked, and no hostile row
left the host more than HOST_BYTES_BOUND / HOST_FILES_BOUND beyond what it may keep (one person's
/data, up to USER_DISK). The host is shared (other runs write to it too): a hostile row over its
bound is run again, up to HOST_ATTEMPTS times, and its smallest gain counts.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
import peewee  # noqa: E402

from core import ChatSession, EngineError, Runtime, Settings  # noqa: E402
from core.sandbox.docker.diskimage import unmount_under  # noqa: E402
from core.events import TextDelta, ToolFinished  # noqa: E402
from tests import crash_child  # noqa: E402
from tests.conftest import make_settings, remove_containers  # noqa: E402
from tests.fake_ollama import (FakeOllama, chunk_line, cut, hang, raw_lines, request_problems,  # noqa: E402
                               text, tool_calls)
from tests.socket_proxy import SocketProxy  # noqa: E402

FOLLOW_UP = "still there?"
MB = 1024 ** 2
HOST_BYTES_BOUND = 16 * MB  # what a hostile row may add to the host beyond what it may keep
HOST_FILES_BOUND = 2_000  # inodes, likewise
HOST_ATTEMPTS = 3  # a hostile row over its bound runs again (the host is shared): its smallest gain counts


@dataclass
class Seen:
    """What a user saw of one turn."""

    text: str = ""
    error: str | None = None
    tools: list[ToolFinished] = field(default_factory=list)

    @property
    def line(self) -> str:
        if self.error:
            return self.error
        errors = [t.output.splitlines()[0] for t in self.tools if t.error]
        if errors:
            return errors[0]
        ran = f"{len(self.tools)} command(s) ran; " if self.tools else ""
        return f"{ran}answer: {self.text}"


def megabytes(n: int) -> str:
    return f"{n / MB:+.1f} MB"


@dataclass
class Gain:
    """What the host gained during one hostile turn: at its end, and at its peak."""

    bytes: int
    files: int
    peak_bytes: int
    peak_files: int
    allowed: int = 0  # bytes the row may keep (one person's /data, up to USER_DISK)
    within: bool = True  # the row's own bound held too (one person's total within USER_DISK)
    note: str = ""
    attempts: int = 1

    @property
    def excess(self) -> int:
        return max(self.bytes - self.allowed - HOST_BYTES_BOUND, 0) + max(self.files - HOST_FILES_BOUND, 0) * 4096

    @property
    def ok(self) -> bool:
        return self.within and self.excess == 0

    def text(self) -> str:
        tries = f"; best of {self.attempts}" if self.attempts > 1 else ""
        note = f"; {self.note}" if self.note else ""
        return (f"{megabytes(self.bytes)} / {self.files:+,} (peak {megabytes(self.peak_bytes)} / "
                f"{self.peak_files:+,}){note}{tries}")


class HostMeter:
    """Bytes and inodes in use on the filesystem holding Docker's data, before and after, and the
    peak in between (sampled every 50 ms by a thread of its own)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.before = self.after = self.peak = (0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def usage(self) -> tuple[int, int]:
        stats = os.statvfs(self.root)
        return shutil.disk_usage(self.root).used, stats.f_files - stats.f_ffree

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            used, files = self.usage()
            self.peak = (max(self.peak[0], used - self.before[0]), max(self.peak[1], files - self.before[1]))

    async def __aenter__(self) -> "HostMeter":
        await asyncio.to_thread(os.sync)  # what is still in the page cache is counted on both sides alike
        self.before = self.usage()
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(os.sync)
        self.after = self.usage()

    def gain(self, **kw: Any) -> Gain:
        added = (self.after[0] - self.before[0], self.after[1] - self.before[1])
        return Gain(*added, max(self.peak[0], added[0]), max(self.peak[1], added[1]), **kw)


@dataclass
class Row:
    fault: str
    line: str
    valid: str
    lost: int
    leaked: int
    host: Gain | None = None  # the hostile rows: what the host gained

    @property
    def ok(self) -> bool:
        return (self.valid in ("yes", "n/a") and self.lost == 0 and self.leaked == 0
                and (self.host is None or self.host.ok))


async def turn(chat: ChatSession, message: str) -> Seen:
    seen = Seen()
    try:
        async for event in chat.events(message):
            if isinstance(event, TextDelta):
                seen.text += event.text
            elif isinstance(event, ToolFinished):
                seen.tools.append(event)
    except EngineError as exc:
        seen.error = exc.user_message  # what the bot shows; the operator's detail goes to the log
    return seen


def unanswered(rows: list[Any]) -> int:
    """Stored tool calls with no stored result."""
    missing = pending = 0
    for row in rows:
        if row.role == "tool":
            pending = max(pending - 1, 0)
            continue
        if row.complete:
            missing += pending
            pending = len(json.loads(row.tool_calls)) if row.tool_calls else 0
    return missing + pending


class Lab:
    """One fake Ollama, the Docker engine, a scratch folder; a fresh engine per fault."""

    def __init__(self, tmp: Path, fake: FakeOllama, client: docker.DockerClient) -> None:
        self.tmp, self.fake, self.docker = tmp, fake, client
        self.prefixes: list[str] = []
        root = client.info().get("DockerRootDir") or "/var/lib/docker"
        self.docker_root = root if os.path.exists(root) else "/"  # a remote engine: this host's root

    def meter(self) -> HostMeter:
        return HostMeter(self.docker_root)

    def settings(self, **overrides: Any) -> Settings:
        folder = self.tmp / uuid.uuid4().hex[:8]
        folder.mkdir()
        settings = make_settings(folder, self.fake.url, **overrides)
        self.prefixes.append(settings.vm_name_prefix)
        return settings

    @asynccontextmanager
    async def runtime(self, settings: Settings) -> AsyncIterator[Runtime]:
        rt = Runtime(settings)
        try:
            yield rt
        finally:
            await rt.close()

    def sandboxes(self, settings: Settings) -> int:
        return len(self.docker.containers.list(all=True, sparse=True,
                                               filters={"label": f"llmbot.app={settings.vm_name_prefix}"}))

    async def verdict(self, fault: str, rt: Runtime, chat: ChatSession, seen: Seen, sent: list[str],
                      conversations: int = 1) -> Row:
        """Send the follow-up, then judge the request it produced and what is stored."""
        self.fake.script(text("Still here."))
        follow = await turn(chat, FOLLOW_UP)
        body = self.fake.requests[-1]
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        valid = follow.error is None and not request_problems(body) and users[-1:] == [FOLLOW_UP]
        rows = await rt.history.run(rt.history.messages, chat.session_id)
        stored_users = [r.content for r in rows if r.role == "user"]
        lost = sum(1 for message in sent + [FOLLOW_UP] if message not in stored_users)
        lost += unanswered(rows)
        if seen.text and not any(seen.text in r.content for r in rows if r.role == "assistant"):
            lost += 1
        leaked = max(self.sandboxes(rt.settings) - conversations, 0)
        return Row(fault, seen.line, "yes" if valid else "no", lost, leaked)

    async def simple(self, fault: str, *responses: Any, message: str = "hello", **overrides: Any) -> Row:
        """A fault in what the model server sends: script it, run one turn, judge."""
        settings = self.settings(**overrides)
        async with self.runtime(settings) as rt:
            async with ChatSession(user="alice", session="fault", runtime=rt) as chat:
                self.fake.script(*responses)
                seen = await turn(chat, message)
                self.fake.release()
                return await self.verdict(fault, rt, chat, seen, [message])


def call_line(arguments: Any) -> str:
    return chunk_line({"role": "assistant", "content": "",
                       "tool_calls": [{"function": {"name": "execute_terminal", "arguments": arguments}}]})


# -- the faults that need more than a script ------------------------------------------------------
async def killed_mid_command(lab: Lab) -> Row:
    settings = lab.settings()
    lab.fake.script(tool_calls(("execute_terminal", {"command": "echo first"}),
                               ("execute_terminal", {"command": "sleep 60"})))
    child = crash_child.spawn(settings, "alice", "fault", "run both")
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        if line != b"running\n":
            raise RuntimeError(f"the child did not start its command: {child.stderr.read().decode()[-500:]}")
        await asyncio.sleep(1)
        child.send_signal(signal.SIGKILL)
        await asyncio.to_thread(child.wait)
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()
    async with lab.runtime(settings) as rt:
        async with ChatSession(user="alice", session="fault", runtime=rt) as chat:
            row = await lab.verdict("bot SIGKILLed mid-command", rt, chat, Seen(), ["run both"])
            row.line = "(the bot was gone; the next answer came as usual)"
            return row


async def database_refuses_a_write(lab: Lab) -> Row:
    settings = lab.settings()
    async with lab.runtime(settings) as rt:
        real = rt.history.add_message

        def refuse_tool_rows(session_id: int, role: str, content: str = "", **kw: Any) -> int:
            if role == "tool":
                raise peewee.OperationalError("database is locked")
            return real(session_id, role, content, **kw)

        async with ChatSession(user="alice", session="fault", runtime=rt) as chat:
            lab.fake.script(tool_calls(("execute_terminal", {"command": "echo hi"})))
            rt.history.add_message = refuse_tool_rows  # type: ignore[method-assign]
            seen = await turn(chat, "say hi")
            rt.history.add_message = real  # type: ignore[method-assign]
            return await lab.verdict("database refuses a write", rt, chat, seen, ["say hi"])


async def docker_cut_mid_command(lab: Lab) -> Row:
    proxy = await SocketProxy().start()
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = proxy.url
    try:
        settings = lab.settings()
        async with lab.runtime(settings) as rt:
            async with ChatSession(user="alice", session="fault", runtime=rt) as chat:
                lab.fake.script(tool_calls(("execute_terminal", {"command": "sleep 30"})))
                running = asyncio.create_task(turn(chat, "wait a while"))
                await wait_for_process(lab, rt.sandboxes.name("alice", "fault"), "sleep 30")
                await proxy.cut()
                seen = await asyncio.wait_for(running, 30)
                await proxy.restore()
                return await lab.verdict("Docker connection cut mid-command", rt, chat, seen, ["wait a while"])
    finally:
        await proxy.cut()
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved


async def wait_for_process(lab: Lab, container: str, command: str) -> None:
    for _ in range(300):
        try:
            ps = await asyncio.to_thread(lambda: lab.docker.containers.get(container).exec_run("ps").output)
            if command.encode() in ps:
                return
        except docker.errors.APIError:  # not created yet
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{command} never started in {container}")


async def paused_sandbox(lab: Lab) -> Row:
    settings = lab.settings()
    async with lab.runtime(settings) as rt:
        async with ChatSession(user="alice", session="fault", runtime=rt) as chat:
            await rt.terminal.execute("alice", "fault", "true")
            lab.docker.containers.get(rt.sandboxes.name("alice", "fault")).pause()
            lab.fake.script(tool_calls(("execute_terminal", {"command": "echo awake", "timeout": 5})), text("Awake."))
            seen = await turn(chat, "are you awake?")
            return await lab.verdict("sandbox paused (docker pause)", rt, chat, seen, ["are you awake?"])


async def upload_dir_changed(lab: Lab) -> Row:
    first = lab.settings()
    async with lab.runtime(first) as rt:
        async with ChatSession(user="alice", session="fault", runtime=rt) as chat:
            await chat.save_upload("old.txt", b"old")
    moved = first.replace(upload_dir=str(Path(first.upload_dir).parent / "moved"))
    async with lab.runtime(moved) as rt:
        async with ChatSession(user="alice", session="fault", runtime=rt) as chat:
            await chat.save_upload("report.csv", b"a,b\n")
            lab.fake.script(tool_calls(("execute_terminal", {"command": "cat /data/report.csv"})), text("Read it."))
            seen = await turn(chat, "read the report")
            row = await lab.verdict("UPLOAD_DIR changed, restart", rt, chat, seen, ["read the report"])
            output = seen.tools[0].output if seen.tools else ""
            row.line = "cat /data/report.csv → " + output.splitlines()[-1] if output else row.line
            return row


async def adoption_races_first_commands(lab: Lab) -> Row:
    settings = lab.settings()
    users = [f"u{i}" for i in range(5)]
    async with lab.runtime(settings) as rt:
        await asyncio.gather(*(rt.terminal.execute(u, "s", "true") for u in users))
    changed = settings.replace(vm_pids=128)  # a restart with another configuration
    async with lab.runtime(changed) as rt:
        lab.fake.fallback = lambda body: (tool_calls(("execute_terminal", {"command": "echo fresh"}))
                                          if body["messages"][-1]["role"] == "user" else text("Fresh."))
        chats = [ChatSession(user=u, session="s", runtime=rt) for u in users]
        try:
            for chat in chats:
                await chat.__aenter__()
            seen = await asyncio.gather(*(turn(chat, "go") for chat in chats))
        finally:
            lab.fake.fallback = None
        rows = [await lab.verdict("restart after a config change", rt, chat, s, ["go"], conversations=5)
                for chat, s in zip(chats, seen)]
        failed = next((s for s in seen if s.error), seen[0])
        return Row(f"adoption races {len(users)} first commands", failed.line,
                   "yes" if all(r.valid == "yes" for r in rows) else "no",
                   sum(r.lost for r in rows), max(r.leaked for r in rows))


async def image_missing(lab: Lab) -> Row:
    settings = lab.settings()
    env = {**os.environ, "OLLAMA_HOST": lab.fake.url, "VM_IMAGE": "llmbot-no-such-image:never",
           "DATABASE_URL": settings.database_url, "UPLOAD_DIR": settings.upload_dir,
           "VM_NAME_PREFIX": settings.vm_name_prefix, "DISCORD_TOKEN": ""}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "run.py"], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=120)
    line = (done.stderr.strip().splitlines() or ["(nothing)"])[-1]
    return Row("image missing (run.py)", line, "n/a", 0, lab.sandboxes(settings))


# -- a sandbox trying to fill the host (issue 16) -------------------------------------------------
async def hostile_turn(lab: Lab, chat: ChatSession, message: str, command: str) -> Seen:
    lab.fake.script(tool_calls(("execute_terminal", {"command": command, "timeout": 60})))
    lab.fake.fallback = text("Done.")  # the answer after the command, when the turn gets that far
    try:
        return await turn(chat, message)
    finally:
        lab.fake.fallback = None


def last_line(seen: Seen, containing: str = "") -> str:
    """The command's line the user would look for (its first line containing `containing`, else its last)."""
    lines = [line for t in seen.tools for line in t.output.splitlines() if line.strip()]
    return next((line for line in lines if containing and containing in line), lines[-1] if lines else seen.line)


async def on_host(lab: Lab, hostile: Callable[[Lab], Awaitable[Row]]) -> Row:
    """Run a hostile row; again while the host gained more than its bound (another process may have
    written meanwhile), at most HOST_ATTEMPTS times: the attempt that gained least counts."""
    best: Row | None = None
    for attempt in range(1, HOST_ATTEMPTS + 1):
        row = await hostile(lab)
        for prefix in lab.prefixes:  # the next attempt starts on a host without this one's sandboxes
            await asyncio.to_thread(remove_containers, lab.docker, prefix)
        assert row.host is not None
        if best is None or (best.host is not None and row.host.excess < best.host.excess):
            best = row
        assert best.host is not None
        best.host.attempts = attempt
        if best.host.excess == 0:
            break
    assert best is not None
    return best


async def hostile_row(lab: Lab, title: str, ask: str, command: str, settings: Settings) -> tuple[Row, Seen]:
    """One hostile command through the chat, in a sandbox with the disk watch on, with the host's gain."""
    async with lab.runtime(settings) as rt:
        rt.start_background()
        async with ChatSession(user="alice", session="fault", runtime=rt) as chat:
            await rt.terminal.execute("alice", "fault", "true")
            async with lab.meter() as meter:
                seen = await hostile_turn(lab, chat, ask, command)
            row = await lab.verdict(title, rt, chat, seen, [ask])
            row.host = meter.gain()
            return row, seen


async def log_flood(lab: Lab) -> Row:
    command = "head -c 400m /dev/zero > /proc/1/fd/1; echo written"
    row, seen = await hostile_row(lab, "400 MB into PID 1's stdout (the log)", "fill the log", command,
                                  lab.settings(command_timeout=60, command_timeout_max=60))
    row.line = f"{command.split(';')[0]} → {last_line(seen)}"
    return row


async def etc_files(lab: Lab) -> Row:
    command = "for f in hosts hostname resolv.conf; do dd if=/dev/zero of=/etc/$f bs=1M count=400; done"
    row, seen = await hostile_row(lab, "400 MB into /etc/hosts, hostname, resolv.conf", "grow /etc", command,
                                  lab.settings(vm_disk=64 * MB, command_timeout=60, command_timeout_max=60))
    row.line = last_line(seen, "/etc/hosts")
    return row


async def many_files(lab: Lab) -> Row:
    settings = lab.settings(vm_inodes=20_000, command_timeout=60, command_timeout_max=60)
    command = "mkdir /root/many && cd /root/many && seq 1 300000 | xargs touch; sleep 30"
    async with lab.runtime(settings) as rt:
        rt.start_background()
        async with ChatSession(user="alice", session="fault", runtime=rt) as chat:
            await rt.terminal.execute("alice", "fault", "true")
            async with lab.meter() as meter:
                seen = await hostile_turn(lab, chat, "make many files", command)
                for _ in range(75):  # stopped: its removal gives the host its inodes back
                    if not lab.sandboxes(settings):
                        break
                    await asyncio.sleep(0.2)
            row = await lab.verdict("300,000 empty files in / (VM_INODES 20,000)", rt, chat, seen,
                                    ["make many files"])
            row.host = meter.gain()
            return row


async def one_persons_total(lab: Lab) -> Row:
    user_disk = 130 * MB
    settings = lab.settings(vm_disk=64 * MB, user_disk=user_disk, max_sandboxes_per_user=6,
                            command_timeout=60, command_timeout_max=60)
    command = "dd if=/dev/zero of=/data/fill bs=1M count=50; sync; du -sk /data/fill"
    sessions = [f"t{n}" for n in range(6)]
    async with lab.runtime(settings) as rt, AsyncExitStack() as stack:
        rt.start_background()
        chats = [await stack.enter_async_context(ChatSession(user="alice", session=s, runtime=rt)) for s in sessions]
        for session in sessions:
            await rt.terminal.execute("alice", session, "true")
        async with lab.meter() as meter:
            seen = [await hostile_turn(lab, chat, "write 50 MB", command) for chat in chats]
        disk = await rt.sandboxes.user_disk("alice")
        rows = [await lab.verdict("", rt, chat, s, ["write 50 MB"], conversations=len(chats))
                for chat, s in zip(chats, seen)]
        within = disk.total <= user_disk + MB and len(disk.parts) == len(chats)
        note = (f"alice's /data {disk.total / MB:.1f} MB of USER_DISK {user_disk // MB} MB "
                f"({len(chats)} × 50 MB tried)")
        return Row(f"one person, {len(chats)} conversations × 50 MB in /data (VM_DISK 64 MB)",
                   last_line(seen[-1], "Your conversations").removeprefix("note: "),
                   "yes" if all(r.valid == "yes" for r in rows) else "no",
                   sum(r.lost for r in rows), max(r.leaked for r in rows),
                   meter.gain(allowed=user_disk, within=within, note=note))


async def main() -> int:
    logging.basicConfig(level=logging.CRITICAL)  # the engine's operator log would bury the table
    client = docker.from_env()
    image = os.environ.get("TEST_VM_IMAGE", "llmbot-test:latest")
    client.images.get(image)  # fails with Docker's own message when the image is not built
    tmp = Path(tempfile.mkdtemp(prefix="llmbot-faults-"))
    rows: list[Row] = []
    with FakeOllama() as fake:
        lab = Lab(tmp, fake, client)
        hundred = [("execute_terminal", {"command": f"echo {i}"}) for i in range(100)]
        faults: list[Callable[[], Awaitable[Row]]] = [
            lambda: lab.simple("Ollama hangs before replying", hang(""), ollama_stall_timeout=1.0),
            lambda: lab.simple("Ollama hangs mid-reply", hang("Let me think ab"), ollama_stall_timeout=1.0),
            lambda: lab.simple("Ollama connection cut mid-reply", cut("The answer is")),
            lambda: lab.simple("100 tool calls in one message", tool_calls(*hundred), text("Ran eight.")),
            lambda: lab.simple("arguments a non-JSON string", raw_lines(call_line("ls -la")), text("Fixed.")),
            lambda: lab.simple("arguments a list", raw_lines(call_line(["ls", "-la"])), text("Fixed.")),
            lambda: lab.simple("null message in the stream", raw_lines(chunk_line(None), content="Hi there.")),
            lambda: lab.simple("broken NDJSON line", raw_lines('{"message": {"rol', content="The first half")),
            lambda: killed_mid_command(lab),
            lambda: database_refuses_a_write(lab),
            lambda: docker_cut_mid_command(lab),
            lambda: paused_sandbox(lab),
            lambda: upload_dir_changed(lab),
            lambda: adoption_races_first_commands(lab),
            lambda: image_missing(lab),
            lambda: on_host(lab, log_flood),
            lambda: on_host(lab, etc_files),
            lambda: on_host(lab, many_files),
            lambda: on_host(lab, one_persons_total),
        ]
        try:
            for fault in faults:
                row = await fault()
                rows.append(row)
                print(f"  {'ok ' if row.ok else 'BAD'} {row.fault}", flush=True)
        finally:
            for prefix in lab.prefixes:
                remove_containers(client, prefix)
            unmount_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| fault | user-visible line | history valid | rows lost | containers leaked "
          "| host bytes / inodes added |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        line = row.line if len(row.line) <= 110 else row.line[:107] + "…"
        host = row.host.text() if row.host else "—"
        print(f"| {row.fault} | {line.replace('|', '/')} | {row.valid} | {row.lost} | {row.leaked} | {host} |")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
