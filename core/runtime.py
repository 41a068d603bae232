"""The process-wide parts every ChatSession shares: history, sandboxes, registry, Ollama client."""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import ollama

from .config import Settings
from .context import Seen, TokenCounter
from .errors import OLLAMA_UNREACHABLE, EngineError, ModelError, OllamaUnavailable
from .incidents import Incidents
from .model_client import ModelClient
from .outputs import OutputStore
from .preflight import model_problem
from .registry import Key, SessionRegistry
from .sandbox import Terminal
from .sandbox.docker import DockerProvider
from .store import Audit, Scope, SessionInfo, Store
from .tool_loop import TurnRunner
from .uploads import UploadStore

log = logging.getLogger(__name__)
RETENTION_INTERVAL = 3600.0  # seconds between sweeps of old audit rows and old /data folders
DISK_WATCH_SECONDS = 1.0  # how often sandboxes in use are weighed against VM_DISK
DISK_WATCH_RECENT = 60.0  # "in use": running a command, or used within this many seconds
DISK_WATCH_RECENT_SECONDS = 5.0  # how often sandboxes used lately (but idle now) are weighed
DISK_WATCH_ALL_SECONDS = 10.0  # every sandbox (background jobs write too) this often
CAPABILITIES_TTL = 300.0  # seconds a model's /api/show capabilities are trusted


class Runtime:
    """Built once per process (or per test) from one Settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.database_url, settings)  # conversations, the audit log, place settings
        self.history = self.store.history
        self.places = self.store.places  # persona and model per channel and server
        self.sandboxes = DockerProvider(settings)  # the sandbox face (core/sandbox/base.py): Provider
        self.terminal = Terminal(self.sandboxes)
        self.registry = SessionRegistry()
        self.incidents = Incidents()
        self.outputs = OutputStore()  # cut commands' whole outputs, for the user to download
        self.uploads = UploadStore(settings.upload_max_file_bytes, settings.upload_max_session_bytes)
        self.turns = TurnRunner(self)
        self._ollama: tuple[asyncio.AbstractEventLoop, ollama.AsyncClient] | None = None
        self._reaper: asyncio.Task[Any] | None = None
        self._disk_watch: asyncio.Task[Any] | None = None
        self._watch_problem: tuple[str, float] = ("", 0.0)
        self._warming: dict[Key, asyncio.Task[Any]] = {}
        self._capabilities: dict[str, tuple[float, frozenset[str]]] = {}
        self._context_lengths: dict[str, int | None] = {}
        # Decoding pictures for vision models: CPU work, kept off the loop and off the default executor.
        self.image_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="images")
        self.told_no_vision: set[Key] = set()  # sessions told once that their model cannot see images
        self.tokens = TokenCounter()  # characters to tokens, per model, learned from the server's counts
        self.context_seen: dict[Key, Seen] = {}  # how much of each conversation the model saw last

    async def capabilities(self, model: str) -> frozenset[str]:
        """What `model` can do, per Ollama's /api/show ("tools", "vision", …); cached for a few
        minutes. Empty when the server does not say (older Ollama) or cannot be asked now."""
        now = time.monotonic()
        cached = self._capabilities.get(model)
        if cached is not None and now - cached[0] < CAPABILITIES_TTL:
            return cached[1]
        try:
            shown = await asyncio.wait_for(self.ollama().show(model), self.settings.ollama_connect_timeout + 5)
        except (*OLLAMA_UNREACHABLE, ollama.ResponseError, asyncio.TimeoutError) as exc:
            log.debug("could not ask Ollama what %s can do: %r", model, exc)
            return frozenset()
        found = frozenset(getattr(shown, "capabilities", None) or ())
        self._capabilities[model] = (now, found)
        info = getattr(shown, "modelinfo", None) or {}
        lengths = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int)]
        self._context_lengths[model] = lengths[0] if lengths else None
        return found

    async def context_length(self, model: str) -> int | None:
        """The most context `model` was trained for (Ollama's /api/show model_info), or None."""
        await self.capabilities(model)
        return self._context_lengths.get(model)

    def ollama(self) -> ollama.AsyncClient:
        """One client (one connection pool) per event loop."""
        loop = asyncio.get_running_loop()
        if self._ollama is None or self._ollama[0] is not loop:
            s = self.settings
            # read: the longest silence allowed between two bytes of a reply (a hung server ends the turn)
            timeout = httpx.Timeout(connect=s.ollama_connect_timeout, read=s.ollama_stall_timeout,
                                    write=s.ollama_stall_timeout, pool=s.ollama_connect_timeout)
            self._ollama = (loop, ModelClient(host=s.ollama_host, timeout=timeout))
        return self._ollama[1]

    async def switch_model(self, scope: Scope, model: str | None, *, by: str) -> None:
        """Use `model` for turns in `scope` from the next one on (None: as the wider place says),
        after checking that the Ollama server has it and that it can call tools."""
        if model is not None:
            try:
                problem, _known = await asyncio.wait_for(model_problem(self.ollama(), model),
                                                         self.settings.ollama_connect_timeout + 5)
            except (*OLLAMA_UNREACHABLE, asyncio.TimeoutError) as exc:
                raise OllamaUnavailable(f"Ollama is not reachable at {self.settings.ollama_host} ({exc!r}), "
                                        "so the model was not changed.",
                                        user="The AI model server is unreachable, so the model was not changed.") \
                    from exc
            except ollama.ResponseError as exc:
                line = f"Ollama could not describe {model!r}: {str(exc.error)[:200]}; the model was not changed."
                raise ModelError(line, user=line) from exc
            if problem:  # an admin reads this: the model's name and what it lacks, nothing of the host
                line = problem[0].upper() + problem[1:] + "; the model was not changed."
                raise ModelError(line, user=line)
        await self.places.set(scope, by=by, model=model)
        log.info("model for %s set to %s by %s", scope, model or "(inherited)", by)

    # -- what the bot reads (its cogs ask these, never the stores and clients behind them) --------
    async def sessions_of(self, user: str | None) -> list[SessionInfo]:
        """A person's conversations (everyone's with None), the most recently active first."""
        return await self.history.run(self.history.list_sessions, user)

    async def find_session(self, user: str, session: str) -> int | None:
        """The conversation's id if this person has talked to the bot there; None (nothing is created) if not."""
        return await self.history.run(self.history.find_session, user, session)

    async def audit(self, user: str | None = None, session: str | None = None, limit: int = 20) -> list[Audit]:
        """The latest commands run in sandboxes, newest first: everyone's, or one person's or channel's."""
        return await self.store.audit.run(self.store.audit.latest, user, session, limit)

    async def models(self) -> list[str] | None:
        """The models the Ollama server has pulled; None when it cannot be asked now."""
        try:
            listed = await asyncio.wait_for(self.ollama().list(), timeout=10)
        except (*OLLAMA_UNREACHABLE, ollama.ResponseError, asyncio.TimeoutError):
            return None
        return [m.model for m in listed.models if m.model]

    async def sandbox_states(self) -> dict[Key, str]:
        """Each sandbox's state ("running", "exited", …) by (user, session); empty when Docker cannot be asked."""
        try:
            return {(c.user, c.session): c.status for c in await self.sandboxes.info()}
        except EngineError:
            return {}

    async def sandboxes_reachable(self) -> bool:
        """Whether the sandbox backend (Docker) answers now."""
        return await self.sandboxes.ping()

    def start_background(self) -> None:
        """Start the idle reaper (it adopts leftovers first) and the disk watch on this loop, once."""
        if self._reaper is None or self._reaper.done() or self._reaper.get_loop() is not asyncio.get_running_loop():
            self.sandboxes.expect_adoption()  # no command may slip into a sandbox before adoption sorts it
            self._reaper = asyncio.create_task(self._reap_forever(), name="sandbox-reaper")
        if self._disk_watch is None or self._disk_watch.done() \
                or self._disk_watch.get_loop() is not asyncio.get_running_loop():
            self._disk_watch = asyncio.create_task(self._watch_disk_forever(), name="sandbox-disk-watch")

    async def _watch_disk_forever(self) -> None:
        """Weigh sandboxes against their bounds: those running a command every second, those used in
        the last minute every few seconds (background jobs), all of them every minute."""
        everyone_at = recent_at = 0.0
        while True:
            await asyncio.sleep(DISK_WATCH_SECONDS)
            now = time.monotonic()
            names = self.sandboxes.names_in_use(0.0)  # running a command now
            if now - recent_at >= DISK_WATCH_RECENT_SECONDS:
                recent_at = now
                names |= self.sandboxes.names_in_use(DISK_WATCH_RECENT)
            if now - everyone_at >= DISK_WATCH_ALL_SECONDS:
                everyone_at = now
                names |= {i.name for i in await self._quietly(self.sandboxes.info(), [])}
            if names:
                await self._quietly(self.sandboxes.enforce_disk(names), [])

    async def _quietly(self, work: Any, default: Any) -> Any:
        """The watch outlives any failure, and says so once a minute, not once a second."""
        try:
            return await work
        except Exception as exc:  # noqa: BLE001
            line, now = str(exc) or type(exc).__name__, time.monotonic()
            if line != self._watch_problem[0] or now - self._watch_problem[1] >= 60:
                self._watch_problem = (line, now)
                log.warning("disk watch: %s", line, exc_info=not isinstance(exc, EngineError))
        return default

    async def _reap_forever(self) -> None:
        interval = max(1.0, min(60.0, self.settings.vm_idle_timeout / 4))
        try:
            adopted, removed = await self.sandboxes.adopt()
            if adopted or removed:
                log.info("sandboxes at start-up: %d adopted, %d removed", len(adopted), len(removed))
            await self.terminal.settle_all()  # commands the previous process left running end now
        except EngineError as exc:
            log.warning("could not look for leftover sandboxes: %s", exc)
        swept = -RETENTION_INTERVAL
        while True:
            if time.monotonic() - swept >= RETENTION_INTERVAL:
                swept = time.monotonic()
                try:
                    await self.retention_pass()
                except Exception:  # noqa: BLE001 - a failed sweep is retried next time
                    log.exception("retention sweep failed")
            await asyncio.sleep(interval)
            try:
                await self.sandboxes.reap()
            except EngineError as exc:
                log.warning("idle sandbox check failed: %s", exc)

    async def retention_pass(self) -> tuple[int, list[str]]:
        """Drop audit rows past AUDIT_RETENTION_DAYS and /data folders unused for DATA_RETENTION_DAYS."""
        s = self.settings
        purged = await self.store.audit.run(self.store.audit.purge, timedelta(days=s.audit_retention_days))
        removed = []
        for user, session in await self.history.run(self.history.idle_sessions, timedelta(days=s.data_retention_days)):
            if self.registry.phase((user, session)) is not None or self.sandboxes.busy(self.sandboxes.name(user, session)):
                continue
            folder = self.sandboxes.data_dir(user, session)
            if folder.exists():
                await self.sandboxes.remove(user, session)
                await self.sandboxes.delete_data(user, session)
                removed.append(str(folder))
        if purged or removed:
            log.info("retention: %d audit rows and %d /data folders deleted", purged, len(removed))
        return purged, removed

    def prewarm(self, user: str, session: str) -> None:
        """Start the session's container in the background so the first command waits less."""
        key = (user, session)
        task = self._warming.get(key)
        if task is not None and not task.done():
            return
        task = asyncio.create_task(self._warm(user, session), name=f"sandbox-warm-{user}-{session}")
        self._warming[key] = task
        task.add_done_callback(lambda t: self._warming.pop(key, None) if self._warming.get(key) is t else None)

    async def _warm(self, user: str, session: str) -> None:
        try:
            await self.sandboxes.start(user, session)
        except EngineError as exc:
            log.info("sandbox for %s/%s not started yet: %s", user, session, exc)
        except Exception:  # noqa: BLE001 - the first command will retry and report
            log.exception("sandbox warm-up failed for %s/%s", user, session)

    async def stop_session(self, user: str, session: str) -> bool:
        """Stop the session's reply and remove its sandbox (waiting out a start-up in flight)."""
        await self.registry.cancel((user, session))
        warming = self._warming.get((user, session))
        if warming is not None:
            await asyncio.gather(warming, return_exceptions=True)
        return await self.sandboxes.remove(user, session)

    async def close(self) -> None:
        """Stop the reaper and the disk watch, and any reply still running (its command is killed,
        its partial reply kept); let container start-ups and leftover clean-ups finish (one abandoned
        half-way would leave a container nobody tracks); then release everything this runtime
        opened: the Ollama and Docker connections, the disk and picture threads, the database."""
        loop = asyncio.get_running_loop()
        for task in (self._reaper, self._disk_watch):
            if task is not None and not task.done() and task.get_loop() is loop:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.sandboxes.release_adoption()  # a reaper stopped before it adopted leaves no one waiting
        for key in list(self.registry.active()):
            await self.registry.cancel(key)  # waits for the turn's own clean-up (the kill, the partial reply)
        await asyncio.gather(*self._warming.values(), return_exceptions=True)
        await self.terminal.wait_settled()
        if self._ollama is not None:
            client_loop, client = self._ollama
            self._ollama = None
            if client_loop is loop:  # a client of a loop already closed cannot be awaited from this one
                await client.close()
        await self.sandboxes.close()
        # Queued picture decodes are dropped (no turn is left to read them); one under way finishes.
        pool, self.image_pool = self.image_pool, ThreadPoolExecutor(max_workers=2, thread_name_prefix="images")
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        self.store.close()
        await asyncio.sleep(0)  # the transports closed above let go of their sockets on the next loop pass


_runtime: Runtime | None = None


def get_runtime(settings: Settings | None = None) -> Runtime:
    """The shared runtime; built from the environment on first use, or from `settings`."""
    global _runtime
    if _runtime is None or (settings is not None and settings != _runtime.settings):
        _runtime = Runtime(settings or Settings.from_env())
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install (or with None, forget) the shared runtime; tests use this between cases."""
    global _runtime
    _runtime = runtime
