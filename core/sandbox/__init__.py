"""Sandboxes: one private Linux box per conversation, behind a face any backend can provide.

base.py (the face: Provider, Sandbox), terminal.py (a command as a terminal runs it), quota.py (what
a sandbox and a person may hold, and how it is weighed), workspace.py (the /data folders on this
machine: listing, sizes), locks.py, and docker/ (the provider on a Docker engine).
"""
from .base import STDERR, STDOUT, OutputSink, Provider, Sandbox, SandboxInfo
from .terminal import CommandResult, Terminal

__all__ = ["STDERR", "STDOUT", "CommandResult", "OutputSink", "Provider", "Sandbox", "SandboxInfo", "Terminal"]
