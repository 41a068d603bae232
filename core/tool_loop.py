"""One turn of the conversation: stream the model, run the tools it asks for, repeat.

A turn runs as its own task and reports through its generation's queue, so a
newer message can cancel it (registry) without the caller's cooperation. What
the history holds is always a valid request: the user's message first, every
tool call followed by its result, and no partial reply stored as complete.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import ollama

from .errors import OLLAMA_UNREACHABLE, EngineError, ModelError, OllamaUnavailable
from .incidents import DOCKER, OLLAMA
from .events import Done, Replaced, Stopped, TextDelta, ThinkingDelta, ToolFinished, ToolQueued, ToolStarted
from .places import Place
from .prompt import system_prompt
from .registry import Generation, Phase
from .tools import ModelCall, ToolArgumentError, parse_call, tool_schemas

if TYPE_CHECKING:
    from .runtime import Runtime
    from .terminal import CommandResult

log = logging.getLogger(__name__)
content_log = logging.getLogger("llmbot.content")  # message text: silent unless LOG_CONTENT=true

CANCELLED_RESULT = "cancelled: the user sent a new message before this command finished, so it was stopped."
NOT_RUN_RESULT = "not run: the user sent a new message first."
STOPPED_RESULT = "stopped: the user pressed Stop before this command finished, so it was killed."
NOT_RUN_STOPPED = "not run: the user pressed Stop first."
NOT_RUN_AFTER_ERROR = "not run: the command before it could not be run."
OVER_CAP_RESULT = ("not run: at most {cap} commands run per message. Check the results above, then send "
                   "the remaining commands in your next message if they are still needed.")
UNREADABLE = "The AI model sent a reply that could not be read. Please try again."
ROUNDS_NOTE = "(The assistant stopped after {n} rounds of commands without a final answer.)"


@dataclass
class TurnEnd:
    """The last item on a generation's queue."""

    error: EngineError | None = None


@dataclass
class Turn:
    """One turn's facts (who, where, with which model and persona) and what it did, for its log line."""

    gen: Generation
    session_id: int
    user: str
    session: str
    model: str = ""
    persona: str = ""
    rounds: int = 0
    commands: list[str] = field(default_factory=list)  # "`cmd` → exit 0" as the log shows them
    prompt_tokens: int = 0
    answer_tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    def ran(self, command: str, ending: str) -> None:
        shown = command if len(command) <= 60 else command[:57] + "..."
        self.commands.append(f"{shown!r} {ending}")

    def summary(self, ending: str) -> str:
        """One INFO line: never the message or the answer, only their shape."""
        took = time.monotonic() - self.started
        commands = ", ".join(self.commands) if self.commands else "none"
        return (f"turn user={self.user} channel={self.session} model={self.model} {ending} in {took:.1f} s; "
                f"rounds={self.rounds} commands=[{commands}] tokens: {self.prompt_tokens} in, "
                f"{self.answer_tokens} out")


class TurnRunner:
    """Runs turns against one Runtime's Ollama client, history and terminal."""

    def __init__(self, runtime: "Runtime") -> None:
        self.rt = runtime

    async def run(self, gen: Generation, session_id: int, user: str, session: str, text: str,
                  place: Place | None = None) -> None:
        turn = Turn(gen, session_id, user, session)
        emit = gen.queue.put_nowait
        ending = "failed"
        try:
            place = place or Place(channel=session)
            turn.model = (await self.rt.places.model(place)).value
            turn.persona = (await self.rt.places.prompt(place)).value
            if gen.previous is not None and gen.previous.task is not None:
                await asyncio.gather(gen.previous.task, return_exceptions=True)
            repaired = await self.rt.history.run(self.rt.history.repair_interrupted, session_id)
            if repaired:
                log.info("session %s/%s: %d tool calls had no result (a crash?); stored as interrupted",
                         user, session, repaired)
            await self._store(session_id, "user", text)
            content_log.debug("turn user=%s channel=%s message: %r", user, session, text)
            await self._loop(turn)
            ending = "answered"
            emit(TurnEnd())
        except asyncio.CancelledError:
            ending = "replaced" if gen.replaced else "stopped" if gen.stopped else "cancelled"
            if gen.replaced:
                emit(Replaced())
            elif gen.stopped:
                emit(Stopped())
            emit(TurnEnd())
            raise
        except EngineError as exc:
            ending = f"failed ({type(exc).__name__})"
            self.rt.incidents.failed(exc)
            emit(TurnEnd(exc))
        except Exception:  # noqa: BLE001 - no traceback reaches a user
            log.exception("turn failed in session %s/%s", user, session)
            emit(TurnEnd(EngineError("Something went wrong while answering; the details are in the bot's log.")))
        finally:
            log.info(turn.summary(ending))

    async def _loop(self, turn: Turn) -> None:
        settings = self.rt.settings
        gen = turn.gen
        while True:
            window = await self.rt.history.run(self.rt.history.window, turn.session_id, settings.history_window)
            messages = [system_prompt(settings, turn.persona)] + window
            tools = tool_schemas(settings) if turn.rounds < settings.max_tool_rounds else None
            gen.phase = Phase.STREAMING
            content, calls = await self._stream(turn, messages, tools)
            if not calls:
                if tools is None and not content:
                    content = ROUNDS_NOTE.format(n=turn.rounds)
                    gen.queue.put_nowait(TextDelta(content))
                await self._store(turn.session_id, "assistant", content)
                content_log.debug("turn user=%s channel=%s answer: %r", turn.user, turn.session, content)
                gen.queue.put_nowait(Done(content))
                return
            await self._store(turn.session_id, "assistant", content, tool_calls=[c.stored() for c in calls])
            gen.phase = Phase.TOOL
            await self._run_tools(turn, calls)
            turn.rounds += 1

    async def _stream(self, turn: Turn, messages: list[dict[str, Any]],
                      tools: list[dict[str, Any]] | None) -> tuple[str, list[ModelCall]]:
        """The model's whole answer for one request, streamed to the queue as it comes."""
        settings = self.rt.settings
        gen, session_id = turn.gen, turn.session_id
        kwargs: dict[str, Any] = {"model": turn.model, "messages": messages, "stream": True}
        if tools:
            kwargs["tools"] = tools
        if settings.ollama_think is not None:
            kwargs["think"] = settings.ollama_think
        if settings.ollama_num_ctx:
            kwargs["options"] = {"num_ctx": settings.ollama_num_ctx}
        if settings.ollama_keep_alive:
            kwargs["keep_alive"] = settings.ollama_keep_alive
        parts: list[str] = []
        calls: list[ModelCall] = []
        try:
            stream = await self.rt.ollama().chat(**kwargs)
            async for chunk in stream:
                message = chunk.message
                if message.thinking:
                    gen.queue.put_nowait(ThinkingDelta(message.thinking))
                if message.content:
                    parts.append(message.content)
                    gen.queue.put_nowait(TextDelta(message.content))
                if message.tool_calls:
                    malformed = getattr(chunk, "malformed", {})
                    calls.extend(ModelCall(c.function.name, dict(c.function.arguments or {}), malformed.get(i))
                                 for i, c in enumerate(message.tool_calls))
                if chunk.done:
                    turn.prompt_tokens += chunk.prompt_eval_count or 0
                    turn.answer_tokens += chunk.eval_count or 0
        except ollama.ResponseError as exc:
            await self._keep_partial(session_id, parts)
            raise self._model_error(exc, turn.model) from exc
        except httpx.ReadTimeout as exc:
            await self._keep_partial(session_id, parts)
            log.debug("ollama at %s sent nothing for %g s", settings.ollama_host, settings.ollama_stall_timeout)
            raise OllamaUnavailable(f"The AI model stopped answering (nothing for {settings.ollama_stall_timeout:g} s). "
                                    "Please try again.", user="The AI model stopped answering. Please try again.") from exc
        except OLLAMA_UNREACHABLE as exc:
            await self._keep_partial(session_id, parts)
            log.debug("ollama at %s failed: %r", settings.ollama_host, exc)
            if parts:
                raise OllamaUnavailable("The connection to Ollama dropped in the middle of the reply. Please try again.",
                                        user="The connection to the AI model dropped in the middle of the reply. "
                                             "Please try again.") from exc
            raise OllamaUnavailable(
                f"Ollama is not reachable at {settings.ollama_host}: start it (ollama serve) or set OLLAMA_HOST."
            ) from exc
        except ValueError as exc:  # a line that is not JSON, or a chunk that is not a chat message
            await self._keep_partial(session_id, parts)
            log.warning("ollama at %s sent an unreadable chunk: %s", settings.ollama_host, str(exc)[:500])
            raise ModelError(UNREADABLE, user=UNREADABLE) from exc
        except asyncio.CancelledError:
            await asyncio.shield(self._keep_partial(session_id, parts))
            raise
        self.rt.incidents.succeeded(OLLAMA)
        return "".join(parts), calls

    @staticmethod
    def _model_error(exc: ollama.ResponseError, model: str) -> ModelError:
        if exc.status_code == 404:
            return ModelError(f"The model {model!r} is not on the Ollama server: run `ollama pull {model}` "
                              "or pick another with /admin model.")
        detail = str(exc.error).splitlines()[0] if exc.error else "unknown error"
        if "does not support tools" in detail:
            return ModelError(f"The model {model!r} cannot use tools: choose a tool-capable model (OLLAMA_MODEL "
                              "or /admin model).")
        return ModelError(f"Ollama could not answer: {detail[:300]}")

    async def _keep_partial(self, session_id: int, parts: list[str]) -> None:
        """A reply cut short is kept for the record but marked incomplete (never sent back)."""
        if parts:
            await self._store(session_id, "assistant", "".join(parts), complete=False)

    async def _run_tools(self, turn: Turn, calls: list[ModelCall]) -> None:
        """Run the first MAX_TOOL_CALLS_PER_ROUND calls in order. Every call gets exactly one
        result row, whatever happens, so the history stays a valid request."""
        gen, session_id, user, session = turn.gen, turn.session_id, turn.user, turn.session
        cap = self.rt.settings.max_tool_calls_per_round
        for index, call in enumerate(calls[:cap]):
            gen.queue.put_nowait(ToolStarted(call.name, call.arguments))
            try:
                if call.problem:
                    raise ToolArgumentError(call.problem)
                parsed = parse_call(call.name, call.arguments)
            except ToolArgumentError as exc:
                turn.ran(call.name, "bad arguments")
                await self._store(session_id, "tool", str(exc), tool_name=call.name)
                gen.queue.put_nowait(ToolFinished(call.name, str(exc), error=True))
                continue
            began = asyncio.get_running_loop().time()
            try:
                result = await self.rt.terminal.execute(user, session, parsed.command, parsed.timeout,
                                                        on_queued=lambda n: gen.queue.put_nowait(ToolQueued(n)))
            except asyncio.CancelledError:
                turn.ran(parsed.command, "stopped" if gen.stopped else "cancelled")
                rows = (self._unrun(calls, index, STOPPED_RESULT, NOT_RUN_STOPPED) if gen.stopped
                        else self._unrun(calls, index, CANCELLED_RESULT, NOT_RUN_RESULT))
                await asyncio.shield(self.rt.history.run(self.rt.history.add_messages, session_id, rows))
                await asyncio.shield(self._audit(user, session, parsed.command, None, began, cancelled=True))
                raise
            except EngineError as exc:
                turn.ran(parsed.command, "did not run")
                await self._audit(user, session, parsed.command, None, began)
                rows = self._unrun(calls, index, f"error: {exc.user_message}", NOT_RUN_AFTER_ERROR)
                await self.rt.history.run(self.rt.history.add_messages, session_id, rows)
                gen.queue.put_nowait(ToolFinished(call.name, exc.user_message, error=True))
                raise
            self.rt.incidents.succeeded(DOCKER)
            turn.ran(parsed.command, "timed out" if result.timed_out else f"exit {result.exit_code}")
            await self._audit(user, session, parsed.command, result, began)
            output = result.for_model()
            await self._store(session_id, "tool", output, tool_name=call.name)
            gen.queue.put_nowait(ToolFinished(call.name, output, result.exit_code, result.timed_out))
        if len(calls) > cap:
            turn.commands.append(f"{len(calls) - cap} over the cap, not run")
            log.info("session %s/%s: %d tool calls in one message, %d not run", user, session,
                     len(calls), len(calls) - cap)
            await self.rt.history.run(self.rt.history.add_messages, session_id, self._unrun(calls, cap - 1, None, ""))

    def _unrun(self, calls: list[ModelCall], stopped: int, stopped_result: str | None,
               rest_result: str) -> list[dict[str, Any]]:
        """Result rows for call `stopped` (when given) and every call after it."""
        cap = self.rt.settings.max_tool_calls_per_round
        rows = []
        if stopped_result is not None:
            rows.append({"role": "tool", "content": stopped_result, "tool_name": calls[stopped].name})
        for index in range(stopped + 1, len(calls)):
            content = rest_result if index < cap else OVER_CAP_RESULT.format(cap=cap)
            rows.append({"role": "tool", "content": content, "tool_name": calls[index].name})
        return rows

    async def _audit(self, user: str, session: str, command: str, result: "CommandResult | None", began: float,
                     *, cancelled: bool = False) -> None:
        """Every command that ran, or was meant to, goes in the audit log (its own table)."""
        duration = asyncio.get_running_loop().time() - began
        await self.rt.history.run(
            self.rt.history.add_audit, user, session, command,
            exit_code=result.exit_code if result else None, duration=result.duration if result else duration,
            output_bytes=result.output_bytes if result else 0, timed_out=bool(result and result.timed_out),
            cancelled=cancelled)

    async def _store(self, session_id: int, role: str, content: str, **extra: Any) -> None:
        await self.rt.history.run(self.rt.history.add_message, session_id, role, content, **extra)
