"""Local smoke test: ask the model to run a shell command and print the streamed reply.

    python run.py                       # uses OLLAMA_HOST, OLLAMA_MODEL, VM_IMAGE, DATABASE_URL
    python run.py --prompt "..." --user me --session smoke

Exits non-zero with one line saying what to start when Ollama or Docker is missing.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from core import ChatSession, ConfigError, EngineError, Settings, get_runtime
from core.events import TextDelta, ToolFinished, ToolStarted
from core.preflight import run_checks

DEFAULT_PROMPT = "Use the execute_terminal tool to run `uname -a`, then tell me in one sentence what it printed."


async def smoke(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    failing = [check for check in await run_checks(settings, token=False) if not check.ok]
    for check in failing:  # the preflight's own line for each missing dependency, as the bot prints them
        print(check.message, file=sys.stderr)
    if failing:
        return 1
    rt = get_runtime(settings)
    try:
        async with ChatSession(user=args.user, session=args.session) as chat:
            print(f"> {args.prompt}", flush=True)
            async for event in chat.events(args.prompt):
                if isinstance(event, TextDelta):
                    print(event.text, end="", flush=True)
                elif isinstance(event, ToolStarted):
                    print(f"\n[running: {event.command}]", flush=True)
                elif isinstance(event, ToolFinished):
                    print(f"[exit code: {event.exit_code}]", flush=True)
        print(f"\n\n(saved as user {args.user!r}, session {args.session!r} in {settings.database_url})")
        return 0
    except EngineError as exc:
        return fail(str(exc))
    finally:
        await rt.close()


def fail(line: str) -> int:
    print(line, file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--user", default="smoke-test")
    parser.add_argument("--session", default="run.py")
    args = parser.parse_args()
    try:
        return asyncio.run(smoke(args))
    except ConfigError as exc:
        return fail(f"Bad configuration: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
