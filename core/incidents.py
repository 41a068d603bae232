"""What is down right now, for operators: each failure logged once per incident, not once per message.

An incident opens at the first failure of a part (Ollama or an OpenAI-compatible model server,
Docker, an MCP server), is logged then with the full detail, and closes at that part's next
success (logged too). `/admin status` lists the open ones.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .errors import EngineError, ModelError, OllamaUnavailable, SandboxUnavailable

log = logging.getLogger("core.incidents")
OLLAMA, OPENAI, DOCKER = "Ollama", "OpenAI-compatible server", "Docker"


@dataclass
class Incident:
    part: str
    detail: str
    since: float  # time.time()
    count: int = 1


def part_of(error: EngineError) -> str | None:
    """Which part an error says is down; None for errors about one message or one file."""
    part = getattr(error, "part", None)  # errors of a part of their own name it (an MCP server)
    if isinstance(part, str) and part:
        return part
    if isinstance(error, (OllamaUnavailable, ModelError)):
        return error.part or OLLAMA
    if isinstance(error, SandboxUnavailable) and error.user_message == SandboxUnavailable.user_line:
        return DOCKER
    return None


class Incidents:
    def __init__(self) -> None:
        self._open: dict[str, Incident] = {}

    def failed(self, error: EngineError) -> None:
        part = part_of(error)
        if part is None:
            return
        current = self._open.get(part)
        if current is not None and current.detail == str(error):
            current.count += 1
            return
        self._open[part] = Incident(part, str(error), time.time())
        log.warning("%s problem: %s", part, error)

    def succeeded(self, part: str) -> None:
        incident = self._open.pop(part, None)
        if incident is not None:
            log.info("%s is working again (%d failure%s since the problem began)", part, incident.count,
                     "" if incident.count == 1 else "s")

    def open(self) -> list[Incident]:
        return sorted(self._open.values(), key=lambda i: i.since)
