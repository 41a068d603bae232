"""Bot benchmarks, measured through the real discord.py dispatch (dpytest) and the real engine.

    python bench/bench_bot.py               # 60-second pacing run
    python bench/bench_bot.py --seconds 15  # shorter

1. Three replies stream in one channel for --seconds: message sends and edits in
   that channel never exceed DISCORD_EDITS_PER_5S in any 5-second window, and
   every reply ends with its full text.
2. Bot-side cost per streamed token: the chat cog handling a 500-token reply
   (engine + rendering + edits to dpytest's channel, pacing not limiting)
   divided by the engine's own `chat_stream` for the same reply.  target <= 1.1
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

import discord  # noqa: E402
import discord.ext.test as dpytest  # noqa: E402

from core import ChatSession, Runtime, set_runtime  # noqa: E402
from core.sandbox.docker.diskimage import unmount_under  # noqa: E402
from tests.bot.conftest import channel_messages, start_bot, with_reaction_type  # noqa: E402
from tests.conftest import make_settings, remove_containers  # noqa: E402
from tests.fake_ollama import FakeOllama, text  # noqa: E402

import docker  # noqa: E402


def patch_dpytest() -> None:
    """The reaction shim the bot tests use (dpytest 0.7 against discord.py 2.7)."""
    state = discord.state.ConnectionState
    state.parse_message_reaction_add = with_reaction_type(state.parse_message_reaction_add)  # type: ignore[method-assign]


async def pacing(tmp: Path, fake: FakeOllama, seconds: float) -> bool:
    print(f"1. three replies streaming in one channel for {seconds:.0f} s", flush=True)
    settings = make_settings(tmp / "pacing", fake.url, max_model_requests=3)  # the three stream at once
    rt = Runtime(settings)
    set_runtime(rt)
    stamps: list[float] = []
    original_edit, original_send = discord.Message.edit, discord.abc.Messageable.send
    original_reply = discord.Message.reply
    loop = asyncio.get_running_loop()

    async def edit(self, **kwargs):  # type: ignore[no-untyped-def]
        stamps.append(loop.time())
        return await original_edit(self, **kwargs)

    async def send(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        stamps.append(loop.time())
        return await original_send(self, *args, **kwargs)

    discord.Message.edit = edit  # type: ignore[method-assign]
    discord.abc.Messageable.send = send  # type: ignore[method-assign]
    try:
        bot = await start_bot(rt)
        config = dpytest.get_config()
        channel = config.channels[0]
        words_per_reply = int(seconds * 10)
        replies = [" ".join(f"r{i}w{n}" for n in range(words_per_reply)) for i in range(3)]
        fake.script(*[text(r, chunk_size=len(r) // words_per_reply + 1, delay=0.1) for r in replies])
        started = loop.time()
        await asyncio.gather(*[dpytest.message(f"<@{bot.user.id}> go {i}", channel=channel, member=config.members[i])
                               for i in range(3)])
        elapsed = loop.time() - started
        rate = settings.edits_per_5s
        worst = max(sum(1 for s in stamps if t <= s < t + 5.0) for t in stamps)
        # Long replies continue in follow-up messages; every word is unique, so rebuild each reply
        # from its own words, in message order, and compare with what the model sent.
        words = " ".join(m.content for m in channel_messages(channel, bot)).split()
        complete = all([w for w in words if w.startswith(f"r{i}w")] == replies[i].split() for i in range(3))
        print(f"  {len(stamps)} sends+edits in {elapsed:.1f} s; busiest 5-second window: {worst} "
              f"(limit {rate}) {'OK' if worst <= rate else 'OVER'}", flush=True)
        print(f"  every reply ends with its full text: {'yes' if complete else 'NO'}", flush=True)
        await dpytest.empty_queue()
        return worst <= rate and complete
    finally:
        discord.Message.edit = original_edit  # type: ignore[method-assign]
        discord.abc.Messageable.send = original_send  # type: ignore[method-assign]
        discord.Message.reply = original_reply  # type: ignore[method-assign]
        await rt.close()
        set_runtime(None)
        remove_containers(docker.from_env(), settings.vm_name_prefix)


async def token_cost(tmp: Path, fake: FakeOllama, runs: int) -> bool:
    print("2. bot-side cost per streamed token, 500-token reply", flush=True)
    settings = make_settings(tmp / "cost", fake.url, edits_per_5s=1_000_000)
    rt = Runtime(settings)
    set_runtime(rt)
    reply = "".join(f" tok{i % 10}" for i in range(500))
    try:
        bot = await start_bot(rt)
        config = dpytest.get_config()
        channel, member = config.channels[0], config.members[0]
        cog = bot.get_cog("Chat")
        engine_times, bot_times = [], []
        async with ChatSession(user="bench-engine", session="cost", runtime=rt) as engine_chat, \
                ChatSession(user=member.id, session=channel.id, runtime=rt) as bot_chat:
            message = await dpytest.message("warm-up without a mention", channel=channel, member=member)
            for i in range(runs + 3):
                fake.script(text(reply, chunk_size=5))
                started = time.perf_counter()
                async for _ in engine_chat.chat_stream(f"q{i}"):
                    pass
                engine = time.perf_counter() - started
                fake.script(text(reply, chunk_size=5))
                started = time.perf_counter()
                stream = await cog.respond(message, bot_chat, f"q{i}")
                handled = time.perf_counter() - started
                assert stream.messages and stream.text == reply
                if i >= 3:
                    engine_times.append(engine)
                    bot_times.append(handled)
        e, b = statistics.median(engine_times), statistics.median(bot_times)
        ratio = b / e
        print(f"  chat cog {b * 1000:.1f} ms ({b / 500 * 1e6:.0f} us/token) vs engine chat_stream "
              f"{e * 1000:.1f} ms ({e / 500 * 1e6:.0f} us/token), median of {runs}", flush=True)
        print(f"  ratio {ratio:.3f} (target <= 1.1) {'OK' if ratio <= 1.1 else 'MISSED'}", flush=True)
        await dpytest.empty_queue()
        return ratio <= 1.1
    finally:
        await rt.close()
        set_runtime(None)
        remove_containers(docker.from_env(), settings.vm_name_prefix)


async def main() -> int:
    parser = argparse.ArgumentParser(description="bot benchmarks")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the pacing run")
    parser.add_argument("--runs", type=int, default=20, help="repetitions of the cost run")
    args = parser.parse_args()
    patch_dpytest()
    with tempfile.TemporaryDirectory() as tmp, FakeOllama() as fake:
        try:
            ok_pacing = await pacing(Path(tmp), fake, args.seconds)
            ok_cost = await token_cost(Path(tmp), fake, args.runs)
        finally:
            unmount_under(Path(tmp))  # the sandboxes' /data disk images, before the folder goes
    return 0 if ok_pacing and ok_cost else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
