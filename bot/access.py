"""Who may talk to the bot, decided from configuration and what Discord says of the person.

The same lists hold everywhere: chat, attachments, slash commands, buttons and autocompletes. A
DM has no roles and no channel of a server, so when ALLOWED_ROLE_IDS, BLOCKED_ROLE_IDS or
ALLOWED_CHANNEL_IDS is set a DM is refused, unless DM_ACCESS=mutual: then the person's roles
are those they hold in the servers they share with the bot (a blocked role in any of them
refuses). The bot's admins (ADMIN_USER_IDS) may always DM it (to run /admin there); a block
list stops anyone.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from core import Place, Settings

REFUSED = "Sorry, I'm not available to you here."
NO_DMS = "Sorry, I don't answer direct messages on this server's setup. Mention me in a channel instead."


def channel_ids(channel: Any) -> set[int]:
    """The channel, and its parent for a thread: settings may name either."""
    ids = {channel.id}
    parent = getattr(channel, "parent_id", None)
    if parent:
        ids.add(parent)
    return ids


def place_of_interaction(interaction: Any) -> Place:
    """place_of() for a slash command (its channel may be missing from the cache: then its id)."""
    channel = getattr(interaction, "channel", None)
    if channel is not None:
        return place_of(channel)
    guild = getattr(interaction, "guild", None)
    return Place(channel=str(interaction.channel_id), server=str(guild.id) if guild is not None else None)


def place_of(channel: Any) -> Place:
    """Where a message was sent, as the engine looks up persona and model: the channel (or
    thread), a thread's parent channel, and the server (none for a DM)."""
    guild = getattr(channel, "guild", None)
    parent = getattr(channel, "parent_id", None)
    return Place(channel=str(channel.id), parent=str(parent) if parent else None,
                 server=str(guild.id) if guild is not None else None)


DM_UPLOAD_LIMIT = 10 * 1024 ** 2  # what a bot may attach in a DM


def upload_limit(channel: Any) -> int:
    """The most the bot may attach to one message here: the server's limit (boosts raise it), 10 MB in DMs."""
    guild = getattr(channel, "guild", None)
    return int(getattr(guild, "filesize_limit", 0) or DM_UPLOAD_LIMIT) if guild is not None else DM_UPLOAD_LIMIT


def dms_need_servers(settings: Settings) -> bool:
    """Whether the lists need a server to be checked (roles, allowed channels), which a DM lacks."""
    return bool(settings.allowed_role_ids or settings.blocked_role_ids or settings.allowed_channel_ids)


def refusal(settings: Settings, *, user_id: int, role_ids: Iterable[int] = (), channel_ids: Iterable[int] = (),
            is_dm: bool = False, shares_a_server: bool = False) -> str | None:
    """None when allowed; otherwise the one line to show. Blocked ids always win.

    `channel_ids` holds the channel and, for a thread, its parent: allowing a
    channel allows its threads. In a DM, `role_ids` are the person's roles in the servers
    they share with the bot (`shares_a_server`: there is at least one), looked up only with
    DM_ACCESS=mutual.
    """
    roles, channels = set(role_ids), set(channel_ids)
    if user_id in settings.blocked_user_ids or roles & settings.blocked_role_ids:
        return REFUSED
    if channels & settings.blocked_channel_ids:
        return REFUSED
    admin_in_dm = is_dm and user_id in settings.admin_user_ids  # the bot's admins run /admin in DMs
    if is_dm:
        if not settings.allow_dms:
            return NO_DMS
        if dms_need_servers(settings) and not admin_in_dm \
                and not (settings.dm_access == "mutual" and shares_a_server):
            return NO_DMS
    if (settings.allowed_user_ids or settings.allowed_role_ids) and not admin_in_dm:
        if user_id not in settings.allowed_user_ids and not roles & settings.allowed_role_ids:
            return REFUSED
    if settings.allowed_channel_ids and not is_dm and not channels & settings.allowed_channel_ids:
        return REFUSED
    return None


def mutual_roles(user: Any) -> tuple[set[int], bool]:
    """A person's roles in every server they share with the bot, and whether they share any (what a
    DM is checked against with DM_ACCESS=mutual; the members intent keeps the servers' members known)."""
    roles: set[int] = set()
    shared = False
    for guild in getattr(user, "mutual_guilds", None) or ():
        member = guild.get_member(user.id)
        if member is not None:
            shared = True
            roles.update(role.id for role in getattr(member, "roles", ()))
    return roles, shared


def person_refusal(settings: Settings, user: Any, channel: Any, *, channel_id: int | None = None,
                   in_guild: bool) -> str | None:
    """refusal() for someone writing in `channel` (a message, a slash command, an autocomplete):
    their roles here, or in a DM those of the servers they share with the bot."""
    ids = channel_ids(channel) if channel is not None else {channel_id}
    if in_guild:
        return refusal(settings, user_id=user.id, role_ids=[r.id for r in getattr(user, "roles", [])],
                       channel_ids=ids)
    roles, shared = mutual_roles(user) if settings.dm_access == "mutual" and dms_need_servers(settings) \
        else (set(), False)
    return refusal(settings, user_id=user.id, role_ids=roles, channel_ids=ids, is_dm=True, shares_a_server=shared)


def is_admin(settings: Settings, *, user_id: int, manage_guild: bool) -> bool:
    return manage_guild or user_id in settings.admin_user_ids


def user_is_admin(settings: Settings, user: Any, *, in_guild: bool = True) -> bool:
    """is_admin() for a Discord user or member: a bot admin, or (in a server) one who may manage it."""
    perms = getattr(user, "guild_permissions", None)
    return is_admin(settings, user_id=user.id, manage_guild=bool(in_guild and perms and perms.manage_guild))


def interaction_refusal(settings: Settings, interaction: Any) -> str | None:
    """refusal() for a slash command, an autocomplete or a component: the same lists as chat."""
    return person_refusal(settings, interaction.user, getattr(interaction, "channel", None),
                          channel_id=interaction.channel_id, in_guild=interaction.guild is not None)
