"""The engine's long-lived pieces, in one object.

Runtime builds it and hands it to what works with those pieces (the turn runner, the background
loops), so none of them needs the Runtime: the imports go one way, Runtime → tool_loop and
background → parts. Runtime's own attributes of the same names live here too, so a piece replaced
on the Runtime (tests swap the settings or the sandbox manager) is the one the next turn uses.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .admission import FairGate
    from .config import Settings
    from .context import Seen, TokenCounter
    from .sandbox import Provider, Terminal
    from .store import AuditLog, History, Places, UsageLog
    from .incidents import Incidents
    from .mcp.hub import McpHub
    from .model_client import ModelServer
    from .outputs import OutputStore
    from .registry import Key


@dataclass
class Parts:
    settings: Settings
    history: History  # conversations, on the database's own threads
    audit: AuditLog  # every command run, apart from the conversations
    usage: UsageLog  # what each person used (turns, tokens, command time, files), per server, day and model
    places: Places  # persona and model per channel and server
    sandboxes: Provider  # one sandbox per conversation
    terminal: Terminal  # commands in those sandboxes
    model_server: ModelServer  # the model servers (Ollama, an OpenAI-compatible one), and what each model can do
    model_gate: FairGate  # every request to the model passes it: MAX_MODEL_REQUESTS at once, round robin by person
    incidents: Incidents  # what is down now, logged once per incident
    mcp: McpHub  # the operator's MCP servers (MCP_CONFIG): their sessions, tools and calls
    outputs: OutputStore  # cut commands' whole outputs, for the user to download
    tokens: TokenCounter  # characters to tokens, per model, learned from the server's counts
    # Decoding pictures for vision models: CPU work, kept off the loop and off the default executor.
    image_pool: ThreadPoolExecutor
    context_seen: dict[Key, Seen] = field(default_factory=dict)  # how much of each conversation the model saw last
    told_no_vision: set[Key] = field(default_factory=set)  # sessions told once that their model cannot see images
