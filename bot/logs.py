"""The bot's logging: an operator's lines at INFO, detail at DEBUG, and message text only on request.

What users write (and what the model answers) reaches the log only with LOG_CONTENT=true:
discord.py's HTTP and gateway loggers print whole payloads at DEBUG, peewee prints every SQL
statement with its parameters, and the engine's own `llmbot.content` logger prints messages.
"""
from __future__ import annotations

import logging

import discord

CONTENT_LOGGERS = ("discord.http", "discord.gateway", "discord.webhook", "discord.state", "peewee", "llmbot.content")
# A line per request at INFO (the whole URL, query string and all: an MCP server's key may ride in it),
# connection events at DEBUG: httpx and httpcore (Ollama), httpx2 and httpcore2 (the MCP and openai SDKs).
CHATTY_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2")


def setup_logging(level: str, *, log_content: bool = False) -> None:
    """Call once, before the bot is built."""
    discord.utils.setup_logging(level=getattr(logging, level), root=True)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    floor = max(logging.INFO, getattr(logging, level))
    for name in CONTENT_LOGGERS:
        # NOTSET follows the root level: at DEBUG the content shows, which is what was asked for.
        logging.getLogger(name).setLevel(logging.NOTSET if log_content else floor)
    # Its INFO lines are per-connection chatter; warnings (reconnect trouble) still show.
    logging.getLogger("discord.gateway").setLevel(logging.NOTSET if log_content else max(logging.WARNING, floor))
