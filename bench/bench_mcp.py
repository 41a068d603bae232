"""MCP tool calls (issue 20); each figure is a ratio against a baseline measured in the same run.

    python bench/bench_mcp.py            # no Docker needed: a real MCP server (tests/mcp_server.py)
    python bench/bench_mcp.py --quick    # fewer repetitions

1. Call overhead: one tool call as the turn makes it (its kind looked up by name, the arguments
   checked, the server's session, its timeout, the result read, cut to OUTPUT_LIMIT and made the
   model's tool result) divided by the same `call_tool` on a bare SDK session to the same server,
   over Streamable HTTP and over stdio. The audit and history rows every tool call writes, commands
   too, are the turn's and not counted; a whole turn with one call is printed beside.  target <= 1.2
2. Load: 100 calls across 20 conversations at once (each turn asks for 5 calls of a tool that
   takes 0.5 s), while a plain turn in another conversation is timed, divided by the same plain
   turn on the idle engine just before.                                              target <= 1.5
   Printed beside: how long the 100 calls took in all (5 x 0.5 s when nothing waits on anything).

The engine runs in chat-only mode (TOOLS=off), where MCP servers work as anywhere else, so no
sandbox (and no Docker) is involved: only the MCP path is measured.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcp import Client, StdioServerParameters  # noqa: E402

from bench.bench_engine import summary  # noqa: E402
from bench.common import run_main  # noqa: E402
from core import ChatSession, Reach, Runtime, Settings, set_runtime  # noqa: E402
from core.tool_loop import Turn  # noqa: E402
from core.tools import ModelCall  # noqa: E402
from tests.fake_ollama import FakeOllama, Response, text, tool_calls  # noqa: E402
from tests.mcp_fixtures import SERVER, HttpServer, http_entry, stdio_entry, with_servers  # noqa: E402

RESULTS: list[tuple[str, float, str, bool]] = []
SESSIONS, CALLS_EACH, CALL_SECONDS = 20, 5, 0.5


def report(name: str, ratio: float, target: float, detail: str) -> None:
    ok = ratio <= target
    RESULTS.append((name, ratio, f"<= {target}", ok))
    print(f"  {detail}\n  ratio {ratio:.3f} (target <= {target}) {'OK' if ok else 'MISSED'}", flush=True)


def settings_for(tmp: Path, url: str, servers: dict[str, dict[str, Any]]) -> Settings:
    base = Settings(ollama_host=url, database_url=f"sqlite:///{tmp}/bench.db", upload_dir=str(tmp / "uploads"),
                    tools=False)
    return with_servers(base, tmp, servers)


async def one_turn(rt: Runtime, user: str, message: str) -> None:
    async with ChatSession(user=user, session="chan", runtime=rt) as chat:
        async for _ in chat.events(message):
            pass


async def bench_call(tmp: Path, calls: int, blocks: int) -> None:
    print(f"1. one call through the bot vs call_tool on a bare SDK session ({calls} calls, {blocks} rounds)",
          flush=True)
    with HttpServer("web") as web, FakeOllama() as fake:
        servers = {"web": http_entry(web), "local": stdio_entry("local")}
        rt = Runtime(settings_for(tmp, fake.url, servers))
        set_runtime(rt)
        try:
            rt.start_background()
            offered = await rt.mcp.offered("bench", "chan")
            bare_servers = {"web": web.url, "local": StdioServerParameters(command=sys.executable,
                                                                           args=[str(SERVER), "stdio", "bare"])}
            for name, transport in (("web", "Streamable HTTP"), ("local", "stdio")):
                exposed = f"{name}__add"
                turn = Turn(gen=None, session_id=0, user="bench", session="chan",  # type: ignore[arg-type]
                            mcp_tools={exposed: offered[exposed]})
                kind = rt.turns._kinds(turn)[exposed]  # how _run_tools finds the call's kind

                async def through_bot(i: int) -> None:
                    arguments = {"a": i}
                    outcome = await kind.run(turn, ModelCall(exposed, arguments), kind.parse(arguments))
                    assert outcome.finished.output == str(i + 2), outcome.finished.output

                async with Client(bare_servers[name], cache=None) as bare:
                    async def bare_call(i: int) -> None:
                        result = await bare.call_tool("add", {"a": i})
                        assert result.content[0].text == str(i + 2)

                    ours, theirs = [], []
                    for block in range(blocks + 1):  # the first round warms both up; the order alternates
                        pair = ((bare_call, theirs), (through_bot, ours))
                        for measure, into in (pair if block % 2 else pair[::-1]):
                            started = time.perf_counter()
                            for i in range(calls // blocks):
                                await measure(i)
                            if block:
                                into.append((time.perf_counter() - started) / (calls // blocks))
                bot_call, bare_call_time = statistics.median(ours), statistics.median(theirs)
                report(f"MCP call, {transport}", bot_call / bare_call_time, 1.2,
                       f"{transport}: {bot_call * 1e3:.3f} ms a call through the bot vs "
                       f"{bare_call_time * 1e3:.3f} ms on a bare session (median of {blocks} rounds)")
            fake.script(tool_calls(("web__add", {"a": 1})), text("3."))
            await one_turn(rt, "bench", "warm")
            whole = []
            for _ in range(5):
                fake.script(tool_calls(("web__add", {"a": 1})), text("3."))
                started = time.perf_counter()
                await one_turn(rt, "bench", "add")
                whole.append(time.perf_counter() - started)
            print(f"  a whole turn with one call (two model requests, history and audit rows): "
                  f"{statistics.median(whole) * 1e3:.1f} ms", flush=True)
        finally:
            await rt.close()
            set_runtime(None)


def load_agent(body: dict[str, Any]) -> Response:
    """Many conversations at once: "load" asks for CALLS_EACH slow calls, anything else is answered."""
    last = body["messages"][-1]
    if last["role"] == "user" and last["content"] == "load":
        return tool_calls(*[("web__hang", {"seconds": CALL_SECONDS})] * CALLS_EACH)
    return text("done" if last["role"] == "tool" else "Hello! How can I help?")


async def plain_turns(rt: Runtime, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        await one_turn(rt, "probe", "hello")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def bench_load(tmp: Path, reps: int) -> None:
    total = SESSIONS * CALLS_EACH
    print(f"2. a plain turn while {total} calls run across {SESSIONS} conversations at once", flush=True)
    with HttpServer("web") as web, FakeOllama() as fake:
        fake.fallback = load_agent
        rt = Runtime(settings_for(tmp, fake.url, {"web": http_entry(web)}))
        set_runtime(rt)
        try:
            rt.start_background()
            await rt.mcp.offered("probe", "chan")
            await plain_turns(rt, 3)  # warm-up
            idle = await plain_turns(rt, reps)
            started = time.perf_counter()
            load = [asyncio.create_task(one_turn(rt, f"load{i}", "load")) for i in range(SESSIONS)]
            while sum(1 for r in fake.requests if r["messages"][-1]["content"] == "load") < SESSIONS:
                await asyncio.sleep(0.01)
            loaded = await plain_turns(rt, reps)
            still = sum(not task.done() for task in load)
            await asyncio.gather(*load)
            took = time.perf_counter() - started
            assert still == SESSIONS, "the load ended before the probe did"
            report("plain turn under MCP load", loaded / idle, 1.5,
                   f"plain turn {loaded * 1e3:.1f} ms with {total} calls running vs {idle * 1e3:.1f} ms idle "
                   f"(median of {reps}); the {total} calls took {took:.2f} s in all "
                   f"({CALLS_EACH} x {CALL_SECONDS} s = {CALLS_EACH * CALL_SECONDS:.1f} s when nothing waits)")
            audited = await rt.audit(Reach.everything(), limit=1000)
            assert sum(1 for row in audited if row.command.startswith("web__hang")) == total
        finally:
            await rt.close()
            set_runtime(None)


async def main() -> int:
    parser = argparse.ArgumentParser(description="MCP benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await bench_call(Path(tmp), 200 if args.quick else 1000, 5 if args.quick else 10)
        await bench_load(Path(tmp), 5 if args.quick else 15)
    return summary(RESULTS)


if __name__ == "__main__":
    run_main(main)
