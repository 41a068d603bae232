"""How the Docker provider names what it makes: containers, labels and /data folders.

Every name is a readable part (for operators) and an exact digest of the ids (for safety): ids
that look alike ('alice' and 'alice#(;{|') never share a sandbox or a folder, by chance or on
purpose. A sandbox's name and its /data folder end in the same digest, so either finds the other.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

LABEL = "llmbot"  # label namespace: llmbot.app, llmbot.user, llmbot.session, ...
DIGEST_HEX = 20  # 80 bits of SHA-256: names and folders of different ids never meet, by chance or on purpose


def readable(value: str, length: int) -> str:
    """The part of a name a person can read: 'Alice Smith' -> 'alice-smith'. Never unique on its own."""
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:length] or "x"


def digest(*parts: str) -> str:
    """A full-strength digest of the exact ids (NUL-separated, so ('a', 'bc') != ('ab', 'c'))."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:DIGEST_HEX]


def legacy_slug(value: str, length: int = 24) -> str:
    """How folders were named before exact digests (a 24-bit hash): only for moving them over."""
    return f"{readable(value, length)}-{hashlib.sha256(value.encode()).hexdigest()[:6]}"


def sandbox_name(prefix: str, user: str, session: str) -> str:
    """The container of (user, session) in the deployment VM_NAME_PREFIX names."""
    return f"{prefix}-{readable(user, 12)}-{readable(session, 12)}-{digest(user, session)}"


def user_folder(user: str) -> str:
    """The name of the folder that holds every /data of one person."""
    return f"{readable(user, 24)}-{digest(user)}"


def session_folder(user: str, session: str) -> str:
    """The name of one conversation's /data folder, inside its person's."""
    return f"{readable(session, 24)}-{digest(user, session)}"


def key_of(name: str) -> str:
    """The digest that ends a sandbox's name and its /data folder's: digest(user, session)."""
    return name.rsplit("-", 1)[-1]


def name_of_folder(prefix: str, folder: Path) -> str:
    """The sandbox name of a /data folder (both carry the readable ids and the exact digest)."""
    user_part = folder.parent.name.rsplit("-", 1)[0]
    session_part, key = folder.name.rsplit("-", 1)
    return f"{prefix}-{user_part[:12]}-{session_part[:12]}-{key}"


def row_name(row: dict[str, Any]) -> str:
    """A container's name in a row of the engine's container list."""
    return row["Names"][0].lstrip("/")
