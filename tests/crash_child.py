"""A bot process that runs one turn and says when its command is running, so a test can SIGKILL it.

    TEST_SETTINGS=<base64 pickle of Settings> python -m tests.crash_child USER SESSION MESSAGE

Prints `running` once the model's command containing "sleep" has started.
"""
from __future__ import annotations

import asyncio
import base64
import os
import pickle
import subprocess
import sys
from pathlib import Path

from core import ChatSession, Runtime, Settings
from core.events import ToolStarted

ROOT = Path(__file__).resolve().parent.parent


def spawn(settings: Settings, user: str, session: str, message: str) -> subprocess.Popen[bytes]:
    """Start the child; read `running` from its stdout, then kill it."""
    env = {**os.environ, "TEST_SETTINGS": base64.b64encode(pickle.dumps(settings)).decode(), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.crash_child", user, session, message], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def main(user: str, session: str, message: str) -> None:
    rt = Runtime(pickle.loads(base64.b64decode(os.environ["TEST_SETTINGS"])))
    async with ChatSession(user=user, session=session, runtime=rt) as chat:
        async for event in chat.events(message):
            if isinstance(event, ToolStarted) and "sleep" in event.command:
                print("running", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
