"""README's run command on a fresh Debian 12 (issue 10, item 8), in chat-only mode with no Docker
there at all (issue 19, item 5), and the bot in a container finding where the host keeps its uploads.

A pristine debootstrap root (tests/images/fresh-debian.sh: no Python at all) is mounted under an
overlay, the project is copied in, and `bash scripts/run --check` runs there through chroot with
nothing of this machine on PATH: it must install python3-venv, make .venv with Debian's own
Python, install the requirements from PyPI, and run the preflight; with TOOLS=off, a token and an
Ollama (the fake one, on this machine's loopback), that preflight passes. The root that results is then
imported as an image and run as the bot's container: from inside, with only the Docker socket and
a bind mount of a host folder at /app/data, the bot must find that folder's host path and give a
real sandbox the file written there.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import docker
import pytest

from core.sandbox.docker.diskimage import unmount_under
from tests.conftest import TEST_IMAGE, remove_containers, require
from tests.fake_ollama import FakeOllama

ROOT = Path(__file__).resolve().parents[1]
FRESH_ROOT = Path(os.environ.get("FRESH_DEBIAN_ROOT", "/var/cache/llmbot/fresh-debian"))
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # this network's TLS may need this machine's CA
TOKEN = base64.urlsafe_b64encode(b"123456789012345678").decode().rstrip("=") + ".GhJkLm." + "f" * 38  # well-formed

PROBE = """
import asyncio, json, os
from core import Settings
from core.sandbox.docker import DockerProvider
from core.sandbox import Terminal

async def main():
    manager = DockerProvider(Settings(upload_dir="/app/data/uploads", vm_image={image!r}, vm_network=False,
                                        vm_name_prefix={prefix!r}, vm_disk=32 * 1024 ** 2))
    folder = await manager.prepare_data("alice", "general")
    (folder / "note.txt").write_text("written by the bot in its container")
    terminal = Terminal(manager)
    result = await terminal.execute("alice", "general", "cat /data/note.txt")
    filled = await terminal.execute("alice", "general", "dd if=/dev/zero of=/data/fill bs=1M count=100")
    print(json.dumps({{"host_root": manager.data_host_root, "seen": result.stdout, "exit": result.exit_code,
                      "hard": "No space left on device" in filled.stderr, "image": os.path.ismount(folder)}}))
    await manager.remove("alice", "general")
    await manager.close()

asyncio.run(main())
"""


def sh(*command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def fresh_debian(tmp_path: Path) -> Iterator[Path]:
    """A writable copy-on-write view of the pristine root, with the project in /src."""
    require(None if (FRESH_ROOT / "usr/bin/apt-get").exists() else
            f"needs a fresh Debian root at {FRESH_ROOT} (bash tests/images/fresh-debian.sh)")
    require(None if os.geteuid() == 0 else "needs root (overlay mount, chroot)")
    assert not (FRESH_ROOT / "usr/bin/python3").exists(), "the pristine root must not have Python yet"
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for folder in (upper, work, merged):
        folder.mkdir()
    mounted = sh("mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={FRESH_ROOT},upperdir={upper},workdir={work}", str(merged))
    assert mounted.returncode == 0, mounted.stderr
    try:
        files = sh("git", "ls-files", "-co", "--exclude-standard", cwd=ROOT).stdout.split()
        for name in files:
            if name.startswith("data/") or not (ROOT / name).is_file():
                continue
            (merged / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, merged / "src" / name)
        shutil.copy(Path("/etc/resolv.conf").resolve(), merged / "etc/resolv.conf")
        if HOST_CA.exists():
            (merged / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
            shutil.copy(HOST_CA, merged / "etc/ssl/certs/ci-host-ca.pem")
        assert sh("mount", "-t", "proc", "proc", str(merged / "proc")).returncode == 0
        yield merged
    finally:
        sh("umount", str(merged / "proc"))
        sh("umount", str(merged))


def test_readme_run_command_works_on_a_fresh_debian_and_the_bot_finds_its_uploads_in_a_container(
        fresh_debian: Path, docker_client: docker.DockerClient, tmp_path: Path, fake_ollama: FakeOllama) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "| run the bot | `bash scripts/run` |" in readme
    env = {"PATH": CLEAN_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    if HOST_CA.exists():
        env["PIP_CERT"] = "/etc/ssl/certs/ci-host-ca.pem"
    env.update({k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy", "no_proxy")})

    def check(**extra: str) -> subprocess.CompletedProcess[str]:
        return sh("chroot", str(fresh_debian), "/usr/bin/env", "-i",
                  *[f"{k}={v}" for k, v in {**env, **extra}.items()], "bash", "/src/scripts/run", "--check",
                  timeout=900)

    done = check()
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["FAIL", "token"], ["FAIL", "ollama"], ["FAIL", "docker"],
                                                    ["ok", "database"]], done.stdout + done.stderr
    assert done.returncode == 1  # no token: the preflight says so, in one line each
    assert "Traceback" not in done.stderr
    # no .env yet: the token's line says to make one; no Docker here: its line says how to get it, or do without
    assert lines[0].endswith("then copy .env.example to .env (`cp .env.example .env`) and set DISCORD_TOKEN=... there")
    assert lines[2].startswith("FAIL docker   Docker is not installed: install it (`sudo apt-get install docker.io`")
    assert lines[2].endswith("or set TOOLS=off to chat without commands (no Docker needed)")
    config = (fresh_debian / "src/.venv/pyvenv.cfg").read_text()
    assert "home = /usr/bin" in config, config  # Debian's own Python, not this machine's
    assert (fresh_debian / "usr/lib/python3.11/venv/__init__.py").exists()  # python3-venv was installed
    again = check()
    assert again.stdout == done.stdout and "Installing" not in again.stderr  # nothing installed twice

    # Chat only (issue 19, item 5): with a token and an Ollama, the same machine with no Docker passes.
    fake_ollama.capabilities["qwen3:8b"] = ["completion"]  # a model without tool calling will do
    chat_only = check(TOOLS="off", DISCORD_TOKEN=TOKEN, OLLAMA_HOST=fake_ollama.url)
    assert chat_only.returncode == 0, chat_only.stdout + chat_only.stderr
    assert chat_only.stdout.splitlines() == [
        "ok   token    DISCORD_TOKEN is present and well-formed",
        f"ok   ollama   {fake_ollama.url} has qwen3:8b",
        "ok   docker   not needed: TOOLS=off (chat only: no commands, no sandboxes)",
        "ok   database sqlite:///data/chat.db is writable",
    ]
    assert not (fresh_debian / "usr/bin/dockerd").exists() and not (fresh_debian / "run/docker.sock").exists()

    # The same root as the bot's container: only the socket and a host folder at /app/data.
    image = f"llmbot-fresh-{uuid.uuid4().hex[:8]}"
    prefix = f"llmt{uuid.uuid4().hex[:8]}"
    hostdata = tmp_path / "hostdata"
    hostdata.mkdir()
    sh("umount", str(fresh_debian / "proc"))
    imported = subprocess.run(f"tar -C {fresh_debian} -cf - . | docker import - {image}", shell=True,
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    # As docker-compose.yml runs it: mount rights and loop devices, /app/data bound rshared from a
    # shared host mount, so the /data images the bot mounts reach the engine (issue 16, item 5).
    assert sh("mount", "--bind", str(hostdata), str(hostdata)).returncode == 0
    assert sh("mount", "--make-rshared", str(hostdata)).returncode == 0
    try:
        probe = tmp_path / "probe.py"
        probe.write_text(PROBE.format(image=TEST_IMAGE, prefix=prefix))
        output = docker_client.containers.run(
            image, ["/src/.venv/bin/python", "/probe.py"], working_dir="/src", environment={"PYTHONPATH": "/src"},
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                     str(hostdata): {"bind": "/app/data", "mode": "rw,rshared"},
                     "/var/lib/docker": {"bind": "/var/lib/docker", "mode": "ro"},
                     "/sys/fs/ext4": {"bind": "/sys/fs/ext4", "mode": "rw"},
                     str(probe): {"bind": "/probe.py", "mode": "ro"}},
            cap_add=["SYS_ADMIN"], security_opt=["apparmor:unconfined"], devices=["/dev/loop-control"],
            device_cgroup_rules=["b 7:* rmw"], remove=True, stderr=True)
        result = json.loads(output.decode().strip().splitlines()[-1])
        assert result == {"host_root": f"{hostdata}/uploads", "seen": "written by the bot in its container",
                          "exit": 0, "hard": True, "image": True}
        # the bot removed its sandbox: its image is unmounted, on the host too
        assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                    if f"{hostdata}/uploads/" in line]
    finally:
        remove_containers(docker_client, prefix)
        docker_client.images.remove(image, force=True)
        unmount_under(hostdata)
        sh("umount", "-l", str(hostdata))
