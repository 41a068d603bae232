"""The OpenAI-compatible backend's cost (issue 22): each figure is a ratio against a baseline of the same run.

    python bench/bench_model_api.py            # needs the Docker engine and the test image
    python bench/bench_model_api.py --quick    # fewer repetitions

1. A full `chat_stream` turn (history, registry, context budget, tool loop, outbox) through the
   OpenAI backend, for a 500-token reply from a fake OpenAI-compatible server (SSE, instant),
   divided by a bare `AsyncOpenAI` stream of the same reply (the same request, the same server,
   the usage chunk too).                                                      target <= 1.15
2. For comparison (printed, not counted: bench_engine.py holds its target), the same turn through
   the Ollama backend divided by a bare `ollama.AsyncClient.chat` stream, in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ollama  # noqa: E402
import openai  # noqa: E402

from bench.bench_engine import cleanup, settings_for, summary  # noqa: E402
from bench.common import run_main  # noqa: E402
from core import ChatSession, Runtime, Settings, set_runtime  # noqa: E402
from core.sandbox.docker.diskimage import unmount_under  # noqa: E402
from tests.fake_ollama import FakeOllama, text  # noqa: E402
from tests.fake_openai import DEFAULT_MODEL, FakeOpenAI  # noqa: E402

RESULTS: list[tuple[str, float, str, bool]] = []
REPLY = "".join(f" tok{i % 10}" for i in range(500))  # 500 chunks of one "token" each


def report(name: str, ratio: float, target: float, detail: str) -> None:
    ok = ratio <= target
    RESULTS.append((name, ratio, f"<= {target}", ok))
    print(f"  {detail}\n  ratio {ratio:.3f} (target <= {target}) {'OK' if ok else 'MISSED'}", flush=True)


async def measure(settings: Settings, fake: Any, turns: int,
                  bare: Callable[[dict[str, Any]], Awaitable[None]]) -> tuple[float, float]:
    """Median seconds of an engine turn and of the bare stream of the same request, alternating."""
    rt = Runtime(settings)
    set_runtime(rt)
    engine_times, bare_times = [], []
    try:
        async with ChatSession(user="bench", session="turns", runtime=rt) as chat:
            for i in range(turns + 3):
                fake.script(text(REPLY, chunk_size=len(" tok0")))
                started = time.perf_counter()
                async for _ in chat.chat_stream(f"question {i}"):
                    pass
                engine = time.perf_counter() - started
                fake.script(text(REPLY, chunk_size=len(" tok0")))
                request = fake.requests[-1]
                started = time.perf_counter()
                await bare(request)
                baseline = time.perf_counter() - started
                if i >= 3:  # warm-up: connection pools, first queries
                    engine_times.append(engine)
                    bare_times.append(baseline)
    finally:
        await rt.close()
        set_runtime(None)
        cleanup(settings.vm_name_prefix)
    return statistics.median(engine_times), statistics.median(bare_times)


async def bench_openai(tmp: Path, turns: int) -> None:
    print("1. a turn through the OpenAI backend vs a bare AsyncOpenAI stream, 500-token reply", flush=True)
    with FakeOpenAI() as fake:
        settings = settings_for(tmp, "http://127.0.0.1:9").replace(
            model_api="openai", openai_base_url=fake.url, openai_model=DEFAULT_MODEL,
            database_url=f"sqlite:///{tmp}/openai.db")
        client = openai.AsyncOpenAI(base_url=fake.url, api_key="sk-bench", max_retries=0)

        async def bare(request: dict[str, Any]) -> None:
            stream = await client.chat.completions.create(
                model=request["model"], messages=request["messages"], tools=request["tools"], stream=True,
                stream_options={"include_usage": True})
            async for _ in stream:
                pass

        try:
            engine, baseline = await measure(settings, fake, turns, bare)
        finally:
            await client.close()
    report("OpenAI backend turn", engine / baseline, 1.15,
           f"chat_stream turn {engine * 1000:.1f} ms vs bare AsyncOpenAI stream {baseline * 1000:.1f} ms "
           f"(median of {turns})")


async def bench_ollama(tmp: Path, turns: int) -> None:
    print("2. a turn through the Ollama backend vs a bare ollama.AsyncClient stream, 500-token reply", flush=True)
    with FakeOllama() as fake:
        settings = settings_for(tmp, fake.url).replace(database_url=f"sqlite:///{tmp}/ollama.db")
        client = ollama.AsyncClient(host=fake.url)

        async def bare(request: dict[str, Any]) -> None:
            async for _ in await client.chat(model=request["model"], messages=request["messages"],
                                             tools=request.get("tools"), stream=True):
                pass

        engine, baseline = await measure(settings, fake, turns, bare)
    print(f"  chat_stream turn {engine * 1000:.1f} ms vs bare AsyncClient.chat {baseline * 1000:.1f} ms (median of "
          f"{turns})\n  ratio {engine / baseline:.3f} (for comparison; bench_engine.py's first figure)", flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description="model API benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    turns = 10 if args.quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        try:
            await bench_openai(Path(tmp), turns)
            await bench_ollama(Path(tmp), turns)
        finally:
            unmount_under(Path(tmp))  # the sandboxes' /data disk images
    return summary(RESULTS)


if __name__ == "__main__":
    run_main(main)
