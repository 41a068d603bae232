"""Local smoke test: ask the model to run a shell command and print the streamed reply.

    python run.py                       # uses OLLAMA_HOST, OLLAMA_MODEL, VM_IMAGE, DATABASE_URL
    python run.py --prompt "..." --user me --session smoke
    python run.py --attach notes.txt    # a round trip: the file goes into /data, a file the model makes
                                        # comes back into ./received (--out DIR)

Exits non-zero with one line saying what to start when Ollama or Docker is missing.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from core import ChatSession, ConfigError, EngineError, Settings, get_runtime
from pathlib import Path

from core.attachments import compose
from core.events import FileReady, Notice, TextDelta, ToolFinished, ToolStarted
from core.preflight import run_checks
from core.uploads import human_size, safe_filename

DEFAULT_PROMPT = "Use the execute_terminal tool to run `uname -a`, then tell me in one sentence what it printed."
ATTACH_PROMPT = ("Use execute_terminal to write a short report on the file(s) I attached (size in bytes and the "
                 "first lines) to /data/report.txt, then send /data/report.txt back to me with send_file.")


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
            prompt = args.prompt or (ATTACH_PROMPT if args.attach else DEFAULT_PROMPT)
            saved = []
            for local in args.attach:
                path = chat.upload_document(local, overwrite=True)
                saved.append((path, Path(local).read_bytes()))
                print(f"[uploaded: {local} → {path}]", flush=True)
            prompt, pictures = compose(prompt, saved, settings.inline_text_max_bytes)
            print(f"> {args.prompt or (ATTACH_PROMPT if args.attach else DEFAULT_PROMPT)}", flush=True)
            async for event in chat.events(prompt, images=pictures):
                if isinstance(event, TextDelta):
                    print(event.text, end="", flush=True)
                elif isinstance(event, ToolStarted):
                    shown = event.command if event.name == "execute_terminal" else f"{event.name} {event.path}"
                    print(f"\n[running: {shown}]", flush=True)
                elif isinstance(event, ToolFinished):
                    print(f"[exit code: {event.exit_code}]", flush=True)
                elif isinstance(event, FileReady):
                    target = Path(args.out) / safe_filename(event.name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(event.data)
                    print(f"[file: {event.path} ({human_size(len(event.data))}) → {target}]", flush=True)
                elif isinstance(event, Notice):
                    print(f"[note: {event.text}]", flush=True)
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
    parser.add_argument("--prompt", default=None, help="what to ask (a default suits the other options)")
    parser.add_argument("--attach", action="append", default=[], metavar="PATH",
                        help="a local file to put in /data first (repeat for more)")
    parser.add_argument("--out", default="received", help="where files the model sends are written")
    parser.add_argument("--user", default="smoke-test")
    parser.add_argument("--session", default="run.py")
    args = parser.parse_args()
    missing = [path for path in args.attach if not Path(path).is_file()]
    if missing:
        return fail(f"--attach: no such file: {missing[0]}")
    try:
        return asyncio.run(smoke(args))
    except ConfigError as exc:
        return fail(f"Bad configuration: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
