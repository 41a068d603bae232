"""Configuration: defaults, parsing, and one clear line for a bad value."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_match_the_documented_ones() -> None:
    s = Settings.from_env({})
    assert s.ollama_host == "http://localhost:11434"
    assert s.vm_image == "python:3.11-slim"
    assert s.database_url == "sqlite:///data/chat.db"
    assert s.upload_dir == "data/uploads"
    assert s.vm_network is True


def test_values_are_parsed() -> None:
    s = Settings.from_env({
        "OLLAMA_HOST": "127.0.0.1:11500", "VM_NETWORK": "off", "VM_MEMORY": "1g", "VM_CPUS": "0.5",
        "HISTORY_WINDOW": "12", "ADMIN_USER_IDS": "1, 2 3", "OLLAMA_THINK": "true",
        "DATABASE_URL": "postgresql://u:p@127.0.0.1/db", "HISTORY_RETENTION_DAYS": "30", "DM_ACCESS": " Mutual",
    })
    assert s.ollama_host == "http://127.0.0.1:11500"
    assert s.vm_network is False and s.vm_memory == 1024 ** 3 and s.vm_cpus == 0.5
    assert s.history_window == 12 and s.admin_user_ids == {1, 2, 3} and s.ollama_think is True
    assert s.database_url.startswith("postgresql://")
    assert s.history_retention_days == 30 and s.dm_access == "mutual"
    assert (Settings.from_env({}).history_retention_days, Settings.from_env({}).dm_access) == (0, "refuse")


@pytest.mark.parametrize("env, names", [
    ({"VM_CPUS": "lots"}, "VM_CPUS"),
    ({"VM_NETWORK": "maybe"}, "VM_NETWORK"),
    ({"VM_MEMORY": "huge"}, "VM_MEMORY"),
    ({"HISTORY_WINDOW": "1"}, "HISTORY_WINDOW"),
    ({"DATABASE_URL": "chat.db"}, "DATABASE_URL"),
    ({"ADMIN_USER_IDS": "alice"}, "ADMIN_USER_IDS"),
    ({"COMMAND_TIMEOUT": "900", "COMMAND_TIMEOUT_MAX": "600"}, "COMMAND_TIMEOUT"),
    ({"DM_ACCESS": "open"}, "DM_ACCESS"),
    ({"HISTORY_RETENTION_DAYS": "-1"}, "HISTORY_RETENTION_DAYS"),
])
def test_bad_values_fail_with_one_line_naming_the_setting(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert names in message and "\n" not in message


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OLLAMA_MODEL=from-dotenv\nVM_IMAGE=from-dotenv\n")
    code = ("from core.config import Settings; s = Settings.from_env(); print(s.ollama_model, s.vm_image)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "VM_IMAGE": "from-env", "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.split() == ["from-dotenv", "from-env"]


def test_token_is_not_in_the_repr() -> None:
    s = Settings.from_env({"DISCORD_TOKEN": "secret-token-value"})
    assert "secret-token-value" not in repr(s)


def test_auto_reply_channel_ids_is_the_older_name_of_free_response_channel_ids() -> None:
    """Deployments that set AUTO_REPLY_CHANNEL_IDS keep answering there; both lists count."""
    assert Settings.from_env({"AUTO_REPLY_CHANNEL_IDS": "10, 11"}).free_response_channel_ids == {10, 11}
    assert Settings.from_env({"FREE_RESPONSE_CHANNEL_IDS": "12"}).free_response_channel_ids == {12}
    both = Settings.from_env({"AUTO_REPLY_CHANNEL_IDS": "10", "FREE_RESPONSE_CHANNEL_IDS": "12"})
    assert both.free_response_channel_ids == {10, 12}
    with pytest.raises(ConfigError, match="AUTO_REPLY_CHANNEL_IDS"):
        Settings.from_env({"AUTO_REPLY_CHANNEL_IDS": "#general"})
