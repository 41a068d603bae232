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
from core.context import Seen
from core.errors import OLLAMA_UNREACHABLE
from core.places import EVERYWHERE, PROMPT_MAX_CHARS, Place, channel_scope, server_scope
from core.uploads import human_size

from ..access import channel_ids, interaction_refusal, place_of, user_is_admin
from ..formatting import inline_code
from ..guide import help_text

if TYPE_CHECKING:
    from ..discord_bot import LLMBot

log = logging.getLogger(__name__)
REFUSAL = "Only server managers and the bot's admins can use /admin."
ONLY_BOT_ADMINS = "Only the bot's admins (ADMIN_USER_IDS) can change the default for every server and DM."
UNKNOWN_CHANNEL = "No channel with the id `{channel}` is known to me for that user: pick one from the list."


def _seen(seen: Seen | None) -> str:
    """How much of a conversation the model saw in its latest request, for /sessions."""
    if seen is None:
        return ""
    return f" · the model sees its last {seen.shown} messages" + (" and a summary of the rest" if seen.summarized
                                                                   else "")


def _stamp(moment: datetime) -> str:
    """Discord renders this as a relative time in each reader's own time zone."""
    return f"<t:{int(moment.replace(tzinfo=timezone.utc).timestamp())}:R>"


AUDIT_ROWS = 15


def _source(scope: str) -> str:
    """Where a setting in effect comes from, as an admin reads it."""
    kind, _, ref = scope.partition(":")
    return {"channel": f"set for <#{ref}>", "server": "set for this server", EVERYWHERE: "the bot-wide default",
            "SYSTEM_PROMPT": "SYSTEM_PROMPT in the bot's settings",
            "OLLAMA_MODEL": "OLLAMA_MODEL in the bot's settings"}.get(kind, scope)


def _quoted(text: str, limit: int = 1800) -> str:
    """Operator text shown back as a block quote (safe whatever backticks it holds)."""
    text = text if len(text) <= limit else text[:limit] + "…"
    return "\n".join("> " + line for line in text.splitlines())


class PersonaForm(discord.ui.Modal, title="Persona"):
    """/admin prompt set without text: a form with room for several lines, holding the current text."""

    def __init__(self, cog: "Admin", target: tuple[str, str], current: str) -> None:
        super().__init__()
        self.cog, self.target = cog, target
        self.text = discord.ui.TextInput(label=f"Persona for {target[1]}"[:45], style=discord.TextStyle.paragraph,
                                         default=current or None, max_length=PROMPT_MAX_CHARS, required=True)
        self.add_item(self.text)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.cog.save_prompt(interaction, self.target, self.text.value)


def _audit_line(row) -> str:  # type: ignore[no-untyped-def]
    """One command as an admin reads it: when, who, where, what, and how it ended."""
    ending = ("⏱️ timed out" if row.timed_out else "⏹️ stopped" if row.cancelled
              else "⚠️ did not run" if row.exit_code is None else f"exit {row.exit_code}")
    return (f"{_stamp(row.created_at)} <@{row.user}> in <#{row.session}> {inline_code(row.command, 60)} → {ending} · "
            f"{row.duration:.1f} s · {human_size(row.output_bytes)}")


class Admin(commands.Cog):
    admin = app_commands.Group(name="admin", description="Manage the assistant (server managers only)")

    def __init__(self, bot: "LLMBot") -> None:
        self.bot = bot

    @property
    def rt(self):  # type: ignore[no-untyped-def]
        return self.bot.runtime

    async def _admit(self, interaction: discord.Interaction, *, defer: bool = True) -> bool:
        """Acknowledge at once (Discord gives 3 s, and Docker or the database may take longer under
        load), then apply the same access lists as chat: False, with the refusal said, when refused.
        Without `defer` the caller answers itself (a modal must be the first answer)."""
        if defer and not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        line = interaction_refusal(self.rt.settings, interaction)
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
        return user_is_admin(self.rt.settings, interaction.user, in_guild=interaction.guild is not None)

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
                 + _seen(self.rt.context_seen.get((i.user, i.session)))
                 for i in infos[:25]]
        await self._say(interaction, "\n".join(lines))

    @app_commands.command(name="help", description="How to talk to the assistant and what it can do")
    async def help(self, interaction: discord.Interaction) -> None:
        if not await self._admit(interaction):
            return
        channel = getattr(interaction, "channel", None)
        place = place_of(channel) if channel is not None else Place(
            channel=str(interaction.channel_id),
            server=str(interaction.guild.id) if interaction.guild is not None else None)
        ids = channel_ids(channel) if channel is not None else {interaction.channel_id}
        me = self.bot.user
        text = help_text(self.rt.settings, bot_name=me.display_name if me else "the bot",
                         seen=self.rt.context_seen.get((str(interaction.user.id), str(interaction.channel_id))),
                         in_dm=interaction.guild is None,
                         auto_reply_here=bool(ids & self.rt.settings.auto_reply_channel_ids),
                         model=(await self.rt.places.model(place)).value,
                         has_persona=bool((await self.rt.places.prompt(place)).value),
                         admin=self._allowed(interaction))
        await self._say(interaction, text)

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
        model = (await self.rt.places.model(Place())).value
        overrides = await self.rt.places.model_overrides()
        docker_ok = await self.rt.containers.ping()
        running = [s for s in (await self._running()).values() if s == "running"] if docker_ok else []
        lines = [
            f"Model: `{model}`" + ("" if models is None or model in models else " (not pulled!)")
            + (f" · {overrides} server or channel overrides (/admin model)" if overrides else ""),
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

    # -- model and persona per place ------------------------------------------------
    def _scope(self, interaction: discord.Interaction, channel: discord.abc.GuildChannel | None,
               everywhere: bool) -> tuple[str, str] | str:
        """The place a change applies to, and how to name it; or the line saying why not.
        A server's managers change their server and its channels; the bot-wide default
        (DMs, and servers without their own) is for ADMIN_USER_IDS only."""
        if everywhere or interaction.guild is None:
            if interaction.user.id not in self.rt.settings.admin_user_ids:
                return ONLY_BOT_ADMINS
            return EVERYWHERE, "every server and DM (the default)"
        if channel is not None:
            if getattr(getattr(channel, "guild", None), "id", None) != interaction.guild.id:
                return "Pick a channel of this server."
            return channel_scope(channel.id), f"<#{channel.id}>"
        return server_scope(interaction.guild.id), "this server"

    async def _settings_admit(self, interaction: discord.Interaction, channel: discord.abc.GuildChannel | None,
                              everywhere: bool, *, defer: bool = True) -> tuple[str, str] | None:
        if not await self._admit(interaction, defer=defer):
            return None
        if not self._allowed(interaction):
            await self._say(interaction, REFUSAL)
            return None
        scope = self._scope(interaction, channel, everywhere)
        if isinstance(scope, str):
            await self._say(interaction, scope)
            return None
        return scope

    def _place(self, interaction: discord.Interaction, scope: str) -> Place:
        """The place whose settings in effect /admin … show reports for `scope`."""
        kind, _, ref = scope.partition(":")
        server = str(interaction.guild.id) if interaction.guild is not None else None
        if kind == "channel":
            return Place(channel=ref, server=server)
        return Place(server=ref) if kind == "server" else Place()

    @admin.command(name="model", description="Show or switch the model, for this server, one channel, or everywhere")
    @app_commands.describe(name='A tool-capable model the Ollama server has pulled; "default" to inherit again',
                           channel="Only in this channel (default: the whole server)",
                           everywhere="The default for every server and DM (the bot's admins only)")
    async def admin_model(self, interaction: discord.Interaction, name: str | None = None,
                          channel: discord.abc.GuildChannel | None = None, everywhere: bool = False) -> None:
        target = await self._settings_admit(interaction, channel, everywhere)
        if target is None:
            return
        scope, label = target
        place = self._place(interaction, scope)
        before = await self.rt.places.model(place)
        if name is None:
            return await self._say(interaction, f"Model for {label}: `{before.value}` ({_source(before.source)})."
                                                + await self._context_line(before.value))
        by = str(interaction.user.id)
        try:
            await self.rt.switch_model(scope, None if name.strip().lower() == "default" else name.strip(), by=by)
        except EngineError as exc:
            return await self._say(interaction, f"⚠️ {exc.user_message}")
        after = await self.rt.places.model(place)  # switch_model logs the change
        await self._say(interaction, f"Model for {label} switched from `{before.value}` to `{after.value}` "
                                     f"({_source(after.source)}); it applies from the next message."
                                     + await self._context_line(after.value))

    async def _context_line(self, model: str) -> str:
        """The model's own maximum context beside the one requests are built for; a warning when the
        setting is larger (the server would then cut long conversations from their start)."""
        most = await self.rt.context_length(model)
        used = self.rt.settings.context_tokens
        if most is None:
            return f"\nRequests are built to fit {used:,} tokens of context (OLLAMA_NUM_CTX)."
        line = f"\nIts context: up to {most:,} tokens; requests are built to fit {used:,} (OLLAMA_NUM_CTX)."
        if used > most:
            line += (f"\n⚠️ OLLAMA_NUM_CTX is more than this model can hold: long conversations would be cut "
                     f"without a word. Set OLLAMA_NUM_CTX to {most} or less.")
        return line

    @admin_model.autocomplete("name")
    async def _model_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        models = await self._models() or []
        return [app_commands.Choice(name=m, value=m) for m in models if current.lower() in m.lower()][:25]

    prompt = app_commands.Group(name="prompt", description="The persona: operator text added to the instructions",
                                parent=admin)

    @prompt.command(name="set", description="Set the persona for this server, one channel, or everywhere")
    @app_commands.describe(text="The persona and house rules (leave empty to edit the current one in a form)",
                           channel="Only in this channel (default: the whole server)",
                           everywhere="The default for every server and DM (the bot's admins only)")
    async def prompt_set(self, interaction: discord.Interaction,
                         text: app_commands.Range[str, 1, PROMPT_MAX_CHARS] | None = None,
                         channel: discord.abc.GuildChannel | None = None, everywhere: bool = False) -> None:
        target = await self._settings_admit(interaction, channel, everywhere, defer=text is not None)
        if target is None:
            return
        if text is None:  # a form with room for several lines, holding what is set now
            own = await self.rt.places.own(target[0])
            return await interaction.response.send_modal(
                PersonaForm(self, target, own.prompt if own is not None and own.prompt else ""))
        await self.save_prompt(interaction, target, text)

    async def save_prompt(self, interaction: discord.Interaction, target: tuple[str, str], text: str) -> None:
        scope, label = target
        try:
            await self.rt.places.set(scope, by=str(interaction.user.id), prompt=text)
        except EngineError as exc:
            return await self._say(interaction, f"⚠️ {exc.user_message}")
        log.info("persona for %s set by %s (%d characters)", scope, interaction.user.id, len(text.strip()))
        await self._say(interaction, f"Persona for {label} saved; it applies from the next message:\n"
                                     + _quoted(text.strip()))

    @prompt.command(name="show", description="Show the persona in effect for this server, one channel, or everywhere")
    @app_commands.describe(channel="This channel's (default: the whole server's)",
                           everywhere="The default for every server and DM")
    async def prompt_show(self, interaction: discord.Interaction, channel: discord.abc.GuildChannel | None = None,
                          everywhere: bool = False) -> None:
        target = await self._settings_admit(interaction, channel, everywhere)
        if target is None:
            return
        scope, label = target
        choice = await self.rt.places.prompt(self._place(interaction, scope))
        if not choice.value:
            return await self._say(interaction, f"No persona for {label}: only the built-in instructions apply.")
        await self._say(interaction, f"Persona for {label} ({_source(choice.source)}):\n" + _quoted(choice.value))

    @prompt.command(name="clear", description="Remove the persona set for this server, one channel, or everywhere")
    @app_commands.describe(channel="This channel's (default: the whole server's)",
                           everywhere="The default for every server and DM (the bot's admins only)")
    async def prompt_clear(self, interaction: discord.Interaction, channel: discord.abc.GuildChannel | None = None,
                           everywhere: bool = False) -> None:
        target = await self._settings_admit(interaction, channel, everywhere)
        if target is None:
            return
        scope, label = target
        own = await self.rt.places.own(scope)
        if own is None or not own.prompt:
            return await self._say(interaction, f"{label[0].upper() + label[1:]} has no persona of its own.")
        await self.rt.places.set(scope, by=str(interaction.user.id), prompt=None)
        log.info("persona for %s cleared by %s", scope, interaction.user.id)
        after = await self.rt.places.prompt(self._place(interaction, scope))
        rest = f" Now in effect: {_source(after.source)}." if after.value else " Only the built-in instructions apply."
        await self._say(interaction, f"Persona for {label} removed.{rest}")

    async def _models(self) -> list[str] | None:
        try:
            listed = await asyncio.wait_for(self.rt.ollama().list(), timeout=10)
        except (*OLLAMA_UNREACHABLE, ollama.ResponseError, asyncio.TimeoutError):
            return None
        return [m.model for m in listed.models if m.model]


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Admin(bot))
