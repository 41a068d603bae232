"""Slash commands: /reset and /sessions for everyone, /admin … for server managers."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import discord
import ollama
from discord import app_commands
from discord.ext import commands

from core import ChatSession, EngineError
from core.errors import OLLAMA_UNREACHABLE
from core.uploads import human_size

from ..access import channel_ids, is_admin, refusal
from ..formatting import inline_code

if TYPE_CHECKING:
    from ..discord_bot import LLMBot

log = logging.getLogger(__name__)
REFUSAL = "Only server managers and the bot's admins can use /admin."
UNKNOWN_CHANNEL = "No channel with the id `{channel}` is known to me for that user: pick one from the list."


def _stamp(moment: datetime) -> str:
    """Discord renders this as a relative time in each reader's own time zone."""
    return f"<t:{int(moment.replace(tzinfo=timezone.utc).timestamp())}:R>"


AUDIT_ROWS = 15


def _audit_line(row) -> str:  # type: ignore[no-untyped-def]
    """One command as an admin reads it: when, who, where, what, and how it ended."""
    ending = ("⏱️ timed out" if row.timed_out else "⏹️ stopped" if row.cancelled
              else "⚠️ did not run" if row.exit_code is None else f"exit {row.exit_code}")
    return (f"{_stamp(row.created_at)} <@{row.user}> in <#{row.session}> {inline_code(row.command, 60)} → {ending} · "
            f"{row.duration:.1f} s · {human_size(row.output_bytes) if row.output_bytes >= 1024 else f'{row.output_bytes} B'}")


class Admin(commands.Cog):
    admin = app_commands.Group(name="admin", description="Manage the assistant (server managers only)")

    def __init__(self, bot: "LLMBot") -> None:
        self.bot = bot

    @property
    def rt(self):  # type: ignore[no-untyped-def]
        return self.bot.runtime

    async def _admit(self, interaction: discord.Interaction) -> bool:
        """Acknowledge at once (Discord gives 3 s, and Docker or the database may take longer under
        load), then apply the same access lists as chat: False, with the refusal said, when refused."""
        if not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        channel = getattr(interaction, "channel", None)
        line = refusal(self.rt.settings, user_id=interaction.user.id,
                       role_ids=[r.id for r in getattr(interaction.user, "roles", [])],
                       channel_ids=channel_ids(channel) if channel is not None else {interaction.channel_id},
                       is_dm=interaction.guild is None)
        if line:
            await self._say(interaction, line)
            return False
        return True

    async def _known_channel(self, user_id: int, channel: str) -> bool:
        """A channel the bot can see, or one where this user has talked to it (DMs included)."""
        if not channel.isdigit():
            return False
        if self.bot.get_channel(int(channel)) is not None:
            return True
        return await self.rt.history.run(self.rt.history.find_session, str(user_id), channel) is not None

    async def _say(self, interaction: discord.Interaction, text: str) -> None:
        text = text if len(text) <= 2000 else text[:1990] + "\n…"
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())
        else:
            await interaction.response.send_message(text, ephemeral=True,
                                                    allowed_mentions=discord.AllowedMentions.none())

    def _allowed(self, interaction: discord.Interaction) -> bool:
        perms = getattr(interaction.user, "guild_permissions", None)
        return is_admin(self.rt.settings, user_id=interaction.user.id,
                        manage_guild=bool(interaction.guild is not None and perms and perms.manage_guild))

    async def _running(self) -> dict[tuple[str, str], str]:
        try:
            return {(c.user, c.session): c.status for c in await self.rt.containers.info()}
        except EngineError:
            return {}

    # -- everyone -------------------------------------------------------------------
    @app_commands.command(name="reset", description="Forget this channel's conversation and restart your sandbox")
    @app_commands.describe(keep_container="Keep the sandbox (installed packages) and only clear the history",
                           files="Also delete your files in /data now (otherwise they go after "
                                 "DATA_RETENTION_DAYS unused)")
    async def reset(self, interaction: discord.Interaction, keep_container: bool = False, files: bool = False) -> None:
        if not await self._admit(interaction):
            return
        async with ChatSession(user=interaction.user.id, session=interaction.channel_id, runtime=self.rt) as chat:
            removed = await chat.reset(keep_container=keep_container, delete_files=files)
        if files:
            await self._say(interaction, f"Cleared {removed} messages here, deleted your files in /data and "
                                         "restarted your sandbox.")
            return
        what = "kept your sandbox" if keep_container else "restarted your sandbox"
        await self._say(interaction, f"Cleared {removed} messages here and {what}.")

    @app_commands.command(name="sessions", description="List your conversations with the assistant")
    async def sessions(self, interaction: discord.Interaction) -> None:
        if not await self._admit(interaction):
            return
        infos = await self.rt.history.run(self.rt.history.list_sessions, str(interaction.user.id))
        if not infos:
            await self._say(interaction, "You have no conversations yet.")
            return
        running = await self._running()
        lines = [f"<#{i.session}> · {i.message_count} messages · last active {_stamp(i.last_active)} · "
                 + ("🟢 sandbox running" if running.get((i.user, i.session)) == "running" else "⚪ no sandbox")
                 for i in infos[:25]]
        await self._say(interaction, "\n".join(lines))

    # -- admins -------------------------------------------------------------------------
    @admin.command(name="sessions", description="All conversations with a running reply or sandbox")
    async def admin_sessions(self, interaction: discord.Interaction) -> None:
        if not await self._admit(interaction):
            return
        if not self._allowed(interaction):
            return await self._say(interaction, REFUSAL)
        running = await self._running()
        active = self.rt.registry.active()
        keys = sorted(set(running) | set(active))
        if not keys:
            return await self._say(interaction, "No active sessions.")
        lines = [f"<@{user}> in <#{session}> · sandbox: {running.get((user, session), 'none')}"
                 + (f" · replying ({active[(user, session)].value})" if (user, session) in active else "")
                 for user, session in keys[:40]]
        await self._say(interaction, "\n".join(lines))

    @admin.command(name="reset", description="Clear someone's conversation in a channel and restart their sandbox")
    @app_commands.describe(user="Whose conversation", channel="The channel id of the conversation")
    async def admin_reset(self, interaction: discord.Interaction, user: discord.User, channel: str) -> None:
        if not await self._admit(interaction):
            return
        if not self._allowed(interaction):
            return await self._say(interaction, REFUSAL)
        if not await self._known_channel(user.id, channel):
            return await self._say(interaction, UNKNOWN_CHANNEL.format(channel=channel))
        async with ChatSession(user=user.id, session=channel, runtime=self.rt) as chat:
            removed = await chat.reset()
        await self._say(interaction, f"Cleared {removed} messages of <@{user.id}> in <#{channel}>; sandbox restarted.")

    @admin.command(name="stop", description="Stop someone's reply and remove their sandbox in a channel")
    @app_commands.describe(user="Whose session", channel="The channel id of the session")
    async def admin_stop(self, interaction: discord.Interaction, user: discord.User, channel: str) -> None:
        if not await self._admit(interaction):
            return
        if not self._allowed(interaction):
            return await self._say(interaction, REFUSAL)
        if not await self._known_channel(user.id, channel):
            return await self._say(interaction, UNKNOWN_CHANNEL.format(channel=channel))
        removed = await self.rt.stop_session(str(user.id), str(channel))
        await self._say(interaction, f"Stopped <@{user.id}> in <#{channel}>"
                                     + ("; sandbox removed." if removed else "; there was no sandbox."))

    @admin_reset.autocomplete("channel")
    @admin_stop.autocomplete("channel")
    async def _channel_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        user = getattr(interaction.namespace, "user", None)
        infos = await self.rt.history.run(self.rt.history.list_sessions, str(user.id) if user else None)
        return [app_commands.Choice(name=f"{i.session} ({i.message_count} messages)", value=i.session)
                for i in infos if current in i.session][:25]

    @admin.command(name="audit", description="The latest commands run in sandboxes (kept after /reset)")
    @app_commands.describe(user="Only this person's commands", channel="Only commands in this channel (id)")
    async def admin_audit(self, interaction: discord.Interaction, user: discord.User | None = None,
                          channel: str | None = None) -> None:
        if not await self._admit(interaction):
            return
        if not self._allowed(interaction):
            return await self._say(interaction, REFUSAL)
        rows = await self.rt.history.run(self.rt.history.audit, str(user.id) if user else None, channel, AUDIT_ROWS)
        if not rows:
            return await self._say(interaction, "No commands recorded" + (" for that filter." if user or channel else "."))
        await self._say(interaction, "\n".join(_audit_line(row) for row in rows))

    @admin.command(name="status", description="Model, Ollama, Docker and sandboxes at a glance")
    async def admin_status(self, interaction: discord.Interaction) -> None:
        if not await self._admit(interaction):
            return
        if not self._allowed(interaction):
            return await self._say(interaction, REFUSAL)
        models = await self._models()
        docker_ok = await self.rt.containers.ping()
        running = [s for s in (await self._running()).values() if s == "running"] if docker_ok else []
        lines = [
            f"Model: `{self.rt.model}`" + ("" if models is None or self.rt.model in models else " (not pulled!)"),
            f"Ollama: {'🟢 reachable' if models is not None else '🔴 unreachable'} at {self.rt.settings.ollama_host}",
            f"Docker: {'🟢 reachable' if docker_ok else '🔴 unreachable'}",
            f"Sandboxes running: {len(running)}",
            f"Replies in progress: {len(self.rt.registry.active())}",
        ]
        for incident in self.rt.incidents.open():  # what users were told "unavailable" about, in full
            since = datetime.fromtimestamp(incident.since, timezone.utc).replace(tzinfo=None)
            lines.append(f"🔴 {incident.part} failing since {_stamp(since)} ({incident.count}×): "
                         f"{incident.detail[:300]}")
        await self._say(interaction, "\n".join(lines))

    @admin.command(name="model", description="Switch the model for everyone")
    @app_commands.describe(name="A model the Ollama server has pulled")
    async def admin_model(self, interaction: discord.Interaction, name: str) -> None:
        if not await self._admit(interaction):
            return
        if not self._allowed(interaction):
            return await self._say(interaction, REFUSAL)
        models = await self._models()
        if models is None:
            return await self._say(interaction, "Ollama is unreachable, so the model was not changed.")
        if name not in models:
            return await self._say(interaction, f"The Ollama server has no model `{name}`; pull it first.")
        old, self.rt.model = self.rt.model, name
        log.info("model switched from %s to %s by %s", old, name, interaction.user.id)
        await self._say(interaction, f"Model switched from `{old}` to `{name}`.")

    @admin_model.autocomplete("name")
    async def _model_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        models = await self._models() or []
        return [app_commands.Choice(name=m, value=m) for m in models if current.lower() in m.lower()][:25]

    async def _models(self) -> list[str] | None:
        try:
            listed = await asyncio.wait_for(self.rt.ollama().list(), timeout=10)
        except (*OLLAMA_UNREACHABLE, ollama.ResponseError, asyncio.TimeoutError):
            return None
        return [m.model for m in listed.models if m.model]


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Admin(bot))
