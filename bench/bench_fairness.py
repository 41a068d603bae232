"""A fair share for each person (issue 17); each figure is a ratio against the idle engine in the same run.

    python bench/bench_fairness.py            # needs the Docker engine and the test image
    python bench/bench_fairness.py --quick    # fewer repetitions, a shorter model turn

1. Commands: with MAX_RUNNING_COMMANDS=4 (MAX_RUNNING_PER_USER at its default, 2), two
   people each run 3 x `sleep 20` at once. A third person's `execute_terminal("echo ok")`
   (asked until done, its wait for a slot included) is timed, divided by the same on the
   idle engine just before.                                          target <= 2.0
   (Before issue 17 it waited behind every earlier command: 17.5 s.)
2. The model: through the chat cog (dpytest, the real dispatch), one person sends 50
   messages at once over 10 channels (USER_MESSAGES_PER_MINUTE and MAX_MODEL_REQUESTS at
   their defaults: 20 a minute, 1 request at a time) to a fake model that takes
   --model-turn seconds an answer. Another person's message, sent at a random point of
   the flooder's turns, is timed from being sent to its request reaching the model (the
   median), divided by the idle engine's: that turn start plus one model turn, both
   measured idle (the issue asks for "within one model turn").      target <= 1.0
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import discord.ext.test as dpytest  # noqa: E402
import discord.ext.test.backend as back  # noqa: E402

from bench.bench_bot import patch_dpytest  # noqa: E402
from bench.bench_engine import cleanup, settings_for, summary  # noqa: E402
from bench.common import run_main  # noqa: E402
from core import Runtime, set_runtime  # noqa: E402
from core.sandbox.docker.diskimage import unmount_under  # noqa: E402
from tests.bot.conftest import start_bot  # noqa: E402
from tests.fake_ollama import FakeOllama, Response, text  # noqa: E402

RESULTS: list[tuple[str, float, str, bool]] = []


def report(name: str, ratio: float, target: float, detail: str) -> None:
    ok = ratio <= target
    RESULTS.append((name, ratio, f"<= {target}", ok))
    print(f"  {detail}\n  ratio {ratio:.3f} (target <= {target}) {'OK' if ok else 'MISSED'}", flush=True)


async def wait_for(condition: Any, seconds: float, what: str) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{what}: not reached in {seconds:g} s")


async def echoes(rt: Runtime, reps: int) -> tuple[float, int]:
    """Median seconds of the third person's `echo ok`, asked until done; and how often one queued."""
    times, queued = [], []
    for _ in range(reps):
        started = time.perf_counter()
        result = await rt.terminal.execute("carol", "chan", "echo ok", on_queued=queued.append)
        times.append(time.perf_counter() - started)
        assert result.stdout == "ok\n", result
    return statistics.median(times), queued.count(0)


async def bench_commands(tmp: Path, reps: int) -> None:
    print("1. a third person's `echo ok` while two people each run 3 x `sleep 20` (MAX_RUNNING_COMMANDS=4)",
          flush=True)
    settings = settings_for(tmp / "commands", "http://127.0.0.1:9").replace(max_running_commands=4,
                                                                            command_timeout=60)
    rt = Runtime(settings)
    busy = [(person, f"chan{n}") for person in ("alice", "bob") for n in range(3)]
    load: list[asyncio.Task[Any]] = []
    try:
        await asyncio.gather(*(rt.sandboxes.start(p, s) for p, s in [*busy, ("carol", "chan")]))
        await echoes(rt, 3)  # warm-up
        idle, _ = await echoes(rt, reps)
        load = [asyncio.create_task(rt.terminal.execute(p, s, "sleep 20")) for p, s in busy]
        gate = rt.terminal.gate
        await wait_for(lambda: gate.running == 3 and gate.waiting == 3, 30, "the load")
        loaded, waited = await echoes(rt, reps)
        assert gate.running == 3 and gate.waiting == 3, "the load ended before the probe did"
        report("echo under two backlogs", loaded / idle, 2.0,
               f"echo {loaded * 1000:.1f} ms with 3 of the 4 slots taken by alice and bob and 3 of their commands "
               f"waiting vs {idle * 1000:.1f} ms idle (median of {reps}; {waited} of them waited for a slot)")
    finally:
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)
        await rt.close()
        cleanup(settings.vm_name_prefix)


async def bench_model(tmp: Path, reps: int, model_turn: float) -> None:
    print(f"2. another person's turn start while one person floods 50 messages over 10 channels "
          f"(a model turn: {model_turn:g} s)", flush=True)
    with FakeOllama() as fake:
        arrivals: dict[str, float] = {}  # the user's words -> when the model got them
        turn = [model_turn]

        def answer(body: dict[str, Any]) -> Response:
            said = body["messages"][-1]["content"]
            arrivals[said] = time.perf_counter()
            return text(f"answer: {said}", chunk_size=1000, delay=turn[0])

        fake.fallback = answer
        settings = settings_for(tmp / "model", fake.url)
        rt = Runtime(settings)
        set_runtime(rt)
        try:
            bot = await start_bot(rt)
            config = dpytest.get_config()
            bob, probe_channel = config.members[1], config.channels[1]
            mention = f"<@{bot.user.id}>"
            key = (str(bob.id), str(probe_channel.id))
            sending: list[asyncio.Task[Any]] = []

            async def bobs_turn(n: int) -> tuple[float, float]:
                """Seconds from bob's message to its request at the model, and to his answer's end."""
                words = f"bob {n}"
                sent = time.perf_counter()
                task = asyncio.create_task(dpytest.message(f"{mention} {words}", channel=probe_channel, member=bob))
                await wait_for(lambda: words in arrivals, 60, "bob's request")
                await wait_for(lambda: rt.registry.phase(key) is None and key not in bot.get_cog("Chat").streams,
                               60, "bob's answer")
                sending.append(task)  # dpytest.message returns once every handler is done, the flood's too
                return arrivals[words] - sent, time.perf_counter() - sent

            await bobs_turn(-1)  # warm-up: his sandbox, the history (all of bob's count toward his rate of 20)
            idle = [await bobs_turn(n) for n in range(reps)]
            idle_start = statistics.median(t for t, _ in idle)
            idle_turn = statistics.median(whole for _, whole in idle)
            channels = [back.make_text_channel(f"flood{i}", config.guilds[0]) for i in range(10)]
            flooder = config.members[0]
            flood = [asyncio.create_task(dpytest.message(f"{mention} m{i}", channel=channels[i % 10],
                                                         member=flooder)) for i in range(50)]
            await wait_for(lambda: rt.model_gate.waiting >= 5, 30, "the flood")
            loaded = []
            phase = random.Random(17)
            for n in range(reps):
                await asyncio.sleep(phase.uniform(0, model_turn))  # bob comes at any point of a flooder's turn
                assert rt.model_gate.waiting >= 1, "the flood was over before bob's turn"
                loaded.append((await bobs_turn(100 + n))[0])
            turn[0] = 0.0  # let the rest of the flood through at once
            await asyncio.gather(*flood, *sending)
            flooded = [said for said in arrivals if not said.startswith("bob ")]
            answered = sum(len(said.split("\n\n")) for said in flooded)
            worst, start = max(loaded), statistics.median(loaded)
            report("turn start under a flood", start / (idle_start + idle_turn), 1.0,
                   f"bob's request reached the model {start * 1000:.0f} ms after he sent it (median of {reps}, worst "
                   f"{worst * 1000:.0f} ms) under the flood vs {idle_start * 1000:.0f} ms idle, whose whole turn took "
                   f"{idle_turn * 1000:.0f} ms; the flooder's 50 messages: {answered} answered in {len(flooded)} "
                   f"model turns, {50 - answered} over the rate")
            await dpytest.empty_queue()
        finally:
            await rt.close()
            set_runtime(None)
            cleanup(settings.vm_name_prefix)


async def main() -> int:
    parser = argparse.ArgumentParser(description="fair-share benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, a shorter model turn")
    parser.add_argument("--model-turn", type=float, default=None, help="seconds the fake model takes an answer")
    args = parser.parse_args()
    reps = 3 if args.quick else 9  # bob sends 1 + 2 * reps messages: within his 20 a minute
    model_turn = args.model_turn or (0.5 if args.quick else 1.0)
    patch_dpytest()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            await bench_commands(Path(tmp), reps * 3)
            await bench_model(Path(tmp), reps, model_turn)
        finally:
            unmount_under(Path(tmp))
    return summary(RESULTS)


if __name__ == "__main__":
    run_main(main)
