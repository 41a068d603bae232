"""The Docker engine as the provider reaches it: one asyncio client (aiodocker) per event loop, how
its failures read, and the few calls aiodocker has no public wrapper for.

Every Docker call goes through this client, so a command that runs for minutes holds a socket,
not a thread: hundreds can run at once while history and Discord carry on. Every private
aiodocker call (`_query_json`, `_query`, `_check_version`, `_canonicalize_url`, the client's own
session for a HEAD request, the connector's pool limit) is made here and nowhere else: an
aiodocker release that changes them breaks this module only.
"""
from __future__ import annotations

import asyncio
import json
import logging
from contextlib import contextmanager
from typing import Any, AsyncContextManager, Callable, Iterator

import aiodocker
import aiohttp

from ...errors import SandboxFileError, SandboxUnavailable

log = logging.getLogger(__name__)

UNREACHABLE = "Docker is not reachable: start the Docker engine (dockerd) or set DOCKER_HOST"
NOT_CONNECTED = 900  # aiodocker's status for "cannot connect to the engine"
REQUEST_TIMEOUT = 120.0  # any single control call; command streams have none (their timeout is the command's)
PULL_TIMEOUT = 1800.0

# How aiodocker and aiohttp say Docker failed or could not be reached.
DOCKER_ERRORS: tuple[type[BaseException], ...] = (aiodocker.DockerError, aiohttp.ClientError, OSError,
                                                  asyncio.TimeoutError)


def explain(exc: BaseException) -> str:
    """One line for a Docker failure, without the client's multi-line noise."""
    if isinstance(exc, aiodocker.DockerError) and exc.status == NOT_CONNECTED:
        return UNREACHABLE
    if isinstance(exc, aiodocker.DockerError):
        text = str(exc.message or exc).strip()
        return text.splitlines()[0] if text else f"Docker error {exc.status}"
    if isinstance(exc, asyncio.TimeoutError):
        return "Docker did not answer in time"
    if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError, FileNotFoundError)):
        return UNREACHABLE
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UNREACHABLE if "connect" in text.lower() else text


@contextmanager
def reported_as_unavailable(what: str = "Docker request failed", refused: str | None = None) -> Iterator[None]:
    """Any failure of Docker's inside becomes one line for the user: SandboxUnavailable, or with
    `refused`, SandboxFileError when the engine answered but refused (a file it cannot read or write)."""
    try:
        yield
    except aiodocker.DockerError as exc:
        if refused is None:
            raise SandboxUnavailable(f"{what}: {explain(exc)}") from exc
        raise SandboxFileError(f"{refused}: {explain(exc)}") from exc
    except DOCKER_ERRORS as exc:
        raise SandboxUnavailable(f"{what}: {explain(exc)}") from exc


def is_gone(exc: BaseException) -> bool:
    """The container vanished or stopped under us (worth one recreate-and-retry)."""
    if not isinstance(exc, aiodocker.DockerError):
        return False
    text = str(exc.message).lower()
    return exc.status == 404 or any(w in text for w in ("is not running", "no such container", "is paused",
                                                        "restarting", "removal", "marked for removal"))


class Engine:
    """One aiodocker client per event loop, made on first use so a Docker that comes back later is found."""

    def __init__(self, connections: Callable[[], int]) -> None:
        self._connections = connections  # the size of a new client's pool (one per running command, and its kill)
        self._client: aiodocker.Docker | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @property
    def client(self) -> aiodocker.Docker:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            try:
                # Honours DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH and Docker contexts.
                client = aiodocker.Docker(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, connect=10))
            except (AssertionError, ValueError, aiodocker.DockerError) as exc:  # no socket, bad DOCKER_HOST
                log.debug("docker unreachable: %s", exc)
                raise SandboxUnavailable(UNREACHABLE) from exc
            # Each running command holds one connection for its whole life, and its kill needs another:
            # aiohttp's default pool of 100 would make command 101 wait for a connection, not for its turn.
            client.connector._limit = self._connections()  # noqa: SLF001
            self._client, self._client_loop = client, loop
        return self._client

    async def close(self) -> None:
        """Release the client's connections (a client of a loop already closed is only forgotten)."""
        client, self._client = self._client, None
        loop, self._client_loop = self._client_loop, None
        if client is not None and loop is asyncio.get_running_loop():
            await client.close()

    # -- what aiodocker has no public call for -------------------------------------------------
    async def containers(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        """The engine's container list, running or not, as plain rows (aiodocker's list() wraps each row
        in an object and inspects nothing more)."""
        return await self.client._query_json(  # noqa: SLF001
            "containers/json", params={"all": "true", "filters": json.dumps(filters)})

    async def inspect(self, container: str) -> dict[str, Any]:
        """`docker inspect` of a container by name or id, as the engine answers it."""
        return await self.client._query_json(f"containers/{container}/json")  # noqa: SLF001

    async def inspect_size(self, container: str) -> dict[str, Any]:
        """The same with SizeRw, what the container wrote (the engine walks its upper layer for it)."""
        return await self.client._query_json(f"containers/{container}/json", params={"size": "true"})  # noqa: SLF001

    async def distribution(self, image: str) -> dict[str, Any]:
        """What a registry this engine reaches says of an image (an error when it has none)."""
        return await self.client._query_json(f"distribution/{image}/json")  # noqa: SLF001

    def get_archive(self, container: str, path: str) -> AsyncContextManager[aiohttp.ClientResponse]:
        """The engine's tar of `path` in the container, as a response to stream from."""
        # identity: aiohttp asks for gzip by default, and the engine then compresses the tar on the fly,
        # which costs more than it saves on a local socket (twice as slow for 5 MB).
        return self.client._query(f"containers/{container}/archive", params={"path": path},  # noqa: SLF001
                                  headers={"Accept-Encoding": "identity"})

    async def stat_path(self, container: str, path: str) -> tuple[int, str]:
        """The engine's stat of a path (HEAD on the archive endpoint: no bytes move): the HTTP status
        and the X-Docker-Container-Path-Stat header. aiodocker's own query reads an error's JSON body,
        which a HEAD answer never has."""
        docker = self.client
        await docker._check_version()  # noqa: SLF001
        url = docker._canonicalize_url(f"containers/{container}/archive", versioned_api=True)  # noqa: SLF001
        async with docker.session.head(url, params={"path": path}) as response:
            return response.status, response.headers.get("X-Docker-Container-Path-Stat", "")
