"""Deployment files: .env.example documents every setting truthfully; the compose file validates."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from core.config import Settings
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[1]


class _Recorder(dict):
    """An environment that remembers every key Settings asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key, default=None):  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def test_env_example_lists_every_setting_with_its_default() -> None:
    recorder = _Recorder()
    Settings.from_env(recorder)
    example = dotenv_values(ROOT / ".env.example")
    assert set(example) == recorder.asked
    # The values shown are the real defaults (the token is the one thing to fill in).
    assert Settings.from_env({k: v or "" for k, v in example.items()}) == Settings()


def test_every_setting_has_a_one_line_meaning() -> None:
    """Each setting, or the group it stands in, sits right under a comment that explains it."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        if not line or line.startswith("#"):
            continue
        j = i - 1
        while j >= 0 and lines[j] and not lines[j].startswith("#"):
            j -= 1
        assert j >= 0 and lines[j].startswith("# ") and not lines[j].startswith("# ---"), f"no meaning for {line}"


def compose_config(cwd: Path = ROOT) -> dict:
    docker = shutil.which("docker")
    ok = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    require(None if ok else "needs the docker compose plugin (.ci/run installs it)")
    done = subprocess.run([docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
                          capture_output=True, text=True, cwd=cwd, env={"PATH": "/usr/bin:/bin:/usr/local/bin",
                                                                        "PWD": str(cwd)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("folder", ["project", "elsewhere"])
def test_compose_file_validates_and_wires_the_services(folder: str, tmp_path: Path) -> None:
    config = compose_config(ROOT if folder == "project" else tmp_path)
    services = config["services"]
    assert set(services) == {"ollama", "bot"}
    assert any(v["type"] == "volume" and v["target"] == "/root/.ollama" for v in services["ollama"]["volumes"])
    bot = services["bot"]
    assert bot["environment"]["OLLAMA_HOST"] == "http://ollama:11434"
    # nothing that depends on the caller's folder: the bot finds the host path of /app/data itself
    assert "VM_DATA_HOST_DIR" not in bot["environment"] and bot["environment"]["UPLOAD_DIR"] == "/app/data/uploads"
    sources = {v["target"]: v["source"] for v in bot["volumes"]}
    assert sources["/app/data"] == str(ROOT / "data") and sources["/var/run/docker.sock"] == "/var/run/docker.sock"
    # /data's disk images: mounted by the bot, seen by the host's engine (issue 16, item 5)
    data = next(v for v in bot["volumes"] if v["target"] == "/app/data")
    assert data["bind"]["propagation"] == "rshared" and bot["cap_add"] == ["SYS_ADMIN"]
    assert bot["devices"][0]["source"] == "/dev/loop-control" and bot["device_cgroup_rules"] == ["b 7:* rmw"]
    engine_files = next(v for v in bot["volumes"] if v["target"] == "/var/lib/docker")
    assert engine_files["read_only"] is True
    assert "ollama" in config["volumes"]


def test_dockerfile_runs_the_bot() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install -r requirements.txt" in text and '"-m", "bot.discord_bot"' in text
    for folder in ("core", "bot"):
        assert f"COPY {folder} " in text
