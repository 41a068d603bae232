"""One persistent, locked-down Docker container per (user, session).

The docker SDK is synchronous, so every public coroutine here hands the work
to a thread. Containers are named and labelled so that a restarted process
finds (adopts) them again, and so that the reaper can remove idle ones even
when this process did not create them.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from .config import Settings
from .errors import SandboxUnavailable

log = logging.getLogger(__name__)

LABEL = "llmbot"  # label namespace: llmbot.app, llmbot.user, llmbot.session, ...
# PID 1's child: sleeps forever but stops at once on SIGTERM, in any POSIX shell.
KEEPALIVE = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
# What the image may need back after cap_drop=ALL (package managers chown and switch users).
CAP_ADD = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"]
UNREACHABLE = "Docker is not reachable: start the Docker engine (dockerd) or set DOCKER_HOST"


def slug(value: str, length: int = 24) -> str:
    """A name-safe, readable, unique form of an id: 'Alice Smith' -> 'alice-smith-3f2a1b'."""
    readable = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:length] or "x"
    digest = hashlib.sha256(value.encode()).hexdigest()[:6]
    return f"{readable}-{digest}"


@dataclass(frozen=True)
class ContainerInfo:
    """What the admin commands show about a sandbox."""

    name: str
    user: str
    session: str
    status: str
    idle_seconds: float | None


def docker_errors() -> tuple[type[BaseException], ...]:
    return (docker.errors.DockerException, requests.exceptions.RequestException, ConnectionError)


class ContainerManager:
    """Creates, finds, reuses and removes the sandboxes of one deployment."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._last_used: dict[str, float] = {}
        self._busy: dict[str, int] = {}

    # -- naming -----------------------------------------------------------
    def name(self, user: str, session: str) -> str:
        return f"{self.settings.vm_name_prefix}-{slug(user, 16)}-{slug(session, 16)}"

    def upload_dir(self, user: str, session: str) -> Path:
        """The session's own folder on this machine, mounted at /data."""
        return Path(self.settings.upload_dir).resolve() / slug(user) / slug(session)

    def _host_dir(self, user: str, session: str) -> str:
        local = self.upload_dir(user, session)
        if not self.settings.vm_data_host_dir:
            return str(local)
        # The bot runs in a container: the engine needs the host's path of the same folder.
        relative = local.relative_to(Path(self.settings.upload_dir).resolve())
        return str(Path(self.settings.vm_data_host_dir) / relative)

    def config_hash(self) -> str:
        s = self.settings
        key = f"{s.vm_image}|{s.vm_network}|{s.vm_memory}|{s.vm_cpus}|{s.vm_pids}|{s.vm_data_host_dir}|v1"
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    # -- docker client ----------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        """The SDK client, made on first use so a Docker that comes back later is found."""
        with self._client_lock:
            if self._client is None:
                try:
                    # from_env honours DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH.
                    self._client = docker.from_env(timeout=self.settings.command_timeout_max + 60)
                except docker_errors() as exc:
                    log.debug("docker unreachable: %s", exc)
                    raise SandboxUnavailable(UNREACHABLE) from exc
            return self._client

    def forget_client(self) -> None:
        """Drop the client after a connection failure so the next call reconnects."""
        with self._client_lock:
            self._client = None

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except (SandboxUnavailable, *docker_errors()):
            self.forget_client()
            return False

    # -- lifecycle (synchronous; call through the async wrappers) ---------
    def _lock(self, name: str) -> threading.Lock:
        with self._client_lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def ensure_sync(self, user: str, session: str, *, allow_recreate: bool = True) -> Any:
        """The running container of (user, session): reused, restarted or created."""
        name = self.name(user, session)
        with self._lock(name):
            try:
                container = self._get(name)
                if container is not None and allow_recreate and not self._busy.get(name) \
                        and container.labels.get(f"{LABEL}.config") != self.config_hash():
                    log.info("recreating %s: configuration changed", name)
                    self._remove(container)
                    container = None
                if container is not None and container.status != "running":
                    try:
                        container.start()
                        container.reload()
                    except docker.errors.APIError as exc:
                        log.warning("could not restart %s (%s); recreating", name, exc)
                        self._remove(container)
                        container = None
                if container is None:
                    container = self._create(name, user, session)
            except SandboxUnavailable:
                raise
            except docker_errors() as exc:
                if not isinstance(exc, docker.errors.APIError):
                    self.forget_client()
                raise SandboxUnavailable(f"The sandbox could not be started: {explain(exc)}") from exc
            self._last_used[name] = time.monotonic()
            return container

    def _get(self, name: str) -> Any | None:
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def _remove(self, container: Any) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        self._last_used.pop(container.name, None)

    def _create(self, name: str, user: str, session: str) -> Any:
        s = self.settings
        data_dir = self.upload_dir(user, session)
        data_dir.mkdir(parents=True, exist_ok=True)
        labels = {
            f"{LABEL}.app": s.vm_name_prefix,
            f"{LABEL}.user": str(user),
            f"{LABEL}.session": str(session),
            f"{LABEL}.created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            f"{LABEL}.config": self.config_hash(),
        }
        options: dict[str, Any] = dict(
            command=["sh", "-c", KEEPALIVE],
            name=name,
            labels=labels,
            detach=True,
            init=True,
            hostname="sandbox",
            working_dir="/data",
            volumes={self._host_dir(user, session): {"bind": "/data", "mode": "rw"}},
            mem_limit=s.vm_memory,
            memswap_limit=s.vm_memory,
            nano_cpus=int(s.vm_cpus * 1e9),
            pids_limit=s.vm_pids,
            cap_drop=["ALL"],
            cap_add=CAP_ADD,
            security_opt=["no-new-privileges"],
            tmpfs={"/tmp": "rw,nosuid,nodev,size=256m"},
            environment={},
        )
        if not s.vm_network:
            options["network_mode"] = "none"
        for attempt in (1, 2):
            try:
                container = self.client.containers.run(s.vm_image, **options)
                log.info("started sandbox %s", name)
                return container
            except docker.errors.ImageNotFound:
                if attempt == 2:
                    raise
                self._pull(s.vm_image)
            except docker.errors.APIError as exc:
                # A failed run can leave a "Created" container that blocks the name; a racing
                # create in another thread can win the name. Either way: look at what is there.
                existing = self._get(name)
                if existing is not None and existing.status == "running":
                    return existing
                if existing is not None:
                    self._remove(existing)
                if attempt == 2:
                    raise exc
        raise AssertionError("unreachable")

    def _pull(self, image: str) -> None:
        log.info("pulling image %s", image)
        try:
            self.client.images.pull(image)
        except docker.errors.APIError as exc:
            raise SandboxUnavailable(
                f"The sandbox image {image!r} is not on this Docker engine and could not be pulled; "
                f"pull or build it, or set VM_IMAGE"
            ) from exc

    def mark_used(self, name: str, busy: int = 0) -> None:
        self._last_used[name] = time.monotonic()
        if busy:
            self._busy[name] = self._busy.get(name, 0) + busy

    def managed_sync(self) -> list[Any]:
        """Every container of this deployment on the engine, running or not."""
        return self.client.containers.list(all=True, filters={"label": f"{LABEL}.app={self.settings.vm_name_prefix}"})

    def adopt_sync(self) -> tuple[list[str], list[str]]:
        """At start-up: keep what matches the configuration, remove the rest.

        Adopted containers count as used now, so the reaper removes them after
        one idle period if nobody comes back to them.
        """
        adopted, removed = [], []
        now = time.monotonic()
        for container in self.managed_sync():
            if container.labels.get(f"{LABEL}.config") == self.config_hash() and container.status == "running":
                self._last_used.setdefault(container.name, now)
                adopted.append(container.name)
            else:
                self._remove(container)
                removed.append(container.name)
        return adopted, removed

    def reap_sync(self, idle_seconds: float | None = None) -> list[str]:
        """Remove containers, running or not, idle for longer than the limit."""
        limit = self.settings.vm_idle_timeout if idle_seconds is None else idle_seconds
        now = time.monotonic()
        removed = []
        for container in self.managed_sync():
            name = container.name
            if self._busy.get(name):
                continue
            last = self._last_used.setdefault(name, now)
            if now - last >= limit:
                self._remove(container)
                removed.append(name)
                log.info("removed idle sandbox %s", name)
        return removed

    def remove_sync(self, user: str, session: str) -> bool:
        name = self.name(user, session)
        with self._lock(name):  # never in the middle of a start-up of the same sandbox
            container = self._get(name)
            if container is None:
                return False
            self._remove(container)
            return True

    def info_sync(self) -> list[ContainerInfo]:
        now = time.monotonic()
        out = []
        for c in self.managed_sync():
            last = self._last_used.get(c.name)
            out.append(ContainerInfo(c.name, c.labels.get(f"{LABEL}.user", "?"), c.labels.get(f"{LABEL}.session", "?"),
                                     c.status, None if last is None else now - last))
        return out

    # -- async faces ------------------------------------------------------
    async def ensure(self, user: str, session: str) -> Any:
        return await asyncio.to_thread(self.ensure_sync, user, session)

    async def remove(self, user: str, session: str) -> bool:
        return await self._call(self.remove_sync, user, session)

    async def reap(self, idle_seconds: float | None = None) -> list[str]:
        return await self._call(self.reap_sync, idle_seconds)

    async def adopt(self) -> tuple[list[str], list[str]]:
        return await self._call(self.adopt_sync)

    async def info(self) -> list[ContainerInfo]:
        return await self._call(self.info_sync)

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except SandboxUnavailable:
            raise
        except docker_errors() as exc:
            raise SandboxUnavailable(f"Docker request failed: {explain(exc)}") from exc


def explain(exc: BaseException) -> str:
    """One line for a docker failure, without the SDK's multi-line noise."""
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc).splitlines()[0]
    if isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError)):
        return UNREACHABLE
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UNREACHABLE if "connection" in text.lower() else text

