"""/admin …: the assistant's settings and everyone's sessions, for server managers and the bot's admins.

A server's managers (Manage Server) see and act on their own server only: its conversations,
sandboxes, replies, audit rows and settings; nothing they are shown or may pick names anything of
another server, or a DM. The bot's admins (ADMIN_USER_IDS) see everything, in a DM too, including
rows from before servers were recorded (their server is unknown).
"""
from __future__ import annotations

import io
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from core import ChatSession, EngineError, Place, Reach, Report, Scope
from core.store import PROMPT_MAX_CHARS, THREAD
from core.render import failure_line, inline_code
from core.sizes import human_size

from .. import forgetting
from ..access import place_of, user_is_admin
from ..formatting import stamp, totals_line
from ..modes import may_start_threads, mode_at
from ..reply import NO_MENTIONS
from .base import Choices, Refused, SlashCog, checked_choices, say

if TYPE_CHECKING:
    from ..discord_bot import LLMBot

log = logging.getLogger(__name__)
REFUSAL = "Only server managers and the bot's admins can use /admin."
ONLY_BOT_ADMINS = "Only the bot's admins (ADMIN_USER_IDS) can change the default for every server and DM."
UNKNOWN_CHANNEL = "{user} has no conversation with me in the channel {channel}{where}: pick one from the list."
COMMAND_REMOVED = "(command removed at the person's request)"
MODES_IN_SERVERS = "Modes apply in servers' channels (in a DM I answer every message); `everywhere` sets the default."
MODE_MEANS = {
    "mention": "I answer a mention of me or a reply to me",
    "all": "I answer every message (each person still has a conversation of their own)",
    "thread": "a mention starts a thread named after the question and I answer there; in my threads nobody "
              "needs to mention me",
}
NO_THREADS_HERE = ("\n⚠️ I may not start threads in {channel} (I need Create Public Threads and Send Messages in "
                   "Threads): until I may, I answer mentions in the channel itself.")
AUDIT_ROWS = 15
USAGE_DAYS_MOST = 90
USAGE_TOP = 10  # people listed by /admin usage
USAGE_IN_DMS = "In a DM only the bot's admins (ADMIN_USER_IDS) can see usage; a server's managers see it in their server."


def _source(source: Scope | str) -> str:
    """Where a setting in effect comes from (a Scope, or the setting it falls back to), as an admin reads it."""
    if isinstance(source, Scope):
        if source.kind == Scope.CHANNEL:
            return f"set for <#{source.id}>"
        return "set for this server" if source.kind == Scope.SERVER else "the bot-wide default"
    return {"SYSTEM_PROMPT": "SYSTEM_PROMPT in the bot's settings",
            "OLLAMA_MODEL": "OLLAMA_MODEL in the bot's settings",
            "FREE_RESPONSE_CHANNEL_IDS": "FREE_RESPONSE_CHANNEL_IDS in the bot's settings",
            "": "the built-in default"}.get(source, source)


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
    command = inline_code(row.command, 60) if row.command else COMMAND_REMOVED
    return (f"{stamp(row.created_at)} <@{row.user}> in <#{row.session}> {command} → {ending} · "
            f"{row.duration:.1f} s · {human_size(row.output_bytes)}")


def _usage_span(server: str | None, days: int) -> str:
    """Where and when /admin usage looks: "in this server, the last 7 days (UTC)"."""
    where = "in this server" if server is not None else "in every server and DM"
    return f"{where}, " + ("today (UTC)" if days == 1 else f"the last {days} days (UTC)")


def _usage_text(report: Report, title: str) -> str:
    """/admin usage: the top people by tokens, one line each, under the title."""
    lines = [f"**{title}**, most tokens first:"]
    lines += [f"{n}. <@{user}>: {totals_line(totals)}" for n, (user, totals) in enumerate(report.people, 1)]
    return "\n".join(lines)


def _guild_id(channel: Any) -> int | None:
    """The server of a channel or thread option (an uncached one carries only guild_id)."""
    found = getattr(channel, "guild_id", None)
    if found is None:
        found = getattr(getattr(channel, "guild", None), "id", None)
    return int(found) if found is not None else None


def _in_guild(scope: Scope, guild: Any) -> bool:
    """Whether a place setting is this server's: the server's own, or one of its channels' or threads'."""
    if scope.kind == Scope.SERVER:
        return scope.id == str(guild.id)
    find = getattr(guild, "get_channel_or_thread", None)
    return scope.kind == Scope.CHANNEL and find is not None and scope.id.isdigit() and find(int(scope.id)) is not None


def _channels_of(guild: Any) -> list[str]:
    """The ids of a server's channels and threads the bot knows (their settings are the server's)."""
    return [str(c.id) for c in [*getattr(guild, "channels", ()), *getattr(guild, "threads", ())]]


class Admin(SlashCog, commands.GroupCog, group_name="admin",
            group_description="Manage the assistant (server managers only)"):
    """/admin …: each command checked once (interaction_check), its failures said once (cog_app_command_error)."""

    prompt = app_commands.Group(name="prompt", description="The persona: operator text added to the instructions")
    # Anyone can be a manager (of a server of their own): what restarts or removes a sandbox, or draws
    # a chart, counts toward their USER_MESSAGES_PER_MINUTE like /reset does
    rated = frozenset({"admin reset", "admin stop", "admin usage"})

    def opens_a_form(self, interaction: discord.Interaction) -> bool:
        """/admin prompt set without text answers with a form holding the current persona."""
        command = getattr(interaction, "command", None)
        return getattr(command, "qualified_name", "") == "admin prompt set" \
            and getattr(interaction.namespace, "text", None) is None

    def refusal_of(self, interaction: discord.Interaction) -> str | None:
        """The access lists (SlashCog), then: server managers and ADMIN_USER_IDS only (in a DM, the latter)."""
        line = super().refusal_of(interaction)
        if line is None and not user_is_admin(self.runtime.settings, interaction.user,
                                              in_guild=interaction.guild is not None):
            return REFUSAL
        return line

    def _bot_admin(self, interaction: discord.Interaction) -> bool:
        """One of the bot's admins (ADMIN_USER_IDS): every server, DMs, any model."""
        return interaction.user.id in self.runtime.settings.admin_user_ids

    def _reach(self, interaction: discord.Interaction) -> Reach:
        """What this admin sees and acts on: everything for the bot's admins, else their server (a
        manager's: refusal_of let nobody else in, and no one without a server)."""
        if self._bot_admin(interaction):
            return Reach.everything()
        if interaction.guild is None:
            raise Refused(REFUSAL)
        return Reach.within(interaction.guild.id)

    async def _known_session(self, interaction: discord.Interaction, user_id: int, channel: str) -> None:
        """A conversation of this user in that channel, within this admin's reach; else refused, with
        the same line whether the channel is another server's, a DM, or nothing at all."""
        reach = self._reach(interaction)
        if await self.runtime.find_session(str(user_id), channel, reach) is not None:
            return
        raise Refused(UNKNOWN_CHANNEL.format(user=f"<@{user_id}>", channel=inline_code(channel, 40),
                                             where="" if reach.everywhere else " of this server"))

    # -- sessions ---------------------------------------------------------------------
    @app_commands.command(name="sessions", description="Conversations with a running reply or sandbox")
    async def sessions(self, interaction: discord.Interaction) -> None:
        reach = self._reach(interaction)
        running = await self.runtime.sandbox_states(reach)
        active = await self.runtime.replies(reach)
        keys = sorted(set(running) | set(active))
        if not keys:
            return await say(interaction, "No active sessions" + ("." if reach.everywhere else " in this server."))
        lines = [f"<@{user}> in <#{session}> · sandbox: {running.get((user, session), 'none')}"
                 + (f" · replying ({active[(user, session)].value})" if (user, session) in active else "")
                 for user, session in keys[:40]]
        await say(interaction, "\n".join(lines))

    @app_commands.command(name="reset", description="Clear someone's conversation in a channel and restart their sandbox")
    @app_commands.describe(user="Whose conversation", channel="The channel id of the conversation")
    async def reset(self, interaction: discord.Interaction, user: discord.User, channel: str) -> None:
        await self._known_session(interaction, user.id, channel)
        async with ChatSession(user=user.id, session=channel, runtime=self.runtime) as chat:
            removed = await chat.reset()
        await say(interaction, f"Cleared {removed} messages of <@{user.id}> in <#{channel}>"
                               + ("; sandbox restarted." if self.runtime.settings.tools else "."))

    @app_commands.command(name="stop", description="Stop someone's reply and remove their sandbox in a channel")
    @app_commands.describe(user="Whose session", channel="The channel id of the session")
    async def stop(self, interaction: discord.Interaction, user: discord.User, channel: str) -> None:
        await self._known_session(interaction, user.id, channel)
        removed = await self.runtime.stop_session(str(user.id), str(channel))
        await say(interaction, f"Stopped <@{user.id}> in <#{channel}>"
                               + ("; sandbox removed." if removed else "; there was no sandbox."))

    @reset.autocomplete("channel")
    @stop.autocomplete("channel")
    @checked_choices
    async def _channel_choices(self, interaction: discord.Interaction, current: str) -> Choices:
        """The picked person's conversations (everyone's, before one is picked) within this admin's reach."""
        user = getattr(interaction.namespace, "user", None)
        user_id = getattr(user, "id", None)
        infos = await self.runtime.sessions_of(str(user_id) if user_id else None, self._reach(interaction),
                                               matching=current.strip(), limit=25)
        return [app_commands.Choice(name=f"{i.session} ({i.message_count} messages)", value=i.session)
                for i in infos]

    @app_commands.command(name="audit", description="The latest commands run in sandboxes (kept after /reset)")
    @app_commands.describe(user="Only this person's commands", channel="Only commands in this channel (id)")
    async def audit(self, interaction: discord.Interaction, user: discord.User | None = None,
                    channel: str | None = None) -> None:
        rows = await self.runtime.audit(self._reach(interaction), str(user.id) if user else None, channel, AUDIT_ROWS)
        if not rows:
            return await say(interaction, "No commands recorded" + (" for that filter." if user or channel else "."))
        await say(interaction, "\n".join(_audit_line(row) for row in rows))

    @app_commands.command(name="usage", description="Who used the assistant most here, with a chart of turns and "
                                                    "tokens per day")
    @app_commands.describe(days=f"How many days back, today included (1 to {USAGE_DAYS_MOST}; default 7)")
    async def usage(self, interaction: discord.Interaction,
                    days: app_commands.Range[int, 1, USAGE_DAYS_MOST] = 7) -> None:
        # Scoped here, whatever the other commands do: a server's own rows; every server's only for
        # the bot's admins, in a DM.
        if interaction.guild is None and not self._bot_admin(interaction):
            raise Refused(USAGE_IN_DMS)
        if not 1 <= days <= USAGE_DAYS_MOST:
            raise Refused(f"`days` must be from 1 to {USAGE_DAYS_MOST}.")
        server = str(interaction.guild.id) if interaction.guild is not None else None
        report = await self.runtime.usage_report(server, days, USAGE_TOP)
        where = _usage_span(server, days)
        if not report.people:
            return await say(interaction, f"No usage recorded {where}.")
        title = f"Usage {where}"
        png = await self.runtime.usage_chart(report, title)
        await interaction.followup.send(_usage_text(report, title), file=discord.File(io.BytesIO(png), "usage.png"),
                                        ephemeral=True, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="status", description="Model, model servers, Docker and sandboxes at a glance")
    async def status(self, interaction: discord.Interaction) -> None:
        """For the bot's admins, the whole bot; for a server's managers, their server: its model, its
        overrides, its sandboxes and replies, and whether Ollama and Docker work (not where they
        are, nor what another server's failures said)."""
        rt = self.runtime
        reach = self._reach(interaction)
        offers = await rt.model_offers()
        if reach.everywhere:
            model = (await rt.places.model(Place())).value
            overrides = await rt.places.model_overrides()
        else:
            model = (await rt.places.model(Place(server=reach.server))).value
            overrides = sum(1 for scope, row in (await rt.places.overrides()).items()
                            if row.model and _in_guild(scope, interaction.guild))
        docker_ok = await rt.sandboxes_reachable()
        running = [s for s in (await rt.sandbox_states(reach)).values() if s == "running"] if docker_ok else []
        here = "" if reach.everywhere else " in this server"
        default = offers[0]  # MODEL_API's server comes first
        missing = " (not pulled!)" if default.api == "ollama" else " (not served there!)"
        lines = [
            f"Model: `{model}`" + ("" if default.models is None or model in default.models else missing)
            + (f" · {overrides} server or channel overrides (/admin model)" if overrides else ""),
            *(f"{offer.label}: {'🟢 reachable' if offer.models is not None else '🔴 unreachable'}"
              + (f" at {offer.where}" if reach.everywhere else "") for offer in offers),
            f"Docker: {'🟢 reachable' if docker_ok else '🔴 unreachable'}" if rt.settings.tools
            else "Docker: not used (TOOLS=off: chat only, no commands)",
            f"Sandboxes running{here}: {len(running)}",
            f"Replies in progress{here}: {len(await rt.replies(reach))}",
        ]
        for incident in rt.incidents.open():  # what users were told "unavailable" about; in full for the bot's admins
            since = datetime.fromtimestamp(incident.since, timezone.utc).replace(tzinfo=None)
            detail = f": {incident.detail[:300]}" if reach.everywhere else " (the bot's admins see the details)"
            lines.append(f"🔴 {incident.part} failing since {stamp(since)} ({incident.count}×){detail}")
        await say(interaction, "\n".join(lines))

    # -- their data on request ------------------------------------------------------
    @app_commands.command(name="forget", description="Delete someone's conversations, sandboxes and files "
                                                     "in this server (after a confirmation)")
    @app_commands.describe(user="Whose data to delete")
    async def forget(self, interaction: discord.Interaction, user: discord.User) -> None:
        """A server's managers: that person's data in this server. The bot's admins in a DM: everywhere."""
        guild = interaction.guild
        reach = Reach.everything() if guild is None else Reach.within(guild.id)
        where = "everywhere" if guild is None else "in this server"
        whose = f"<@{user.id}>'s"
        target = str(user.id)

        async def action() -> str:
            line = await forgetting.forget(self.bot, target, reach, whose=whose, where=where,
                                           channels=_channels_of(guild) if guild is not None else ())
            log.info("/admin forget of %s (%s) by %s", target, reach, interaction.user.id)
            return line

        await forgetting.ask(interaction, forgetting.question(self.runtime.settings, whose=whose, where=where),
                             action)

    # -- model and persona per place ------------------------------------------------
    def _target(self, interaction: discord.Interaction, channel: discord.abc.GuildChannel | None,
                everywhere: bool) -> tuple[Scope, str]:
        """The place a change applies to, and how to name it; refused with the line saying why not.
        A server's managers change their server and its channels; the bot-wide default
        (DMs, and servers without their own) is for ADMIN_USER_IDS only."""
        if everywhere or interaction.guild is None:
            if not self._bot_admin(interaction):
                raise Refused(ONLY_BOT_ADMINS)
            return Scope.everywhere(), "every server and DM (the default)"
        if channel is not None:
            if _guild_id(channel) != interaction.guild.id:
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
        model = None if name.strip().lower() == "default" else name.strip()
        own = await self.runtime.places.own(scope)
        if model is None and (own is None or not own.model):
            return await say(interaction, f"{label[0].upper() + label[1:]} has no model of its own: it uses "
                                          f"`{before.value}` ({_source(before.source)}).")
        if model == before.value:
            return await say(interaction, f"`{model}` is already the model for {label} ({_source(before.source)}); "
                                          "nothing changed.")
        # a model the server lacks, or one that cannot call tools: EngineError, said by cog_app_command_error
        await self.runtime.switch_model(scope, model, by=str(interaction.user.id),
                                        any_model=self._bot_admin(interaction))
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
    @checked_choices
    async def _model_choices(self, interaction: discord.Interaction, current: str) -> Choices:
        offers = await self.runtime.model_offers()  # what each model server offers, MODEL_API's first
        mine = self._bot_admin(interaction)  # any model for them
        return [app_commands.Choice(name=f"{m} · {offer.label}", value=m) for offer in offers
                for m in offer.models or [] if current.lower() in m.lower()
                and (mine or self.runtime.may_choose(m))][:25]

    @app_commands.command(name="channel", description="Which messages I answer in a channel: mentions, all, "
                                                      "or each mention in a thread")
    @app_commands.describe(mode="mention: a mention or a reply; all: every message; thread: a mention starts a "
                                "thread; default: as the wider place says (leave empty to see the mode)",
                           channel="Another channel of this server (default: this one)",
                           server="The whole server's mode instead (channels without their own follow it)",
                           everywhere="The default for every server (the bot's admins only)")
    async def channel_mode(self, interaction: discord.Interaction,
                           mode: Literal["mention", "all", "thread", "default"] | None = None,
                           channel: discord.abc.GuildChannel | None = None, server: bool = False,
                           everywhere: bool = False) -> None:
        if interaction.guild is None and not everywhere:
            raise Refused(MODES_IN_SERVERS)
        where = None if server or everywhere else channel or getattr(interaction, "channel", None)
        scope, label = self._target(interaction, where, everywhere)
        place = place_of(where) if where is not None else self._place(interaction, scope)
        before = await mode_at(self.runtime, place)
        if mode is None:
            return await say(interaction, f"Mode in {label}: `{before.value}` ({_source(before.source)}): "
                                          f"{MODE_MEANS[before.value]}.")
        own = await self.runtime.places.own(scope)
        own_mode = own.mode if own is not None else None
        wanted = None if mode == "default" else mode
        if wanted == own_mode:
            return await say(interaction, f"Mode in {label} is already `{before.value}` ({_source(before.source)}); "
                                          "nothing changed.")
        await self.runtime.places.set(scope, by=str(interaction.user.id), mode=wanted)
        log.info("mode for %s set to %s by %s", scope, wanted or "(inherited)", interaction.user.id)
        after = await mode_at(self.runtime, place)
        warning = NO_THREADS_HERE.format(channel=label) if after.value == THREAD and where is not None \
            and not may_start_threads(where) else ""
        await say(interaction, f"Mode in {label} is now `{after.value}` ({_source(after.source)}): "
                               f"{MODE_MEANS[after.value]}. It applies from the next message." + warning)

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

    # -- MCP servers per place ---------------------------------------------------------
    @app_commands.command(name="tools", description="MCP servers: their health and tools; turn one on or off here")
    @app_commands.describe(server="An MCP server from MCP_CONFIG", state='"on", "off", or "default" to inherit again',
                           channel="Only in this channel (default: the whole server)",
                           everywhere="The default for every server and DM (the bot's admins only)")
    async def tools(self, interaction: discord.Interaction, server: str | None = None,
                    state: Literal["on", "off", "default"] | None = None,
                    channel: discord.abc.GuildChannel | None = None, everywhere: bool = False) -> None:
        rt = self.runtime
        scope, label = self._target(interaction, channel, everywhere)
        place = self._place(interaction, scope)
        if not rt.mcp.names:
            return await say(interaction, "No MCP servers are set up: the operator names them in the file "
                                          "MCP_CONFIG points to (see README, MCP servers).")
        if server is not None and server not in rt.mcp.names:
            raise Refused(f"No MCP server is named `{server[:40]}`: pick one of {', '.join(rt.mcp.names)}.")
        if server is not None and state is not None:
            await rt.places.set_tool_server(scope, server, None if state == "default" else state == "on",
                                            by=str(interaction.user.id))
            log.info("MCP server %s set %s for %s by %s", server, state, scope, interaction.user.id)
        elif server is None and state is not None:
            raise Refused("Name the server to turn on or off.")
        choices = await rt.places.tool_choices(place)
        everywhere = self._reach(interaction).everywhere
        lines = [f"**MCP servers** for {label}:"]
        for row in rt.mcp.status():
            if server is not None and row.name != server:
                continue
            on, source = choices.get(row.name, (True, None))
            dot = {"up": "🟢", "down": "🔴", "unavailable": "⚫", "per conversation": "🔵"}.get(row.state, "🟡")
            how = "Streamable HTTP" if row.transport == "http" else \
                "stdio, in each conversation's sandbox" if row.sandbox else "stdio"
            health = row.state + (f" since {stamp(datetime.fromtimestamp(row.since, timezone.utc).replace(tzinfo=None))}"
                                  if row.since and row.state in ("up", "down") else "")
            detail = "" if not row.detail else f": {row.detail[:150]}" if everywhere or row.sandbox \
                else " (the bot's admins see the details)"  # a failure's words may name the host's paths
            where = ("on" if on else "**off**") + " here" + (f" ({_source(source)})" if source else "")
            lines.append(f"{dot} **{row.name}** · {how} · {health}{detail} · {where}")
            if row.tools:
                shown = ", ".join(row.tools[:20]) + (f" and {len(row.tools) - 20} more" if len(row.tools) > 20 else "")
                lines.append(f"-# tools: {shown}")
        await say(interaction, "\n".join(lines))

    @tools.autocomplete("server")
    async def _server_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=n, value=n) for n in self.runtime.mcp.names if current in n][:25]


async def setup(bot: "LLMBot") -> None:
    await bot.add_cog(Admin(bot))
