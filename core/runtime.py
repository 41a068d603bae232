"""The process-wide parts every ChatSession shares: history, sandboxes, registry, the model servers."""
from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Iterable, Mapping, TypeVar

from . import budgets
from .admission import FairGate
from .background import Background
from .config import Settings
from .context import Seen, TokenCounter
from .erasure import erase
from .errors import EngineError, ModelError, OllamaUnavailable
from .export import export_files
from .incidents import Incidents
from .mcp.hub import McpHub
from .model_client import ModelOffer, ModelServer
from .outputs import OutputStore
from .parts import Parts
from .rate import MessageRate, TooFast
from .registry import Key, Phase, SessionRegistry
from .sandbox import Provider, Terminal
from .sandbox.docker import DockerProvider
from .sandbox.folder import FolderProvider
from .sandbox.quota import UserDisk
from .sandbox.workspace import FileEntry, list_folder
from .store import EVERYTHING, Audit, AuditLog, History, Places, Reach, Report, Scope, SessionInfo, Store, UsageLog
from .tool_loop import TurnRunner
from .uploads import UploadStore
from .usage_chart import render_usage_chart

log = logging.getLogger(__name__)
T = TypeVar("T")
V = TypeVar("V")


@dataclass(frozen=True)
class Forgotten:
    """What forget_person deleted, and what it kept (the audit rows, their command text removed)."""

    conversations: int
    messages: int
    sandboxes: int
    folders: int
    settings: int  # place settings that named them as the last to change them
    audit_rows_kept: int


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
    usage: _Part[UsageLog] = _Part()
    places: _Part[Places] = _Part()
    sandboxes: _Part[Provider] = _Part()
    terminal: _Part[Terminal] = _Part()
    model_server: _Part[ModelServer] = _Part()
    model_gate: _Part[FairGate] = _Part()
    incidents: _Part[Incidents] = _Part()
    mcp: _Part[McpHub] = _Part()
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
        incidents = Incidents()
        self.parts = Parts(settings=settings, history=self.store.history, audit=self.store.audit,
                           usage=self.store.usage, places=self.store.places, sandboxes=sandboxes,
                           terminal=Terminal(sandboxes), model_server=ModelServer(lambda: self.parts.settings),
                           model_gate=FairGate(settings.max_model_requests), incidents=incidents,
                           mcp=McpHub(settings, incidents, lambda: self.parts.sandboxes), outputs=OutputStore(),
                           tokens=TokenCounter(),
                           image_pool=ThreadPoolExecutor(max_workers=2, thread_name_prefix="images"))
        self.registry = SessionRegistry()
        self.message_rate = MessageRate()
        self.uploads = UploadStore(settings.upload_max_file_bytes, settings.upload_max_session_bytes)
        self.turns = TurnRunner(self.parts)
        self.background = Background(self.parts, self.registry)
        # /admin usage charts: CPU work, on a thread of their own (never the loop, nor asyncio's shared executor)
        self.chart_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charts")
        # /export's JSON and gzip: CPU work of seconds for a long history, on a thread of its own (on
        # the store's, SQLite's only writer, it would hold every other person's messages meanwhile)
        self.export_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exports")
        self._warming: dict[Key, asyncio.Task[Any]] = {}
        self._forgetting: dict[str, list[Reach]] = {}  # people whose data is being deleted now, and where

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

    def may_choose(self, model: str) -> bool:
        """Whether a server's managers may choose `model` (ALLOWED_MODELS; empty: any)."""
        allowed = self.settings.allowed_models
        return not allowed or self.model_server.canonical(model) in {self.model_server.canonical(m) for m in allowed}

    async def switch_model(self, scope: Scope, model: str | None, *, by: str, any_model: bool = False) -> None:
        """Use `model` for turns in `scope` from the next one on (None: as the wider place says),
        after checking that its server has it and that it can call tools (unless TOOLS=off). A model
        of the backend MODEL_API does not name is written `openai:<name>` or `ollama:<name>`."""
        if model is not None:
            model = self.model_server.canonical(model)
            if not any_model and not self.may_choose(model):
                line = (f"`{model}` is not among the models offered here: "
                        + ", ".join(f"`{m}`" for m in self.settings.allowed_models[:10])
                        + " (ALLOWED_MODELS); the model was not changed.")
                raise ModelError(line, user=line)
            try:
                problem, _known = await asyncio.wait_for(
                    self.model_server.problem(model, tools=self.settings.offers_tools),
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
                backend, _name = self.model_server.pick(model)
                raise ModelError(line, user=line.replace(f" at {backend.where}", f" by the {backend.label} server"))
        await self.places.set(scope, by=by, model=model)
        log.info("model for %s set to %s by %s", scope, model or "(inherited)", by)

    def admit_message(self, user: str | int) -> TooFast | None:
        """Count a message of this person toward USER_MESSAGES_PER_MINUTE (all their conversations
        together). None: answer it. Else it is over their rate: it is neither stored nor answered, and
        the TooFast says what to tell them (its `line`, unless they were `told` already)."""
        return self.message_rate.admit(str(user), self.settings.user_messages_per_minute)

    # -- what the bot reads (its cogs ask these, never the stores and clients behind them) --------
    # A server's managers read their own server only (Reach.within); the bot's admins and a person
    # reading their own conversations, everything (Reach.everything()). There is no default.
    async def sessions_of(self, user: str | None, reach: Reach, *, matching: str = "",
                          limit: int | None = None) -> list[SessionInfo]:
        """A person's conversations (everyone's with None) within `reach`, the most recently active first."""
        return await self.history.run(self.history.list_sessions, user, reach, matching=matching, limit=limit)

    async def find_session(self, user: str, session: str, reach: Reach) -> int | None:
        """The conversation's id if this person has talked to the bot there, within `reach`; None
        (nothing is created) if not."""
        return await self.history.run(self.history.find_session, user, session, reach)

    async def audit(self, reach: Reach, user: str | None = None, session: str | None = None,
                    limit: int = 20) -> list[Audit]:
        """The latest commands run in sandboxes within `reach`, newest first: everyone's, or one
        person's or channel's."""
        return await self.store.audit.run(self.store.audit.latest, user, session, limit, reach=reach)

    async def _within(self, reach: Reach, found: Mapping[Key, V]) -> dict[Key, V]:
        """Those of `found` whose conversation is within `reach` (a sandbox or a reply of no known
        conversation is only the bot's admins' to see)."""
        if reach.everywhere or not found:
            return dict(found)
        servers = await self.history.run(self.history.servers_of, list(found))
        return {key: value for key, value in found.items() if key in servers and reach.covers(servers[key])}

    async def replies(self, reach: Reach) -> dict[Key, Phase]:
        """The replies running now within `reach`, by (user, session)."""
        return await self._within(reach, self.registry.active())

    async def list_files(self, user: str, session: str, path: str = "") -> list[FileEntry]:
        """What a conversation's /data (or a folder in it) holds, newest first; links are listed,
        never followed. Nothing is created or started: no folder, no sandbox, no conversation."""
        sandboxes = self.sandboxes
        if not sandboxes.data_dir(user, session).exists():
            return []
        async with sandboxes.get(user, session).in_use():  # its image stays mounted meanwhile
            folder = await sandboxes.prepare_data(user, session)  # mounted if it was not: starts nothing
            return await asyncio.to_thread(list_folder, folder, path)  # one short scandir

    async def user_disk(self, user: str) -> UserDisk:
        """What one person's conversations hold in /data together, against USER_DISK."""
        return await self.sandboxes.user_disk(user)

    # -- their data on request ----------------------------------------------------------------
    def being_forgotten(self, user: str, server: str | None) -> bool:
        """Whether this person's data in `server` (None: a DM) is being deleted right now: their
        messages there are refused meanwhile (ChatSession), or a turn starting half-way through the
        deletion would bring back a sandbox and /data that the answer says are gone."""
        return any(reach.covers(server) for reach in self._forgetting.get(user, ()))

    async def forget_person(self, user: str, reach: Reach, *, channels: Iterable[str] = ()) -> Forgotten:
        """Delete what the bot holds of one person within `reach` (they asked, or a manager of the
        server did): their running replies stop first; then their conversations (messages,
        summaries), sandboxes and /data, their id on the settings they changed (`channels`: the
        server's channels, whose settings are the server's, and whose conversations and audit rows
        from before servers were recorded are the server's too) and their usage. Their audit rows stay
        for AUDIT_RETENTION_DAYS, with the command text removed. With Reach.everything(), also
        sandboxes and folders of theirs that no conversation names. Meanwhile nothing new of theirs
        starts within `reach` (being_forgotten)."""
        marks = self._forgetting.setdefault(user, [])
        marks.append(reach)
        try:
            return await self._forget(user, reach, channels)
        finally:
            marks.remove(reach)
            if not marks:
                del self._forgetting[user]

    async def _forget(self, user: str, reach: Reach, channels: Iterable[str]) -> Forgotten:
        infos = await self.sessions_of(user, reach)
        channels = set(channels)
        if not reach.everywhere:  # conversations from before servers were recorded, in this server's channels
            infos += [info for info in await self.sessions_of(user, EVERYTHING)
                      if info.server is None and info.session in channels]
        sessions = {info.session for info in infos}
        # a sandbox start-up under way would bring a sandbox back after the deletion: let it finish first
        warming = [task for (who, session), task in list(self._warming.items())
                   if who == user and (reach.everywhere or session in sessions)]
        await asyncio.gather(*warming, return_exceptions=True)
        erased = await erase(self.parts, self.registry, [(info.id, user, info.session) for info in infos])
        if reach.everywhere:
            sandboxes, folders = await self.sandboxes.delete_person(user)
            erased.sandboxes += sandboxes
            erased.folders += folders
        kept = await self.store.audit.run(self.store.audit.blank, user, reach,
                                          channels | {info.session for info in infos})
        if reach.everywhere:
            settings = await self.places.forget_author(user)
        else:
            own = {Scope.server(str(reach.server))} | {Scope.channel(c) for c in channels}
            settings = await self.places.forget_author(user, lambda scope: scope in own)
        await self.usage.run(self.usage.forget, user, reach.server)  # their counts: everywhere, or this server's
        log.info("forgot user %s (%s): %d conversations, %d messages, %d sandboxes, %d /data folders; "
                 "%d audit rows kept without their commands", user, reach, erased.conversations, erased.messages,
                 erased.sandboxes, erased.folders, kept)
        return Forgotten(erased.conversations, erased.messages, erased.sandboxes, erased.folders, settings, kept)

    async def export_person(self, user: str, limit: int, max_files: int = 20) -> list[tuple[str, bytes]]:
        """Every conversation of one person, everywhere, as JSON files of at most `limit` bytes each
        (gzipped, then split, when larger; ExportTooLarge past `max_files`); none when they have no
        conversation. Read on the store's threads one conversation at a time, and packed on the
        export thread, so other conversations' writes go on meanwhile."""
        history = self.history
        infos = sorted(await self.sessions_of(user, EVERYTHING), key=lambda info: (info.last_active, info.id))
        conversations = [c for c in [await history.run(history.export, info.id) for info in infos] if c]
        if not conversations:
            return []
        return await asyncio.get_running_loop().run_in_executor(
            self.export_pool, functools.partial(export_files, user, conversations, limit, max_files))

    async def check_budget(self, user: str) -> None:
        """Raise BudgetSpent (its line says which budget and when it resets) when `user` has used up
        a daily budget; one query, and none at all when no budget is set."""
        s, usage = self.settings, self.usage
        if not (s.user_daily_tokens or s.user_daily_command_seconds):
            return
        at = usage.clock()
        refused = budgets.refusal(s, await usage.run(usage.spent, user, at.date()), at)
        if refused is not None:
            raise refused

    async def usage_of(self, user: str) -> budgets.PersonalUsage:
        """A person's own use over all servers: today and this week (since Monday, UTC), and their budgets."""
        usage = self.usage
        at = usage.clock()
        today = await usage.run(usage.spent, user, at.date())
        week = await usage.run(usage.totals, user, budgets.week_start(at.date()), at.date())
        return budgets.PersonalUsage(today, week, budgets.allowances(self.settings, today), budgets.until_reset(at))

    async def usage_report(self, server: str | None, days: int, top: int = 10) -> Report:
        """The last `days` days in one server (None: every server and DM): its top people by tokens,
        and each day's turns and tokens."""
        return await self.usage.run(self.usage.report, server, days, top)

    async def usage_chart(self, report: Report, title: str) -> bytes:
        """The report's turns and tokens per day as a PNG, drawn on the chart thread."""
        return await asyncio.get_running_loop().run_in_executor(self.chart_pool, render_usage_chart, report.days,
                                                                title)

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

    async def sandbox_states(self, reach: Reach) -> dict[Key, str]:
        """Each sandbox's state ("running", "exited", …) by (user, session), within `reach`; empty
        when Docker cannot be asked."""
        try:
            found = {(c.user, c.session): c.status for c in await self.sandboxes.info()}
        except EngineError:
            return {}
        return await self._within(reach, found)

    async def sandboxes_reachable(self) -> bool:
        """Whether the sandbox backend (Docker) answers now."""
        return await self.sandboxes.ping()

    def start_background(self) -> None:
        """Start the idle reaper (it adopts leftovers first) and the disk watch on this loop, once; and
        open the MCP servers' sessions, so their tools are listed before the first turn asks."""
        self.background.start()
        self.mcp.start()

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
        """Stop the session's reply and remove its sandbox (waiting out a start-up in flight), and end
        the MCP servers that ran in it."""
        await self.registry.cancel((user, session))
        await self.mcp.forget(user, session)
        warming = self._warming.get((user, session))
        if warming is not None:
            await asyncio.gather(warming, return_exceptions=True)
        return await self.sandboxes.remove(user, session)

    async def close(self) -> None:
        """Stop the reaper and the disk watch, and any reply still running (its command is killed,
        its partial reply kept); let container start-ups and leftover clean-ups finish (one abandoned
        half-way would leave a container nobody tracks); then release everything this runtime
        opened: the Ollama and Docker connections, the disk, picture and chart threads, the database."""
        await self.background.stop()
        for key in list(self.registry.active()):
            await self.registry.cancel(key)  # waits for the turn's own clean-up (the kill, the partial reply)
        await asyncio.gather(*self._warming.values(), return_exceptions=True)
        await self.terminal.wait_settled()
        await self.mcp.close()
        await self.model_server.close()
        await self.sandboxes.close()
        # Queued picture decodes are dropped (no turn is left to read them); one under way finishes.
        pool, self.image_pool = self.image_pool, ThreadPoolExecutor(max_workers=2, thread_name_prefix="images")
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        charts, self.chart_pool = self.chart_pool, ThreadPoolExecutor(max_workers=1, thread_name_prefix="charts")
        await asyncio.to_thread(charts.shutdown, wait=True, cancel_futures=True)
        exports, self.export_pool = self.export_pool, ThreadPoolExecutor(max_workers=1, thread_name_prefix="exports")
        await asyncio.to_thread(exports.shutdown, wait=True, cancel_futures=True)
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
