"""`python -m bot.discord_bot`: preflight, exit codes and one clear line, no secrets in output or logs."""
from __future__ import annotations

import base64
import logging
import os
import signal
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


def test_check_passes_in_chat_only_mode_with_no_docker(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    """TOOLS=off (issue 19, item 2): no engine anywhere, a model without tool calling, and every line ok."""
    fake_ollama.capabilities["qwen3:8b"] = ["completion"]
    done = run(tmp_path, "--check", DISCORD_TOKEN=TOKEN, OLLAMA_HOST=fake_ollama.url, TOOLS="off",
               DOCKER_HOST=f"unix://{tmp_path}/no-docker-here.sock")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[2] == "ok   docker   not needed: TOOLS=off (chat only: no commands, no sandboxes)"


def test_in_its_container_a_missing_token_is_said_once_and_the_bot_waits(tmp_path: Path,
                                                                          fake_ollama: FakeOllama) -> None:
    """Issue 19, item 3: with `restart: unless-stopped`, exiting would only say the same line forever."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "DISCORD_", "VM_", "DATABASE_"))}
    base.update({"DATABASE_URL": f"sqlite:///{tmp_path}/chat.db", "OLLAMA_HOST": fake_ollama.url, "TOOLS": "off"})
    bot = subprocess.Popen([sys.executable, "-m", "bot.discord_bot", "--wait-for-token"], cwd=ROOT, env=base,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = bot.stderr.readline()  # the bot flushes its one line, then waits
        assert line.startswith("DISCORD_TOKEN is not set: ") and "`docker compose up -d` again; waiting" in line
        with pytest.raises(subprocess.TimeoutExpired):
            bot.wait(timeout=3)  # still there: not exited, so not restarted
        bot.send_signal(signal.SIGTERM)  # docker stop
        assert bot.wait(timeout=30) == 0
        out, err = bot.communicate()
        assert out == "" and err == ""  # nothing after the one line
    finally:
        if bot.poll() is None:
            bot.kill()
            bot.wait()


@pytest.mark.asyncio
async def test_the_ready_line_prints_the_invite_url(runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 19, item 4: the operator's next step is inviting the bot; the ready line says how."""
    bot = await start_bot(runtime)
    caplog.set_level(logging.INFO, logger="bot.discord_bot")
    await bot.on_ready()
    [ready] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ready as ")]
    url = (f"https://discord.com/oauth2/authorize?client_id={bot.user.id}&scope=bot+applications.commands"
           f"&permissions={discord_bot.PERMISSIONS.value}")
    assert ready.endswith(f"; invite: {url}")
    permissions = discord_bot.PERMISSIONS
    assert permissions.send_messages and permissions.send_messages_in_threads and permissions.attach_files
    assert permissions.read_message_history and permissions.add_reactions and permissions.create_public_threads
    assert not permissions.administrator and not permissions.manage_messages and not permissions.mention_everyone
    readme = (ROOT / "README.md").read_text()
    assert "&permissions=" + str(permissions.value) in readme  # the quick start's link asks for the same
    await dpytest.empty_queue()
