"""run.py, the local smoke test, as a user runs it: a real process, real Docker, fake Ollama."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import docker

from core.store import Store
from tests.conftest import closed_port, TEST_IMAGE, remove_containers
from tests.fake_ollama import FakeOllama, text, tool_calls

ROOT = Path(__file__).resolve().parents[1]


def run_env(tmp_path: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in {"OLLAMA_HOST", "DATABASE_URL", "VM_IMAGE"}}
    base.update({"DATABASE_URL": f"sqlite:///{tmp_path}/chat.db", "UPLOAD_DIR": str(tmp_path / "uploads"),
                 "VM_IMAGE": TEST_IMAGE}, **env)
    return base


def run_py(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run.py")], cwd=tmp_path, env=run_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=120)



def test_run_py_streams_a_command_result_and_stores_the_conversation(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    prefix = f"llmt{uuid.uuid4().hex[:8]}"
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "uname -s"})),
                       lambda request: text(f"It printed {request['messages'][-1]['content'].split()[-1]}."))
    try:
        done = run_py(tmp_path, OLLAMA_HOST=fake_ollama.url, VM_NAME_PREFIX=prefix)
    finally:
        remove_containers(docker_client, prefix)
    assert done.returncode == 0, done.stderr
    assert "[running: uname -s]" in done.stdout and "It printed Linux." in done.stdout
    store = Store(f"sqlite:///{tmp_path}/chat.db")
    sid = store.history.find_session("smoke-test", "run.py")
    assert sid is not None
    assert [m.role for m in store.history.messages(sid)] == ["user", "assistant", "tool", "assistant"]
    store.close()


def test_run_py_without_ollama_says_what_to_start(tmp_path: Path) -> None:
    done = run_py(tmp_path, OLLAMA_HOST=f"http://127.0.0.1:{closed_port()}")
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "ollama serve" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_run_py_without_the_model_says_what_to_pull(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    fake_ollama.models = ["llama3.1:8b"]
    done = run_py(tmp_path, OLLAMA_HOST=fake_ollama.url)
    assert done.returncode != 0 and "ollama pull qwen3:8b" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_run_py_without_docker_says_what_to_start(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    done = run_py(tmp_path, OLLAMA_HOST=fake_ollama.url, DOCKER_HOST=f"tcp://127.0.0.1:{closed_port()}")
    assert done.returncode != 0 and "Docker is not reachable" in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr


def test_run_py_without_the_image_says_how_to_get_it(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    done = run_py(tmp_path, OLLAMA_HOST=fake_ollama.url, VM_IMAGE="llmbot-no-such-image:never")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("the image llmbot-no-such-image:never is not on this engine and cannot be pulled: "
                                   "run `docker pull llmbot-no-such-image:never`, build it, or set VM_IMAGE")


def test_run_py_attach_makes_a_round_trip(tmp_path: Path, fake_ollama: FakeOllama,
                                          docker_client: docker.DockerClient) -> None:
    """A local file goes into /data; a file the model makes there comes back into ./received."""
    prefix = f"llmt{uuid.uuid4().hex[:8]}"
    notes = tmp_path / "notes.txt"
    notes.write_text("line one\nline two\n")
    fake_ollama.script(
        tool_calls(("execute_terminal", {"command": "(wc -c < /data/notes.txt; head -n 1 /data/notes.txt) "
                                                    "> /data/report.txt"})),
        tool_calls(("send_file", {"path": "/data/report.txt"})),
        text("Your report is attached."))
    base = run_env(tmp_path, OLLAMA_HOST=fake_ollama.url, VM_NAME_PREFIX=prefix)
    try:
        done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--attach", str(notes)], cwd=tmp_path, env=base,
                              capture_output=True, text=True, timeout=120)
        left = sandboxes_of(docker_client, prefix)
    finally:
        remove_containers(docker_client, prefix)
    assert done.returncode == 0, done.stderr
    assert f"[uploaded: {notes} → /data/notes.txt]" in done.stdout
    assert "[file: /data/report.txt (12 bytes) → received/report.txt]" in done.stdout
    assert (tmp_path / "received" / "report.txt").read_text().split() == ["18", "line", "one"]
    first = fake_ollama.requests[0]["messages"][-1]["content"]
    assert first.startswith("[uploaded: /data/notes.txt]\n[/data/notes.txt, 18 bytes]\n```\nline one\nline two\n```")
    # what the round trip made is gone: the sandbox, its /data (image and folder); the history stays
    assert left == [] and data_folders(tmp_path) == []
    assert "[removed the sandbox and /data of user 'smoke-test', session 'run.py']" in done.stdout


def sandboxes_of(client: docker.DockerClient, prefix: str) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={"label": f"llmbot.app={prefix}"})]


def data_folders(tmp_path: Path) -> list[str]:
    """The conversations' /data folders (and disk images) below the test's UPLOAD_DIR."""
    uploads = tmp_path / "uploads"
    return sorted(str(p.relative_to(uploads)) for person in uploads.iterdir() if person.is_dir()
                  and not person.name.startswith(".") for p in person.iterdir()) if uploads.exists() else []


def test_run_py_attach_says_when_no_file_came_back_and_cleans_up(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    """Issue 19, item 3: the round trip asked for a file; none came, so run.py says so and fails."""
    prefix = f"llmt{uuid.uuid4().hex[:8]}"
    notes = tmp_path / "notes.txt"
    notes.write_text("line one\n")
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "wc -c /data/notes.txt > /data/report.txt"})),
                       text("I wrote the report to /data/report.txt."))
    try:
        done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--attach", str(notes)], cwd=tmp_path,
                              env=run_env(tmp_path, OLLAMA_HOST=fake_ollama.url, VM_NAME_PREFIX=prefix),
                              capture_output=True, text=True, timeout=120)
        left = sandboxes_of(docker_client, prefix)
    finally:
        remove_containers(docker_client, prefix)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "No file came back: the model did not send one (its answer is above)."
    assert "I wrote the report to /data/report.txt." in done.stdout
    assert not (tmp_path / "received").exists()
    assert left == [] and data_folders(tmp_path) == []


def test_run_py_in_chat_only_mode_needs_no_docker_and_quotes_the_file(tmp_path: Path,
                                                                     fake_ollama: FakeOllama) -> None:
    """TOOLS=off (issue 19, item 2): no engine at all; the file is quoted, no tools are offered, and
    no file is expected back (said, not an error)."""
    fake_ollama.capabilities["qwen3:8b"] = ["completion"]
    notes = tmp_path / "notes.txt"
    notes.write_text("line one\nline two\n")
    fake_ollama.script(text("Two lines: one and two."))
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--attach", str(notes)], cwd=tmp_path,
                          env=run_env(tmp_path, OLLAMA_HOST=fake_ollama.url, TOOLS="off",
                                      DOCKER_HOST=f"unix://{tmp_path}/no-docker-here.sock"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Two lines: one and two." in done.stdout and done.stdout.rstrip().endswith("[no file came back]")
    [request] = fake_ollama.requests
    assert not request.get("tools")
    assert request["messages"][-1]["content"] == ("[attached: notes.txt]\n[notes.txt, 18 bytes]\n```\nline one\n"
                                                  "line two\n```\nTell me in two sentences what the file(s) I "
                                                  "attached hold.")
    assert data_folders(tmp_path) == []


def test_run_py_attach_of_a_missing_file_says_so(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--attach", "nope.txt"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == "--attach: no such file: nope.txt"
