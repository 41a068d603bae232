"""Many conversations at once; each figure is a ratio against a baseline measured in the same run.

    python bench/bench_concurrency.py            # needs the Docker engine and the test image
    python bench/bench_concurrency.py --sessions 30 --quick

1. Under load: `--sessions` (100) sessions each run `sleep 20` through a whole
   turn (fake Ollama, real Docker). Meanwhile a probe session's plain turn and
   its `execute_terminal("echo ok")` are timed, each divided by the same on the
   idle engine just before.                    targets: turn <= 1.5, echo <= 2.0
2. Cold start-ups: `--sessions` sandboxes started at once through the engine,
   in sandboxes per second, divided by the same number of raw `docker run -d` of
   the same image started at once by the docker CLI.              target >= 0.8
3. Memory: the process's resident memory with those sessions open (turn done or
   running, sandbox up, command in flight), per session.     reported, no target

MAX_RUNNING_COMMANDS is raised above the number of sessions here, so that the
load is all running at once: with the default (32) the rest would queue.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import rss_mb  # noqa: E402

from bench.bench_engine import IMAGE, cleanup, settings_for, summary  # noqa: E402
from bot.discord_bot import create_bot  # noqa: E402,F401 - the bot's modules count in the process's memory
from core.sandbox.docker.diskimage import unmount_under  # noqa: E402
from core import ChatSession, Runtime, set_runtime  # noqa: E402
from tests.fake_ollama import FakeOllama, command_agent, text  # noqa: E402

RESULTS: list[tuple[str, float, str, bool]] = []


def report(name: str, ratio: float, target: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, ratio, target, ok))
    print(f"  {detail}\n  ratio {ratio:.3f} (target {target}) {'OK' if ok else 'MISSED'}", flush=True)


async def one_turn(rt: Runtime, user: str, message: str) -> None:
    async with ChatSession(user=user, session="chan", runtime=rt) as chat:
        async for _ in chat.events(message):
            pass


async def probe(rt: Runtime, fake: FakeOllama, reps: int) -> tuple[float, float]:
    """Median seconds of a plain turn and of `echo ok` in the probe session."""
    turns, echoes = [], []
    for _ in range(reps):
        fake.script(text("Hello! How can I help?"))
        started = time.perf_counter()
        await one_turn(rt, "probe", "hello")
        turns.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = await rt.terminal.execute("probe", "chan", "echo ok")
        echoes.append(time.perf_counter() - started)
        assert result.stdout == "ok\n", result
    return statistics.median(turns), statistics.median(echoes)


async def bench_load(tmp: Path, sessions: int, reps: int) -> None:
    print(f"1. a probe session while {sessions} sessions each run `sleep 20`", flush=True)
    with FakeOllama() as fake:
        fake.fallback = command_agent
        settings = settings_for(tmp, fake.url).replace(max_running_commands=sessions + 8, command_timeout=60,
                                                       command_timeout_max=60)
        rt = Runtime(settings)
        set_runtime(rt)
        users = [f"load{i}" for i in range(sessions)]
        try:
            print(f"   starting {sessions + 1} sandboxes…", flush=True)
            await asyncio.gather(*(rt.sandboxes.start(u, "chan") for u in [*users, "probe"]))
            await probe(rt, fake, 3)  # warm-up
            rss_idle = rss_mb()
            idle_turn, idle_echo = await probe(rt, fake, reps)
            load = [asyncio.create_task(one_turn(rt, u, "sleep 20")) for u in users]
            for _ in range(600):
                if rt.terminal.gate.running >= sessions:
                    break
                await asyncio.sleep(0.05)
            assert rt.terminal.gate.running >= sessions, "the load did not start"
            loaded_turn, loaded_echo = await probe(rt, fake, reps)
            still = rt.terminal.gate.running
            rss_loaded = rss_mb()
            await asyncio.gather(*load)
            assert still >= sessions, "the load ended before the probe did"
            report("plain turn under load", loaded_turn / idle_turn, "<= 1.5", loaded_turn / idle_turn <= 1.5,
                   f"plain turn {loaded_turn * 1000:.1f} ms with {sessions} commands running vs "
                   f"{idle_turn * 1000:.1f} ms idle (median of {reps})")
            report("echo under load", loaded_echo / idle_echo, "<= 2.0", loaded_echo / idle_echo <= 2.0,
                   f"execute_terminal('echo ok') {loaded_echo * 1000:.1f} ms with {sessions} commands running vs "
                   f"{idle_echo * 1000:.1f} ms idle (median of {reps})")
            per = (rss_loaded - rss_idle) / sessions
            print(f"3. memory: {rss_loaded:.0f} MB resident with {sessions} sessions running commands "
                  f"({rss_idle:.0f} MB with them open and idle): {per * 1024:.0f} KB more per running session",
                  flush=True)
            RESULTS.append(("MB per running session", per, "reported", True))
        finally:
            await rt.close()
            set_runtime(None)
            cleanup(settings.vm_name_prefix)


async def docker_cli(*args: str) -> str:
    process = await asyncio.create_subprocess_exec("docker", *args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {err.decode().strip()}")
    return out.decode().strip()


async def bench_cold(tmp: Path, sessions: int) -> None:
    print(f"2. {sessions} cold sandbox start-ups at once vs {sessions} raw `docker run -d` at once", flush=True)
    settings = settings_for(tmp, "http://127.0.0.1:9").replace(max_running_commands=sessions + 8)
    raw_label = f"llmbot.app={settings.vm_name_prefix}-raw"
    try:
        started = time.perf_counter()
        await asyncio.gather(*(docker_cli("run", "-d", "--label", raw_label, IMAGE, "sleep", "600")
                               for _ in range(sessions)))
        raw = sessions / (time.perf_counter() - started)
        cleanup(f"{settings.vm_name_prefix}-raw")
        rt = Runtime(settings)
        try:
            await rt.sandboxes.adopt()  # what the bot does at start-up
            started = time.perf_counter()
            await asyncio.gather(*(rt.sandboxes.start(f"cold{i}", "chan") for i in range(sessions)))
            ours = sessions / (time.perf_counter() - started)
        finally:
            await rt.close()
    finally:
        cleanup(settings.vm_name_prefix)
        cleanup(f"{settings.vm_name_prefix}-raw")
    report("cold start-ups", ours / raw, ">= 0.8", ours / raw >= 0.8,
           f"engine {ours:.1f} sandboxes/s vs docker run -d {raw:.1f} containers/s ({sessions} at once)")


async def main() -> int:
    parser = argparse.ArgumentParser(description="concurrency benchmarks")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions of the probe")
    args = parser.parse_args()
    reps = 5 if args.quick else 15
    with tempfile.TemporaryDirectory() as tmp:
        await bench_load(Path(tmp), args.sessions, reps)
        await bench_cold(Path(tmp), args.sessions)
        unmount_under(Path(tmp))
    return summary(RESULTS)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
