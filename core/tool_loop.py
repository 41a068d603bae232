"""One turn of the conversation: stream the model, run the tools it asks for, repeat.

A turn runs as its own task and reports through its generation's queue, so a
newer message can cancel it (registry) without the caller's cooperation. What
the history holds is always a valid request: the user's message first, every
tool call followed by its result, and no partial reply stored as complete.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import ollama

from .errors import OLLAMA_UNREACHABLE, EngineError, ModelError, OllamaUnavailable
from .events import Done, Replaced, TextDelta, ThinkingDelta, ToolFinished, ToolQueued, ToolStarted
from .prompt import system_prompt
from .registry import Generation, Phase
from .tools import ToolArgumentError, parse_call, tool_schemas

if TYPE_CHECKING:
    from .runtime import Runtime
    from .terminal import CommandResult

log = logging.getLogger(__name__)

CANCELLED_RESULT = "cancelled: the user sent a new message before this command finished, so it was stopped."
NOT_RUN_RESULT = "not run: the user sent a new message first."
ROUNDS_NOTE = "(The assistant stopped after {n} rounds of commands without a final answer.)"


@dataclass
class TurnEnd:
    """The last item on a generation's queue."""

    error: EngineError | None = None


class TurnRunner:
    """Runs turns against one Runtime's Ollama client, history and terminal."""

    def __init__(self, runtime: "Runtime") -> None:
        self.rt = runtime

    async def run(self, gen: Generation, session_id: int, user: str, session: str, text: str) -> None:
        emit = gen.queue.put_nowait
        try:
            if gen.previous is not None and gen.previous.task is not None:
                await asyncio.gather(gen.previous.task, return_exceptions=True)
            await self._store(session_id, "user", text)
            await self._loop(gen, session_id, user, session)
            emit(TurnEnd())
        except asyncio.CancelledError:
            if gen.replaced:
                emit(Replaced())
            emit(TurnEnd())
            raise
        except EngineError as exc:
            emit(TurnEnd(exc))
        except Exception:  # noqa: BLE001 - no traceback reaches a user
            log.exception("turn failed in session %s/%s", user, session)
            emit(TurnEnd(EngineError("Something went wrong while answering; the details are in the bot's log.")))

    async def _loop(self, gen: Generation, session_id: int, user: str, session: str) -> None:
        settings = self.rt.settings
        rounds = 0
        while True:
            window = await self.rt.history.run(self.rt.history.window, session_id, settings.history_window)
            messages = [system_prompt(settings)] + window
            tools = tool_schemas(settings) if rounds < settings.max_tool_rounds else None
            gen.phase = Phase.STREAMING
            content, calls = await self._stream(gen, session_id, messages, tools)
            if not calls:
                if tools is None and not content:
                    content = ROUNDS_NOTE.format(n=rounds)
                    gen.queue.put_nowait(TextDelta(content))
                await self._store(session_id, "assistant", content)
                gen.queue.put_nowait(Done(content))
                return
            stored_calls = [{"function": {"name": c.function.name, "arguments": dict(c.function.arguments or {})}}
                            for c in calls]
            await self._store(session_id, "assistant", content, tool_calls=stored_calls)
            gen.phase = Phase.TOOL
            await self._run_tools(gen, session_id, user, session, stored_calls)
            rounds += 1

    async def _stream(self, gen: Generation, session_id: int, messages: list[dict[str, Any]],
                      tools: list[dict[str, Any]] | None) -> tuple[str, list[Any]]:
        """The model's whole answer for one request, streamed to the queue as it comes."""
        settings = self.rt.settings
        kwargs: dict[str, Any] = {"model": self.rt.model, "messages": messages, "stream": True}
        if tools:
            kwargs["tools"] = tools
        if settings.ollama_think is not None:
            kwargs["think"] = settings.ollama_think
        if settings.ollama_num_ctx:
            kwargs["options"] = {"num_ctx": settings.ollama_num_ctx}
        if settings.ollama_keep_alive:
            kwargs["keep_alive"] = settings.ollama_keep_alive
        parts: list[str] = []
        calls: list[Any] = []
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
                    calls.extend(message.tool_calls)
        except ollama.ResponseError as exc:
            await self._keep_partial(session_id, parts)
            raise self._model_error(exc) from exc
        except httpx.ReadTimeout as exc:
            await self._keep_partial(session_id, parts)
            log.warning("ollama at %s sent nothing for %g s", settings.ollama_host, settings.ollama_stall_timeout)
            raise OllamaUnavailable(f"The AI model stopped answering (nothing for {settings.ollama_stall_timeout:g} s). "
                                    "Please try again.") from exc
        except OLLAMA_UNREACHABLE as exc:
            await self._keep_partial(session_id, parts)
            log.warning("ollama at %s failed: %r", settings.ollama_host, exc)
            if parts:
                raise OllamaUnavailable("The connection to Ollama dropped in the middle of the reply. Please try again.") from exc
            raise OllamaUnavailable(
                f"Ollama is not reachable at {settings.ollama_host}: start it (ollama serve) or set OLLAMA_HOST."
            ) from exc
        except asyncio.CancelledError:
            await asyncio.shield(self._keep_partial(session_id, parts))
            raise
        return "".join(parts), calls

    def _model_error(self, exc: ollama.ResponseError) -> ModelError:
        if exc.status_code == 404:
            return ModelError(f"The model {self.rt.model!r} is not on the Ollama server: run `ollama pull {self.rt.model}`.")
        detail = str(exc.error).splitlines()[0] if exc.error else "unknown error"
        if "does not support tools" in detail:
            return ModelError(f"The model {self.rt.model!r} cannot use tools: choose a tool-capable model (OLLAMA_MODEL).")
        return ModelError(f"Ollama could not answer: {detail[:300]}")

    async def _keep_partial(self, session_id: int, parts: list[str]) -> None:
        """A reply cut short is kept for the record but marked incomplete (never sent back)."""
        if parts:
            await self._store(session_id, "assistant", "".join(parts), complete=False)

    async def _run_tools(self, gen: Generation, session_id: int, user: str, session: str,
                         calls: list[dict[str, Any]]) -> None:
        for index, call in enumerate(calls):
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            gen.queue.put_nowait(ToolStarted(name, arguments if isinstance(arguments, dict) else {}))
            try:
                parsed = parse_call(name, arguments)
            except ToolArgumentError as exc:
                await self._store(session_id, "tool", str(exc), tool_name=name)
                gen.queue.put_nowait(ToolFinished(name, str(exc), error=True))
                continue
            began = asyncio.get_running_loop().time()
            try:
                result = await self.rt.terminal.execute(user, session, parsed.command, parsed.timeout,
                                                        on_queued=lambda n: gen.queue.put_nowait(ToolQueued(n)))
            except asyncio.CancelledError:
                rows = [{"role": "tool", "content": CANCELLED_RESULT, "tool_name": name}]
                rows += [{"role": "tool", "content": NOT_RUN_RESULT, "tool_name": c["function"]["name"]}
                         for c in calls[index + 1:]]
                await asyncio.shield(self.rt.history.run(self.rt.history.add_messages, session_id, rows))
                await asyncio.shield(self._audit(user, session, parsed.command, None, began, cancelled=True))
                raise
            except EngineError as exc:
                await self._audit(user, session, parsed.command, None, began)
                # Keep the history valid (every call has a result), then tell the caller.
                await self._store(session_id, "tool", f"error: {exc}", tool_name=name)
                for c in calls[index + 1:]:
                    await self._store(session_id, "tool", NOT_RUN_RESULT, tool_name=c["function"]["name"])
                gen.queue.put_nowait(ToolFinished(name, str(exc), error=True))
                raise
            await self._audit(user, session, parsed.command, result, began)
            output = result.for_model()
            await self._store(session_id, "tool", output, tool_name=name)
            gen.queue.put_nowait(ToolFinished(name, output, result.exit_code, result.timed_out))

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
