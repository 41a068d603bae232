"""Who may talk to the bot, decided from configuration alone (no Discord objects needed)."""
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


def refusal(settings: Settings, *, user_id: int, role_ids: Iterable[int] = (), channel_ids: Iterable[int] = (),
            is_dm: bool = False) -> str | None:
    """None when allowed; otherwise the one line to show. Blocked ids always win.

    `channel_ids` holds the channel and, for a thread, its parent: allowing a
    channel allows its threads.
    """
    roles, channels = set(role_ids), set(channel_ids)
    if user_id in settings.blocked_user_ids or roles & settings.blocked_role_ids:
        return REFUSED
    if channels & settings.blocked_channel_ids:
        return REFUSED
    if is_dm and not settings.allow_dms:
        return NO_DMS
    if settings.allowed_user_ids or settings.allowed_role_ids:
        if user_id not in settings.allowed_user_ids and not roles & settings.allowed_role_ids:
            return REFUSED
    if settings.allowed_channel_ids and not is_dm and not channels & settings.allowed_channel_ids:
        return REFUSED
    return None


def is_admin(settings: Settings, *, user_id: int, manage_guild: bool) -> bool:
    return manage_guild or user_id in settings.admin_user_ids


def user_is_admin(settings: Settings, user: Any, *, in_guild: bool = True) -> bool:
    """is_admin() for a Discord user or member: a bot admin, or (in a server) one who may manage it."""
    perms = getattr(user, "guild_permissions", None)
    return is_admin(settings, user_id=user.id, manage_guild=bool(in_guild and perms and perms.manage_guild))


def interaction_refusal(settings: Settings, interaction: Any) -> str | None:
    """refusal() for a slash command or a component: the same lists as chat."""
    channel = getattr(interaction, "channel", None)
    return refusal(settings, user_id=interaction.user.id, role_ids=[r.id for r in getattr(interaction.user, "roles", [])],
                   channel_ids=channel_ids(channel) if channel is not None else {interaction.channel_id},
                   is_dm=interaction.guild is None)
