"""End to end through a real LiteLLM proxy (issue 22): the bot speaks the OpenAI API to LiteLLM, which
speaks Ollama's to the fake Ollama on 127.0.0.1; a tool call runs a real command in Docker and the
answer comes back the same way.

LiteLLM is not one of the bot's requirements (it brings a web stack of its own), so it lives in a
virtualenv apart: `python3 -m venv ../litellm-venv && ../litellm-venv/bin/pip install 'litellm[proxy]'`
next to the checkout, or anywhere with LITELLM_BIN pointing at its `litellm` program. Without it,
or when it cannot start here (it needs no network: the model cost map is read locally), the test
is skipped and says why.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import docker
import httpx
import pytest

from core import ChatSession
from core.render import Reply
from tests import fake_ollama as ollama_fake
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, free_port, text, tool_calls

ROOT = Path(__file__).resolve().parents[1]
MODEL = "qwen3-8b"  # the name LiteLLM routes to the Ollama model qwen3:8b
STARTUP_SECONDS = 120  # LiteLLM imports a large web stack; two busy cores may take a while


def litellm_program() -> str | None:
    for candidate in (os.environ.get("LITELLM_BIN"), shutil.which("litellm"),
                      str(ROOT.parent / "litellm-venv" / "bin" / "litellm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def litellm(tmp_path: Path, fake_ollama: FakeOllama) -> Iterator[tuple[str, str]]:
    """A LiteLLM proxy in front of the fake Ollama: (its /v1 URL, its master key)."""
    program = litellm_program()
    if program is None:
        pytest.skip("LiteLLM is not installed: pip install 'litellm[proxy]' into ../litellm-venv or set LITELLM_BIN")
    key = "sk-" + secrets.token_hex(16)
    port = free_port()
    config = tmp_path / "litellm.yaml"
    config.write_text(f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n"
                      f"      model: ollama_chat/qwen3:8b\n      api_base: {fake_ollama.url}\n")
    log_path = tmp_path / "litellm.log"
    env = {**os.environ, "LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_TELEMETRY": "False", "NO_PROXY": "127.0.0.1,localhost"}
    with open(log_path, "wb") as log:
        proxy = subprocess.Popen([program, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if proxy.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                pytest.skip(f"LiteLLM did not start here (exit {proxy.returncode}): {' / '.join(tail)[:400]}")
            try:
                if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"LiteLLM did not answer within {STARTUP_SECONDS} s")
            time.sleep(0.5)
        yield url, key
    finally:
        proxy.terminate()
        try:
            proxy.wait(15)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(5)


@pytest.mark.asyncio
async def test_a_turn_with_a_tool_call_through_litellm_in_front_of_ollama(
        litellm: tuple[str, str], fake_ollama: FakeOllama, tmp_path: Path, docker_client: docker.DockerClient,
        caplog: pytest.LogCaptureFixture) -> None:
    url, key = litellm
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo via-$((40 + 2))"})),
                       text("It printed via-42.", chunk_size=3))
    settings = make_settings(tmp_path, fake_ollama.url, model_api="openai", openai_base_url=url,
                             openai_api_key=key, openai_model=MODEL)
    with caplog.at_level(logging.INFO, logger="core.tool_loop"):
        async with open_runtime(settings, docker_client) as rt:
            assert await rt.models() == [MODEL, "ollama:qwen3:8b"]  # LiteLLM's name, and Ollama's own
            async with ChatSession(user="alice", session="litellm", runtime=rt) as chat:
                reply = Reply()
                async for event in chat.events("what is forty plus two?"):
                    reply.apply(event)
    assert reply.render().splitlines() == ["-# ✅ `echo via-$((40 + 2))` → exit 0", "It printed via-42."]
    first, second = fake_ollama.requests
    assert first["model"] == second["model"] == "qwen3:8b"
    assert first["tools"][0]["function"]["name"] == "execute_terminal"
    assert ollama_fake.request_problems(second) == []
    assert "via-42" in [m for m in second["messages"] if m["role"] == "tool"][0]["content"]
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("turn user=alice")]
    counted = ollama_fake.prompt_tokens(first) + ollama_fake.prompt_tokens(second)
    assert f"tokens: {counted} in," in line  # Ollama's counts, through LiteLLM's usage chunks
    assert key not in "\n".join(r.getMessage() for r in caplog.records)
