"""The preflight names each missing dependency in one line, and passes only when all are there."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from dotenv import find_dotenv

from core.config import Settings
from core.preflight import (check_database, check_docker, check_ollama, check_token, print_checks,
                            run_checks)
from tests.conftest import closed_port, TEST_IMAGE
from tests.fake_ollama import FakeOllama

pytestmark = pytest.mark.asyncio
TOKEN = base64.urlsafe_b64encode(b"123456789012345678").decode().rstrip("=") + ".GhJkLm." + "x" * 38



def good(tmp_path: Path, fake: FakeOllama) -> Settings:
    return Settings(discord_token=TOKEN, ollama_host=fake.url, vm_image=TEST_IMAGE,
                    database_url=f"sqlite:///{tmp_path}/chat.db")


async def test_all_pass_exits_zero(tmp_path: Path, fake_ollama: FakeOllama, docker_client) -> None:
    checks = await run_checks(good(tmp_path, fake_ollama))
    assert [c.name for c in checks] == ["token", "ollama", "docker", "database"]
    assert all(c.ok for c in checks), [c.line() for c in checks]
    out = io.StringIO()
    assert print_checks(checks, out) == 0
    assert TOKEN not in out.getvalue()


@pytest.mark.parametrize("token, words", [("", "DISCORD_TOKEN is not set"),
                                          ("not-a-token", "does not look like a bot token"),
                                          ("abc.def.ghi", "does not look like a bot token")])
async def test_token_missing_or_malformed(token: str, words: str) -> None:
    check = check_token(Settings(discord_token=token))
    assert not check.ok and words in check.message and (not token or token not in check.message)


async def test_ollama_unreachable(tmp_path: Path) -> None:
    check = await check_ollama(Settings(ollama_host=f"http://127.0.0.1:{closed_port()}"))
    assert not check.ok and "ollama serve" in check.message


async def test_model_not_pulled(fake_ollama: FakeOllama) -> None:
    fake_ollama.models = ["llama3.1:8b"]
    check = await check_ollama(Settings(ollama_host=fake_ollama.url, ollama_model="qwen3:8b"))
    assert not check.ok and "ollama pull qwen3:8b" in check.message and "llama3.1:8b" in check.message


async def test_model_without_tools(fake_ollama: FakeOllama) -> None:
    fake_ollama.capabilities["qwen3:8b"] = ["completion"]
    check = await check_ollama(Settings(ollama_host=fake_ollama.url))
    assert not check.ok and "cannot call tools" in check.message


async def test_docker_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{closed_port()}")
    check = await check_docker(Settings(vm_image=TEST_IMAGE))
    assert not check.ok and "dockerd" in check.message


async def test_image_missing_and_not_pullable(docker_client) -> None:
    check = await check_docker(Settings(vm_image="llmbot-no-such-image:never"))
    assert not check.ok and "docker pull llmbot-no-such-image:never" in check.message


async def test_database_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    check = check_database(Settings(database_url=f"sqlite:///{blocker}/chat.db"))
    assert not check.ok and "cannot write" in check.message
    check = check_database(Settings(database_url=f"postgresql://nobody:secret@127.0.0.1:{closed_port()}/x"))
    assert not check.ok and "secret" not in check.message and "***" in check.message


async def test_any_failure_exits_non_zero(tmp_path: Path, fake_ollama: FakeOllama, docker_client) -> None:
    checks = await run_checks(good(tmp_path, fake_ollama).replace(discord_token=""))
    assert print_checks(checks, io.StringIO()) == 1


async def test_docker_unreachable_suggests_chat_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{closed_port()}")
    check = await check_docker(Settings(vm_image=TEST_IMAGE))
    assert not check.ok and "TOOLS=off" in check.message and "\n" not in check.message


async def test_chat_only_needs_no_docker_and_no_tool_calling(tmp_path: Path, fake_ollama: FakeOllama,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """TOOLS=off (issue 19, item 2): every check passes on a machine with no Docker engine, with a model
    that cannot call tools."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker-here.sock")
    fake_ollama.capabilities["qwen3:8b"] = ["completion"]
    settings = good(tmp_path, fake_ollama)
    assert not (await check_docker(settings)).ok and not (await check_ollama(settings)).ok  # as they would be
    checks = await run_checks(settings.replace(tools=False))
    assert [c.name for c in checks] == ["token", "ollama", "docker", "database"]
    assert all(c.ok for c in checks), [c.line() for c in checks]
    assert checks[2].line() == "ok   docker   not needed: TOOLS=off (chat only: no commands, no sandboxes)"
    assert print_checks(checks, io.StringIO()) == 0


async def test_a_model_without_tools_is_refused_with_the_chat_only_way_out(fake_ollama: FakeOllama) -> None:
    fake_ollama.capabilities["qwen3:8b"] = ["completion"]
    check = await check_ollama(Settings(ollama_host=fake_ollama.url))
    assert not check.ok and check.message.endswith("(OLLAMA_MODEL), or set TOOLS=off to chat without commands")


async def test_the_token_line_never_points_to_a_missing_env_file() -> None:
    """Issue 19, item 4: before `cp .env.example .env` there is no .env to put the token in."""
    line = check_token(Settings(discord_token="")).message
    if find_dotenv():
        assert line.endswith("then put it in .env as DISCORD_TOKEN=...") and "cp " not in line
    else:
        assert line.endswith("then copy .env.example to .env (`cp .env.example .env`) and set DISCORD_TOKEN=... there")
    in_container = check_token(Settings(discord_token=""), container=True).message
    assert in_container.endswith("then put it in .env as DISCORD_TOKEN=... and run `docker compose up -d` again")
