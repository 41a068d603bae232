"""Their data on request (issue 17, item 5), in the engine: forget_person, export_person and
HISTORY_RETENTION_DAYS against the real store and the real Docker engine (containers gone, /data
gone, disk images unmounted; the audit kept with its command text removed)."""
from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import random
import string
from pathlib import Path
from typing import Any

import docker
import pytest

from core import ChatSession, ExportTooLarge, Place, Reach, Runtime, Scope, Settings
from core.registry import Phase
from core.store import Message, Session, User
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, command_agent, text, tool_calls
from tests.leaks import read_mounts
from tests.test_concurrency import wait_until

pytestmark = pytest.mark.asyncio


@pytest.fixture
def settings(tmp_path: Path, fake_ollama: FakeOllama) -> Settings:
    """Room for one person's four sandboxes at once (no eviction in the middle of a test)."""
    return make_settings(tmp_path, fake_ollama.url, max_sandboxes_per_user=6)


async def talk(runtime: Runtime, user: str, session: str, server: str | None, message: str) -> ChatSession:
    """One turn of `user` in `session` of `server` (None: a DM); the fake model runs `message` as a command."""
    async with ChatSession(user=user, session=session, place=Place(channel=session, server=server),
                           runtime=runtime) as chat:
        async for _ in chat.events(message):
            pass
    return chat


def containers(docker_client: docker.DockerClient, runtime: Runtime, user: str) -> list[Any]:
    return docker_client.containers.list(all=True, filters={"label": [f"llmbot.app={runtime.settings.vm_name_prefix}",
                                                                      f"llmbot.user={user}"]})


def mounts_below(folder: Path) -> list[str]:
    prefix = str(folder.resolve())
    return [m for m in read_mounts(Path("/proc/self/mountinfo").read_text()) if m.startswith(prefix)]


def conversations(runtime: Runtime, user: str) -> dict[str, list[str]]:
    """Every stored message of a person, by channel."""
    return {info.session: [m.content for m in runtime.history.messages(info.id)]
            for info in runtime.history.list_sessions(user)}


async def test_forget_everywhere_deletes_everything_but_the_audit(runtime: Runtime, fake_ollama: FakeOllama,
                                                                  docker_client: docker.DockerClient) -> None:
    fake_ollama.fallback = command_agent
    for session, server in (("c1", "1"), ("c2", "2"), ("d1", None)):
        await talk(runtime, "alice", session, server, f"echo {session} > /data/{session}.txt")
    runtime.history.save_summary(runtime.history.find_session("alice", "c1"), 1, "alice asked for c1")
    await runtime.terminal.execute("alice", "orphan", "echo left > /data/o.txt")  # a sandbox no conversation names
    await talk(runtime, "bob", "c1", "1", "echo bob > /data/bob.txt")
    kept_output = runtime.outputs.keep(("alice", "c1"), b"a long output")
    await runtime.places.set(Scope.server(1), by="alice", prompt="Be brief.")
    root = runtime.sandboxes.user_root("alice")
    assert len(containers(docker_client, runtime, "alice")) == 4 and mounts_below(root)

    forgotten = await runtime.forget_person("alice", Reach.everything())

    assert (forgotten.conversations, forgotten.messages, forgotten.sandboxes, forgotten.folders, forgotten.settings,
            forgotten.audit_rows_kept) == (3, 12, 4, 4, 1, 3)
    assert conversations(runtime, "alice") == {} and User.select().where(User.key == "alice").count() == 0
    assert containers(docker_client, runtime, "alice") == []
    assert not root.exists() and mounts_below(root) == []
    assert runtime.outputs.get(kept_output, ("alice", "c1")) is None
    assert (await runtime.places.own(Scope.server(1))).updated_by == ""
    rows = runtime.store.audit.latest("alice")
    assert {r.command for r in rows} == {""}
    assert sorted((r.session, r.server or "", r.exit_code) for r in rows) == [("c1", "1", 0), ("c2", "2", 0),
                                                                              ("d1", "", 0)]
    # bob keeps everything
    assert conversations(runtime, "bob")["c1"][0] == "echo bob > /data/bob.txt"
    assert [c.status for c in containers(docker_client, runtime, "bob")] == ["running"]
    assert (runtime.sandboxes.data_dir("bob", "c1") / "bob.txt").read_text() == "bob\n"
    assert [r.command for r in runtime.store.audit.latest("bob")] == ["echo bob > /data/bob.txt"]
    # coming back starts afresh
    await talk(runtime, "alice", "c1", "1", "ls -A /data")
    assert conversations(runtime, "alice")["c1"][-1] == "result: exit code: 0"


async def test_forget_within_a_server_leaves_other_servers_and_dms(runtime: Runtime, fake_ollama: FakeOllama,
                                                                   docker_client: docker.DockerClient) -> None:
    fake_ollama.fallback = command_agent
    for session, server in (("c1", "1"), ("t1", "1"), ("c2", "2"), ("d1", None)):
        await talk(runtime, "alice", session, server, f"echo {session} > /data/{session}.txt")
    await runtime.places.set(Scope.channel("t1"), by="alice", model="qwen3:8b")
    await runtime.places.set(Scope.server(2), by="alice", prompt="Be kind.")

    forgotten = await runtime.forget_person("alice", Reach.within(1), channels=["c1", "t1"])

    assert (forgotten.conversations, forgotten.sandboxes, forgotten.folders, forgotten.settings,
            forgotten.audit_rows_kept) == (2, 2, 2, 1, 2)
    assert sorted(conversations(runtime, "alice")) == ["c2", "d1"]
    assert sorted(c.labels["llmbot.session"] for c in containers(docker_client, runtime, "alice")) == ["c2", "d1"]
    assert not runtime.sandboxes.data_dir("alice", "c1").exists()
    assert (runtime.sandboxes.data_dir("alice", "c2") / "c2.txt").read_text() == "c2\n"
    assert mounts_below(runtime.sandboxes.data_dir("alice", "c1")) == []
    assert {r.session: r.command for r in runtime.store.audit.latest("alice")} == {
        "c1": "", "t1": "", "c2": "echo c2 > /data/c2.txt", "d1": "echo d1 > /data/d1.txt"}
    assert (await runtime.places.own(Scope.channel("t1"))).updated_by == ""
    assert (await runtime.places.own(Scope.server(2))).updated_by == "alice"


async def test_forget_stops_a_running_reply_first(runtime: Runtime, fake_ollama: FakeOllama,
                                                  docker_client: docker.DockerClient) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "sleep 30"})), text("never said"))

    async def long_turn() -> list[Any]:
        async with ChatSession(user="alice", session="c1", place=Place(channel="c1", server="1"),
                               runtime=runtime) as chat:
            return [event async for event in chat.events("wait a while")]

    turn = asyncio.create_task(long_turn())
    await wait_until(lambda: runtime.registry.phase(("alice", "c1")) is Phase.TOOL)
    forgotten = await runtime.forget_person("alice", Reach.everything())
    await asyncio.wait_for(turn, 10)  # the turn ended (cancelled), well before its command would have
    assert runtime.registry.phase(("alice", "c1")) is None
    assert forgotten.conversations == 1 and forgotten.sandboxes == 1
    assert Session.select().count() == 0 and Message.select().count() == 0  # its partial rows went too
    assert containers(docker_client, runtime, "alice") == []
    assert [(r.command, r.cancelled) for r in runtime.store.audit.latest("alice")] == [("", True)]


def noise(rng: random.Random, size: int) -> str:
    """Text that compresses like prose (a little), not like repetition."""
    return "".join(rng.choice(string.ascii_letters + "      ") for _ in range(size))


async def test_export_holds_every_conversation_and_message(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.fallback = command_agent
    await talk(runtime, "alice", "c1", "1", "echo hi")
    await talk(runtime, "alice", "d1", None, "echo private")
    runtime.history.save_summary(runtime.history.find_session("alice", "d1"), 1, "they said hi")
    await talk(runtime, "bob", "c1", "1", "echo bob")

    [(name, data)] = await runtime.export_person("alice", 10 * 1024 ** 2)

    assert name == "conversations-alice.json"
    exported = json.loads(data)
    assert (exported["format"], exported["user"], exported["part"], exported["parts"]) == ("llmbot-export-1", "alice",
                                                                                         1, 1)
    first, second = exported["conversations"]
    assert (first["server"], first["channel"], first["summary"]) == ("1", "c1", None)
    assert (second["server"], second["channel"], second["summary"]) == (None, "d1", "they said hi")
    assert first["created"].endswith("Z") and first["last_active"] >= first["created"]
    assert [(m["role"], m["content"], m["tool_calls"], m["tool_name"]) for m in first["messages"]] == [
        ("user", "echo hi", None, None),
        ("assistant", "", [{"function": {"name": "execute_terminal", "arguments": {"command": "echo hi"}}}], None),
        ("tool", first["messages"][2]["content"], None, "execute_terminal"),
        ("assistant", "result: exit code: 0", None, None)]
    assert "hi" in first["messages"][2]["content"] and all(m["time"].endswith("Z") for m in first["messages"])
    assert "bob" not in data.decode()
    assert await runtime.export_person("nobody", 10 * 1024 ** 2) == []


async def test_a_large_export_is_gzipped_then_split_into_whole_documents(runtime: Runtime) -> None:
    rng = random.Random(17)
    history = runtime.history
    sent: dict[str, list[str]] = {}
    for session, count in (("small", 5), ("long", 600)):
        sid = history.open_session("alice", session, "1")
        sent[session] = [noise(rng, 400) for _ in range(count)]
        history.add_messages(sid, [{"role": "user", "content": c} for c in sent[session]])

    whole = len((await runtime.export_person("alice", 10 ** 9))[0][1])
    [(name, packed)] = await runtime.export_person("alice", whole - 1)
    assert name == "conversations-alice.json.gz" and len(packed) < whole
    assert len(json.loads(gzip.decompress(packed))["conversations"]) == 2

    limit = len(packed) // 3
    files = await runtime.export_person("alice", limit)
    assert len(files) >= 3 and all(len(data) <= limit for _, data in files)
    assert [name for name, _ in files] == [f"conversations-alice-part{n}of{len(files)}.json.gz"
                                           for n in range(1, len(files) + 1)]
    received: dict[str, list[str]] = {}
    for n, (_, data) in enumerate(files, 1):
        document = json.loads(gzip.decompress(data))  # each part is a whole document
        assert (document["part"], document["parts"]) == (n, len(files))
        for conversation in document["conversations"]:
            received.setdefault(conversation["channel"], []).extend(m["content"] for m in conversation["messages"])
    assert received == sent

    with pytest.raises(ExportTooLarge):
        await runtime.export_person("alice", limit, max_files=2)


async def test_history_retention_deletes_conversations_unused_that_long(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    fake_ollama.fallback = command_agent
    async with open_runtime(make_settings(tmp_path, fake_ollama.url, history_retention_days=7),
                            docker_client) as runtime:
        for session in ("old", "busy", "today"):
            await talk(runtime, "alice", session, "1", f"echo {session} > /data/f.txt")
        runtime.history.open_session("alice", "old-empty", "1")
        long_ago = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(days=8)
        Session.update(last_active=long_ago).where(Session.key.in_(["old", "busy", "old-empty"])).execute()
        Message.update(created_at=long_ago).where(
            Message.session.in_(Session.select(Session.id).where(Session.key.in_(["old", "busy"])))).execute()
        old_folder = runtime.sandboxes.data_dir("alice", "old")

        async with runtime.sandboxes.get("alice", "busy").in_use():  # at work right now: never swept
            swept = await runtime.background.retention_pass()

        assert swept.conversations == 2
        assert sorted(conversations(runtime, "alice")) == ["busy", "today"]
        assert conversations(runtime, "alice")["today"][0] == "echo today > /data/f.txt"
        assert sorted(c.labels["llmbot.session"] for c in containers(docker_client, runtime, "alice")) == \
            ["busy", "today"]
        assert not old_folder.exists() and mounts_below(old_folder) == []
        assert runtime.sandboxes.data_dir("alice", "busy").exists()
        assert {r.session: r.command for r in runtime.store.audit.latest("alice")}["old"] == "echo old > /data/f.txt"
        # once no longer at work, the other old one goes too; the one used today stays
        assert (await runtime.background.retention_pass()).conversations == 1
        assert sorted(conversations(runtime, "alice")) == ["today"]
