"""`python -m bot.discord_bot`: preflight, exit codes and one clear line, no secrets in output or logs."""
from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from pathlib import Path

import discord
import discord.ext.test as dpytest
import pytest

from bot import discord_bot
from core import Runtime
from tests.bot.conftest import start_bot
from tests.conftest import TEST_IMAGE
from tests.fake_ollama import FakeOllama, text

ROOT = Path(__file__).resolve().parents[2]
TOKEN = base64.urlsafe_b64encode(b"123456789012345678").decode().rstrip("=") + ".GhJkLm." + "s" * 38


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "DISCORD_", "VM_", "DATABASE_"))}
    base.update({"DATABASE_URL": f"sqlite:///{tmp_path}/chat.db", "VM_IMAGE": TEST_IMAGE}, **env)
    return subprocess.run([sys.executable, "-m", "bot.discord_bot", *args], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=60)


def test_check_passes_when_everything_is_there(tmp_path: Path, fake_ollama: FakeOllama, docker_client) -> None:
    done = run(tmp_path, "--check", DISCORD_TOKEN=TOKEN, OLLAMA_HOST=fake_ollama.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split()[1] for line in done.stdout.splitlines()] == ["token", "ollama", "docker", "database"]
    assert TOKEN not in done.stdout + done.stderr
    assert done.stderr == ""  # no third-party request lines around the results


def test_check_names_what_is_missing(tmp_path: Path) -> None:
    done = run(tmp_path, "--check", OLLAMA_HOST="http://127.0.0.1:9")
    assert done.returncode == 1
    failing = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert any("DISCORD_TOKEN is not set" in line for line in failing)
    assert any("ollama serve" in line for line in failing)


def test_missing_token_exits_with_one_line(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    done = run(tmp_path, OLLAMA_HOST=fake_ollama.url)
    assert done.returncode == 1
    errors = [l for l in done.stderr.splitlines() if "WARNING" not in l and "INFO" not in l]
    assert len(errors) == 1 and "DISCORD_TOKEN is not set" in errors[0]
    assert "Traceback" not in done.stderr


def test_bad_configuration_exits_with_one_line(tmp_path: Path) -> None:
    done = run(tmp_path, VM_MEMORY="lots")
    assert done.returncode == 2 and done.stderr.strip() == "Bad configuration: VM_MEMORY must be a size like 512m or 2g, got 'lots'"


def test_log_level_option_is_validated(tmp_path: Path) -> None:
    done = run(tmp_path, "--log-level", "LOUD")
    assert done.returncode == 2 and "--log-level" in done.stderr


def test_a_rejected_token_exits_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                              tmp_path: Path, fake_ollama: FakeOllama) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("OLLAMA_HOST", fake_ollama.url)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/chat.db")

    def rejected(self, token, **kwargs):  # type: ignore[no-untyped-def]
        raise discord.LoginFailure("Improper token has been passed.")  # what discord.py raises on a 401

    monkeypatch.setattr(discord_bot.LLMBot, "run", rejected)
    handlers = list(logging.getLogger().handlers)
    try:
        assert discord_bot.main([]) == 1
    finally:  # main() sets up logging for the process: leave none of it to later tests
        logging.getLogger().handlers[:] = handlers
    err = capsys.readouterr().err
    assert "Discord rejected DISCORD_TOKEN" in err and TOKEN not in err


@pytest.mark.asyncio
async def test_info_logs_carry_no_message_content_or_token(runtime: Runtime, fake_ollama: FakeOllama,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    runtime.settings = runtime.settings.replace(discord_token=TOKEN)
    bot = await start_bot(runtime)
    fake_ollama.script(text("a private answer"), text("ok"))
    caplog.set_level(logging.INFO)
    channel = dpytest.get_config().channels[0]
    await dpytest.message(f"<@{bot.user.id}> my secret diary entry", channel=channel)
    fake_ollama.stop()
    await dpytest.message(f"<@{bot.user.id}> another secret line", channel=channel)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Ollama problem: Ollama is not reachable" in logged  # failures are logged...
    for secret in ("secret diary", "another secret", "a private answer", TOKEN):
        assert secret not in logged  # ...but never what people wrote, nor the token
    await dpytest.empty_queue()
