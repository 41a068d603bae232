"""What a turn reports while it runs, for callers that show more than the text (the bot)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply's text."""

    text: str


@dataclass(frozen=True)
class ThinkingDelta:
    """A piece of a reasoning model's thinking (never stored, hidden by default)."""

    text: str


@dataclass(frozen=True)
class ToolStarted:
    """The model asked for a tool; `command` is set for execute_terminal."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return str(self.arguments.get("command", ""))

    @property
    def path(self) -> str:
        """For send_file: the file asked for."""
        return str(self.arguments.get("path", ""))


@dataclass(frozen=True)
class ToolQueued:
    """The started tool waits for a free command slot (MAX_RUNNING_COMMANDS) behind `ahead`
    commands; `ahead == 0` means its wait is over and it runs now."""

    ahead: int


@dataclass(frozen=True)
class ModelQueued:
    """The turn's next request to the model waits for a free slot (MAX_MODEL_REQUESTS) behind `ahead`
    requests, other people's first (round robin); `ahead == 0` means its wait is over and it starts now."""

    ahead: int


@dataclass(frozen=True)
class ToolFinished:
    """A tool came back; `exit_code` is None when it did not run or was killed."""

    name: str
    output: str
    exit_code: int | None = None
    timed_out: bool = False
    error: bool = False
    full_output_id: str = ""  # the whole output, when the model's copy was cut (Runtime.outputs)
    full_output_bytes: int = 0


@dataclass(frozen=True)
class FileReady:
    """send_file read a file from the sandbox: the caller hands it to the user (Discord: an attachment)."""

    name: str
    data: bytes = field(repr=False)
    caption: str = ""
    path: str = ""


@dataclass(frozen=True)
class Notice:
    """Something the user should know that is not part of the answer (e.g. the model cannot see images)."""

    text: str


@dataclass(frozen=True)
class Ignored:
    """The message was dropped because a reply is still streaming in this session."""


@dataclass(frozen=True)
class Replacing:
    """This message cancelled a reply that was waiting on a tool, and takes its place."""


@dataclass(frozen=True)
class Replaced:
    """This reply was cancelled by a newer message while it waited on a tool."""


@dataclass(frozen=True)
class Stopped:
    """This reply was stopped on purpose (ChatSession.stop, e.g. a Stop button); a running command was killed."""


@dataclass(frozen=True)
class Done:
    """The reply is complete; `text` is the final answer as stored."""

    text: str


Event = (TextDelta | ThinkingDelta | ToolStarted | ToolQueued | ModelQueued | ToolFinished | FileReady | Notice
         | Ignored | Replacing | Replaced | Stopped | Done)
