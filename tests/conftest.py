"""Shared fixtures: a scripted fake Ollama on 127.0.0.1, the real Docker engine, a fresh runtime."""
from __future__ import annotations

import asyncio
import time
import os
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Iterator

import docker
import pytest
import pytest_asyncio

from core import Runtime, Settings, set_runtime
from core.sandbox.docker.diskimage import unmount_under
from tests import leaks
from tests.fake_ollama import FakeOllama, free_port
from tests.fake_openai import FakeOpenAI

TEST_IMAGE = os.environ.get("TEST_VM_IMAGE", "llmbot-test:latest")
IN_CI = bool(os.environ.get("CI"))
# Lazy unmounts and container removals may take a moment to show: how long growth is given to go away.
LEAK_GRACE_SECONDS = float(os.environ.get("LEAK_GRACE_SECONDS", "15"))
LEAKS = pytest.StashKey[tuple[leaks.Counts, leaks.Counts]]()


def require(condition_error: str | None) -> None:
    """Fail in CI, skip elsewhere: CI must never pass by skipping what it is meant to test."""
    if condition_error:
        if IN_CI:
            pytest.fail(condition_error)
        pytest.skip(condition_error)


def closed_port() -> int:
    """A loopback port nobody listens on: for "the service is down" tests."""
    return free_port()


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
        client.images.get(TEST_IMAGE)
    except Exception as exc:  # noqa: BLE001
        require(f"needs the Docker engine and image {TEST_IMAGE} (bash tests/images/build.sh): {exc}")
    return client


@pytest.fixture(scope="session", autouse=True)
def leak_check(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Count mounts, loop devices and test containers before the session and after it (see tests/leaks.py);
    pytest_terminal_summary prints both, and in CI pytest_sessionfinish fails the run on growth."""
    base = tmp_path_factory.getbasetemp()
    start = leaks.snapshot()
    before = leaks.census(start, start, base)
    yield
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    while True:
        after = leaks.census(leaks.snapshot(), start, base)
        if not leaks.grown(before, after) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    request.config.stash[LEAKS] = (before, after)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = session.config.stash.get(LEAKS, None)
    if IN_CI and found is not None and leaks.grown(*found) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    found = config.stash.get(LEAKS, None)
    if found is None:
        return
    terminalreporter.section("what the run left on the host (* compared)")
    for line in leaks.report(*found):
        terminalreporter.write_line(line)
    for line in leaks.grown(*found):
        terminalreporter.write_line(f"LEFT BEHIND: {line}" + (" (fails the run: CI is set)" if IN_CI else ""),
                                    red=True)


@pytest.fixture(autouse=True)
def unmount_data_disks(tmp_path: Path) -> Iterator[None]:
    """Sandboxes' /data disk images are mounted below the test's folder: unmount them after it."""
    yield
    unmount_under(tmp_path)


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server (tests/fake_openai.py), for the OpenAI backend's tests."""
    with FakeOpenAI() as fake:
        yield fake


def make_settings(tmp_path: Path, ollama_url: str, **overrides: object) -> Settings:
    base = Settings(
        ollama_host=ollama_url,
        ollama_model="qwen3:8b",
        database_url=f"sqlite:///{tmp_path}/chat.db",
        upload_dir=str(tmp_path / "uploads"),
        vm_image=TEST_IMAGE,
        vm_name_prefix=f"llmt{uuid.uuid4().hex[:8]}",
        vm_memory=256 * 1024 ** 2,
        vm_cpus=1.0,
        command_timeout=10,
        command_timeout_max=30,
        vm_idle_timeout=3600,
        vm_data_nosuid=False,  # a mount per test folder; tests/test_containment.py checks it
    )
    return base.replace(**overrides)


@pytest.fixture
def settings(tmp_path: Path, fake_ollama: FakeOllama) -> Settings:
    return make_settings(tmp_path, fake_ollama.url)


def remove_containers(client: docker.DockerClient, prefix: str) -> None:
    """A test deployment's sandboxes and its network (Docker has only a few dozen address pools)."""
    for container in client.containers.list(all=True, filters={"label": f"llmbot.app={prefix}"}, sparse=True):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:  # the bot's own removal may still be under way
            if "already in progress" not in str(exc):
                raise
            time.sleep(1)
    for network in client.networks.list(filters={"label": f"llmbot.app={prefix}"}):
        network.remove()


@asynccontextmanager
async def open_runtime(settings: Settings, docker_client: docker.DockerClient) -> AsyncIterator[Runtime]:
    """A runtime over the fake Ollama and the real Docker engine; its containers go at the end."""
    rt = Runtime(settings)
    set_runtime(rt)
    try:
        yield rt
    finally:
        await rt.close()
        set_runtime(None)
        await asyncio.to_thread(remove_containers, docker_client, settings.vm_name_prefix)


@pytest_asyncio.fixture
async def runtime(settings: Settings, docker_client: docker.DockerClient) -> AsyncIterator[Runtime]:
    async with open_runtime(settings, docker_client) as rt:
        yield rt
