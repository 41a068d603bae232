"""One turn of the conversation: stream the model, run the tools it asks for, repeat.

A turn runs as its own task and reports through its generation's outbox, so a
newer message can cancel it (registry) without the caller's cooperation. What
the history holds is always a valid request: the user's message first, every
tool call followed by its result, and no partial reply stored as complete.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncContextManager, Awaitable, Callable, Sequence

from .errors import EngineError, SandboxFileError, SandboxFileTooLarge
from . import context, images
from .incidents import DOCKER
from .events import (Done, FileReady, ModelQueued, Notice, Replaced, Stopped, TextDelta, ThinkingDelta, ToolFinished,
                     ToolQueued, ToolStarted)
from .prompt import system_prompt
from .model_backend import MAX_CALLS_KEPT, Piece, ToolCalls
from .model_backend import UNREADABLE  # noqa: F401 - the line a broken stream gives
from .parts import Parts
from .registry import Generation, Phase
from .mcp.tools import McpTool
from .sandbox.terminal import CappedBuffer, full_output_cap
from .store import IMAGE_REFS, Place
from .tools import (EXECUTE_TERMINAL, MAX_FILES_PER_REPLY, SEND_FILE, McpCall, ModelCall, SendFileCall, TerminalCall,
                    ToolArgumentError, parse_mcp, parse_send_file, parse_terminal, tool_schemas, unknown_tool)
from .sizes import human_size

log = logging.getLogger(__name__)
content_log = logging.getLogger("llmbot.content")  # message text: silent unless LOG_CONTENT=true

CANCELLED_RESULT = "cancelled: the user sent a new message before this command finished, so it was stopped."
NOT_RUN_RESULT = "not run: the user sent a new message first."
STOPPED_RESULT = "stopped: the user pressed Stop before this command finished, so it was killed."
NOT_RUN_STOPPED = "not run: the user pressed Stop first."
NOT_RUN_AFTER_ERROR = "not run: the command before it could not be run."
OVER_CAP_RESULT = ("not run: at most {cap} commands run per message. Check the results above, then send "
                   "the remaining commands in your next message if they are still needed.")
NO_VISION = "The AI model here cannot see images; your picture is saved as {paths}, where commands can work with it."
NO_VISION_CHAT = "The AI model here cannot see images, so it is not shown your picture ({paths})."
OVER_CAP_NOTICE = "{n} more commands the model asked for in one go were not run (at most {cap} at a time)."
ROUNDS_NOTE = "(The assistant stopped after {n} rounds of commands without a final answer.)"


@dataclass
class TurnEnd:
    """The last item in a generation's outbox."""

    error: EngineError | None = None


@dataclass
class Outcome:
    """What one tool call came to: the result the model reads (in `finished`), how the log and the
    audit describe it, and events for the caller (a file to hand over)."""

    finished: ToolFinished
    ending: str
    exit_code: int | None = None
    duration: float = 0.0
    output_bytes: int = 0
    events: list[Any] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # /data paths of pictures the model is shown with the result


@dataclass(frozen=True)
class ToolKind:
    """One kind of tool the model may call: how its arguments are checked (a checked call with a
    `command` for the log and the audit, or ToolArgumentError), and how it runs."""

    parse: Callable[[dict[str, Any]], Any]
    run: Callable[["Turn", ModelCall, Any], Awaitable[Outcome]]


@dataclass
class Turn:
    """One turn's facts (who, where, with which model and persona) and what it did, for its log line."""

    gen: Generation
    session_id: int
    user: str
    session: str
    server: str | None = None  # the server (guild) it happens in, for the audit; None in a DM
    model: str = ""
    persona: str = ""
    place: Place = field(default_factory=Place)
    mcp_tools: dict[str, McpTool] = field(default_factory=dict)  # the MCP tools offered for the last request
    rounds: int = 0
    commands: list[str] = field(default_factory=list)  # "`cmd` → exit 0" as the log shows them
    prompt_tokens: int = 0
    answer_tokens: int = 0
    file_limit: int = 0  # bytes one reply's files may hold in all, where the caller delivers them (0: no own limit)
    vision: bool | None = None  # the model reads images (None: not asked yet)
    pictures: dict[str, str | None] = field(default_factory=dict)  # /data path -> base64 for the model, this turn
    unshown: dict[str, str] = field(default_factory=dict)  # /data path -> why a picture is not shown (too large...)
    files_sent: int = 0
    file_bytes: int = 0
    command_seconds: float = 0.0  # how long its commands ran, for the usage table
    counted: bool = False  # it is in the usage table as a turn (its first write)
    recorded: tuple[int, int, float, int] = (0, 0, 0.0, 0)  # tokens in and out, command seconds, files written so far
    context_chars: int = 0  # the last request's size, in characters
    last_prompt: int = 0  # the last request's size, in tokens, as the model server counted it
    shown: int = 0  # messages (not command results) the last request carried
    summarized: bool = False  # it carried a summary of what fell out
    started: float = field(default_factory=time.monotonic)

    estimate: int = 0  # the last request's estimated tokens
    message: tuple[str, list[str] | None] | None = None  # the user's (text, images), until stored
    repair: bool = True  # look for results a crash left missing before storing the message

    def ran(self, command: str, ending: str) -> None:
        shown = command if len(command) <= 60 else command[:57] + "..."
        self.commands.append(f"{shown!r} {ending}")

    def summary(self, ending: str) -> str:
        """One INFO line: never the message or the answer, only their shape."""
        took = time.monotonic() - self.started
        commands = ", ".join(self.commands) if self.commands else "none"
        return (f"turn user={self.user} channel={self.session} model={self.model} {ending} in {took:.1f} s; "
                f"rounds={self.rounds} commands=[{commands}] tokens: {self.prompt_tokens} in, "
                f"{self.answer_tokens} out; context: {self.context_chars} chars, ~{self.estimate} tokens estimated, "
                f"{self.last_prompt} measured; {self.shown} messages shown"
                f"{' + summary' if self.summarized else ''}")


class TurnRunner:
    """Runs turns with the engine's parts (its model servers, history, sandboxes), handed over by
    whoever builds it (the Runtime), which this module never imports."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        # Sessions whose last turn in this process was answered: their history ends on that answer,
        # so there is nothing for repair_interrupted (results a crash left missing) to look for.
        self._settled: set[int] = set()

    async def run(self, gen: Generation, session_id: int, user: str, session: str, text: str,
                  place: Place | None = None, *, images: Sequence[str] = (), file_limit: int = 0) -> None:
        place = place or Place(channel=session)
        turn = Turn(gen, session_id, user, session, server=place.server, place=place, file_limit=file_limit)
        emit = gen.outbox.put
        ending = "failed"
        try:
            turn.model = (await self.parts.places.model(place)).value
            turn.persona = (await self.parts.places.prompt(place)).value
            if images and not await self._sees(turn) and (user, session) not in self.parts.told_no_vision:
                self.parts.told_no_vision.add((user, session))
                line = NO_VISION if self.parts.settings.tools else NO_VISION_CHAT
                emit(Notice(line.format(paths=", ".join(images))))
            if gen.previous is not None and gen.previous.task is not None:
                await asyncio.gather(gen.previous.task, return_exceptions=True)
            turn.message = (text, list(images) or None)  # stored on the way to the first request
            turn.repair = session_id not in self._settled
            self._settled.discard(session_id)
            content_log.debug("turn user=%s channel=%s message: %r", user, session, text)
            await self._loop(turn)
            ending = "answered"
            self._settled.add(session_id)
            emit(TurnEnd())
        except asyncio.CancelledError:
            ending = "replaced" if gen.replaced else "stopped" if gen.stopped else "cancelled"
            if gen.replaced:
                emit(Replaced())
            elif gen.stopped:
                emit(Stopped())
            await self._end(turn, TurnEnd())
            raise
        except EngineError as exc:
            ending = f"failed ({type(exc).__name__})"
            self.parts.incidents.failed(exc)
            await self._end(turn, TurnEnd(exc))
        except Exception:  # noqa: BLE001 - no traceback reaches a user
            log.exception("turn failed in session %s/%s", user, session)
            await self._end(turn, TurnEnd(EngineError("Something went wrong while answering; the details are in "
                                                      "the bot's log.")))
        finally:
            log.info(turn.summary(ending))

    async def _end(self, turn: Turn, end: TurnEnd) -> None:
        """A turn that did not answer counts what it used, then reports its end (whatever comes)."""
        try:
            await self._count(turn)
        finally:
            turn.gen.outbox.put(end)

    async def _count(self, turn: Turn) -> None:
        """Add what the turn used since it was last counted to its person's usage row: after each
        request to the model and each round of commands (so the budget check of their next message,
        in any channel, sees what a turn still running has spent), and as it ends, however it ended,
        before its end is reported (a caller that stops listening then cancels the task). The turn
        itself counts once. Shielded: a Stop or a newer message arriving meanwhile never loses a count."""
        if not turn.model:
            return
        now = (turn.prompt_tokens, turn.answer_tokens, turn.command_seconds, turn.files_sent)
        tokens_in, tokens_out, seconds, files = (a - b for a, b in zip(now, turn.recorded))
        if turn.counted and not (tokens_in or tokens_out or seconds or files):
            return
        first, turn.counted, turn.recorded = not turn.counted, True, now
        usage = self.parts.usage
        try:
            await asyncio.shield(usage.run(usage.add, turn.user, turn.server, turn.model, turns=int(first),
                                           tokens_in=tokens_in, tokens_out=tokens_out,
                                           command_seconds=seconds, files_sent=files))
        except Exception:  # noqa: BLE001 - a count lost to a database fault never costs the answer
            log.exception("could not record the usage of a turn in session %s/%s", turn.user, turn.session)

    async def _loop(self, turn: Turn) -> None:
        settings = self.parts.settings
        gen = turn.gen
        while True:
            # No tools at all in chat-only mode (TOOLS=off) without MCP servers: any model answers then.
            tools = await self._offered(turn) if turn.rounds < settings.max_tool_rounds else None
            system = system_prompt(settings, turn.persona, mcp=bool(turn.mcp_tools))
            window, summary = await self._context(turn, system, tools)
            messages = [system, *summary] + await self._with_images(turn, window)
            gen.phase = Phase.STREAMING
            async with self._model_slot(turn):  # held for the whole streamed request, released as it ends
                content, calls, more = await self._stream(turn, messages, tools)
            await self._count(turn)  # spent as it goes: a turn of long commands never hides it from the budget
            if not calls:
                if tools is None and turn.rounds >= settings.max_tool_rounds and not content:
                    content = ROUNDS_NOTE.format(n=turn.rounds)
                    gen.outbox.piece(TextDelta, content)
                await self._store(turn.session_id, "assistant", content)
                content_log.debug("turn user=%s channel=%s answer: %r", turn.user, turn.session, content)
                gen.outbox.put(Done(content))
                return
            await self._store(turn.session_id, "assistant", content, tool_calls=[c.stored() for c in calls])
            gen.phase = Phase.TOOL
            await self._run_tools(turn, calls, more)
            await self._count(turn)
            turn.rounds += 1

    async def _offered(self, turn: Turn) -> list[dict[str, Any]] | None:
        """The tools for this request: the sandbox's (unless TOOLS=off), and the MCP servers' not turned off here."""
        turn.mcp_tools = await self.parts.mcp.offered(turn.user, turn.session,
                                                      await self.parts.places.tools_off(turn.place))
        return tool_schemas(self.parts.settings, turn.mcp_tools.values()) or None

    async def _context(self, turn: Turn, system: dict[str, Any],
                       tools: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The conversation's window for this request, and the summary message (if any) of what fell
        out of it: together with the system prompt, the tools and the reply's reserve, within num_ctx."""
        s, history, counter = self.parts.settings, self.parts.history, self.parts.tokens
        num_ctx, _setting = await self.parts.model_server.context_tokens(turn.model)  # OLLAMA_NUM_CTX or the server's
        budget = counter.chars(turn.model, num_ctx - s.reply_reserve_tokens) \
            - context.request_chars([system], tools)
        image_chars = counter.chars(turn.model, context.IMAGE_TOKENS)
        message, turn.message = turn.message, None
        repaired, stored, window, uncovered = await history.run(self._look, turn.session_id, budget, image_chars,
                                                                s.summary, message, turn.repair)
        if repaired:
            log.info("session %s/%s: %d tool calls had no result (a crash?); stored as interrupted",
                     turn.user, turn.session, repaired)
        if uncovered:
            # Messages fell out that no summary covers: fold them into it, up to a point that leaves
            # the window room to grow, so the next turns need no new summary.
            assert window.first_id is not None
            roomy = await history.run(self._fit, turn.session_id, stored, int(budget * context.REFRESH_FILL),
                                      image_chars, limit=max(2, int(s.history_window * context.REFRESH_FILL)))
            upto = (roomy.first_id or window.first_id) - 1
            text = await self._summarize(turn, stored, upto, budget)
            if text is not None:
                stored = (upto, text)
                window = await history.run(self._fit, turn.session_id, stored, budget, image_chars)
        turn.shown = sum(1 for m in window.messages if m["role"] != "tool")
        turn.summarized = stored is not None
        turn.context_chars = window.chars + context.request_chars([system], tools)
        turn.estimate = counter.tokens(turn.model, turn.context_chars)
        self.parts.context_seen[(turn.user, turn.session)] = context.Seen(turn.shown, turn.summarized, num_ctx)
        for note in window.notes:
            log.info("session %s/%s: %s", turn.user, turn.session, note)
        summary = [{"role": "system", "content": context.SUMMARY_HEAD + stored[1]}] if stored else []
        return window.messages, summary

    # -- on the history's threads: each is one hop from the loop, however many queries it makes --------
    def _look(self, session_id: int, budget: int, image_chars: int, summaries: bool,
              message: tuple[str, list[str] | None] | None, repair: bool = True
              ) -> tuple[int, tuple[int, str] | None, "context.Window", bool]:
        """For a turn's first request, first store the results a crash left missing (unless `repair`
        is off) and then the user's `message` (text, images). Then read: the stored summary (when
        summaries are on), the window after it within `budget`, and whether messages fell out of
        that window that the summary does not cover. Returns how many results were repaired, and
        those three."""
        history = self.parts.history
        repaired = 0
        if message is not None:
            repaired = history.repair_interrupted(session_id) if repair else 0
            history.add_message(session_id, "user", message[0], images=message[1])
        stored = history.summary(session_id) if summaries else None
        window = self._fit(session_id, stored, budget, image_chars)
        uncovered = summaries and window.first_id is not None and bool(
            history.between(session_id, stored[0] if stored else 0, window.first_id, 1))
        return repaired, stored, window, uncovered

    def _fit(self, session_id: int, stored: tuple[int, str] | None, budget: int, image_chars: int, *,
             limit: int | None = None) -> "context.Window":
        """The window after what `stored` summarises, in `budget` characters and `limit` messages."""
        after = stored[0] if stored else 0
        rows = self.parts.history.window(session_id, limit or self.parts.settings.history_window, after=after,
                                         ids=True)
        room = budget - (len(context.SUMMARY_HEAD) + len(stored[1]) + context.MESSAGE_OVERHEAD if stored else 0)
        return context.fit(rows, room, image_chars=image_chars)

    async def _summarize(self, turn: Turn, stored: tuple[int, str] | None, upto: int, budget: int) -> str | None:
        """One model call that folds the messages up to id `upto` into the session's summary; stored.
        None (logged) when the model cannot make one now: the window is then only shorter."""
        s, history = self.parts.settings, self.parts.history
        after, previous = stored if stored else (0, None)
        fallen = await history.run(history.between, turn.session_id, after, upto + 1, 400)
        request = context.summary_request(previous, fallen, budget)
        try:
            backend, model = self.parts.model_server.pick(turn.model)
            async with self._model_slot(turn):
                try:
                    answer, used = await asyncio.wait_for(backend.chat_once(model, request), s.ollama_stall_timeout)
                except asyncio.CancelledError:  # stopped while the server read it: not free either
                    self._estimate(turn, context.request_chars(request, None), 0)
                    raise
        except (EngineError, asyncio.TimeoutError) as exc:
            log.warning("session %s/%s: could not summarise what fell out of the context: %r",
                        turn.user, turn.session, exc)
            return None
        turn.prompt_tokens += used.prompt_tokens  # the summary's cost is the turn's
        turn.answer_tokens += used.answer_tokens
        text = answer.strip()
        if not text:
            return None
        text = text[:4000]
        await history.run(history.save_summary, turn.session_id, upto, text)
        log.info("session %s/%s: summarised %d messages that fell out of the context", turn.user, turn.session,
                 len(fallen))
        return text

    def _model_slot(self, turn: Turn) -> AsyncContextManager[None]:
        """One of MAX_MODEL_REQUESTS slots, round robin by person; the reply shows the wait meanwhile."""
        return self.parts.model_gate.slot(turn.user, lambda n: turn.gen.outbox.put(ModelQueued(n)))

    async def _stream(self, turn: Turn, messages: list[dict[str, Any]],
                      tools: list[dict[str, Any]] | None) -> tuple[str, list[ModelCall], int]:
        """The model's whole answer for one request, streamed to the outbox as it comes, from whichever
        backend serves the turn's model (core/model_backend.py: the same pieces from both): its text,
        the tool calls kept (MAX_CALLS_KEPT, or the cap if more) and how many more it made."""
        gen, session_id = turn.gen, turn.session_id
        sent_chars = context.request_chars(messages, tools)
        parts: list[str] = []
        calls: list[ModelCall] = []
        more = 0
        piece = gen.outbox.piece  # hundreds of times a reply: each piece joins the batch the caller takes next
        began = counted = False  # the server started answering; its counts (the last line) arrived
        thought = 0  # characters of thinking streamed
        try:
            backend, model = self.parts.model_server.pick(turn.model)
            async for item in backend.stream_chat(model, messages, tools):
                began = True
                kind = type(item)
                if kind is Piece:  # text and/or thinking: nearly every piece
                    if item.thinking:
                        thought += len(item.thinking)
                        piece(ThinkingDelta, item.thinking)
                    if item.content:
                        parts.append(item.content)
                        piece(TextDelta, item.content)
                elif kind is ToolCalls:
                    calls.extend(item.calls)
                    more += item.more
                else:  # Usage: the request's end, as the server counted it
                    counted = True
                    turn.prompt_tokens += item.prompt_tokens
                    turn.answer_tokens += item.answer_tokens
                    turn.last_prompt = item.prompt_tokens
                    self.parts.tokens.observe(turn.model, sent_chars, turn.last_prompt)
        except EngineError:  # one line, said by the backend (not reachable, stalled, cut, an HTTP error…)
            await self._keep_partial(session_id, parts)
            raise
        except asyncio.CancelledError:
            await asyncio.shield(self._keep_partial(session_id, parts))
            raise
        finally:
            if began and not counted:  # stopped, replaced or cut before its counts: estimated, never free
                self._estimate(turn, sent_chars, sum(map(len, parts)) + thought)
        self.parts.incidents.succeeded(backend.part)
        kept = max(MAX_CALLS_KEPT, self.parts.settings.max_tool_calls_per_round)
        if len(calls) > kept:
            calls, more = calls[:kept], more + len(calls) - kept
        return "".join(parts), calls, more

    def _estimate(self, turn: Turn, sent_chars: int, answer_chars: int) -> None:
        """What a request the server began answering cost, when its counts (sent in its last line)
        never came: the request as the context budget weighs it, and the answer streamed so far.
        Without it, a reply stopped just before its end (read whole meanwhile) would cost nothing,
        and no daily budget would ever be spent."""
        tokens = self.parts.tokens
        turn.prompt_tokens += tokens.tokens(turn.model, sent_chars)
        turn.answer_tokens += max(1, tokens.tokens(turn.model, answer_chars))

    async def _with_images(self, turn: Turn, window: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Image references become `images` for a vision model: the turn's own, and earlier ones up to
        VISION_MAX_IMAGES in all, newest first. Another model gets none (it would refuse the request)."""
        refs = [(message, path) for message in reversed(window) for path in reversed(message.pop(IMAGE_REFS, []))]
        if not refs or not await self._sees(turn):
            return window
        latest_user = next((m for m in reversed(window) if m["role"] == "user"), None)
        own = sum(1 for message, _ in refs if message is latest_user)
        for message, path in refs[:max(self.parts.settings.vision_max_images, own)]:
            picture = await self._picture(turn, path)
            if picture is None:
                why = turn.unshown.get(path)
                message["content"] += (f"\n[{path} is not shown to you: {why}]" if why else
                                       f"\n[{path} is no longer a readable image in /data]")
            else:
                message.setdefault("images", []).insert(0, picture)
        return window

    async def _sees(self, turn: Turn) -> bool:
        """Whether the turn's model reads images; asked of its server only when pictures are involved."""
        if turn.vision is None:
            turn.vision = "vision" in await self.parts.model_server.capabilities(turn.model)
        return turn.vision

    async def _picture(self, turn: Turn, path: str) -> str | None:
        """One image, read through the sandbox (a symlink planted in /data resolves inside it, never
        on the host) and made fit for the model off the loop; None when it is gone or not an image.
        Decoded once per picture, not once per turn: images.prepared keeps what it made by content."""
        if path not in turn.pictures:
            try:
                data = await self.parts.sandboxes.get(turn.user, turn.session).read_file(
                    path, max_bytes=self.parts.settings.upload_max_file_bytes)
                fit = await asyncio.get_running_loop().run_in_executor(self.parts.image_pool, images.prepared, data)
                turn.pictures[path] = base64.b64encode(fit).decode()
            except (EngineError, images.NotAnImage) as exc:
                log.info("session %s/%s: image %s not shown to the model: %s", turn.user, turn.session, path,
                         getattr(exc, "user_message", exc))
                turn.pictures[path] = None
                if isinstance(exc, images.NotAnImage):
                    turn.unshown[path] = str(exc)
        return turn.pictures[path]

    async def _keep_partial(self, session_id: int, parts: list[str]) -> None:
        """A reply cut short is kept for the record but marked incomplete (never sent back)."""
        if parts:
            await self._store(session_id, "assistant", "".join(parts), complete=False)

    def _kinds(self, turn: Turn) -> dict[str, ToolKind]:
        """The tools callable in this turn, by name: a call's kind is looked up here, never guessed."""
        kinds = {}
        if self.parts.settings.tools:
            kinds[EXECUTE_TERMINAL] = ToolKind(parse_terminal, self._execute)
            kinds[SEND_FILE] = ToolKind(parse_send_file, self._send_file)
        for name, tool in turn.mcp_tools.items():
            kinds[name] = ToolKind(functools.partial(parse_mcp, tool), self._mcp)
        return kinds

    async def _run_tools(self, turn: Turn, calls: list[ModelCall], more: int = 0) -> None:
        """Run the first MAX_TOOL_CALLS_PER_ROUND calls in order, each by its kind. Every call gets
        exactly one result row, whatever happens, so the history stays a valid request; `more` calls
        the model made were not even kept (the notice counts them too)."""
        gen, session_id, user, session = turn.gen, turn.session_id, turn.user, turn.session
        cap = self.parts.settings.max_tool_calls_per_round
        kinds = self._kinds(turn)
        for index, call in enumerate(calls[:cap]):
            gen.outbox.put(ToolStarted(call.name, call.arguments))
            kind = kinds.get(call.name)
            try:
                if call.problem:
                    raise ToolArgumentError(call.problem)
                if kind is None:
                    raise ToolArgumentError(unknown_tool(call.name, kinds))
                parsed = kind.parse(call.arguments)
            except ToolArgumentError as exc:
                turn.ran(call.name, "bad arguments")
                await self._store(session_id, "tool", str(exc), tool_name=call.name)
                gen.outbox.put(ToolFinished(call.name, str(exc), error=True))
                continue
            began = asyncio.get_running_loop().time()
            try:
                outcome = await kind.run(turn, call, parsed)
            except asyncio.CancelledError:
                turn.ran(parsed.command, "stopped" if gen.stopped else "cancelled")
                rows = (self._unrun(calls, index, STOPPED_RESULT, NOT_RUN_STOPPED) if gen.stopped
                        else self._unrun(calls, index, CANCELLED_RESULT, NOT_RUN_RESULT))
                await asyncio.shield(self.parts.history.run(self.parts.history.add_messages, session_id, rows))
                await asyncio.shield(self._audit(turn, parsed, began, cancelled=True))
                raise
            except EngineError as exc:
                turn.ran(parsed.command, "did not run")
                await self._audit(turn, parsed, began)
                rows = self._unrun(calls, index, f"error: {exc.user_message}", NOT_RUN_AFTER_ERROR)
                await self.parts.history.run(self.parts.history.add_messages, session_id, rows)
                gen.outbox.put(ToolFinished(call.name, exc.user_message, error=True))
                raise
            turn.ran(parsed.command, outcome.ending)
            await self._audit(turn, parsed, began, exit_code=outcome.exit_code,
                              duration=outcome.duration, output_bytes=outcome.output_bytes,
                              timed_out=outcome.finished.timed_out)
            await self._store(session_id, "tool", outcome.finished.output, tool_name=call.name,
                              images=outcome.images or None)
            for event in outcome.events:
                gen.outbox.put(event)
            gen.outbox.put(outcome.finished)
        if len(calls) > cap or more:
            over = len(calls) + more - cap
            turn.commands.append(f"{over} over the cap, not run")
            gen.outbox.put(Notice(OVER_CAP_NOTICE.format(n=over, cap=cap)))
            log.info("session %s/%s: %d tool calls in one message, %d not run", user, session,
                     len(calls) + more, over)
            await self.parts.history.run(self.parts.history.add_messages, session_id,
                                         self._unrun(calls, cap - 1, None, ""))

    # -- the tools: each takes its checked call and says what came of it ------------------
    async def _execute(self, turn: Turn, call: ModelCall, parsed: TerminalCall) -> "Outcome":
        result = await self.parts.terminal.execute(turn.user, turn.session, parsed.command, parsed.timeout,
                                                   on_queued=lambda n: turn.gen.outbox.put(ToolQueued(n)))
        self.parts.incidents.succeeded(DOCKER)
        kept = self.parts.outputs.keep((turn.user, turn.session), result.full_output) if result.full_output else ""
        return Outcome(ToolFinished(call.name, result.for_model(), result.exit_code, result.timed_out,
                                    full_output_id=kept, full_output_bytes=len(result.full_output)),
                       "timed out" if result.timed_out else f"exit {result.exit_code}",
                       exit_code=result.exit_code, duration=result.duration, output_bytes=result.output_bytes)

    async def _mcp(self, turn: Turn, call: ModelCall, parsed: McpCall) -> "Outcome":
        """An MCP server's tool, within its timeout. Whatever goes wrong is a result the model reads
        (an unreachable server never ends the turn); pictures go to the person as files, and to a
        vision model too (saved in /data, shown with the result)."""
        called = await self.parts.mcp.call(parsed.tool, parsed.arguments, turn.user, turn.session)
        if called.result is None:
            if called.timed_out:
                text = (f"timed out: {called.problem}, so the call was abandoned. The server may still be "
                        "working on it; try a smaller request or another tool.")
            else:
                text = f"error: {called.problem}. Other tools still work."
            return Outcome(ToolFinished(call.name, text, None, called.timed_out, error=True),
                           "timed out" if called.timed_out else "unavailable", duration=called.duration)
        result = called.result
        raw = result.text.encode()
        capped = CappedBuffer(self.parts.settings.output_limit)
        capped.write(raw)
        text = capped.text() if raw else "(no output)"
        cut = len(raw) > self.parts.settings.output_limit
        kept = self.parts.outputs.keep((turn.user, turn.session), raw[:full_output_cap(self.parts.settings)]) \
            if cut else ""
        outcome = Outcome(ToolFinished(call.name, ("error: " if result.error else "") + text, 1 if result.error else 0,
                                       full_output_id=kept, full_output_bytes=len(raw) if cut else 0),
                          "error result" if result.error else "ok", exit_code=1 if result.error else 0,
                          duration=called.duration, output_bytes=len(raw))
        notes = []
        for number, picture in enumerate(result.pictures, 1):
            name = f"{call.name}-{uuid.uuid4().hex[:6]}.{picture.extension}"
            if self._file_room(turn) >= len(picture.data):
                turn.files_sent += 1
                turn.file_bytes += len(picture.data)
                outcome.events.append(FileReady(name, picture.data, f"from {call.name}"))
                notes.append(f"picture {number} is attached to your reply for the user")
            if await self._sees(turn):
                try:
                    await self.parts.sandboxes.get(turn.user, turn.session).write_file(f"/data/{name}", picture.data)
                    outcome.images.append(f"/data/{name}")
                    notes.append(f"picture {number} is shown to you (saved as /data/{name})")
                except EngineError as exc:
                    log.info("session %s/%s: a picture from %s not saved: %s", turn.user, turn.session, call.name,
                             exc.user_message)
        if notes:
            outcome.finished = dataclasses.replace(outcome.finished,
                                                   output=outcome.finished.output + "\n[" + "; ".join(notes) + "]")
        return outcome

    def _file_room(self, turn: Turn) -> int:
        """Bytes one more file of this reply may hold (0 once it has as many files as a message takes)."""
        if turn.files_sent >= MAX_FILES_PER_REPLY:
            return 0
        most = self.parts.settings.send_file_max_bytes
        return min(most, turn.file_limit or most) - turn.file_bytes

    async def _send_file(self, turn: Turn, call: ModelCall, parsed: SendFileCall) -> "Outcome":
        """Read the file through the sandbox backend (no shared disk needed; a symlink resolves inside
        the sandbox, never on the host), within the channel's limit for one reply's files."""
        began = time.monotonic()
        most = self.parts.settings.send_file_max_bytes
        limit = min(most, turn.file_limit or most)
        left = self._file_room(turn)
        if turn.files_sent >= MAX_FILES_PER_REPLY:
            refusal = (f"error: {parsed.path} was not sent: at most {MAX_FILES_PER_REPLY} files go with one reply. "
                       "Put several files in an archive (tar or zip) and send that instead.")
            return Outcome(ToolFinished(call.name, refusal, error=True), "refused (too many files)")
        try:
            data = await self.parts.sandboxes.get(turn.user, turn.session).read_file(parsed.path, max_bytes=left)
        except SandboxFileTooLarge:
            room = f"{human_size(left)} left; " if turn.files_sent else ""
            refusal = (f"error: {parsed.path} was not sent: the files of one reply may be at most {human_size(limit)} "
                       f"in all here ({room}Discord's upload limit for this channel). Compress it, split it, or send "
                       "a smaller version (e.g. fewer rows, a lower resolution).")
            return Outcome(ToolFinished(call.name, refusal, error=True), "refused")
        except SandboxFileError as exc:
            return Outcome(ToolFinished(call.name, f"error: {exc} It was not sent.", error=True), "refused")
        self.parts.incidents.succeeded(DOCKER)
        turn.files_sent += 1
        turn.file_bytes += len(data)
        note = f" ({parsed.caption})" if parsed.caption else ""
        output = (f"sent {parsed.path} ({human_size(len(data))}){note} to the user: it is attached to your "
                  "reply, so do not paste its contents.")
        return Outcome(ToolFinished(call.name, output, 0), "sent", exit_code=0, duration=time.monotonic() - began,
                       output_bytes=len(data), events=[FileReady(parsed.name, data, parsed.caption, parsed.path)])

    def _unrun(self, calls: list[ModelCall], stopped: int, stopped_result: str | None,
               rest_result: str) -> list[dict[str, Any]]:
        """Result rows for call `stopped` (when given) and every call after it."""
        cap = self.parts.settings.max_tool_calls_per_round
        rows = []
        if stopped_result is not None:
            rows.append({"role": "tool", "content": stopped_result, "tool_name": calls[stopped].name})
        for index in range(stopped + 1, len(calls)):
            content = rest_result if index < cap else OVER_CAP_RESULT.format(cap=cap)
            rows.append({"role": "tool", "content": content, "tool_name": calls[index].name})
        return rows

    async def _audit(self, turn: Turn, parsed: TerminalCall | SendFileCall | McpCall, began: float, *,
                     exit_code: int | None = None, duration: float | None = None, output_bytes: int = 0,
                     timed_out: bool = False, cancelled: bool = False) -> None:
        """Every tool run, or meant to run, goes in the audit log (its own table): commands, and files
        sent, with the server the turn happens in. A command's time also counts toward its person's usage."""
        if duration is None:
            duration = asyncio.get_running_loop().time() - began
        if isinstance(parsed, TerminalCall):
            turn.command_seconds += duration
        audit = self.parts.audit
        await audit.run(audit.add, turn.user, turn.session, parsed.command, exit_code=exit_code, duration=duration,
                        output_bytes=output_bytes, timed_out=timed_out, cancelled=cancelled, server=turn.server)

    async def _store(self, session_id: int, role: str, content: str, **extra: Any) -> None:
        await self.parts.history.run(self.parts.history.add_message, session_id, role, content, **extra)
