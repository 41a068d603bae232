"""Access control from configuration: allowed and blocked users, roles, channels, DMs."""
from __future__ import annotations

from bot.access import NO_DMS, REFUSED, is_admin, refusal
from core.config import Settings


def test_empty_lists_allow_everyone() -> None:
    assert refusal(Settings(), user_id=1, role_ids=[5], channel_ids=[9]) is None
    assert refusal(Settings(), user_id=1, is_dm=True) is None


def test_blocked_always_wins() -> None:
    s = Settings(allowed_user_ids=frozenset({1}), blocked_user_ids=frozenset({1}))
    assert refusal(s, user_id=1) == REFUSED
    assert refusal(Settings(blocked_role_ids=frozenset({5})), user_id=2, role_ids=[5, 6]) == REFUSED
    assert refusal(Settings(blocked_channel_ids=frozenset({9})), user_id=2, channel_ids=[9]) == REFUSED


def test_allowed_users_or_roles() -> None:
    s = Settings(allowed_user_ids=frozenset({1}), allowed_role_ids=frozenset({5}))
    assert refusal(s, user_id=1) is None
    assert refusal(s, user_id=2, role_ids=[5]) is None
    assert refusal(s, user_id=2, role_ids=[6]) == REFUSED


def test_allowed_channels_include_threads_of_allowed_parents() -> None:
    s = Settings(allowed_channel_ids=frozenset({9}))
    assert refusal(s, user_id=1, channel_ids=[100, 9]) is None  # a thread whose parent is 9
    assert refusal(s, user_id=1, channel_ids=[100]) == REFUSED


def test_dms_can_be_turned_off() -> None:
    assert refusal(Settings(allow_dms=False), user_id=1, is_dm=True) == NO_DMS


def test_admins() -> None:
    assert is_admin(Settings(), user_id=1, manage_guild=True)
    assert is_admin(Settings(admin_user_ids=frozenset({1})), user_id=1, manage_guild=False)
    assert not is_admin(Settings(), user_id=1, manage_guild=False)


def test_dms_obey_the_role_and_channel_lists() -> None:
    """A DM has no roles and no server channel: with a role or channel list set it is refused, unless
    DM_ACCESS=mutual looks the roles up in the servers the person shares with the bot."""
    for lists in ({"allowed_role_ids": frozenset({5})}, {"blocked_role_ids": frozenset({5})},
                  {"allowed_channel_ids": frozenset({9})}):
        s = Settings(**lists)
        assert refusal(s, user_id=1, is_dm=True, shares_a_server=True) == NO_DMS
        mutual = s.replace(dm_access="mutual")
        assert refusal(mutual, user_id=1, is_dm=True, shares_a_server=False) == NO_DMS  # nothing to look up
    mutual = Settings(allowed_role_ids=frozenset({5}), blocked_role_ids=frozenset({6}), dm_access="mutual")
    assert refusal(mutual, user_id=1, role_ids=[5], is_dm=True, shares_a_server=True) is None
    assert refusal(mutual, user_id=1, role_ids=[7], is_dm=True, shares_a_server=True) == REFUSED
    assert refusal(mutual, user_id=1, role_ids=[5, 6], is_dm=True, shares_a_server=True) == REFUSED  # blocked anywhere
    channels = Settings(allowed_channel_ids=frozenset({9}), dm_access="mutual")
    assert refusal(channels, user_id=1, is_dm=True, shares_a_server=True) is None
    assert refusal(Settings(allowed_channel_ids=frozenset({9})), user_id=1, is_dm=True) == NO_DMS


def test_the_bots_admins_may_always_dm_unless_blocked() -> None:
    s = Settings(admin_user_ids=frozenset({1}), allowed_role_ids=frozenset({5}), allowed_channel_ids=frozenset({9}))
    assert refusal(s, user_id=1, is_dm=True) is None
    assert refusal(s, user_id=1, channel_ids=[8], role_ids=[5]) == REFUSED  # in a server, the lists hold for them too
    assert refusal(s.replace(blocked_user_ids=frozenset({1})), user_id=1, is_dm=True) == REFUSED
    assert refusal(s.replace(allow_dms=False), user_id=1, is_dm=True) == NO_DMS
