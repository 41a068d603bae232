"""Preflight: can this machine run the bot? One line per dependency, saying what to do; the model
server's line is named for the backend it checked (ollama, or openai: MODEL_API).

Run at bot start and on its own (`python -m bot.discord_bot --check`). Nothing
here prints or logs the token; a failing check's line is safe to show anyone.
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import sys
from dataclasses import dataclass
from typing import TextIO

from dotenv import find_dotenv
from playhouse.db_url import connect

from .config import Settings
from .errors import EngineError, OllamaUnavailable
from .model_backend import OLLAMA_API, OPENAI_API, ModelBackend
from .model_client import ModelServer
from .sandbox.docker import DockerProvider
from .sandbox.docker.engine import DOCKER_ERRORS, explain

TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{17,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}$")
PORTAL = "https://discord.com/developers/applications"
DOCKER_SOCKET = "/var/run/docker.sock"
DOCKER_DOCS = "https://docs.docker.com/engine/install/"
CHAT_ONLY = "or set TOOLS=off to chat without commands (no Docker needed)"
PROBLEM_TIMEOUT = 20.0  # seconds for a model server to list its models and describe one


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str
    fatal: bool = True  # the bot cannot start without it

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:8s} {self.message}"


def check_token(settings: Settings, *, container: bool = False) -> Check:
    """`container`: the bot runs in its container, whose settings come from the host's .env (Compose)."""
    token = settings.discord_token
    if container:
        where = "put it in .env as DISCORD_TOKEN=... and run `docker compose up -d` again"
    elif find_dotenv():
        where = "put it in .env as DISCORD_TOKEN=..."
    else:  # never a .env that does not exist yet
        where = "copy .env.example to .env (`cp .env.example .env`) and set DISCORD_TOKEN=... there"
    if not token:
        return Check("token", False, f"DISCORD_TOKEN is not set: create a bot at {PORTAL}, copy its token "
                                     f"from the Bot page, then {where}")
    if not TOKEN_SHAPE.match(token) or not _id_part_is_numeric(token):
        return Check("token", False, "DISCORD_TOKEN does not look like a bot token (three dot-separated parts): "
                                     f"reset and copy it again from the Bot page at {PORTAL}, then {where}")
    return Check("token", True, "DISCORD_TOKEN is present and well-formed")


def _id_part_is_numeric(token: str) -> bool:
    """A bot token's first part is the bot's user id in base64."""
    first = token.split(".", 1)[0]
    try:
        return base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode().isdigit()
    except (ValueError, UnicodeDecodeError):
        return False


async def check_model(settings: Settings, model: str | None = None) -> Check:
    """The model server MODEL_API names (the check is named for it: "ollama" or "openai") has the
    default model (or `model`), and the model can call tools unless TOOLS=off."""
    server = ModelServer(settings)
    model = model or settings.default_model[0]
    try:
        return await _check_backend(server, settings.model_api, model, settings)
    finally:
        await server.close()


async def check_ollama(settings: Settings, model: str | None = None) -> Check:
    """check_model for Ollama, whatever MODEL_API says."""
    return await check_model(settings.replace(model_api=OLLAMA_API), model or settings.ollama_model)


async def check_other_server(settings: Settings) -> Check | None:
    """The backend MODEL_API does not name, when it is set up too (OPENAI_BASE_URL beside Ollama):
    it answers, for the models named `<api>:<name>`. None when there is no other."""
    server = ModelServer(settings)
    others = server.apis()[1:]
    if not others:
        return None
    backend = server.backend(others[0])
    try:
        names = await backend.list_models()
    except EngineError as exc:
        return Check(backend.api, False, f"{_unreachable(backend, exc)} (for models named {backend.api}:<name>)",
                     fatal=False)
    finally:
        await server.close()
    return Check(backend.api, True, f"{backend.label} at {backend.where} offers {len(names)} models (for models "
                                    f"named {backend.api}:<name>)")


async def _check_backend(server: ModelServer, api: str, model: str, settings: Settings) -> Check:
    backend = server.backend(api)
    setting = "OPENAI_MODEL" if api == OPENAI_API else "OLLAMA_MODEL"
    try:
        problem, known = await asyncio.wait_for(backend.problem(model, tools=settings.offers_tools), PROBLEM_TIMEOUT)
    except (asyncio.TimeoutError, EngineError) as exc:
        return Check(api, False, _unreachable(backend, exc), fatal=False)
    if problem:
        hint = f" ({setting}), or set TOOLS=off to chat without commands" if known else f" ({setting})"
        return Check(api, False, problem + hint, fatal=False)
    tools = settings.offers_tools and (known or api == OPENAI_API)
    how = "" if not tools else " (tools)" if known else " (tools, as MODEL_CAPABILITIES says)"
    if api == OLLAMA_API:
        return Check(api, True, f"{backend.where} has {model}{how}")
    return Check(api, True, f"{backend.label} at {backend.where} serves {model}{how}")


def _unreachable(backend: ModelBackend, exc: BaseException) -> str:
    """The line for a server that could not be asked, or answered with an error."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"{backend.label} at {backend.where} did not answer within {PROBLEM_TIMEOUT:g} s"
    if isinstance(exc, OllamaUnavailable):
        return str(exc).rstrip(".")
    return f"{backend.label} at {backend.where} answered with an error: {str(exc).rstrip('.')}"


def _docker_installed() -> bool:
    """Some sign of Docker on this machine (its programs, its socket, or an engine named elsewhere)."""
    return bool(shutil.which("dockerd") or shutil.which("docker") or os.path.exists(DOCKER_SOCKET)
                or os.environ.get("DOCKER_HOST"))


async def check_docker(settings: Settings) -> Check:
    if not settings.tools:  # chat only: no engine is asked at all
        return Check("docker", True, "not needed: TOOLS=off (chat only: no commands, no sandboxes)")
    manager = DockerProvider(settings)
    image = settings.vm_image
    try:
        if not await manager.ping():
            if not _docker_installed():
                return Check("docker", False, "Docker is not installed: install it (`sudo apt-get install docker.io` "
                                              f"on Debian/Ubuntu, or see {DOCKER_DOCS}), {CHAT_ONLY}", fatal=False)
            return Check("docker", False, "Docker is not reachable: start the Docker engine (dockerd), check that this "
                                          f"user may use {DOCKER_SOCKET}, or set DOCKER_HOST; {CHAT_ONLY}", fatal=False)
        try:
            if await manager.image_present(image):
                return Check("docker", True, f"engine reachable, image {image} present")
        except DOCKER_ERRORS as exc:
            return Check("docker", False, f"could not look up {image}: {explain(exc)}", fatal=False)
        if await manager.image_pullable(image):
            return Check("docker", True, f"engine reachable, image {image} will be pulled on first use")
        return Check("docker", False, f"the image {image} is not on this engine and cannot be pulled: "
                                      f"run `docker pull {image}`, build it, or set VM_IMAGE", fatal=False)
    finally:
        await manager.close()


def check_database(settings: Settings) -> Check:
    """Open the database and write inside a transaction that is rolled back."""
    url = settings.database_url
    shown = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)  # never show a password
    try:
        if settings.sqlite_path:
            from pathlib import Path
            Path(settings.sqlite_path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        db = connect(url)
        try:
            with db.atomic() as txn:
                db.execute_sql("CREATE TABLE IF NOT EXISTS llmbot_preflight (x INTEGER)")
                db.execute_sql("INSERT INTO llmbot_preflight (x) VALUES (1)")
                txn.rollback()
        finally:
            db.close()
    except Exception as exc:  # noqa: BLE001 - any failure here is the answer
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check("database", False, f"cannot write to {shown}: {reason[:200]} (fix DATABASE_URL or the "
                                        "folder's permissions)")
    return Check("database", True, f"{shown} is writable")


async def run_checks(settings: Settings, *, token: bool = True, container: bool = False,
                     other_server: bool = True) -> list[Check]:
    """Every check, the blocking ones off the event loop (`container`: see check_token; `other_server`:
    the model server MODEL_API does not name, when one is set up beside it)."""
    results = [check_token(settings, container=container)] if token else []
    results.append(await check_model(settings))
    other = await check_other_server(settings) if other_server else None
    if other is not None:
        results.append(other)
    results.append(await check_docker(settings))
    results.append(await asyncio.to_thread(check_database, settings))
    return results


def print_checks(checks: list[Check], out: TextIO = sys.stdout) -> int:
    """Print one line per check; the exit code is 0 only when all pass."""
    for check in checks:
        print(check.line(), file=out)
    return 0 if all(c.ok for c in checks) else 1
