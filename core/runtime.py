"""The process-wide parts every ChatSession shares: history, sandboxes, registry, the model servers."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from .admission import FairGate
from .background import Background
from .config import Settings
from .context import Seen, TokenCounter
from .errors import EngineError, ModelError, OllamaUnavailable
from .incidents import Incidents
from .model_client import ModelOffer, ModelServer
from .outputs import OutputStore
from .parts import Parts
from .rate import MessageRate, TooFast
from .registry import Key, SessionRegistry
from .sandbox import Provider, Terminal
from .sandbox.docker import DockerProvider
from .sandbox.folder import FolderProvider
from .store import Audit, AuditLog, History, Places, Scope, SessionInfo, Store
from .tool_loop import TurnRunner
from .uploads import UploadStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Part(Generic[T]):
    """A Runtime attribute kept in its Parts, which the turns and the background loops read: one
    replaced on the Runtime (tests swap the settings or the sandbox manager) is replaced for them too."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, runtime: "Runtime", owner: type | None = None) -> T:
        if runtime is None:
            return self  # type: ignore[return-value]
        return getattr(runtime.parts, self.name)  # type: ignore[no-any-return]

    def __set__(self, runtime: "Runtime", value: T) -> None:
        setattr(runtime.parts, self.name, value)


class Runtime:
    """Built once per process (or per test) from one Settings."""

    settings: _Part[Settings] = _Part()
    history: _Part[History] = _Part()
    audit: _Part[AuditLog] = _Part()
    places: _Part[Places] = _Part()
    sandboxes: _Part[Provider] = _Part()
    terminal: _Part[Terminal] = _Part()
    model_server: _Part[ModelServer] = _Part()
    model_gate: _Part[FairGate] = _Part()
    incidents: _Part[Incidents] = _Part()
    outputs: _Part[OutputStore] = _Part()
    tokens: _Part[TokenCounter] = _Part()
    image_pool: _Part[ThreadPoolExecutor] = _Part()
    context_seen: _Part[dict[Key, Seen]] = _Part()
    told_no_vision: _Part[set[Key]] = _Part()

    def __init__(self, settings: Settings) -> None:
        self.store = Store(settings.database_url, settings)  # conversations, the audit log, place settings
        # The sandbox face (core/sandbox/base.py): a container per conversation, or in chat-only mode
        # (TOOLS=off) plain /data folders and no Docker at all.
        sandboxes: Provider = DockerProvider(settings) if settings.tools else FolderProvider(settings)
        self.parts = Parts(settings=settings, history=self.store.history, audit=self.store.audit,
                           places=self.store.places, sandboxes=sandboxes, terminal=Terminal(sandboxes),
                           model_server=ModelServer(lambda: self.parts.settings), model_gate=FairGate(settings.max_model_requests),
                           incidents=Incidents(), outputs=OutputStore(),
                           tokens=TokenCounter(),
                           image_pool=ThreadPoolExecutor(max_workers=2, thread_name_prefix="images"))
        self.registry = SessionRegistry()
        self.message_rate = MessageRate()
        self.uploads = UploadStore(settings.upload_max_file_bytes, settings.upload_max_session_bytes)
        self.turns = TurnRunner(self.parts)
        self.background = Background(self.parts, self.registry)
        self._warming: dict[Key, asyncio.Task[Any]] = {}

    async def capabilities(self, model: str) -> frozenset[str]:
        """What `model` can do ("tools", "vision", …), as its server says (Ollama's /api/show, an OpenAI-
        compatible server's /v1/models) or MODEL_CAPABILITIES; cached for a few minutes."""
        return await self.model_server.capabilities(model)

    async def context_length(self, model: str) -> int | None:
        """The most context `model` holds, as its server says it (Ollama's model_info, vLLM's
        max_model_len), or None."""
        return await self.model_server.context_length(model)

    async def context_tokens(self, model: str) -> tuple[int, str | None]:
        """The context requests to `model` are built to fit, and the setting that says it (None: its
        server's own figure)."""
        return await self.model_server.context_tokens(model)

    async def switch_model(self, scope: Scope, model: str | None, *, by: str) -> None:
        """Use `model` for turns in `scope` from the next one on (None: as the wider place says),
        after checking that its server has it and that it can call tools (unless TOOLS=off). A model
        of the backend MODEL_API does not name is written `openai:<name>` or `ollama:<name>`."""
        if model is not None:
            model = self.model_server.canonical(model)
            try:
                problem, _known = await asyncio.wait_for(
                    self.model_server.problem(model, tools=self.settings.tools),
                    self.settings.ollama_connect_timeout + 5)
            except (asyncio.TimeoutError, OllamaUnavailable) as exc:
                raise OllamaUnavailable(f"{str(exc).rstrip('.') or 'The model server did not answer in time'}, so "
                                        "the model was not changed.",
                                        user="The AI model server is unreachable, so the model was not changed.",
                                        part=getattr(exc, "part", None)) from exc
            except ModelError as exc:
                line = f"{exc.user_message.rstrip('.')}; the model was not changed."
                raise ModelError(line, user=line, part=exc.part) from exc
            if problem:  # an admin reads this: the model's name and what it lacks, nothing of the host
                line = problem[0].upper() + problem[1:] + "; the model was not changed."
                raise ModelError(line, user=line)
        await self.places.set(scope, by=by, model=model)
        log.info("model for %s set to %s by %s", scope, model or "(inherited)", by)

    def admit_message(self, user: str | int) -> TooFast | None:
        """Count a message of this person toward USER_MESSAGES_PER_MINUTE (all their conversations
        together). None: answer it. Else it is over their rate: it is neither stored nor answered, and
        the TooFast says what to tell them (its `line`, unless they were `told` already)."""
        return self.message_rate.admit(str(user), self.settings.user_messages_per_minute)

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
        """Every model the servers offer now, as /admin model takes them (MODEL_API's plain, the other
        backend's as `api:name`); None when no server can be asked."""
        offers = await self.model_offers()
        if all(offer.models is None for offer in offers):
            return None
        return [model for offer in offers for model in offer.models or []]

    async def model_offers(self) -> list[ModelOffer]:
        """What each model server offers now (its models, or None when it cannot be asked), MODEL_API's first."""
        return await self.model_server.offers()

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
        self.background.start()

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
        await self.background.stop()
        for key in list(self.registry.active()):
            await self.registry.cancel(key)  # waits for the turn's own clean-up (the kill, the partial reply)
        await asyncio.gather(*self._warming.values(), return_exceptions=True)
        await self.terminal.wait_settled()
        await self.model_server.close()
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
