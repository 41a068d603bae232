"""The Docker backend of the sandbox face: one persistent, locked-down container per (user, session).

Every Docker call goes through one asyncio client (aiodocker), so a command that
runs for minutes holds a socket, not a thread: hundreds can run at once while
history and Discord carry on. Containers are named and labelled so that a
restarted process finds (adopts) them again, and so that the reaper can remove
idle ones even when this process did not create them.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import socket
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import aiodocker
import aiohttp

from . import datadisk
from .config import Settings
from .errors import SandboxFileError, SandboxFileTooLarge, SandboxUnavailable
from .hostmount import ensure_nosuid, host_path, own_container_id
from .locks import KeyedLocks
from .sandbox import OutputSink, SandboxInfo, Sandboxes
from .uploads import human_size, remove_folder

log = logging.getLogger(__name__)

LABEL = "llmbot"  # label namespace: llmbot.app, llmbot.user, llmbot.session, ...
# PID 1's child: sleeps forever but stops at once on SIGTERM, in any POSIX shell.
KEEPALIVE = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
# What the image may need back after cap_drop=ALL (package managers chown and switch users).
CAP_ADD = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"]
UNREACHABLE = "Docker is not reachable: start the Docker engine (dockerd) or set DOCKER_HOST"
NOT_CONNECTED = 900  # aiodocker's status for "cannot connect to the engine"
REQUEST_TIMEOUT = 120.0  # any single control call; command streams have none (their timeout is the command's)
PULL_TIMEOUT = 1800.0
# Go's os.FileMode type bits (dir, symlink, device, pipe, socket, char device, irregular), as the
# engine reports them in X-Docker-Container-Path-Stat: none set means a regular file.
GO_FILE_TYPE_BITS = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)
EXIT_CODE_WAIT = 2.0
TAR_OVERHEAD = 64 * 1024  # headers and padding around one file in an archive  # an exec's exit code can land a moment after its output ends

# How aiodocker and aiohttp say Docker failed or could not be reached.
DOCKER_ERRORS: tuple[type[BaseException], ...] = (aiodocker.DockerError, aiohttp.ClientError, OSError,
                                                  asyncio.TimeoutError)



DIGEST_HEX = 20  # 80 bits of SHA-256: names and folders of different ids never meet, by chance or on purpose


def readable(value: str, length: int) -> str:
    """The part of a name a person can read: 'Alice Smith' -> 'alice-smith'. Never unique on its own."""
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:length] or "x"


def digest(*parts: str) -> str:
    """A full-strength digest of the exact ids (NUL-separated, so ('a', 'bc') != ('ab', 'c'))."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:DIGEST_HEX]


def legacy_slug(value: str, length: int = 24) -> str:
    """How folders were named before exact digests (a 24-bit hash): only for moving them over."""
    return f"{readable(value, length)}-{hashlib.sha256(value.encode()).hexdigest()[:6]}"


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


def _is_gone(exc: BaseException) -> bool:
    """The container vanished or stopped under us (worth one recreate-and-retry)."""
    if not isinstance(exc, aiodocker.DockerError):
        return False
    text = str(exc.message).lower()
    return exc.status == 404 or any(w in text for w in ("is not running", "no such container", "is paused",
                                                        "restarting"))


class ContainerManager(Sandboxes):
    """Creates, finds, reuses and removes the sandboxes of one deployment, on one Docker engine."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._client: aiodocker.Docker | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._locks = KeyedLocks()  # by container name, and ("user", id) for the per-user cap
        self._up: set[str] = set()  # names this process saw running: commands go straight to exec
        self._root_ready = False
        self._networks_seen: set[str] = set()
        self._disk_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sandbox-disk")  # mkfs, mount: waits, mostly
        self._disk_warned = False
        self._evicted: dict[str, int] = {}  # name -> bytes it used when it was stopped for going over VM_DISK
        self._owner: dict[str, str] = {}  # name -> user, for the sandboxes this process knows exist
        self._census = False  # adopt() has seen every sandbox there was at start-up
        # Unset while adopt() sorts out what a restart found (made on the loop that adopts).
        self._adoption: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._discovered: str | None = None  # UPLOAD_DIR on the Docker host, found from the bot's own container
        self._discovery_done = False

    # -- naming -----------------------------------------------------------
    def name(self, user: str, session: str) -> str:
        return f"{self.settings.vm_name_prefix}-{readable(user, 12)}-{readable(session, 12)}-{digest(user, session)}"

    def upload_dir(self, user: str, session: str) -> Path:
        folder = self._data_root() / f"{readable(user, 24)}-{digest(user)}" / f"{readable(session, 24)}-{digest(user, session)}"
        if not folder.exists():
            self._adopt_legacy_folder(user, session, folder)
        return folder

    def _data_root(self) -> Path:
        """UPLOAD_DIR, made reachable by its owner only (0700): what a sandbox writes into /data,
        a setuid-root file included, is then out of reach of every other account on the host."""
        root = Path(self.settings.upload_dir).resolve()
        if not self._root_ready:
            root.mkdir(parents=True, exist_ok=True)
            root.chmod(0o700)
            if self.settings.vm_data_nosuid and not self.data_host_root:
                problem = ensure_nosuid(root)  # then every sandbox's /data bind mount is nosuid,nodev too
                if problem:
                    log.warning("%s", problem)
            self._root_ready = True
        return root

    def _adopt_legacy_folder(self, user: str, session: str, new: Path) -> None:
        """Move a folder named the old way to its exact name, where the old name was unambiguous.

        An id of at most 24 lowercase letters and digits (every Discord id) was spelled out whole in
        the old name, so that folder can only be this id's; anything else stays where it is.
        """
        if not all(re.fullmatch(r"[a-z0-9]{1,24}", v) for v in (user, session)):
            return
        old = self._data_root() / legacy_slug(user) / legacy_slug(session)
        if old.is_dir() and not new.exists():
            new.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, new)
            log.info("moved %s to %s (exact folder names)", old, new)

    @property
    def data_host_root(self) -> str | None:
        """UPLOAD_DIR as the Docker host sees it, when the bot runs in a container: VM_DATA_HOST_DIR,
        or what discover_host_root() found. None when the bot and the engine share the filesystem."""
        return self.settings.vm_data_host_dir or self._discovered

    async def discover_host_root(self) -> None:
        """In a container, find where the host keeps UPLOAD_DIR from the container's own mounts, so
        `docker compose` works from any folder and no path needs writing down. Once per process."""
        if self._discovery_done or self.settings.vm_data_host_dir:
            return
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            mountinfo = ""
        container = own_container_id(mountinfo, socket.gethostname())
        if container is None:
            self._discovery_done = True
            return
        try:
            state = await self.docker.containers.container(container).show()
        except (SandboxUnavailable, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.debug("could not inspect the bot's own container %s: %r", container[:12], exc)
            return  # the engine is down: try again with the next sandbox
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                log.debug("could not inspect the bot's own container %s: %s", container[:12], explain(exc))
                return  # the engine is down: try again with the next sandbox
            self._discovery_done = True  # a container of another engine (Docker in Docker): paths are shared
            return
        self._discovery_done = True
        local = Path(self.settings.upload_dir).resolve()
        self._discovered = host_path(state.get("Mounts") or [], local)
        if self._discovered:
            log.info("the bot runs in container %s; the Docker host keeps UPLOAD_DIR at %s",
                     container[:12], self._discovered)
        else:
            log.warning("the bot runs in container %s, but UPLOAD_DIR (%s) is not on a mount from the host: "
                        "sandboxes would see an empty /data. Mount it from the host (docker-compose.yml mounts "
                        "./data) or set VM_DATA_HOST_DIR", container[:12], local)

    def _host_dir(self, user: str, session: str) -> str:
        local = self.upload_dir(user, session)
        if not self.data_host_root:
            return str(local)
        # The bot runs in a container: the engine needs the host's path of the same folder.
        relative = local.relative_to(self._data_root())
        return str(Path(self.data_host_root) / relative)

    def config_hash(self) -> str:
        s = self.settings
        key = (f"{s.vm_image}|{s.vm_network}|{s.vm_memory}|{s.vm_cpus}|{s.vm_pids}|{self.data_host_root or ''}|"
               f"{self._data_root()}|{s.vm_userns}|{s.vm_runtime}|v2")
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    # -- the client -------------------------------------------------------
    @property
    def docker(self) -> aiodocker.Docker:
        """One client per event loop, made on first use so a Docker that comes back later is found."""
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
            client.connector._limit = 2 * self.settings.max_running_commands + 64  # noqa: SLF001
            self._client, self._client_loop = client, loop
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.close()

    async def ping(self) -> bool:
        try:
            await self.docker.version()
            return True
        except (SandboxUnavailable, *DOCKER_ERRORS):
            return False

    async def image_present(self, image: str) -> bool:
        try:
            await self.docker.images.inspect(image)
            return True
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise

    async def image_pullable(self, image: str) -> bool:
        """A registry this engine reaches has the image (so the first sandbox can pull it)."""
        try:
            await self.docker._query_json(f"distribution/{image}/json")  # noqa: SLF001 - no public wrapper
            return True
        except (SandboxUnavailable, *DOCKER_ERRORS):
            return False

    # -- lifecycle --------------------------------------------------------
    async def start(self, user: str, session: str) -> None:
        await self._ensure(user, session)

    async def _ensure(self, user: str, session: str, *, allow_recreate: bool = True) -> str:
        """The running container of (user, session), by name: reused, restarted or created."""
        name = self.name(user, session)
        await self.discover_host_root()
        await self.adoption_done()  # never use a container that start-up clean-up is about to remove
        async with self._locks.hold(name):
            with reported_as_unavailable("The sandbox could not be started"):
                state = await self._inspect(name)
                if state is not None and not self._owned_by(state, user, session):
                    raise SandboxUnavailable("This conversation's sandbox name is taken by another one; "
                                             "an operator should look at the container " + name)
                if state is not None and allow_recreate and not self.busy(name) \
                        and state["Config"]["Labels"].get(f"{LABEL}.config") != self.config_hash():
                    log.info("recreating %s: configuration changed", name)
                    await self._delete(name)
                    state = None
                if state is not None and state["State"].get("Paused"):
                    await self.docker.containers.container(name).unpause()
                elif state is not None and not state["State"].get("Running"):
                    try:
                        await self.docker.containers.container(name).start()
                    except aiodocker.DockerError as exc:
                        log.warning("could not restart %s (%s); recreating", name, explain(exc))
                        await self._delete(name)
                        state = None
                if state is None:
                    await self._create(name, user, session)
            self._last_used[name] = time.monotonic()
            self._up.add(name)
            return name

    def _owned_by(self, state: dict[str, Any], user: str, session: str) -> bool:
        labels = state["Config"].get("Labels") or {}
        return (labels.get(f"{LABEL}.app") == self.settings.vm_name_prefix and labels.get(f"{LABEL}.user") == user
                and labels.get(f"{LABEL}.session") == session)

    async def _inspect(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.docker.containers.container(name).show()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise

    async def _delete(self, name: str) -> None:
        try:
            await self.docker.containers.container(name).delete(force=True, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise
        self._last_used.pop(name, None)
        self._up.discard(name)
        self._owner.pop(name, None)

    async def _list(self, *labels: str) -> list[dict[str, Any]]:
        """This deployment's containers (narrowed by more `key=value` labels), running or not."""
        filters = {"label": [f"{LABEL}.app={self.settings.vm_name_prefix}", *labels]}
        return await self.docker._query_json(  # noqa: SLF001 - aiodocker's list() wraps each row
            "containers/json", params={"all": "true", "filters": json.dumps(filters)})

    async def _create(self, name: str, user: str, session: str) -> None:
        # /data's disk is needed only when the container starts (binds are resolved then): make it
        # while Docker creates the container.
        data = asyncio.ensure_future(self.prepare_data(user, session))
        try:
            await self._create_and_start(name, user, session, data)
        finally:
            if not data.done():
                data.cancel()
            await asyncio.gather(data, return_exceptions=True)

    async def _create_and_start(self, name: str, user: str, session: str, data: "asyncio.Future[Path]") -> None:
        s = self.settings
        config: dict[str, Any] = {
            "Image": s.vm_image,
            "Cmd": ["sh", "-c", KEEPALIVE],
            "Labels": {
                f"{LABEL}.app": s.vm_name_prefix,
                f"{LABEL}.user": str(user),
                f"{LABEL}.session": str(session),
                f"{LABEL}.created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                f"{LABEL}.config": self.config_hash(),
            },
            "Hostname": "sandbox",
            "WorkingDir": "/data",
            "Env": [],
            "HostConfig": {
                "Init": True,
                "Binds": [f"{self._host_dir(user, session)}:/data:rw"],
                "Memory": s.vm_memory,
                "MemorySwap": s.vm_memory,
                "NanoCpus": int(s.vm_cpus * 1e9),
                "PidsLimit": s.vm_pids,
                "CapDrop": ["ALL"],
                "CapAdd": CAP_ADD,
                "SecurityOpt": ["no-new-privileges"],
                "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=256m"},
                "NetworkMode": await self._network() if s.vm_network else "none",
                **({"UsernsMode": s.vm_userns} if s.vm_userns else {}),
                **({"Runtime": s.vm_runtime} if s.vm_runtime else {}),
            },
        }
        async with self._locks.hold(("user", user)):  # two channels of one user must not both take the last place
            await self._make_room(user, name)
            for attempt in (1, 2):
                try:
                    container = await self.docker.containers.create(config, name=name)
                    await data
                    await container.start()
                    self._owner[name] = user
                    log.info("started sandbox %s", name)
                    return
                except aiodocker.DockerError as exc:
                    if exc.status == 404 and "image" in str(exc.message).lower() and attempt == 1:
                        await self._pull(s.vm_image)
                        continue
                    # A failed run can leave a "Created" container that blocks the name: clear it.
                    existing = await self._inspect(name)
                    if existing is not None and existing["State"].get("Running"):
                        return
                    if existing is not None:
                        await self._delete(name)
                    if attempt == 2:
                        raise

    @property
    def network_name(self) -> str:
        return f"{self.settings.vm_name_prefix}-sandboxes"

    async def _network(self) -> str:
        """The deployment's own bridge, with traffic between its containers turned off (ICC), so a
        sandbox reaches the internet but never another user's sandbox. Made on first use."""
        name = self.network_name
        async with self._locks.hold(("network", name)):
            if name in self._networks_seen:
                return name
            try:
                await self.docker.networks.get(name)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
                try:
                    await self.docker.networks.create({
                        "Name": name, "Driver": "bridge", "CheckDuplicate": True,
                        "Options": {"com.docker.network.bridge.enable_icc": "false"},
                        "Labels": {f"{LABEL}.app": self.settings.vm_name_prefix},
                    })
                    log.info("created network %s (no traffic between sandboxes)", name)
                except aiodocker.DockerError as exc:
                    if exc.status != 409:  # another process of this deployment made it first
                        raise
            self._networks_seen.add(name)
            return name

    async def _make_room(self, user: str, name: str) -> None:
        """Keep a user within MAX_SANDBOXES_PER_USER: remove their least recently used idle sandbox."""
        cap = self.settings.max_sandboxes_per_user
        if self._census and sum(1 for n, u in self._owner.items() if u == user and n != name) + 1 <= cap:
            return  # well under the cap by what this process knows: no need to ask the engine
        mine = [c for c in await self._list(f"{LABEL}.user={user}") if _name(c) != name]
        excess = len(mine) + 1 - cap
        if excess <= 0:
            return
        idle = [_name(c) for c in mine if not self.busy(_name(c)) and not self._locks.busy(_name(c))]
        idle.sort(key=lambda n: self._last_used.get(n, 0.0))
        if len(idle) < excess:
            line = (f"You already have {len(mine)} sandboxes busy running commands, the most one person may have "
                    f"({cap}). Try again when one of them finishes.")
            raise SandboxUnavailable(line, user=line)
        for victim in idle[:excess]:
            log.info("removing %s to make room for %s (at most %d sandboxes per user)", victim, name, cap)
            await self._delete(victim)

    async def _pull(self, image: str) -> None:
        log.info("pulling image %s", image)
        try:
            await self.docker.images.pull(image, timeout=aiohttp.ClientTimeout(total=PULL_TIMEOUT))
        except aiodocker.DockerError as exc:
            raise SandboxUnavailable(
                f"The sandbox image {image!r} is not on this Docker engine and could not be pulled; "
                f"pull or build it, or set VM_IMAGE") from exc

    # -- /data and the disk quota -----------------------------------------
    async def prepare_data(self, user: str, session: str) -> Path:
        """The session's /data folder, on its own VM_DISK-sized disk image where this host allows."""
        await self.discover_host_root()
        folder = self.upload_dir(user, session)
        async with self._locks.hold(("data", str(folder))):
            problem = await asyncio.get_running_loop().run_in_executor(self._disk_pool, self._prepare, folder)
        self._disk_problem(problem)
        return folder

    def prepare_data_sync(self, user: str, session: str) -> Path:
        """The same, for synchronous callers (ChatSession.upload_document)."""
        folder = self.upload_dir(user, session)
        self._disk_problem(self._prepare(folder))
        return folder

    def _prepare(self, folder: Path) -> str | None:
        if self.data_host_root:  # the bot runs in a container: its mounts would not reach dockerd
            os.makedirs(folder, exist_ok=True)
            return "/data has no hard size when the bot runs in a container"
        return datadisk.prepare(folder, self.settings.vm_disk)

    def _disk_problem(self, problem: str | None) -> None:
        if problem and not self._disk_warned:
            self._disk_warned = True
            log.warning("%s; what a sandbox writes is then bounded only by the disk watch", problem)

    async def delete_data(self, user: str, session: str) -> None:
        """Delete the session's /data now: its image and its folder (the sandbox must be gone)."""
        await self.discover_host_root()
        folder = self.upload_dir(user, session)
        async with self._locks.hold(("data", str(folder))):
            await asyncio.get_running_loop().run_in_executor(self._disk_pool, datadisk.destroy, folder)
            await remove_folder(folder)

    async def disk_used(self, name: str, folder: Path) -> int:
        """Bytes the sandbox holds: its own filesystem's writes (SizeRw) plus /data."""
        state = await self.docker._query_json(f"containers/{name}/json", params={"size": "true"})  # noqa: SLF001
        data = datadisk.used_bytes(folder)
        return int(state.get("SizeRw") or 0) + (data or 0)

    async def enforce_disk(self, names: set[str]) -> list[str]:
        """Stop (remove) each of these sandboxes that holds more than VM_DISK; the names removed.

        Removing it frees what it wrote outside /data at once; /data stays (and cannot grow past
        VM_DISK where it has its own disk). A command running there ends with the reason.
        """
        limit, removed = self.settings.vm_disk, []
        with reported_as_unavailable():
            owners = {_name(r): r["Labels"] for r in await self._list()}
        for name in names & set(owners):
            labels = owners[name]
            folder = self.upload_dir(labels.get(f"{LABEL}.user", ""), labels.get(f"{LABEL}.session", ""))
            try:
                used = await self.disk_used(name, folder)
            except aiodocker.DockerError:
                continue  # gone meanwhile
            if used > limit:
                log.warning("stopping %s: it holds %s, over VM_DISK (%s)", name, human_size(used), human_size(limit))
                self._evicted[name] = used
                await self._delete(name)
                removed.append(name)
        return removed

    def eviction_message(self, name: str) -> str | None:
        used = self._evicted.pop(name, None)
        if used is None:
            return None
        return (f"The sandbox was stopped: it held {human_size(used)}, more than its "
                f"{human_size(self.settings.vm_disk)} of disk. What it wrote outside /data is gone; /data is kept. "
                "Delete what you do not need in /data before writing more.")

    async def remove(self, user: str, session: str) -> bool:
        name = self.name(user, session)
        async with self._locks.hold(name):  # never in the middle of a start-up of the same sandbox
            with reported_as_unavailable():
                if await self._inspect(name) is None:
                    return False
                await self._delete(name)
            return True

    async def adopt(self) -> tuple[list[str], list[str]]:
        """Adopted containers count as used now, so the reaper removes them after one idle period."""
        adopted, removed = [], []
        now = time.monotonic()
        self.expect_adoption()
        assert self._adoption is not None
        done = self._adoption[1]
        try:
            await self.discover_host_root()
            with reported_as_unavailable():
                for row in await self._list():
                    name = _name(row)
                    if row["Labels"].get(f"{LABEL}.config") == self.config_hash() and row["State"] == "running":
                        self._last_used.setdefault(name, now)
                        self._owner[name] = row["Labels"].get(f"{LABEL}.user", "")
                        self.leftovers[name] = (self._owner[name], row["Labels"].get(f"{LABEL}.session", ""))
                        self._up.add(name)  # seen running: its first command goes straight to exec
                        adopted.append(name)
                    else:
                        async with self._locks.hold(name):
                            await self._delete(name)
                        removed.append(name)
        finally:
            done.set()
        self._census = True
        return adopted, removed

    def expect_adoption(self) -> None:
        """Adoption is about to run: from now on, sandbox start-ups and commands wait for it."""
        loop = asyncio.get_running_loop()
        if self._adoption is None or self._adoption[1].is_set() or self._adoption[0] is not loop:
            self._adoption = (loop, asyncio.Event())

    def release_adoption(self) -> None:
        """Adoption will not run after all (the process stops first): nothing may wait for it."""
        if self._adoption is not None:
            self._adoption[1].set()

    async def adoption_done(self) -> None:
        if self._adoption is not None and self._adoption[0] is asyncio.get_running_loop():
            await self._adoption[1].wait()

    async def reap(self, idle_seconds: float | None = None) -> list[str]:
        limit = self.settings.vm_idle_timeout if idle_seconds is None else idle_seconds
        now = time.monotonic()
        removed = []
        with reported_as_unavailable():
            rows = await self._list()
            present = {_name(r) for r in rows}
            for name in [n for n in self._last_used if n not in present]:
                self._last_used.pop(name, None)  # gone behind our back: forget it
            self._up &= present
            for name in present:
                if self.busy(name) or self._locks.busy(name):
                    continue
                last = self._last_used.setdefault(name, now)
                if now - last >= limit:
                    async with self._locks.hold(name):
                        if self.busy(name):
                            continue
                        await self._delete(name)
                    removed.append(name)
                    log.info("removed idle sandbox %s", name)
        return removed

    async def info(self) -> list[SandboxInfo]:
        now = time.monotonic()
        with reported_as_unavailable():
            rows = await self._list()
        return [SandboxInfo(_name(r), r["Labels"].get(f"{LABEL}.user", "?"), r["Labels"].get(f"{LABEL}.session", "?"),
                            r["State"], self.idle_for(_name(r), now)) for r in rows]

    # -- commands ---------------------------------------------------------
    async def exec(self, user: str, session: str, argv: Sequence[str], on_output: OutputSink, *,
                   on_start: Callable[[], None] | None = None, recreate: bool = True) -> int:
        execution = await self._exec_create(user, session, list(argv), recreate)
        try:
            async with execution.start(detach=False) as stream:  # the command runs from here on
                if on_start is not None:
                    on_start()
                while True:
                    message = await stream.read_out()
                    if message is None:
                        break
                    on_output(message.stream, message.data)
        except DOCKER_ERRORS as exc:
            reason = self.eviction_message(self.name(user, session))
            if reason:
                raise SandboxUnavailable(reason, user=reason) from exc
            raise SandboxUnavailable(f"Lost contact with Docker while the command ran: {explain(exc)}") from exc
        try:
            return await self._exit_code(execution)
        except SandboxUnavailable as exc:
            reason = self.eviction_message(self.name(user, session))
            if reason:
                raise SandboxUnavailable(reason, user=reason) from exc
            raise

    async def _exec_create(self, user: str, session: str, argv: list[str], recreate: bool) -> Any:
        """The exec, in the sandbox as it is; a sandbox that is gone is started once and tried again."""
        name = self.name(user, session)
        for attempt in (1, 2):
            if name not in self._up:
                if not recreate:
                    raise SandboxUnavailable("The sandbox is not running.")
                await self._ensure(user, session, allow_recreate=False)
            try:
                return await self.docker.containers.container(name).exec(argv, stdout=True, stderr=True)
            except DOCKER_ERRORS as exc:
                if attempt == 2 or not _is_gone(exc):
                    raise SandboxUnavailable(f"The command could not run: {explain(exc)}") from exc
                log.warning("sandbox %s cannot run commands (%s); starting it again", name, explain(exc))
                self._up.discard(name)
        raise AssertionError("unreachable")

    async def _exit_code(self, execution: Any) -> int:
        deadline = time.monotonic() + EXIT_CODE_WAIT
        with reported_as_unavailable("Lost contact with Docker while the command ran"):
            while True:
                state = await execution.inspect()
                if not state.get("Running") and state.get("ExitCode") is not None:
                    return int(state["ExitCode"])
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
        raise SandboxUnavailable("The command's output ended but Docker never reported how it exited.")

    # -- files ------------------------------------------------------------
    async def read_file(self, user: str, session: str, path: str, max_bytes: int) -> bytes:
        name = await self._ensure(user, session, allow_recreate=False)
        stat = await self._stat(name, path)
        if int(stat.get("mode", 0)) & GO_FILE_TYPE_BITS:
            raise SandboxFileError(f"{path} is not a regular file.")
        if int(stat.get("size", 0)) > max_bytes:
            raise SandboxFileTooLarge(f"{path} is {stat.get('size')} bytes, over the {max_bytes}-byte limit.")
        too_big = SandboxFileTooLarge(f"{path} is over the {max_bytes}-byte limit.")
        body = bytearray()
        with reported_as_unavailable(refused=f"{path} could not be read"):  # streamed with a cap: it may have grown
            # identity: aiohttp asks for gzip by default, and the engine then compresses the tar on the fly,
            # which costs more than it saves on a local socket (twice as slow for 5 MB).
            async with self.docker._query(f"containers/{name}/archive", params={"path": path},  # noqa: SLF001
                                          headers={"Accept-Encoding": "identity"}) as response:
                async for chunk in response.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > max_bytes + TAR_OVERHEAD:
                        raise too_big
        with tarfile.open(fileobj=io.BytesIO(bytes(body))) as archive:
            member = next((m for m in archive.getmembers() if m.isreg()), None)
            handle = archive.extractfile(member) if member is not None else None
            if handle is None:
                raise SandboxFileError(f"{path} is not a regular file.")
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_big
        return data

    async def _stat(self, name: str, path: str) -> dict[str, Any]:
        """The engine's stat of a path (HEAD on the archive endpoint: no bytes move).

        aiodocker's own query reads an error's JSON body, which a HEAD answer never has.
        """
        docker = self.docker
        with reported_as_unavailable():
            await docker._check_version()  # noqa: SLF001
            url = docker._canonicalize_url(f"containers/{name}/archive", versioned_api=True)  # noqa: SLF001
            async with docker.session.head(url, params={"path": path}) as response:
                status, header = response.status, response.headers.get("X-Docker-Container-Path-Stat", "")
        if status == 404:
            raise SandboxFileError(f"{path} does not exist in the sandbox.")
        if status >= 400 or not header:
            raise SandboxFileError(f"{path} could not be read (Docker answered {status}).")
        return json.loads(base64.b64decode(header))

    async def write_file(self, user: str, session: str, path: str, data: bytes) -> None:
        if not path.startswith("/") or path.endswith("/"):
            raise SandboxFileError(f"{path} must be an absolute path to a file.")
        folder, base = posixpath.split(posixpath.normpath(path))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            member = tarfile.TarInfo(base)
            member.size, member.mode, member.mtime = len(data), 0o644, int(time.time())
            tar.addfile(member, io.BytesIO(data))
        name = await self._ensure(user, session, allow_recreate=False)
        with reported_as_unavailable(refused=f"{path} could not be written"):
            await self.docker.containers.container(name).put_archive(folder, buffer.getvalue())


def _name(row: dict[str, Any]) -> str:
    return row["Names"][0].lstrip("/")
