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
