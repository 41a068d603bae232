"""Local smoke test: ask the model to run a shell command and print the streamed reply.

    python run.py                       # uses OLLAMA_HOST, OLLAMA_MODEL, VM_IMAGE, DATABASE_URL (or, with
                                        # MODEL_API=openai, OPENAI_BASE_URL and OPENAI_MODEL)
    python run.py --prompt "..." --user me --session smoke
    python run.py --attach notes.txt    # a round trip: the file goes into /data, a file the model makes
                                        # comes back into ./received (--out DIR); then the conversation's
                                        # sandbox and /data are removed (its history stays)

Exits non-zero with one line saying what to start when the model server or Docker is missing, and when the
round trip's file did not come back. With TOOLS=off (chat only) no Docker is needed: the model is
asked to answer, and about an attached file to say what it holds (quoted to it), with no file back.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from pathlib import Path
from typing import Any

from core import (ChatSession, ConfigError, EngineError, FileReady, Reply, Settings, ToolLine, compose, get_runtime,
                  run_checks)
from core.sizes import human_size
from core.uploads import safe_filename

DEFAULT_PROMPT = "Use the execute_terminal tool to run `uname -a`, then tell me in one sentence what it printed."
ATTACH_PROMPT = ("Use execute_terminal to write a short report on the file(s) I attached (size in bytes and the "
                 "first lines) to /data/report.txt, then send /data/report.txt back to me with send_file.")
CHAT_PROMPT = "Say hello, then tell me in one sentence what you can do."  # chat only (TOOLS=off)
CHAT_ATTACH_PROMPT = "Tell me in two sentences what the file(s) I attached hold."
NOTHING_BACK = "No file came back: the model did not send one (its answer is above)."


def default_prompt(settings: Settings, attach: bool) -> str:
    """What run.py asks when --prompt does not say: a command (and with --attach, a file sent back),
    or in chat-only mode a plain answer."""
    if settings.tools:
        return ATTACH_PROMPT if attach else DEFAULT_PROMPT
    return CHAT_ATTACH_PROMPT if attach else CHAT_PROMPT


class Printed(Reply):
    """The reply the bot would show (core/render.py), printed as it grows: the text as it streams, a
    line per command when it starts and when it ends, notices and waits for the model as they come;
    files saved under `out`."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def add_text(self, text: str) -> None:
        super().add_text(text)
        print(text, end="", flush=True)

    def add_line(self, line: str) -> None:
        super().add_line(line)
        print(f"\n{line}", flush=True)

    def tool_started(self, command: str, kind: str = "command") -> None:
        super().tool_started(command, kind)
        print(f"\n[{'running' if kind == 'command' else 'sending'}: {command}]", flush=True)

    def model_queued(self, ahead: int) -> None:
        super().model_queued(ahead)
        if self.model_wait is not None:  # while the model serves others (MAX_MODEL_REQUESTS)
            print(f"\n{self.model_wait.text}", flush=True)

    def tool_finished(self, **outcome: Any) -> ToolLine | None:
        tool = super().tool_finished(**outcome)
        if tool is not None and tool.kind == "command":
            print(tool.line(), flush=True)
        return tool

    def add_file(self, file: FileReady) -> None:
        super().add_file(file)
        target = self.out / safe_filename(file.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.data)
        print(f"[file: {file.path} ({human_size(len(file.data))}) → {target}]", flush=True)


async def smoke(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    failing = [check for check in await run_checks(settings, token=False, other_server=False) if not check.ok]
    for check in failing:  # the preflight's own line for each missing dependency, as the bot prints them
        print(check.message, file=sys.stderr)
    if failing:
        return 1
    rt = get_runtime(settings)
    asked = args.prompt or default_prompt(settings, bool(args.attach))
    try:
        async with ChatSession(user=args.user, session=args.session) as chat:
            try:
                saved = []
                for local in args.attach:
                    path = chat.upload_document(local, overwrite=True)
                    saved.append((path, Path(local).read_bytes()))
                    print(f"[uploaded: {local} → {path}]", flush=True)
                prompt, pictures = compose(asked, saved, settings.inline_text_max_bytes, commands=settings.tools)
                print(f"> {asked}", flush=True)
                reply = Printed(Path(args.out))
                async for event in chat.events(prompt, images=pictures):
                    reply.apply(event)
            finally:
                if args.attach:  # what the round trip made: the uploads, the sandbox, what the model wrote
                    await chat.remove_sandbox(delete_files=True)
                    print(f"\n[removed the sandbox and /data of user {args.user!r}, session {args.session!r}]",
                          flush=True)
        print(f"\n(saved as user {args.user!r}, session {args.session!r} in {settings.database_url})")
        if args.attach and not reply.files:
            if args.prompt is None and settings.tools:  # the round trip asked for a file and none came
                return fail(NOTHING_BACK)
            print("[no file came back]")
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
                        help="a local file to put in /data first (repeat for more); afterwards the conversation's "
                             "sandbox and /data are removed, its history kept")
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
