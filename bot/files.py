"""/files on Discord: a listing of /data that names cannot forge, a menu to pick a file, the download."""
from __future__ import annotations

import io

import discord

from core import ChatSession, EngineError
from core.sandbox.workspace import FileEntry, shown_name
from core.sizes import human_size
from core.uploads import safe_filename

FILES_SHOWN = 20
FILES_EMPTY = "Your /data here is empty. Attach files to a message to me to put them there."
NAME_SHOWN = 60  # characters of a name in a listing line: 20 lines must fit one Discord message
LISTING_MAX = 1900  # Discord refuses a message over 2000 characters


def in_data(path: str) -> str:
    """A path as typed ("/data/results/", "results") relative to /data."""
    return path.strip().strip("/").removeprefix("data/")


def _code(name: str, width: int = NAME_SHOWN) -> str:
    """A name the sandbox chose, as one inline-code span that nothing in it can break or extend: control
    characters escaped (no forged line), backticks swapped for a look-alike (no early end), long names cut."""
    text = shown_name(name).replace("`", "\u02cb")
    if len(text) > width:
        text = text[:width - 1] + "…"
    return f"`{text}`"


def _entry_line(entry: FileEntry) -> str:
    name = entry.path.rsplit("/", 1)[-1]
    when = f"<t:{int(entry.modified)}:R>"
    if entry.kind == "folder":
        return f"📁 {_code(name + '/')} · {when}"
    if entry.kind == "link":
        return f"🔗 {_code(name)} (a link) · {when}"
    return f"📄 {_code(name)} · {human_size(entry.size)} · {when}"


def listing(where: str, entries: list[FileEntry], tail: str = "") -> str:
    """The /files message: a title and one line per entry, as many as fit in one Discord message
    with `tail` (the person's total, when it is worth saying) at its end."""
    shown = discord.utils.escape_markdown(shown_name(where)[:200])  # as the person typed it, inert
    lines = [f"**/data/{shown}**" if where else "**/data**"]
    size = len(lines[0]) + len(tail)
    for entry in entries[:FILES_SHOWN]:
        line = _entry_line(entry)
        if size + len(line) + 1 > LISTING_MAX:
            break
        lines.append(line)
        size += len(line) + 1
    more = len(entries) - (len(lines) - 1)
    if more > 0:
        lines.append(f"-# … and {more} more; `/files path:<folder>` lists a folder")
    return "\n".join(lines) + tail


class FilePicker(discord.ui.View):
    """A menu of the listed files: the one picked is sent to whoever asked, and only to them."""

    def __init__(self, chat: ChatSession, entries: list[FileEntry], limit: int) -> None:
        super().__init__(timeout=600)
        self.chat, self.limit = chat, limit
        files = [e for e in entries if e.kind == "file"][:25]
        # The value is an index: the exact path stays here (whatever its characters or length) and is
        # what the download reads; the label is only for the eye.
        self.paths = {str(n): e.path for n, e in enumerate(files)}
        options = [discord.SelectOption(label=_label(e.path), value=str(n), description=human_size(e.size))
                   for n, e in enumerate(files)]
        self.menu = discord.ui.Select(placeholder="Download a file…", options=options)
        self.menu.callback = self.picked  # type: ignore[method-assign]
        if options:
            self.add_item(self.menu)

    async def picked(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await send_file_to(interaction, self.chat, self.paths[self.menu.values[0]], self.limit, exact=True)


def _label(path: str) -> str:
    """A menu label (plain text, at most 100 characters): the path's end, control characters escaped."""
    text = shown_name(path)
    return text if len(text) <= 100 else "…" + text[-99:]


async def send_file_to(interaction: discord.Interaction, chat: ChatSession, path: str, limit: int, *,
                       exact: bool = False) -> None:
    """One file of /data to the person who asked, read through the sandbox, within the upload limit.
    `exact`: the path as listed (from the menu), read as it is, not as if typed."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    try:
        data = await chat.read_file(path, limit, exact=exact)
    except EngineError as exc:
        await interaction.followup.send(f"⚠️ {discord.utils.escape_markdown(exc.user_message)}", ephemeral=True)
        return
    await interaction.followup.send(file=discord.File(io.BytesIO(data), filename=safe_filename(name)), ephemeral=True)
