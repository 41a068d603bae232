"""The Docker provider of the sandbox face: one persistent, locked-down container per (user, session).

Containers are named and labelled (naming.py) so that a restarted process finds (adopts) them
again, and so that the reaper can remove idle ones even when this process did not create them.
Each conversation's /data is a folder below UPLOAD_DIR, on a disk image of its own where the host
allows (diskimage.py), bind-mounted into its container. Every call to the engine goes through one
asyncio client (engine.py); files go in and out as one-file tars (archive.py); the disk watch
weighs and stops sandboxes (watch.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import aiodocker
import aiohttp

from ...config import Settings
from ...errors import SandboxUnavailable
from ..base import STDOUT, Attached, OutputSink, Provider, Sandbox, SandboxInfo
from ..locks import KeyedLocks
from ..quota import UserDisk
from ..workspace import folders_of, remove_folder, session_of
from . import archive, busybox, diskimage
from .engine import (DOCKER_ERRORS, PULL_TIMEOUT, REQUEST_TIMEOUT, Engine, explain, is_gone,
                     reported_as_unavailable)
from .hostmount import ensure_nosuid, host_path, own_container_id, propagates
from .naming import (LABEL, key_of, legacy_slug, name_of_folder, row_name, sandbox_name, session_folder,
                     user_folder)
from .watch import DiskWatch

log = logging.getLogger(__name__)

# PID 1's child: sleeps forever but stops at once on SIGTERM, in any POSIX shell.
KEEPALIVE = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
# What the image may need back after cap_drop=ALL (package managers chown and switch users).
CAP_ADD = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"]
EXIT_CODE_WAIT = 2.0  # an exec's exit code can land a moment after its output ends
BUSY_WAIT = 3.0  # seconds a /data image still attached to a loop device is waited for before "busy"
# What a sandbox sees in /etc instead of Docker's writable host files. 127.0.0.11 is Docker's own
# DNS on a network of the deployment's own (the only network a sandbox is ever on).
ETC_FILES = {
    "hostname": "sandbox\n",
    "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsandbox\n",
    "resolv.conf": "nameserver 127.0.0.11\noptions ndots:0\n",
}


class DockerSandbox(Sandbox):
    """One conversation's container: commands by exec, files through the archive endpoint."""

    provider: "DockerProvider"

    async def _exec(self, argv: Sequence[str], on_output: OutputSink, on_start: Callable[[], None] | None,
                    recreate: bool) -> int:
        execution = await self._exec_create(list(argv), recreate)
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
            reason = self.eviction_message()
            if reason:
                raise SandboxUnavailable(reason, user=reason) from exc
            raise SandboxUnavailable(f"Lost contact with Docker while the command ran: {explain(exc)}") from exc
        try:
            return await self._exit_code(execution)
        except SandboxUnavailable as exc:
            reason = self.eviction_message()
            if reason:
                raise SandboxUnavailable(reason, user=reason) from exc
            raise

    @asynccontextmanager
    async def attach(self, argv: Sequence[str], *, env: dict[str, str] | None = None, workdir: str = "/data",
                     on_stderr: Callable[[bytes], None] | None = None) -> AsyncIterator[Attached]:
        """An exec with stdin attached, over the engine's hijacked stream (aiodocker's write_in/read_out)."""
        execution = await self._exec_create(list(argv), True, stdin=True, environment=env or None, workdir=workdir)
        stream = execution.start(detach=False)
        with reported_as_unavailable("The process could not be started in the sandbox"):
            await stream.__aenter__()
        try:
            yield _DockerAttached(stream, on_stderr)
        finally:
            try:
                await stream.close()  # end of its input: a stdio server exits on it
            except DOCKER_ERRORS:
                pass

    async def _exec_create(self, argv: list[str], recreate: bool, **options: Any) -> Any:
        """The exec, in the sandbox as it is; a sandbox that is gone is started once and tried again."""
        provider, name = self.provider, self.name
        for attempt in (1, 2):
            if name not in provider._up:  # noqa: SLF001
                if not recreate:
                    raise SandboxUnavailable("The sandbox is not running.")
                await provider._ensure(self.user, self.session, allow_recreate=False)  # noqa: SLF001
            try:
                return await provider.docker.containers.container(name).exec(argv, stdout=True, stderr=True,
                                                                              **options)
            except DOCKER_ERRORS as exc:
                if attempt == 2 or not is_gone(exc):
                    raise SandboxUnavailable(f"The command could not run: {explain(exc)}") from exc
                log.warning("sandbox %s cannot run commands (%s); starting it again", name, explain(exc))
                provider._up.discard(name)  # noqa: SLF001
        raise AssertionError("unreachable")

    @staticmethod
    async def _exit_code(execution: Any) -> int:
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

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        provider = self.provider
        name = await provider._ensure(self.user, self.session, allow_recreate=False)  # noqa: SLF001
        with reported_as_unavailable():
            status, header = await provider.engine.stat_path(name, path)
        archive.check_stat(path, archive.parse_stat(path, status, header), max_bytes)
        too_big = archive.too_large(path, max_bytes)
        body = bytearray()
        with reported_as_unavailable(refused=f"{path} could not be read"):  # streamed with a cap: it may have grown
            async with provider.engine.get_archive(name, path) as response:
                async for chunk in response.content.iter_chunked(archive.CHUNK):
                    body += chunk
                    if len(body) > max_bytes + archive.TAR_OVERHEAD:
                        raise too_big
        data = archive.unpack_one(path, bytes(body), max_bytes)
        if len(data) > max_bytes:
            raise too_big
        return data

    async def write_file(self, path: str, data: bytes) -> None:
        folder, tar = archive.pack_one(path, data)
        provider = self.provider
        name = await provider._ensure(self.user, self.session, allow_recreate=False)  # noqa: SLF001
        with reported_as_unavailable(refused=f"{path} could not be written"):
            await provider.docker.containers.container(name).put_archive(folder, tar)

    async def share_disk(self) -> None:
        """Before a command: this conversation gets its share of what USER_DISK leaves the person."""
        provider = self.provider
        folder = self.data_dir
        provider._folders[self.name] = folder  # noqa: SLF001
        root = folder.parent
        await asyncio.get_running_loop().run_in_executor(
            provider._disk_pool, diskimage.rebalance, root, provider.settings,  # noqa: SLF001
            provider._active(root) | {folder})  # noqa: SLF001

    async def disk_note(self) -> str | None:
        provider = self.provider
        folder = self.data_dir
        try:
            disk = await provider.user_disk(self.user)
            limited = await asyncio.get_running_loop().run_in_executor(provider._disk_pool, disk.limits,  # noqa: SLF001
                                                                       folder)
        except OSError:
            return None
        return disk.full_line() if limited else None

    def eviction_message(self) -> str | None:
        return self.provider.watch.eviction_message(self.name)


class _DockerAttached(Attached):
    """A process's standard streams, multiplexed over one engine connection."""

    def __init__(self, stream: Any, on_stderr: Callable[[bytes], None] | None) -> None:
        self._stream = stream
        self._on_stderr = on_stderr

    async def read(self) -> bytes | None:
        while True:
            try:
                message = await self._stream.read_out()
            except DOCKER_ERRORS:
                return None  # the sandbox went away under it: the same as the end of its output
            if message is None:
                return None
            if message.stream == STDOUT:
                return message.data
            if self._on_stderr is not None:
                self._on_stderr(message.data)

    async def write(self, data: bytes) -> None:
        with reported_as_unavailable("The process in the sandbox cannot be written to"):
            try:
                await self._stream.write_in(data)
            except (RuntimeError, AssertionError) as exc:  # aiodocker: a closed or dropped transport
                raise SandboxUnavailable(f"The process in the sandbox has ended ({exc}).") from exc


class DockerProvider(Provider):
    """Creates, finds, reuses and removes the sandboxes of one deployment, on one Docker engine."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.engine = Engine(lambda: 2 * self.settings.max_running_commands + 64)
        self.watch = DiskWatch(self)
        self._locks = KeyedLocks()  # by container name, and ("user", id) for the per-user cap
        self._up: set[str] = set()  # names this process saw running: commands go straight to exec
        self._root_ready = False
        self._networks_seen: set[str] = set()
        self._disk_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sandbox-disk")  # mkfs, mount: waits, mostly
        self._disk_warned = False
        self._folders: dict[str, Path] = {}  # name -> its /data folder, for the sandboxes commands ran in
        self._owner: dict[str, str] = {}  # name -> user, for the sandboxes this process knows exist
        self._census = False  # adopt() has seen every sandbox there was at start-up
        # Unset while adopt() sorts out what a restart found (made on the loop that adopts).
        self._adoption: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._discovered: str | None = None  # UPLOAD_DIR on the Docker host, found from the bot's own container
        self._discovery_done = False

    # -- naming -----------------------------------------------------------
    def get(self, user: str, session: str) -> DockerSandbox:
        return DockerSandbox(self, user, session)

    def name(self, user: str, session: str) -> str:
        return sandbox_name(self.settings.vm_name_prefix, user, session)

    def user_root(self, user: str) -> Path:
        """The folder that holds every /data of one person (what USER_DISK bounds)."""
        return self._data_root() / user_folder(user)

    def data_dir(self, user: str, session: str) -> Path:
        folder = self.user_root(user) / session_folder(user, session)
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
        # The bot may run in a container: the engine needs the host's path of the same folder.
        return self._host_path(self.data_dir(user, session))

    def config_hash(self) -> str:
        s = self.settings
        key = (f"{s.vm_image}|{s.vm_network}|{s.vm_memory}|{s.vm_cpus}|{s.vm_pids}|{self.data_host_root or ''}|"
               f"{self._data_root()}|{s.vm_userns}|{s.vm_runtime}|tools={bool(self._tool_binds())}|v4")
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    @property
    def busybox(self) -> str | None:
        """The bot's static busybox at busybox.BUSYBOX in every sandbox (this provider mounts it: see
        _tool_binds), or None when the host has none."""
        return busybox.BUSYBOX if busybox.provide(Path(self.settings.upload_dir)) else None

    # -- the client -------------------------------------------------------
    @property
    def docker(self) -> aiodocker.Docker:
        """The engine's client on this event loop (engine.py)."""
        return self.engine.client

    async def close(self) -> None:
        """Release the Docker client's connections and the disk pool's threads (a mkfs or mount under
        way finishes first). Both come back on next use: the client is made on demand, and the fresh
        pool starts no thread until it is given work."""
        await self.watch.settled()  # a sandbox the watch stopped goes first
        await self.engine.close()
        pool, self._disk_pool = self._disk_pool, ThreadPoolExecutor(max_workers=8, thread_name_prefix="sandbox-disk")
        await asyncio.to_thread(pool.shutdown, wait=True)

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
            await self.engine.distribution(image)
            return True
        except (SandboxUnavailable, *DOCKER_ERRORS):
            return False

    # -- lifecycle --------------------------------------------------------
    async def start(self, user: str, session: str) -> DockerSandbox:
        await self._ensure(user, session)
        return self.get(user, session)

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
                    await self.prepare_data(user, session)  # its image may be unmounted (a reboot, a release)
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
        self._up.discard(name)  # from now on a command goes through _ensure, never straight to exec here
        try:
            await self.docker.containers.container(name).delete(force=True, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        except aiodocker.DockerError as exc:
            if exc.status == 409 and "in progress" in str(exc.message).lower():
                await self._removed(name)  # another path is removing it: done once that finishes
            elif exc.status != 404:
                raise
        self._last_used.pop(name, None)
        self._up.discard(name)
        self._owner.pop(name, None)

    async def _removed(self, name: str, seconds: float = 30.0) -> None:
        """Wait until the engine has finished removing a container."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and await self._inspect(name) is not None:
            await asyncio.sleep(0.1)

    async def _list(self, *labels: str) -> list[dict[str, Any]]:
        """This deployment's containers (narrowed by more `key=value` labels), running or not."""
        return await self.engine.containers({"label": [f"{LABEL}.app={self.settings.vm_name_prefix}", *labels]})

    async def _create(self, name: str, user: str, session: str) -> None:
        # /data's disk is needed only when the container starts (mounts are made then): mount it while
        # Docker creates the container, which needs only the folder to exist (it checks a bind's source).
        self.data_dir(user, session).mkdir(parents=True, exist_ok=True)
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
                "Binds": [*self._etc_binds(), *self._tool_binds()],
                # A Mount, not a Bind: a missing source is an error, never a folder Docker makes (and
                # no image bounds), e.g. when /reset files:true deleted it a moment before.
                "Mounts": [{"Type": "bind", "Source": self._host_dir(user, session), "Target": "/data",
                            "ReadOnly": False}],
                "Memory": s.vm_memory,
                "MemorySwap": s.vm_memory,
                "NanoCpus": int(s.vm_cpus * 1e9),
                "PidsLimit": s.vm_pids,
                "CapDrop": ["ALL"],
                "CapAdd": CAP_ADD,
                "SecurityOpt": ["no-new-privileges"],
                "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=256m"},
                # No log on the host: PID 1's output would otherwise grow a json file there without
                # bound (SizeRw never sees it). The bot reads output from its exec streams only.
                "LogConfig": {"Type": "none", "Config": {}},
                # Open files per process: bounds what the watch reads to find deleted-but-open files.
                "Ulimits": [{"Name": "nofile", "Soft": 4096, "Hard": 4096}],
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

    def _etc_binds(self) -> list[str]:
        """/etc/hosts, /etc/hostname and /etc/resolv.conf, read-only: Docker's own are files of the
        host that a sandbox's root could write gigabytes into, where no watch weighs them. A
        read-only mount there makes Docker mount its own files read-only too."""
        folder = self._data_root() / ".etc"
        if not folder.is_dir():
            folder.mkdir(mode=0o755, exist_ok=True)
        binds = []
        for name, text in ETC_FILES.items():
            path = folder / name
            if not path.exists() or path.read_text() != text:
                part = path.with_suffix(".part")
                part.write_text(text)
                part.chmod(0o644)
                os.replace(part, path)
            binds.append(f"{self._host_path(path)}:/etc/{name}:ro")
        return binds

    def _host_path(self, local: Path) -> str:
        """A path below UPLOAD_DIR as the Docker host sees it (the bot may run in a container)."""
        if not self.data_host_root:
            return str(local)
        return str(Path(self.data_host_root) / local.relative_to(self._data_root()))

    def _tool_binds(self) -> list[str]:
        """The bot's own static tools, read-only: what the terminal's wrapper and kill run. The folder,
        not the file, is mounted: a sandbox cannot rename a mount point to plant its own file there."""
        folder = busybox.provide(self._data_root())
        return [] if folder is None else [f"{self._host_path(folder)}:{busybox.MOUNT}:ro"]

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
        mine = [c for c in await self._list(f"{LABEL}.user={user}") if row_name(c) != name]
        excess = len(mine) + 1 - cap
        if excess <= 0:
            return
        idle = [row_name(c) for c in mine if not self.busy(row_name(c)) and not self._locks.busy(row_name(c))]
        idle.sort(key=lambda n: self._last_used.get(n, 0.0))
        if len(idle) < excess:
            line = (f"You already have {len(mine)} sandboxes busy running commands, the most one person may have "
                    f"({cap}). Try again when one of them finishes.")
            raise SandboxUnavailable(line, user=line)
        for victim in idle[:excess]:
            if self.busy(victim) or self._locks.busy(victim):
                continue  # a command started there meanwhile: spared (the cap is one over, briefly)
            log.info("removing %s to make room for %s (at most %d sandboxes per user)", victim, name, cap)
            await self._delete(victim)
        await self.release_data()

    async def _pull(self, image: str) -> None:
        log.info("pulling image %s", image)
        try:
            await self.docker.images.pull(image, timeout=aiohttp.ClientTimeout(total=PULL_TIMEOUT))
        except aiodocker.DockerError as exc:
            raise SandboxUnavailable(
                f"The sandbox image {image!r} is not on this Docker engine and could not be pulled; "
                f"pull or build it, or set VM_IMAGE") from exc

    async def remove(self, user: str, session: str) -> bool:
        name = self.name(user, session)
        async with self._locks.hold(name):  # never in the middle of a start-up of the same sandbox
            with reported_as_unavailable():
                if await self._inspect(name) is None:
                    return False
                await self._delete(name)
        await self.release_data()
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
                    name = row_name(row)
                    if row["Labels"].get(f"{LABEL}.config") == self.config_hash() and row["State"] == "running":
                        self._last_used.setdefault(name, now)
                        self._owner[name] = row["Labels"].get(f"{LABEL}.user", "")
                        self._leftovers[name] = (self._owner[name], row["Labels"].get(f"{LABEL}.session", ""))
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
            present = {row_name(r) for r in rows}
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
        await self.release_data()  # also what a crash, a reboot or another process left mounted
        return removed

    async def info(self) -> list[SandboxInfo]:
        now = time.monotonic()
        with reported_as_unavailable():
            rows = await self._list()
        return [SandboxInfo(row_name(r), r["Labels"].get(f"{LABEL}.user", "?"), r["Labels"].get(f"{LABEL}.session", "?"),
                            r["State"], self.idle_for(row_name(r), now)) for r in rows]

    # -- /data and the disk quota -----------------------------------------
    async def prepare_data(self, user: str, session: str) -> Path:
        """The session's /data folder, on its own VM_DISK-sized disk image where this host allows."""
        await self.discover_host_root()
        folder = self.data_dir(user, session)
        async with self._locks.hold(("data", str(folder))):
            loop, waited = asyncio.get_running_loop(), 0.0
            while True:
                try:
                    problem = await loop.run_in_executor(self._disk_pool, self._prepare, folder)
                    break
                except diskimage.DiskBusy as exc:
                    # A sandbox just removed lets go of its loop device a moment after its unmount
                    # (the kernel detaches it lazily): wait that out rather than refuse at once.
                    if waited < BUSY_WAIT:
                        await asyncio.sleep(0.1)
                        waited += 0.1
                        continue
                    log.warning("not mounting %s: %s", folder, exc)
                    raise SandboxUnavailable("This conversation's files are still in use elsewhere; try again in a "
                                             "moment.", user="This conversation's files are busy; try again in a "
                                                             "moment.") from exc
        self._disk_problem(problem)
        return folder

    def prepare_data_sync(self, user: str, session: str) -> Path:
        """The same, for synchronous callers (ChatSession.upload_document)."""
        folder = self.data_dir(user, session)
        try:
            self._disk_problem(self._prepare(folder))
        except diskimage.DiskBusy as exc:
            raise SandboxUnavailable("This conversation's files are busy; try again in a moment.") from exc
        return folder

    def _prepare(self, folder: Path) -> str | None:
        if self.data_host_root and not propagates(self._data_root()):
            # The bot runs in a container whose data mount does not share its mounts with the host:
            # an image mounted here would never reach the sandbox. /data is then weighed by the watch.
            os.makedirs(folder, exist_ok=True)
            return ("/data has no hard size: the bot runs in a container whose data folder is not mounted "
                    "with rshared propagation (see docker-compose.yml)")
        problem = diskimage.prepare(folder, self.settings.vm_disk, self.settings.vm_inodes)
        if problem is None:  # its share of the person's USER_DISK, before anything writes there
            diskimage.rebalance(folder.parent, self.settings, self._active(folder.parent) | {folder})
        return problem

    def _active(self, user_root: Path) -> frozenset[Path]:
        """The /data folders of this person whose sandboxes run a command now."""
        return frozenset(f for n, f in list(self._folders.items()) if f.parent == user_root and self.busy(n))

    def _disk_problem(self, problem: str | None) -> None:
        if problem and not self._disk_warned:
            self._disk_warned = True
            log.warning("%s; what a sandbox writes is then bounded only by the disk watch", problem)

    async def delete_data(self, user: str, session: str) -> None:
        """Delete the session's /data now: its image and its folder (the sandbox must be gone)."""
        await self.discover_host_root()
        folder, name = self.data_dir(user, session), self.name(user, session)
        # Under the name's lock too (start-ups hold it from inspect to start): a sandbox started a moment
        # ago (a message right after /reset) goes first, and none starts until the folder is gone.
        async with self._locks.hold(name), self._locks.hold(("data", str(folder))):
            with reported_as_unavailable():
                if await self._inspect(name) is not None:
                    await self._delete(name)
            await asyncio.get_running_loop().run_in_executor(self._disk_pool, diskimage.destroy, folder)
            await remove_folder(folder)

    async def delete_person(self, user: str) -> tuple[int, int]:
        """Every sandbox of the person (found by its label) and every /data folder (found in their own
        folder), each through delete_data and its locks; then their own folder, once empty."""
        await self.discover_host_root()
        with reported_as_unavailable():
            rows = await self._list(f"{LABEL}.user={user}")
        sessions = [s for s in (row["Labels"].get(f"{LABEL}.session", "") for row in rows) if s]
        folders = 0
        for session in sessions:
            folders += self.data_dir(user, session).exists()
            await self.delete_data(user, session)
        root, loop = self.user_root(user), asyncio.get_running_loop()
        for folder in await loop.run_in_executor(self._disk_pool, folders_of, root):
            session = session_of(folder)
            if folder.name == session_folder(user, session):
                await self.delete_data(user, session)
            else:  # a name that does not spell its session back (not a Discord id): by its folder alone
                async with self._locks.hold(("data", str(folder))):
                    await loop.run_in_executor(self._disk_pool, diskimage.destroy, folder)
                    await remove_folder(folder)
            folders += 1
        legacy = self._data_root() / legacy_slug(user)  # folders named before exact digests, never used since
        if legacy.is_dir():
            for folder in await loop.run_in_executor(self._disk_pool, folders_of, legacy):
                async with self._locks.hold(("data", str(folder))):
                    await loop.run_in_executor(self._disk_pool, diskimage.destroy, folder)
                folders += 1
            await remove_folder(legacy)
        try:
            root.rmdir()  # their own folder (it names them); a conversation starting meanwhile keeps it
        except OSError:
            pass
        return len(sessions), folders

    async def release_data(self) -> list[Path]:
        """Unmount the /data images no sandbox uses any more (removed, reaped, stopped for its disk,
        or gone behind our back): mounts follow live sandboxes, not every conversation ever had.
        An image is never unmounted while its sandbox exists, so it is never mounted twice."""
        root = self._data_root()
        loop = asyncio.get_running_loop()
        mounted = await loop.run_in_executor(self._disk_pool, diskimage.mounted_under, root)
        if not mounted:
            return []
        with reported_as_unavailable():
            live = {key_of(row_name(r)) for r in await self._list()}
        released = []
        for folder in mounted:
            key = key_of(folder.name)  # digest(user, session): in the sandbox's name too
            if key in live or folder.parent.parent != root or folder.name.endswith(".moving") \
                    or self._locks.busy(("data", str(folder))):
                continue  # in use, not a conversation's /data, or a move into its image under way
            name = name_of_folder(self.settings.vm_name_prefix, folder)
            if self._in_hand(key):
                continue  # a sandbox of this conversation is being started or used right now
            # Under its name's lock (which every start-up holds from inspect to start) and with the
            # engine asked again: a sandbox started since the list above keeps its image mounted.
            async with self._locks.hold(name), self._locks.hold(("data", str(folder))):
                with reported_as_unavailable():
                    if self._running(key) or await self._inspect(name) is not None:
                        continue
                problem = await loop.run_in_executor(self._disk_pool, diskimage.release, folder)
            if problem:
                log.warning("could not unmount %s: %s", folder, problem)
            else:
                released.append(folder)
        if released:
            log.info("unmounted %d /data image(s) no sandbox uses", len(released))
        return released

    def _in_hand(self, key: str) -> bool:
        """A sandbox of this conversation (`key`: the digest ending its name) is being started,
        used or removed by this process right now."""
        return self._running(key) or any(isinstance(k, str) and k.endswith("-" + key) for k in self._locks.held())

    def _running(self, key: str) -> bool:
        """A command (or an upload, a listing) is using this conversation's sandbox right now."""
        return any(n.endswith("-" + key) for n in self._busy)

    async def user_disk(self, user: str) -> UserDisk:
        """What one person's conversations hold in /data, against USER_DISK."""
        await self.discover_host_root()
        root = self.user_root(user)
        return await asyncio.get_running_loop().run_in_executor(self._disk_pool, diskimage.user_disk, root,
                                                                self.settings)

    async def enforce_disk(self, names: set[str]) -> list[str]:
        """The disk watch's pass over these sandboxes (watch.py); the names stopped."""
        return await self.watch.enforce_disk(names)
