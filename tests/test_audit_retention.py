"""Every command is audited apart from the conversation; old audit rows and old /data folders go."""
from __future__ import annotations

import datetime
from pathlib import Path

import docker
import pytest

from core import ChatSession, Runtime
from core.store import Audit, Session
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, command_agent

pytestmark = pytest.mark.asyncio


async def turn(chat: ChatSession, message: str) -> None:
    async for _ in chat.events(message):
        pass


async def test_every_command_is_audited_and_reset_keeps_the_audit(tmp_path: Path, fake_ollama: FakeOllama,
                                                                  docker_client: docker.DockerClient) -> None:
    fake_ollama.fallback = command_agent
    async with open_runtime(make_settings(tmp_path, fake_ollama.url, command_timeout=1), docker_client) as runtime:
        async with ChatSession(user="alice", session="chan", runtime=runtime) as chat:
            await turn(chat, "echo hello; exit 3")
            await turn(chat, "sleep 30")
            assert await chat.reset() == 8
        rows = runtime.store.audit.latest("alice", "chan")
        assert runtime.store.audit.latest("bob") == []
    assert [(r.command, r.exit_code, r.output_bytes, r.timed_out, r.cancelled) for r in rows] == [
        ("sleep 30", 137, 0, True, False), ("echo hello; exit 3", 3, 6, False, False)]
    assert 0.9 < rows[0].duration < 5 and rows[1].duration < 2


async def test_retention_drops_old_audit_rows_and_unused_data_folders(runtime: Runtime) -> None:
    history, audit = runtime.store.history, runtime.store.audit
    audit.add("alice", "old", "true", exit_code=0, duration=0.1, output_bytes=0)
    audit.add("alice", "new", "true", exit_code=0, duration=0.1, output_bytes=0)
    long_ago = datetime.datetime.now() - datetime.timedelta(days=runtime.settings.audit_retention_days + 1)
    Audit.update(created_at=long_ago).where(Audit.session == "old").execute()

    for session in ("stale", "fresh", "busy"):
        history.open_session("alice", session)
        await runtime.terminal.execute("alice", session, f"echo {session} > /data/file.txt")
    unused = datetime.datetime.now() - datetime.timedelta(days=runtime.settings.data_retention_days + 1)
    Session.update(last_active=unused).where(Session.key.in_(["stale", "busy"])).execute()
    folders = {s: runtime.sandboxes.data_dir("alice", s) for s in ("stale", "fresh", "busy")}

    async with runtime.sandboxes.get("alice", "busy").in_use():  # a command is running there right now
        swept = await runtime.background.retention_pass()
    assert swept.audit_rows == 1 and [r.session for r in audit.latest()] == ["new"]
    assert swept.folders == [str(folders["stale"])] and swept.conversations == 0  # HISTORY_RETENTION_DAYS is off
    assert not folders["stale"].exists() and folders["fresh"].exists() and folders["busy"].exists()
    # the conversation itself stays; coming back starts with an empty /data
    assert (await runtime.terminal.execute("alice", "stale", "ls -A /data")).stdout == ""
