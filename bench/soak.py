"""A soak of many people over many conversations: mounts must follow live sandboxes, not conversations.

    python bench/soak.py                 # about 3 minutes; needs the Docker engine and the test image
    python bench/soak.py --quick         # about 1 minute
    python bench/soak.py --minutes 15 --people 30

`--people` (30) simulated people talk to the engine through ChatSession, as the bot does (one
`async with ChatSession(...)` per message): turns over the fake Ollama, whose model runs each
message as an `execute_terminal` command (small commands), file uploads (`save_upload`) and /files
listings (`list_files`). Each person opens new conversations as time goes on and sometimes goes
back to an old one. VM_IDLE_TIMEOUT is 10 s and the runtime's own reaper and disk watch run (the
first ChatSession starts them), so sandboxes come and go; MAX_SANDBOXES_PER_USER stays at its
default (3), so a person's new conversation also makes room by removing their least recently used
idle sandbox.

Reported at the start, after the first window, at the end, once every sandbox has gone idle and
been reaped, and after `Runtime.close()`: conversations ever used, live sandboxes, /data images
mounted below UPLOAD_DIR, loop devices (this run's, and host-wide on deleted files), the process's
RSS, open fds and threads. Turn latency p50/p95 in the first and the last window (a minute, or a
third of the run if shorter). The verdict: mounts <= live sandboxes + a small slack at the end and
none once all are reaped; no loop device of this run on a deleted file; fds and RSS not growing
with the number of conversations.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import quantile, rss_mb, run_main  # noqa: E402

from bench.bench_engine import cleanup  # noqa: E402
from core import ChatSession, EngineError, Runtime, set_runtime  # noqa: E402
from core.sandbox.docker.diskimage import mounted_under, unmount_under  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.fake_ollama import FakeOllama, command_agent  # noqa: E402
from tests.leaks import DELETED, read_loops  # noqa: E402

COMMANDS = [
    "echo hello",
    "ls /data | wc -l",
    "date +%s",
    "seq 1 50 | tail -n 1",
    "echo $((6*7)) > /data/answer.txt && cat /data/answer.txt",
    "head -c 4096 /dev/urandom | wc -c",
    "mkdir -p /data/notes && date >> /data/notes/log.txt && wc -l < /data/notes/log.txt",
    "cat /data/u*.txt 2>/dev/null | wc -c",
]
OPERATIONS = ["turn", "upload", "list"]
WEIGHTS = [6, 2, 2]
NEW_CONVERSATION = 0.10  # chance, before each operation, that the person opens a new conversation
GO_BACK = 0.15  # chance that the operation is in an older conversation rather than the latest
THINK = (0.5, 2.0)  # seconds between one person's operations


@dataclass
class Stats:
    conversations: set[tuple[str, str]] = field(default_factory=set)
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    turns: list[tuple[float, float]] = field(default_factory=list)  # (seconds since the start, latency)
    missed: int = 0  # listings that did not show a file the person had uploaded there
    missed_example: str = ""


class WatchLog:
    """What the runtime's disk watch did during the soak: its passes, the sandboxes it stopped and why,
    and, for each weighing that ran out of its time box, where the time went (the engine's answer
    about the container's upper layer, or the walks)."""

    def __init__(self, rt: Runtime) -> None:
        cm, watch = rt.sandboxes, rt.sandboxes.watch
        self.passes: list[float] = []
        self.weighings = 0
        self.unweighed = 0
        self.slow: list[str] = []
        self.stopped: list[str] = []
        weigh, upper, enforce, evict = watch._weigh, watch._upper_dir, cm.enforce_disk, watch._evict  # noqa: SLF001
        asked: dict[str, float] = {}

        async def timed_upper(row: dict) -> str | None:
            began = time.monotonic()
            try:
                return await upper(row)
            finally:
                asked[row.get("Id", "")] = time.monotonic() - began

        async def timed_weigh(row: dict) -> Any:
            began = time.monotonic()
            asked.pop(row.get("Id", ""), None)
            weight = await weigh(row)
            self.weighings += 1
            if weight is None:  # not weighed this time: once over the time box, or the engine busy
                self.unweighed += 1
            if weight is None or weight.slow:
                query = asked.get(row.get("Id", ""))
                self.slow.append(f"{'over, counted as over' if weight else 'not weighed'}: "
                                 f"{time.monotonic() - began:.1f} s in all, the engine's answer about its upper "
                                 f"layer {'(cached)' if query is None else f'{query:.1f} s'}")
            return weight

        async def timed_enforce(names: set[str]) -> list[str]:
            began = time.monotonic()
            try:
                return await enforce(names)
            finally:
                self.passes.append(time.monotonic() - began)

        async def logged_evict(name: str, reason: str) -> None:
            self.stopped.append(f"{name.split('-', 1)[1].rsplit('-', 1)[0]}: {reason}")
            await evict(name, reason)

        watch._weigh, watch._upper_dir, watch._evict = timed_weigh, timed_upper, logged_evict  # type: ignore[method-assign]  # noqa: SLF001
        cm.enforce_disk = timed_enforce  # type: ignore[method-assign]


@dataclass
class Sample:
    label: str
    at: float
    conversations: int
    live: int
    mounts: int
    loops_ours: int
    loops_ours_deleted: int
    loops_deleted_host: int
    rss_mb: float
    fds: int
    threads: int


class Warnings(logging.Handler):
    """Counts what the engine logs at WARNING and above (by its first words), printing none of it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: collections.Counter[str] = collections.Counter()
        self.example: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        line = (record.getMessage().splitlines() or [""])[0]
        key = f"{record.name}: {' '.join(line.split()[:6])}"
        self.seen[key] += 1
        self.example.setdefault(key, line[:200])


async def sample(label: str, began: float, rt: Runtime | None, tmp: Path, uploads: Path, stats: Stats) -> Sample:
    live = 0
    if rt is not None:
        try:
            live = sum(1 for i in await rt.sandboxes.info() if i.status == "running")
        except EngineError:
            live = -1
    loops = read_loops()
    ours = {d: b for d, b in loops.items() if b.removesuffix(DELETED).startswith(str(tmp) + "/")}
    return Sample(label, time.monotonic() - began, len(stats.conversations), live,
                  len(mounted_under(uploads)) if uploads.exists() else 0, len(ours),
                  sum(b.endswith(DELETED) for b in ours.values()), sum(b.endswith(DELETED) for b in loops.values()),
                  rss_mb(), len(os.listdir("/proc/self/fd")), threading.active_count())


def show(s: Sample) -> None:
    print(f"  {s.label:22s} {s.at:6.0f} s  conversations {s.conversations:4d}  live sandboxes {s.live:3d}  "
          f"mounts {s.mounts:3d}  loop devices {s.loops_ours:3d} (on deleted files: {s.loops_ours_deleted}; "
          f"host-wide {s.loops_deleted_host})  RSS {s.rss_mb:5.0f} MB  fds {s.fds:4d}  threads {s.threads:3d}",
          flush=True)


async def person(i: int, rt: Runtime, deadline: float, began: float, stats: Stats) -> None:
    rng = random.Random(i)
    user = f"person{i:02d}"
    conversations = [f"p{i:02d}c0"]
    uploaded: dict[str, set[str]] = collections.defaultdict(set)
    serial = 0
    await asyncio.sleep(rng.uniform(0, THINK[1]))  # not all at the same instant
    while time.monotonic() < deadline:
        if rng.random() < NEW_CONVERSATION:
            conversations.append(f"p{i:02d}c{len(conversations)}")
        session = conversations[-1] if rng.random() >= GO_BACK else rng.choice(conversations)
        stats.conversations.add((user, session))
        operation = rng.choices(OPERATIONS, WEIGHTS)[0]
        serial += 1
        try:
            async with ChatSession(user=user, session=session, runtime=rt) as chat:
                if operation == "turn":
                    started = time.monotonic()
                    async for _ in chat.events(rng.choice(COMMANDS)):
                        pass
                    stats.turns.append((started - began, time.monotonic() - started))
                elif operation == "upload":
                    data = f"upload {serial} of {user} in {session}\n".encode() * rng.randint(1, 400)
                    path = await chat.save_upload(f"u{serial}.txt", data)
                    uploaded[session].add(path.removeprefix("/data/"))
                else:
                    shown = {e.path for e in await chat.list_files()}
                    missing = uploaded[session] - shown
                    if missing:
                        stats.missed += 1
                        stats.missed_example = stats.missed_example or (
                            f"{user}/{session}: {len(missing)} uploaded file(s) not listed, "
                            f"{len(shown)} listed")
            stats.ops[operation] += 1
        except EngineError as exc:
            stats.errors[f"{operation}: {str(exc).splitlines()[0][:100]}"] += 1
        except Exception as exc:  # noqa: BLE001 - counted and shown, the soak goes on
            stats.errors[f"{operation}: unexpected {type(exc).__name__}: {str(exc)[:100]}"] += 1
        await asyncio.sleep(rng.uniform(*THINK))


async def soak(tmp: Path, people: int, seconds: float, warnings: Warnings) -> int:
    window = min(60.0, seconds / 3)
    stats = Stats()
    samples: list[Sample] = []
    uploads = tmp / "uploads"
    began = time.monotonic()
    with FakeOllama() as fake:
        before = await sample("before the runtime", began, None, tmp, uploads, stats)
        fake.fallback = command_agent
        settings = make_settings(tmp, fake.url, vm_network=False, vm_idle_timeout=10, command_timeout=30,
                                 max_running_commands=64)
        print(f"{people} people for {seconds / 60:.1f} min; VM_IDLE_TIMEOUT {settings.vm_idle_timeout} s, "
              f"MAX_SANDBOXES_PER_USER {settings.max_sandboxes_per_user}; windows of {window:.0f} s", flush=True)
        show(before)
        rt = Runtime(settings)
        set_runtime(rt)
        watch = WatchLog(rt)
        tasks: list[asyncio.Task[None]] = []
        try:
            began = time.monotonic()
            deadline = began + seconds
            tasks = [asyncio.create_task(person(i, rt, deadline, began, stats)) for i in range(people)]
            first_done = False
            next_line = began + 30
            while not all(t.done() for t in tasks):
                await asyncio.sleep(1)
                with fake._lock:  # noqa: SLF001 - the fake keeps every request; it is not the engine's memory
                    fake._requests.clear()  # noqa: SLF001
                now = time.monotonic()
                if not first_done and now - began >= window:
                    first_done = True
                    samples.append(await sample("after the first window", began, rt, tmp, uploads, stats))
                    show(samples[-1])
                elif now >= next_line and now < deadline:
                    show(await sample("running", began, rt, tmp, uploads, stats))
                if now >= next_line:
                    next_line += 30
            for task in tasks:
                task.result()  # a person that failed outside an operation is a bug of this benchmark
            samples.append(await sample("at the end", began, rt, tmp, uploads, stats))
            show(samples[-1])
            idle_wait = settings.vm_idle_timeout + 2 * max(1.0, settings.vm_idle_timeout / 4) + 2
            for _ in range(int(idle_wait * 3)):  # the reaper removes what went idle, and their mounts go with them
                await asyncio.sleep(1)
                idle = await sample("all idle, reaped", began, rt, tmp, uploads, stats)
                if idle.live == 0 and idle.mounts == 0:
                    break
            samples.append(idle)
            show(idle)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(rt.close(), 120)
            finally:
                set_runtime(None)
                closed = await sample("after close()", began, None, tmp, uploads, stats)
                show(closed)
                await asyncio.to_thread(cleanup, settings.vm_name_prefix)
                unmount_under(tmp)
                await asyncio.sleep(1)  # lazy unmounts let go of their loop devices
                show(await sample("after clean-up", began, None, tmp, uploads, stats))

    ops = sum(stats.ops.values())
    print(f"\n{ops:,} operations ({', '.join(f'{k} {v:,}' for k, v in stats.ops.items())}), "
          f"{sum(stats.errors.values())} failed, over {len(stats.conversations)} conversations of {people} people",
          flush=True)
    for line, count in stats.errors.most_common(8):
        print(f"  {count:5d} × {line}")
    if warnings.seen:
        print("engine warnings (by first words):")
        for key, count in warnings.seen.most_common(8):
            print(f"  {count:5d} × {key.split(':', 1)[0]}: {warnings.example[key]}")
    if watch.passes:
        print(f"disk watch: {len(watch.passes)} passes, {watch.weighings:,} weighings; a pass {quantile(watch.passes, .5) * 1000:.0f}"
              f" ms p50, {quantile(watch.passes, .95) * 1000:.0f} ms p95, {max(watch.passes) * 1000:.0f} ms at worst; "
              f"{watch.unweighed} weighings left for the next pass (once over the time box, or the engine busy); "
              f"{len(watch.stopped)} sandboxes stopped "
              "(nobody here writes more than a few KB: any stop is a false one)")
        for line in watch.slow[:5]:
            print(f"  {line}")
        for line in watch.stopped[:5]:
            print(f"  stopped {line}")
    first = [lat for at, lat in stats.turns if at < window]
    last = [lat for at, lat in stats.turns if at >= seconds - window]
    print(f"turn latency, first {window:.0f} s: p50 {quantile(first, .5) * 1000:.0f} ms, p95 "
          f"{quantile(first, .95) * 1000:.0f} ms ({len(first)} turns); last {window:.0f} s: p50 "
          f"{quantile(last, .5) * 1000:.0f} ms, p95 {quantile(last, .95) * 1000:.0f} ms ({len(last)} turns)")
    print(f"listings that missed a file uploaded to their conversation: {stats.missed}"
          + (f" (e.g. {stats.missed_example})" if stats.missed else ""))

    warm, end, idle = samples[0], samples[-2], samples[-1]
    slack = max(3, end.live // 10)
    checks = {
        f"mounts {end.mounts} <= live sandboxes {end.live} + {slack} at the end": end.mounts <= end.live + slack,
        f"mounts {idle.mounts} once all {idle.conversations} conversations' sandboxes were reaped": idle.mounts == 0,
        f"loop devices of this run on deleted files: {max(s.loops_ours_deleted for s in samples + [closed])}":
            all(s.loops_ours_deleted == 0 for s in samples + [closed]),
        f"loop devices of this run after close(): {closed.loops_ours}": closed.loops_ours == 0,
        f"fds {warm.fds} after the first window -> {end.fds} at the end (+{len(stats.conversations) - warm.conversations}"
        f" conversations); {closed.fds} after close() vs {before.fds} before":
            end.fds <= warm.fds + 32 and closed.fds <= before.fds + 8,
        f"RSS {warm.rss_mb:.0f} MB after the first window -> {end.rss_mb:.0f} MB at the end":
            end.rss_mb <= warm.rss_mb * 1.25 + 16,
    }
    print("\nverdict")
    for line, ok in checks.items():
        print(f"  {'OK    ' if ok else 'FAILED'} {line}")
    verdict = all(checks.values())
    print(f"VERDICT: {'PASS' if verdict else 'FAIL'}: mounts follow live sandboxes ({end.mounts} mounts for {end.live} "
          f"live sandboxes, {len(stats.conversations)} conversations ever used)", flush=True)
    healthy = not watch.stopped and not stats.errors and not stats.missed
    print(f"ALSO: {'OK' if healthy else 'NOT OK'}: {sum(stats.errors.values())} failed operations, "
          f"{len(watch.stopped)} sandboxes stopped by the disk watch, {stats.missed} listings missing an upload",
          flush=True)
    return 0 if verdict and healthy else 1


async def main() -> int:
    parser = argparse.ArgumentParser(description="many people, many conversations: mounts follow sandboxes")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="about one minute")
    parser.add_argument("--people", type=int, default=30)
    args = parser.parse_args()
    minutes = 1.0 if args.quick else args.minutes
    warnings = Warnings()
    logging.getLogger().addHandler(warnings)
    logging.getLogger().setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # like ctrl-C: the clean-up still runs
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        try:
            return await soak(Path(tmp), args.people, minutes * 60, warnings)
        finally:
            unmount_under(Path(tmp))


if __name__ == "__main__":
    run_main(main)
