"""/admin …: the assistant's settings and everyone's sessions, for server managers and the bot's admins."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from core import ChatSession, EngineError, Place, Scope
from core.store import PROMPT_MAX_CHARS
from core.render import failure_line, inline_code
from core.sizes import human_size

from ..access import user_is_admin
from ..formatting import stamp
from .base import Refused, SlashCog, say

if TYPE_CHECKING:
    from ..discord_bot import LLMBot

log = logging.getLogger(__name__)
REFUSAL = "Only server managers and the bot's admins can use /admin."
ONLY_BOT_ADMINS = "Only the bot's admins (ADMIN_USER_IDS) can change the default for every server and DM."
UNKNOWN_CHANNEL = "No channel with the id `{channel}` is known to me for that user: pick one from the list."
AUDIT_ROWS = 15


def _source(source: Scope | str) -> str:
    """Where a setting in effect comes from (a Scope, or the setting it falls back to), as an admin reads it."""
    if isinstance(source, Scope):
        if source.kind == Scope.CHANNEL:
            return f"set for <#{source.id}>"
        return "set for this server" if source.kind == Scope.SERVER else "the bot-wide default"
    return {"SYSTEM_PROMPT": "SYSTEM_PROMPT in the bot's settings",
            "OLLAMA_MODEL": "OLLAMA_MODEL in the bot's settings"}.get(source, source)


def _quoted(text: str, limit: int = 1800) -> str:
    """Operator text shown back as a block quote (safe whatever backticks it holds)."""
    text = text if len(text) <= limit else text[:limit] + "…"
    return "\n".join("> " + line for line in text.splitlines())


class PersonaForm(discord.ui.Modal, title="Persona"):
    """/admin prompt set without text: a form with room for several lines, holding the current text."""

    def __init__(self, cog: "Admin", target: tuple[Scope, str], current: str) -> None:
        super().__init__()
        self.cog, self.target = cog, target
        self.text = discord.ui.TextInput(label=f"Persona for {target[1]}"[:45], style=discord.TextStyle.paragraph,
                                         default=current or None, max_length=PROMPT_MAX_CHARS, required=True)
        self.add_item(self.text)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.cog.save_prompt(interaction, self.target, self.text.value)
        except EngineError as exc:
            await say(interaction, failure_line(exc))

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:
        log.error("saving a persona failed", exc_info=error)
        await say(interaction, failure_line(error))


def _audit_line(row) -> str:  # type: ignore[no-untyped-def]
    """One command as an admin reads it: when, who, where, what, and how it ended."""
    ending = ("⏱️ timed out" if row.timed_out else "⏹️ stopped" if row.cancelled
              else "⚠️ did not run" if row.exit_code is None else f"exit {row.exit_code}")
    return (f"{stamp(row.created_at)} <@{row.user}> in <#{row.session}> {inline_code(row.command, 60)} → {ending} · "
            f"{row.duration:.1f} s · {human_size(row.output_bytes)}")


class Admin(SlashCog, commands.GroupCog, group_name="admin",
            group_description="Manage the assistant (server managers only)"):
    """/admin …: each command checked once (interaction_check), its failures said once (cog_app_command_error)."""

    prompt = app_commands.Group(name="prompt", description="The persona: operator text added to the instructions")

    def opens_a_form(self, interaction: discord.Interaction) -> bool:
        """/admin prompt set without text answers with a form holding the current persona."""
        command = getattr(interaction, "command", None)
        return getattr(command, "qualified_name", "") == "admin prompt set" \
            and getattr(interaction.namespace, "text", None) is None

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """Acknowledged, the access lists applied (SlashCog), then: server managers and ADMIN_USER_IDS only."""
        await super().interaction_check(interaction)
        if not user_is_admin(self.runtime.settings, interaction.user, in_guild=interaction.guild is not None):
            raise Refused(REFUSAL)
        return True

    async def _known_channel(self, user_id: int, channel: str) -> None:
        """A channel the bot can see, or one where this user has talked to it (DMs included); else refused."""
        if channel.isdigit() and (self.bot.get_channel(int(channel)) is not None
                                  or await self.runtime.find_session(str(user_id), channel) is not None):
            return
        raise Refused(UNKNOWN_CHANNEL.format(channel=channel))

    # -- sessions ---------------------------------------------------------------------
    @app_commands.command(name="sessions", description="All conversations with a running reply or sandbox")
    async def sessions(self, interaction: discord.Interaction) -> None:
        running = await self.runtime.sandbox_states()
        active = self.runtime.registry.active()
        keys = sorted(set(running) | set(active))
        if not keys:
            return await say(interaction, "No active sessions.")
        lines = [f"<@{user}> in <#{session}> · sandbox: {running.get((user, session), 'none')}"
                 + (f" · replying ({active[(user, session)].value})" if (user, session) in active else "")
                 for user, session in keys[:40]]
        await say(interaction, "\n".join(lines))

    @app_commands.command(name="reset", description="Clear someone's conversation in a channel and restart their sandbox")
    @app_commands.describe(user="Whose conversation", channel="The channel id of the conversation")
    async def reset(self, interaction: discord.Interaction, user: discord.User, channel: str) -> None:
        await self._known_channel(user.id, channel)
        async with ChatSession(user=user.id, session=channel, runtime=self.runtime) as chat:
            removed = await chat.reset()
        await say(interaction, f"Cleared {removed} messages of <@{user.id}> in <#{channel}>"
                               + ("; sandbox restarted." if self.runtime.settings.tools else "."))

    @app_commands.command(name="stop", description="Stop someone's reply and remove their sandbox in a channel")
    @app_commands.describe(user="Whose session", channel="The channel id of the session")
    async def stop(self, interaction: discord.Interaction, user: discord.User, channel: str) -> None:
        await self._known_channel(user.id, channel)
        removed = await self.runtime.stop_session(str(user.id), str(channel))
        await say(interaction, f"Stopped <@{user.id}> in <#{channel}>"
                               + ("; sandbox removed." if removed else "; there was no sandbox."))

    @reset.autocomplete("channel")
    @stop.autocomplete("channel")
    async def _channel_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        user = getattr(interaction.namespace, "user", None)
        infos = await self.runtime.sessions_of(str(user.id) if user else None)
        return [app_commands.Choice(name=f"{i.session} ({i.message_count} messages)", value=i.session)
                for i in infos if current in i.session][:25]

    @app_commands.command(name="audit", description="The latest commands run in sandboxes (kept after /reset)")
    @app_commands.describe(user="Only this person's commands", channel="Only commands in this channel (id)")
    async def audit(self, interaction: discord.Interaction, user: discord.User | None = None,
                    channel: str | None = None) -> None:
        rows = await self.runtime.audit(str(user.id) if user else None, channel, AUDIT_ROWS)
        if not rows:
            return await say(interaction, "No commands recorded" + (" for that filter." if user or channel else "."))
        await say(interaction, "\n".join(_audit_line(row) for row in rows))

    @app_commands.command(name="status", description="Model, model servers, Docker and sandboxes at a glance")
    async def status(self, interaction: discord.Interaction) -> None:
        rt = self.runtime
        offers = await rt.model_offers()
        model = (await rt.places.model(Place())).value
        overrides = await rt.places.model_overrides()
        docker_ok = await rt.sandboxes_reachable()
        running = [s for s in (await rt.sandbox_states()).values() if s == "running"] if docker_ok else []
        default = offers[0]  # MODEL_API's server comes first
        missing = " (not pulled!)" if default.api == "ollama" else " (not served there!)"
        lines = [
            f"Model: `{model}`" + ("" if default.models is None or model in default.models else missing)
            + (f" · {overrides} server or channel overrides (/admin model)" if overrides else ""),
            *(f"{offer.label}: {'🟢 reachable' if offer.models is not None else '🔴 unreachable'} at {offer.where}"
              for offer in offers),
            f"Docker: {'🟢 reachable' if docker_ok else '🔴 unreachable'}" if rt.settings.tools
            else "Docker: not used (TOOLS=off: chat only, no commands)",
            f"Sandboxes running: {len(running)}",
            f"Replies in progress: {len(rt.registry.active())}",
        ]
        for incident in rt.incidents.open():  # what users were told "unavailable" about, in full
            since = datetime.fromtimestamp(incident.since, timezone.utc).replace(tzinfo=None)
            lines.append(f"🔴 {incident.part} failing since {stamp(since)} ({incident.count}×): "
                         f"{incident.detail[:300]}")
        await say(interaction, "\n".join(lines))

    # -- model and persona per place ------------------------------------------------
    def _target(self, interaction: discord.Interaction, channel: discord.abc.GuildChannel | None,
                everywhere: bool) -> tuple[Scope, str]:
        """The place a change applies to, and how to name it; refused with the line saying why not.
        A server's managers change their server and its channels; the bot-wide default
        (DMs, and servers without their own) is for ADMIN_USER_IDS only."""
        if everywhere or interaction.guild is None:
            if interaction.user.id not in self.runtime.settings.admin_user_ids:
                raise Refused(ONLY_BOT_ADMINS)
            return Scope.everywhere(), "every server and DM (the default)"
        if channel is not None:
            if getattr(getattr(channel, "guild", None), "id", None) != interaction.guild.id:
                raise Refused("Pick a channel of this server.")
            return Scope.channel(channel.id), f"<#{channel.id}>"
        return Scope.server(interaction.guild.id), "this server"

    def _place(self, interaction: discord.Interaction, scope: Scope) -> Place:
        """The place whose settings in effect /admin … show reports for `scope`."""
        if scope.kind == Scope.CHANNEL:
            return Place(channel=scope.id, server=str(interaction.guild.id) if interaction.guild is not None else None)
        return Place(server=scope.id) if scope.kind == Scope.SERVER else Place()

    @app_commands.command(name="model", description="Show or switch the model, for this server, one channel, or everywhere")
    @app_commands.describe(name='A tool-capable model its server offers (another API\'s as openai:<name>); '
                                '"default" to inherit again',
                           channel="Only in this channel (default: the whole server)",
                           everywhere="The default for every server and DM (the bot's admins only)")
    async def model(self, interaction: discord.Interaction, name: str | None = None,
                    channel: discord.abc.GuildChannel | None = None, everywhere: bool = False) -> None:
        scope, label = self._target(interaction, channel, everywhere)
        place = self._place(interaction, scope)
        before = await self.runtime.places.model(place)
        if name is None:
            return await say(interaction, f"Model for {label}: `{before.value}` ({_source(before.source)})."
                                          + await self._context_line(before.value))
        # a model the server lacks, or one that cannot call tools: EngineError, said by cog_app_command_error
        await self.runtime.switch_model(scope, None if name.strip().lower() == "default" else name.strip(),
                                        by=str(interaction.user.id))
        after = await self.runtime.places.model(place)  # switch_model logs the change
        await say(interaction, f"Model for {label} switched from `{before.value}` to `{after.value}` "
                               f"({_source(after.source)}); it applies from the next message."
                               + await self._context_line(after.value))

    async def _context_line(self, model: str) -> str:
        """The model's own maximum context beside the one requests are built for; a warning when the
        setting is larger (the server would then cut long conversations from their start)."""
        most = await self.runtime.context_length(model)
        used, setting = await self.runtime.context_tokens(model)
        if setting is None:  # the server's own context (an OpenAI-compatible server that says it)
            return f"\nIts context: {used:,} tokens, as its server says; requests are built to fit it."
        if most is None:
            return f"\nRequests are built to fit {used:,} tokens of context (OLLAMA_NUM_CTX)."
        line = f"\nIts context: up to {most:,} tokens; requests are built to fit {used:,} (OLLAMA_NUM_CTX)."
        if used > most:
            line += (f"\n⚠️ OLLAMA_NUM_CTX is more than this model can hold: long conversations would be cut "
                     f"without a word. Set OLLAMA_NUM_CTX to {most} or less.")
        return line

    @model.autocomplete("name")
    async def _model_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        offers = await self.runtime.model_offers()  # what each model server offers, MODEL_API's first
        return [app_commands.Choice(name=f"{m} · {offer.label}", value=m) for offer in offers
                for m in offer.models or [] if current.lower() in m.lower()][:25]

    @prompt.command(name="set", description="Set the persona for this server, one channel, or everywhere")
    @app_commands.describe(text="The persona and house rules (leave empty to edit the current one in a form)",
                           channel="Only in this channel (default: the whole server)",
                           everywhere="The default for every server and DM (the bot's admins only)")
    async def prompt_set(self, interaction: discord.Interaction,
                         text: app_commands.Range[str, 1, PROMPT_MAX_CHARS] | None = None,
                         channel: discord.abc.GuildChannel | None = None, everywhere: bool = False) -> None:
        target = self._target(interaction, channel, everywhere)
        if text is None:  # a form with room for several lines, holding what is set now (see opens_a_form)
            own = await self.runtime.places.own(target[0])
            return await interaction.response.send_modal(
                PersonaForm(self, target, own.prompt if own is not None and own.prompt else ""))
        await self.save_prompt(interaction, target, text)

    async def save_prompt(self, interaction: discord.Interaction, target: tuple[Scope, str], text: str) -> None:
        scope, label = target
        await self.runtime.places.set(scope, by=str(interaction.user.id), prompt=text)
        log.info("persona for %s set by %s (%d characters)", scope, interaction.user.id, len(text.strip()))
        await say(interaction, f"Persona for {label} saved; it applies from the next message:\n"
                               + _quoted(text.strip()))

    @prompt.command(name="show", description="Show the persona in effect for this server, one channel, or everywhere")
    @app_commands.describe(channel="This channel's (default: the whole server's)",
                           everywhere="The default for every server and DM")
    async def prompt_show(self, interaction: discord.Interaction, channel: discord.abc.GuildChannel | None = None,
                          everywhere: bool = False) -> None:
        scope, label = self._target(interaction, channel, everywhere)
        choice = await self.runtime.places.prompt(self._place(interaction, scope))
        if not choice.value:
            return await say(interaction, f"No persona for {label}: only the built-in instructions apply.")
        await say(interaction, f"Persona for {label} ({_source(choice.source)}):\n" + _quoted(choice.value))

    @prompt.command(name="clear", description="Remove the persona set for this server, one channel, or everywhere")
    @app_commands.describe(channel="This channel's (default: the whole server's)",
                           everywhere="The default for every server and DM (the bot's admins only)")
    async def prompt_clear(self, interaction: discord.Interaction, channel: discord.abc.GuildChannel | None = None,
                           everywhere: bool = False) -> None:
        scope, label = self._target(interaction, channel, everywhere)
        own = await self.runtime.places.own(scope)
        if own is None or not own.prompt:
            return await say(interaction, f"{label[0].upper() + label[1:]} has no persona of its own.")
        await self.runtime.places.set(scope, by=str(interaction.user.id), prompt=None)
        log.info("persona for %s cleared by %s", scope, interaction.user.id)
        after = await self.runtime.places.prompt(self._place(interaction, scope))
        rest = f" Now in effect: {_source(after.source)}." if after.value else " Only the built-in instructions apply."
        await say(interaction, f"Persona for {label} removed.{rest}")


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Admin(bot))
