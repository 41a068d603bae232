"""Build and run the Discord bot.

    python -m bot.discord_bot                 # run (DISCORD_TOKEN from the environment or .env)
    python -m bot.discord_bot --check         # preflight only: one line per dependency
    python -m bot.discord_bot --log-level DEBUG
    python -m bot.discord_bot --wait-for-token    # as its container runs it: see main()
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any, Sequence

import aiohttp
import discord
from discord.ext import commands

from core import ConfigError, Place, Runtime, Settings, get_runtime
from core.preflight import print_checks, run_checks

from .logs import setup_logging

log = logging.getLogger(__name__)
EXTENSIONS = ("bot.cogs.chat", "bot.cogs.everyone", "bot.cogs.admin", "bot.cogs.threads", "bot.cogs.privacy")
# What the bot does in a channel: read it and its history, answer (in threads too, and in threads it
# starts), react (⏳) and attach files. The invite URL asks for these and nothing more.
PERMISSIONS = discord.Permissions(view_channel=True, send_messages=True, send_messages_in_threads=True,
                                  create_public_threads=True, read_message_history=True, add_reactions=True,
                                  attach_files=True)
WAITING = "; waiting for that instead of exiting (a container that exits is restarted over and over)"


def invite_url(client_id: int) -> str:
    """The link that adds the bot to a server with its slash commands and the permissions it needs."""
    return discord.utils.oauth_url(client_id, permissions=PERMISSIONS, scopes=("bot", "applications.commands"))


def _options(settings: Settings) -> dict[str, Any]:
    """How this bot talks to Discord: message content (to read what it is asked), no prefix commands
    of its own (slash commands instead), and no mention it sends ever pings anyone. With
    DM_ACCESS=mutual, the members of its servers too: a DM is checked against the roles its
    writer holds in the servers they share with the bot."""
    intents = discord.Intents.default()
    intents.message_content = True
    intents.members = settings.dm_access == "mutual"
    return dict(command_prefix=commands.when_mentioned, intents=intents, help_command=None,
                allowed_mentions=discord.AllowedMentions.none())


class _BotMixin:
    """What the plain and the sharded bot share: handed the engine's runtime, loading the cogs."""

    def __init__(self, runtime: Runtime, *, initial_extensions: Sequence[str] = EXTENSIONS, **options: Any) -> None:
        # The bot never joins voice: the "PyNaCl/davey is not installed" warnings (said while the
        # client is built) only alarm operators.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        super().__init__(**{**_options(runtime.settings), **options})  # type: ignore[call-arg]
        self.runtime = runtime
        self.initial_extensions = tuple(initial_extensions)

    async def setup_hook(self) -> None:
        for extension in self.initial_extensions:
            await self.load_extension(extension)  # type: ignore[attr-defined]
        try:
            synced = await self.tree.sync()  # type: ignore[attr-defined]
            log.info("synced %d slash commands", len(synced))
        except (discord.DiscordException, NotImplementedError) as exc:
            log.warning("could not sync slash commands: %s", exc)
        self.runtime.start_background()

    async def on_ready(self) -> None:
        """The operator's sign that the bot is up, and where (it runs again after a reconnect)."""
        s = self.runtime.settings
        model = await self.runtime.places.model(Place())
        overrides = await self.runtime.places.model_overrides()
        me = self.user  # type: ignore[attr-defined]
        client_id = getattr(self, "application_id", None) or getattr(me, "id", None)
        server = f"OpenAI API at {s.openai_base_url}" if s.model_api == "openai" else f"Ollama at {s.ollama_host}"
        log.info("ready as %s (id %s) in %d servers; model %s%s; %s%s; invite: %s", me,
                 getattr(me, "id", "?"), len(self.guilds), model.value,  # type: ignore[attr-defined]
                 f" ({overrides} server/channel overrides)" if overrides else "", server,
                 "" if s.tools else "; chat only (TOOLS=off)", invite_url(client_id) if client_id else "?")

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: the chat cog's listener handles messages, slash commands the rest."""

    async def close(self) -> None:
        await super().close()  # type: ignore[misc]
        await self.runtime.close()


class LLMBot(_BotMixin, commands.Bot):
    """`LLMBot(runtime)`: the bot, not connected; `setup_hook` loads the cogs when it starts."""


class ShardedLLMBot(_BotMixin, commands.AutoShardedBot):
    """The same, over SHARD_COUNT shards (for many servers)."""


def create_bot(settings: Settings | None = None, runtime: Runtime | None = None) -> LLMBot | ShardedLLMBot:
    """The bot for these settings (or this runtime), sharded when SHARD_COUNT asks for it."""
    runtime = runtime or get_runtime(settings)
    if runtime.settings.shard_count > 0:
        return ShardedLLMBot(runtime, shard_count=runtime.settings.shard_count)
    return LLMBot(runtime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.discord_bot", description="Run the Discord bot.")
    parser.add_argument("--check", action="store_true", help="run the preflight checks and exit")
    parser.add_argument("--log-level", default=None, type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help="default: LOG_LEVEL or INFO")
    parser.add_argument("--wait-for-token", action="store_true",
                        help="without a usable DISCORD_TOKEN, say so once and wait to be stopped instead of "
                             "exiting (the Dockerfile's command: a container that exits is restarted forever)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"Bad configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or settings.log_level, log_content=settings.log_content)

    checks = asyncio.run(run_checks(settings, container=args.wait_for_token))
    if args.check:
        return print_checks(checks)
    fatal = [c for c in checks if not c.ok and c.fatal]
    if fatal:  # only what stops the bot: one line each
        for check in fatal:
            print(check.message + (WAITING if args.wait_for_token and check.name == "token" else ""),
                  file=sys.stderr, flush=True)
        if args.wait_for_token and all(check.name == "token" for check in fatal):
            return wait_to_be_stopped()
        return 1
    for check in checks:
        if not check.ok:
            log.warning("preflight: %s", check.message)  # the bot can start; users get friendly errors
    bot = create_bot(settings)
    try:
        bot.run(settings.discord_token, log_handler=None)
    except discord.LoginFailure:
        where = "put it in .env and run `docker compose up -d` again" if args.wait_for_token else "update .env"
        print(f"Discord rejected DISCORD_TOKEN: reset the token on the Bot page of the Developer Portal and {where}"
              + (WAITING if args.wait_for_token else ""), file=sys.stderr, flush=True)
        return wait_to_be_stopped() if args.wait_for_token else 1
    except (aiohttp.ClientError, OSError) as exc:
        print(f"Cannot reach Discord ({type(exc).__name__}): check this machine's internet connection", file=sys.stderr)
        return 1
    except discord.PrivilegedIntentsRequired:
        members = " and the Server Members Intent (DM_ACCESS=mutual)" if settings.dm_access == "mutual" else ""
        print(f"Enable the Message Content Intent{members} on the Bot page of the Developer Portal, then start again",
              file=sys.stderr)
        return 1
    return 0


def wait_to_be_stopped() -> int:
    """Block until SIGTERM or SIGINT (`docker stop`, Ctrl-C), then exit 0. A token only changes when
    the container is made again from an edited .env, so restarting would only say the same line
    again, forever."""
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # taken by sigwait, never by a handler
    signal.sigwait(stops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
