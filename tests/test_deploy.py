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


DEBIAN_COMPOSE = "/usr/bin/docker-compose"  # Debian 12's own (apt-get install docker-compose): 1.29
PLAIN_PATH = "/usr/bin:/bin:/usr/local/bin"


def project_copy(tmp_path: Path) -> Path:
    """The compose file in a checkout of its own, with the .env the quick start makes (cp .env.example .env)."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "docker-compose.yml", project)
    shutil.copy(ROOT / ".env.example", project / ".env")
    return project


def compose_config(project: Path, cwd: Path) -> dict:
    docker = shutil.which("docker")
    ok = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    require(None if ok else "needs the docker compose plugin (.ci/run installs it)")
    done = subprocess.run([docker, "compose", "-f", str(project / "docker-compose.yml"), "config", "--format", "json"],
                          capture_output=True, text=True, cwd=cwd, env={"PATH": PLAIN_PATH, "PWD": str(cwd)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("folder", ["project", "elsewhere"])
def test_compose_file_validates_and_wires_the_services(folder: str, tmp_path: Path) -> None:
    project = project_copy(tmp_path)
    config = compose_config(project, project if folder == "project" else tmp_path)
    services = config["services"]
    assert set(services) == {"ollama", "bot"}
    assert any(v["type"] == "volume" and v["target"] == "/root/.ollama" for v in services["ollama"]["volumes"])
    bot = services["bot"]
    assert bot["environment"]["OLLAMA_HOST"] == "http://ollama:11434"
    # nothing that depends on the caller's folder: the bot finds the host path of /app/data itself
    assert not bot["environment"].get("VM_DATA_HOST_DIR") and bot["environment"]["UPLOAD_DIR"] == "/app/data/uploads"
    sources = {v["target"]: v["source"] for v in bot["volumes"]}
    assert sources["/app/data"] == str(project / "data") and sources["/var/run/docker.sock"] == "/var/run/docker.sock"
    # /data's disk images: mounted by the bot, seen by the host's engine (issue 16, item 5)
    data = next(v for v in bot["volumes"] if v["target"] == "/app/data")
    assert data["bind"]["propagation"] == "rshared" and bot["cap_add"] == ["SYS_ADMIN"]
    assert bot["devices"][0]["source"] == "/dev/loop-control" and bot["device_cgroup_rules"] == ["b 7:* rmw"]
    engine_files = next(v for v in bot["volumes"] if v["target"] == "/var/lib/docker")
    assert engine_files["read_only"] is True
    assert "ollama" in config["volumes"]


def test_compose_file_works_with_debian_12s_own_docker_compose(tmp_path: Path) -> None:
    """Issue 19, item 3: Debian 12's docker-compose 1.29 reads the file as Compose v2 does, and without
    a .env both name the file the quick start makes."""
    version = subprocess.run([DEBIAN_COMPOSE, "version", "--short"], capture_output=True, text=True) \
        if Path(DEBIAN_COMPOSE).exists() else None
    require(None if version is not None and version.stdout.startswith("1.") else
            "needs Debian 12's docker-compose 1.29 at /usr/bin (apt-get install docker-compose; .ci/run installs it)")
    project = project_copy(tmp_path)

    def config(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DEBIAN_COMPOSE, "-f", str(project / "docker-compose.yml"), "config", *args],
                              capture_output=True, text=True, cwd=tmp_path, env={"PATH": PLAIN_PATH})

    done = config()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for line in ("      OLLAMA_HOST: http://ollama:11434", "      UPLOAD_DIR: /app/data/uploads",
                 "      DISCORD_TOKEN: ''", "        propagation: rshared", f"      source: {project / 'data'}",
                 "    - /var/run/docker.sock:/var/run/docker.sock:rw", "    - /var/lib/docker:/var/lib/docker:ro",
                 "    - b 7:* rmw", "    - SYS_ADMIN"):
        assert line in lines, f"{line!r} not in\n{done.stdout}"
    assert sorted(config("--services").stdout.split()) == ["bot", "ollama"]
    (project / ".env").unlink()
    done = config()
    assert done.returncode != 0 and done.stderr.strip() == f"Couldn't find env file: {project / '.env'}"


def test_readme_holds_the_two_commands_and_ci_runs_its_test_command() -> None:
    """Newcomers and CI read the same two commands; README's test command is the one .ci/run runs."""
    readme = (ROOT / "README.md").read_text()
    assert "| run the bot | `bash scripts/run` |" in readme and "| run the tests | `bash .ci/run` |" in readme
    ci = (ROOT / ".ci/run").read_text().rstrip().splitlines()
    assert ci[-2:] == ["# README's test command:", "python -m pytest -q"]
    assert "\n```\npython -m pytest -q\n```\n" in readme


def test_dockerfile_runs_the_bot() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install -r requirements.txt" in text and '"-m", "bot.discord_bot", "--wait-for-token"' in text
    for folder in ("core", "bot"):
        assert f"COPY {folder} " in text
