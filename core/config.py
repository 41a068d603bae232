"""All configuration, read once from the environment and `.env`.

One frozen `Settings` object is passed around instead of reading `os.environ`
in many places, so a bad value fails at start with one clear line and tests can
build their own settings without touching the process environment.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, TypeVar

from dotenv import load_dotenv

if TYPE_CHECKING:
    from .mcp.config import ServerConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message is one line naming it."""


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _parse_int(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _parse_float(name: str, raw: str, minimum: float = 0.0) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= minimum:
        raise ConfigError(f"{name} must be greater than {minimum:g}, got {raw!r}")
    return value


def _parse_ids(name: str, raw: str) -> frozenset[int]:
    ids = set()
    for part in re.split(r"[,\s]+", raw.strip()):
        if not part:
            continue
        if not part.isdigit():
            raise ConfigError(f"{name} must be a comma-separated list of numeric ids, got {part!r}")
        ids.add(int(part))
    return frozenset(ids)


def _parse_think(name: str, raw: str) -> bool | str | None:
    value = raw.strip().lower()
    if value in {"", "auto", "default"}:
        return None
    if value in {"low", "medium", "high"}:
        return value
    return _parse_bool(name, raw)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def _parse_size(name: str, raw: str) -> int:
    """Bytes from '512m', '2g', '1048576'; Docker and humans both write sizes so."""
    match = _SIZE.match(raw)
    if not match:
        raise ConfigError(f"{name} must be a size like 512m or 2g, got {raw!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    value = int(number * 1024 ** " kmgt".index(unit or " "))
    if value <= 0:
        raise ConfigError(f"{name} must be greater than zero, got {raw!r}")
    return value


def _check_url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    value = raw.strip()
    if not re.match(rf"^({'|'.join(schemes)})://\S+$", value):
        raise ConfigError(f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Every knob of the engine and the bot; defaults suit one small server."""

    # Ollama
    ollama_host: str = "http://localhost:11434"
    ollama_model: str = "qwen3:8b"
    system_prompt: str = ""  # operator text added to the built-in instructions where no /admin prompt applies
    ollama_think: bool | str | None = None
    ollama_num_ctx: int = 16384  # the context every request is built to fit (0: the server's default, taken as 4096)
    reply_reserve_tokens: int = 2048  # of that context, kept free for the reply
    summary: bool = True  # what falls out of a long conversation's context is summarised (one extra model call)
    ollama_keep_alive: str = ""
    ollama_connect_timeout: float = 10.0  # seconds to reach the server
    ollama_stall_timeout: float = 180.0  # seconds without a byte before a reply counts as stuck (cold loads are slow)
    # The model server's API: Ollama's own, or OpenAI's chat completions (vLLM, llama.cpp, LM Studio, LiteLLM)
    model_api: str = "ollama"  # the backend of plain model names; /admin model may name the other's as "openai:<name>"
    openai_base_url: str = ""  # e.g. http://localhost:8000/v1; empty: no OpenAI-compatible server
    openai_api_key: str = field(default="", repr=False)  # a secret: never logged, never shown
    openai_model: str = ""  # the default model with MODEL_API=openai (as its server's /v1/models names it)
    model_capabilities: frozenset[str] = frozenset({"tools"})  # an OpenAI-API model's, where its server does not say
    # The models a server's managers may choose with /admin model (empty: any the model servers
    # offer); the bot's admins choose any. Each switch makes the model server load another model.
    allowed_models: tuple[str, ...] = ()
    # History
    database_url: str = "sqlite:///data/chat.db"
    history_window: int = 40
    max_tool_rounds: int = 8
    max_tool_calls_per_round: int = 8  # calls run per model message; the rest are answered "not run"
    # Sandbox containers
    tools: bool = True  # commands in a sandbox per conversation; False (TOOLS=off): chat only, no Docker at all
    vm_image: str = "python:3.11-slim"
    vm_network: bool = True
    vm_memory: int = 512 * 1024 ** 2
    vm_cpus: float = 1.0
    vm_pids: int = 256
    vm_idle_timeout: int = 3600
    vm_disk: int = 1024 ** 3  # /data plus what a sandbox writes to its own filesystem
    vm_inodes: int = 100_000  # files (inodes) per sandbox, in /data and in its own filesystem alike
    user_disk: int = 0  # all of one person's /data together; 0: three times VM_DISK
    vm_name_prefix: str = "llmbot"
    vm_data_host_dir: str = ""  # UPLOAD_DIR as the Docker host sees it, when the bot itself runs in a container
    vm_data_nosuid: bool = True  # make UPLOAD_DIR a nosuid,nodev mount (needs root on the Docker host)
    vm_userns: str = ""  # Docker's userns_mode for sandboxes ("host" opts out of a daemon's userns-remap)
    vm_runtime: str = ""  # Docker runtime for sandboxes: runsc (gVisor), kata-runtime, sysbox-runc…
    command_timeout: int = 60
    command_timeout_max: int = 600
    output_limit: int = 16000
    # Many users at once
    max_running_commands: int = 32  # across the process; more wait their turn, round robin by person
    max_running_per_user: int = 2  # of one person's at once; their further commands wait behind their own
    max_model_requests: int = 1  # requests to the model at once (Ollama's OLLAMA_NUM_PARALLEL); round robin by person
    user_messages_per_minute: int = 20  # one person's messages, all conversations together (0: no limit)
    max_sandboxes_per_user: int = 3  # the least recently used idle one makes room for a new one
    # Daily budgets per person, over all their servers, for the UTC day (0: none)
    user_daily_tokens: int = 0  # tokens read and written by the model for them
    user_daily_command_seconds: int = 0  # seconds their commands ran
    # Retention
    audit_retention_days: int = 90  # every command run, kept apart from the conversation
    data_retention_days: int = 30  # a conversation's /data folder, after its last use
    history_retention_days: int = 0  # a whole conversation (and its /data, its sandbox), after its last use; 0: kept
    # Uploads
    upload_dir: str = "data/uploads"
    upload_max_file_bytes: int = 25 * 1024 ** 2
    upload_max_session_bytes: int = 200 * 1024 ** 2
    # Files both ways
    send_file_max_bytes: int = 25 * 1024 ** 2  # what send_file hands over, at most (the channel's own limit also holds)
    vision_max_images: int = 4  # the latest images sent again to a vision model in later turns
    inline_text_max_bytes: int = 16 * 1024  # text attachments up to this size are also quoted into the message
    # MCP servers: the operator's tools beyond the shell (core/mcp/)
    mcp_config: str = ""  # a JSON file with an "mcpServers" object; empty: no MCP servers
    mcp_servers: tuple[ServerConfig, ...] = ()  # what that file holds, read once at start
    # Discord
    discord_token: str = field(default="", repr=False)
    admin_user_ids: frozenset[int] = frozenset()
    allowed_user_ids: frozenset[int] = frozenset()
    blocked_user_ids: frozenset[int] = frozenset()
    allowed_role_ids: frozenset[int] = frozenset()
    blocked_role_ids: frozenset[int] = frozenset()
    allowed_channel_ids: frozenset[int] = frozenset()
    blocked_channel_ids: frozenset[int] = frozenset()
    # channels answering every message where /admin channel sets no mode (AUTO_REPLY_CHANNEL_IDS: the older name)
    free_response_channel_ids: frozenset[int] = frozenset()
    allow_dms: bool = True
    # DMs when ALLOWED_ROLE_IDS, BLOCKED_ROLE_IDS or ALLOWED_CHANNEL_IDS is set: "refuse" them, or
    # check the person's roles in the servers they share with the bot ("mutual").
    dm_access: str = "refuse"
    show_thinking: bool = False
    edits_per_5s: int = 4
    shard_count: int = 0
    log_level: str = "INFO"
    log_content: bool = False  # message text in the log (at DEBUG): for debugging a private deployment only

    @property
    def default_model(self) -> tuple[str, str]:
        """The model where no place sets one, and the setting that names it."""
        if self.model_api == "openai":
            return self.openai_model, "OPENAI_MODEL"
        return self.ollama_model, "OLLAMA_MODEL"

    def replace(self, **changes: object) -> "Settings":
        """A copy with some fields changed (tests and the admin model switch use it)."""
        return dataclasses.replace(self, **changes)

    @property
    def context_tokens(self) -> int:
        """The context requests are built to fit: OLLAMA_NUM_CTX, or the server's usual default."""
        return self.ollama_num_ctx or 4096

    @property
    def offers_tools(self) -> bool:
        """The model is offered tools: the sandbox's, or (chat-only too) MCP servers that need no sandbox."""
        return self.tools or any(not server.sandbox for server in self.mcp_servers)

    @property
    def user_disk_limit(self) -> int:
        """USER_DISK, or three times VM_DISK: room for a few conversations' files, not for many."""
        return self.user_disk or 3 * self.vm_disk

    @property
    def sqlite_path(self) -> str | None:
        """The file behind a sqlite DATABASE_URL, or None for other databases."""
        if self.database_url.startswith("sqlite:///"):
            return self.database_url[len("sqlite:///"):]
        return None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, dotenv: bool = True) -> "Settings":
        """Settings from `env` (default: os.environ after loading `.env`)."""
        if env is None:
            if dotenv:
                load_dotenv(override=False)
            env = os.environ
        values: dict[str, object] = {}

        def take(key: str, attr: str, parse: Callable[[str, str], T]) -> None:
            raw = env.get(key)
            if raw is not None and raw.strip() != "":
                values[attr] = parse(key, raw)

        text = lambda _n, raw: raw.strip()  # noqa: E731
        take("OLLAMA_HOST", "ollama_host", lambda n, r: _check_url(n, r if "://" in r else "http://" + r.strip(), ("http", "https")))
        take("OLLAMA_MODEL", "ollama_model", text)
        take("SYSTEM_PROMPT", "system_prompt", _parse_prompt)
        take("OLLAMA_THINK", "ollama_think", _parse_think)
        take("OLLAMA_NUM_CTX", "ollama_num_ctx", _parse_num_ctx)
        take("REPLY_RESERVE_TOKENS", "reply_reserve_tokens", lambda n, r: _parse_int(n, r, 256))
        take("SUMMARY", "summary", _parse_bool)
        take("OLLAMA_KEEP_ALIVE", "ollama_keep_alive", text)
        take("OLLAMA_CONNECT_TIMEOUT", "ollama_connect_timeout", _parse_float)
        take("OLLAMA_STALL_TIMEOUT", "ollama_stall_timeout", _parse_float)
        take("MODEL_API", "model_api", _parse_model_api)
        take("OPENAI_BASE_URL", "openai_base_url", lambda n, r: _check_url(n, r, ("http", "https")).rstrip("/"))
        take("OPENAI_API_KEY", "openai_api_key", text)
        take("OPENAI_MODEL", "openai_model", text)
        take("MODEL_CAPABILITIES", "model_capabilities", _parse_capabilities)
        take("ALLOWED_MODELS", "allowed_models", _parse_names)
        take("DATABASE_URL", "database_url", lambda n, r: _check_url(n, r, ("sqlite", "postgresql", "postgres", "mysql")))
        take("HISTORY_WINDOW", "history_window", lambda n, r: _parse_int(n, r, 2))
        take("MAX_TOOL_ROUNDS", "max_tool_rounds", lambda n, r: _parse_int(n, r, 1))
        take("MAX_TOOL_CALLS_PER_ROUND", "max_tool_calls_per_round", lambda n, r: _parse_int(n, r, 1))
        take("TOOLS", "tools", _parse_bool)
        take("VM_IMAGE", "vm_image", text)
        take("VM_NETWORK", "vm_network", _parse_bool)
        take("VM_MEMORY", "vm_memory", _parse_size)
        take("VM_CPUS", "vm_cpus", _parse_float)
        take("VM_PIDS", "vm_pids", lambda n, r: _parse_int(n, r, 16))
        take("VM_IDLE_TIMEOUT", "vm_idle_timeout", lambda n, r: _parse_int(n, r, 10))
        take("VM_DISK", "vm_disk", _parse_size)
        take("VM_INODES", "vm_inodes", lambda n, r: _parse_int(n, r, 1000))
        take("USER_DISK", "user_disk", _parse_size)
        take("VM_NAME_PREFIX", "vm_name_prefix", lambda n, r: _check_name(n, r))
        take("VM_DATA_HOST_DIR", "vm_data_host_dir", text)
        take("VM_DATA_NOSUID", "vm_data_nosuid", _parse_bool)
        take("VM_USERNS", "vm_userns", text)
        take("VM_RUNTIME", "vm_runtime", text)
        take("COMMAND_TIMEOUT", "command_timeout", lambda n, r: _parse_int(n, r, 1))
        take("COMMAND_TIMEOUT_MAX", "command_timeout_max", lambda n, r: _parse_int(n, r, 1))
        take("OUTPUT_LIMIT", "output_limit", lambda n, r: _parse_int(n, r, 200))
        take("MAX_RUNNING_COMMANDS", "max_running_commands", lambda n, r: _parse_int(n, r, 1))
        take("MAX_RUNNING_PER_USER", "max_running_per_user", lambda n, r: _parse_int(n, r, 1))
        take("MAX_MODEL_REQUESTS", "max_model_requests", lambda n, r: _parse_int(n, r, 1))
        take("USER_MESSAGES_PER_MINUTE", "user_messages_per_minute", _parse_int)
        take("MAX_SANDBOXES_PER_USER", "max_sandboxes_per_user", lambda n, r: _parse_int(n, r, 1))
        take("USER_DAILY_TOKENS", "user_daily_tokens", _parse_int)
        take("USER_DAILY_COMMAND_SECONDS", "user_daily_command_seconds", _parse_int)
        take("AUDIT_RETENTION_DAYS", "audit_retention_days", lambda n, r: _parse_int(n, r, 1))
        take("DATA_RETENTION_DAYS", "data_retention_days", lambda n, r: _parse_int(n, r, 1))
        take("HISTORY_RETENTION_DAYS", "history_retention_days", _parse_int)
        take("UPLOAD_DIR", "upload_dir", text)
        take("UPLOAD_MAX_FILE_SIZE", "upload_max_file_bytes", _parse_size)
        take("UPLOAD_MAX_SESSION_SIZE", "upload_max_session_bytes", _parse_size)
        take("SEND_FILE_MAX_BYTES", "send_file_max_bytes", _parse_size)
        take("VISION_MAX_IMAGES", "vision_max_images", _parse_int)
        take("INLINE_TEXT_MAX_BYTES", "inline_text_max_bytes", lambda n, r: 0 if r.strip() == "0" else _parse_size(n, r))
        take("MCP_CONFIG", "mcp_config", text)
        take("DISCORD_TOKEN", "discord_token", text)
        for key in ("ADMIN_USER_IDS", "ALLOWED_USER_IDS", "BLOCKED_USER_IDS", "ALLOWED_ROLE_IDS",
                    "BLOCKED_ROLE_IDS", "ALLOWED_CHANNEL_IDS", "BLOCKED_CHANNEL_IDS"):
            take(key, key.lower(), _parse_ids)
        # AUTO_REPLY_CHANNEL_IDS is the older name of FREE_RESPONSE_CHANNEL_IDS: the channels of both count
        values["free_response_channel_ids"] = frozenset().union(
            *(_parse_ids(key, env.get(key) or "") for key in ("FREE_RESPONSE_CHANNEL_IDS", "AUTO_REPLY_CHANNEL_IDS")))
        take("ALLOW_DMS", "allow_dms", _parse_bool)
        take("DM_ACCESS", "dm_access", _parse_dm_access)
        take("SHOW_THINKING", "show_thinking", _parse_bool)
        take("DISCORD_EDITS_PER_5S", "edits_per_5s", lambda n, r: _parse_int(n, r, 1))
        take("SHARD_COUNT", "shard_count", _parse_int)
        take("LOG_LEVEL", "log_level", _parse_log_level)
        take("LOG_CONTENT", "log_content", _parse_bool)
        if values.get("mcp_config"):
            from .mcp.config import load  # not at the top: core.mcp.config imports ConfigError from here
            values["mcp_servers"] = load(str(values["mcp_config"]), env)
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.reply_reserve_tokens * 2 > settings.context_tokens:
            raise ConfigError(f"REPLY_RESERVE_TOKENS ({settings.reply_reserve_tokens}) must be at most half of "
                              f"OLLAMA_NUM_CTX ({settings.context_tokens})")
        if settings.model_api == "openai" and not (settings.openai_base_url and settings.openai_model):
            raise ConfigError("MODEL_API=openai needs OPENAI_BASE_URL (e.g. http://localhost:8000/v1) and "
                              "OPENAI_MODEL (a model its /v1/models lists)")
        if settings.command_timeout > settings.command_timeout_max:
            raise ConfigError(
                f"COMMAND_TIMEOUT ({settings.command_timeout}) must not exceed COMMAND_TIMEOUT_MAX ({settings.command_timeout_max})"
            )
        return settings


def _parse_model_api(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("ollama", "openai"):
        raise ConfigError(f"{name} must be ollama or openai, got {raw!r}")
    return value


CAPABILITIES = ("tools", "vision")


def _parse_names(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list of names (model names hold ':' and '/', never ',')."""
    return tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def _parse_capabilities(name: str, raw: str) -> frozenset[str]:
    """'tools,vision', 'tools', or 'none'."""
    words = {w for w in re.split(r"[,\s]+", raw.strip().lower()) if w}
    if words == {"none"}:
        return frozenset()
    unknown = words - set(CAPABILITIES)
    if unknown:
        raise ConfigError(f"{name} must list some of {', '.join(CAPABILITIES)} (or say none), got {raw!r}")
    return frozenset(words)


def _parse_num_ctx(name: str, raw: str) -> int:
    value = _parse_int(name, raw)
    if 0 < value < 2048:
        raise ConfigError(f"{name} must be 0 (the server's default) or at least 2048, got {value}")
    return value


def _parse_prompt(name: str, raw: str) -> str:
    value = raw.strip().replace("\\n", "\n")  # one line in .env may stand for several
    if len(value) > 4000:
        raise ConfigError(f"{name} must be at most 4000 characters, got {len(value)}")
    return value


DM_ACCESS_VALUES = ("refuse", "mutual")


def _parse_dm_access(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in DM_ACCESS_VALUES:
        raise ConfigError(f"{name} must be refuse or mutual, got {raw!r}")
    return value


def _check_name(name: str, raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}", value):
        raise ConfigError(f"{name} must be letters, digits, '.', '_' or '-', got {raw!r}")
    return value


def _parse_log_level(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"{name} must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}")
    return value
