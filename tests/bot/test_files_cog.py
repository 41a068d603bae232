"""Files and images both ways through the real discord.py dispatch (issue 11): what a user sees and
downloads. dpytest drives Discord; the engine runs for real (fake Ollama over HTTP, real Docker)."""
from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import types
from pathlib import Path
from typing import Any

import discord
import discord.ext.test as dpytest
import pytest
from discord.ext import commands
from discord.ui.select import selected_values
from PIL import Image

from bot.controls import ONLY_AUTHOR_OUTPUT, OUTPUT_GONE, FullOutputButton
from core import ChatSession, Runtime
from tests.bot.conftest import channel_messages, invoke, start_bot
from tests.conftest import make_settings, open_runtime
from tests.bot.test_chat_cog import settle
from tests.bot.test_uploads_cog import send_with_files
from tests.fake_ollama import FakeOllama, text, tool_calls

pytestmark = pytest.mark.asyncio


class Press:
    """What a component or slash-command callback reads from discord.Interaction; it records answers."""

    def __init__(self, user: Any, channel: Any, guild: Any = None) -> None:
        self.user, self.channel, self.channel_id = user, channel, channel.id
        self.guild = guild if guild is not None else getattr(channel, "guild", None)
        self.sent: list[dict[str, Any]] = []
        self.deferred = False
        outer = self

        class Response:
            def is_done(self) -> bool:
                return outer.deferred or bool(outer.sent)

            async def defer(self, **_kw: Any) -> None:
                outer.deferred = True

            async def send_message(self, content: str = "", **kw: Any) -> None:
                outer.sent.append({"content": content, **kw})

        class Followup:
            async def send(self, content: str = "", **kw: Any) -> None:
                outer.sent.append({"content": content, **kw})

        self.response, self.followup = Response(), Followup()

    def file_bytes(self) -> bytes:
        file = self.sent[-1]["file"]
        file.fp.seek(0)
        return file.fp.read()


async def test_a_file_the_model_sends_is_attached_to_its_reply(bot: commands.Bot, runtime: Runtime,
                                                                fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "printf 'a,b\\n1,2\\n' > /data/table.csv"})),
                       tool_calls(("send_file", {"path": "table.csv", "caption": "the table"})),
                       text("Here is your table."))
    config = dpytest.get_config()
    await dpytest.message(f"<@{bot.user.id}> make a csv", channel=config.channels[0], member=config.members[0])
    await settle(bot, runtime)
    [reply] = channel_messages(config.channels[0], bot)
    assert reply.content.split("\n") == ["-# ✅ `printf 'a,b\\n1,2\\n' > /data/table.csv` → exit 0",
                                         "-# 📎 `table.csv` attached below",
                                         "Here is your table."]
    assert [a.filename for a in reply.attachments] == ["table.csv"]
    assert await reply.attachments[0].read() == b"a,b\n1,2\n"
    assert not getattr(reply, "components", [])  # the Stop button went with the last edit


async def test_a_cut_output_is_offered_whole_to_the_author_only(bot: commands.Bot, runtime: Runtime,
                                                                 fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "seq 1 20000"})), text("Counted."))
    config = dpytest.get_config()
    channel, author, other = config.channels[0], config.members[0], config.members[1]
    await dpytest.message(f"<@{bot.user.id}> count", channel=channel, member=author)
    await settle(bot, runtime)
    [reply] = channel_messages(channel, bot)
    assert reply.content.split("\n") == ["-# ✅ `seq 1 20000` → exit 0 · 📄 full output below", "Counted."]
    whole = "".join(f"{n}\n" for n in range(1, 20001)).encode()
    assert len(fake_ollama.requests[-1]["messages"][-1]["content"]) < len(whole)  # the model's copy was cut
    [[button]] = [[c.label for c in row.children] for row in reply.components]
    assert button == "Full output: seq 1 20000 (106 KB)"
    [[custom_id]] = [[c.custom_id for c in row.children] for row in reply.components]

    async def click(who: Any) -> Press:
        """As discord.py dispatches a click on a dynamic item: rebuilt from its custom id (so it works
        on replies sent before a restart too), then called."""
        press = Press(who, channel)
        press.client = bot
        match = FullOutputButton.__discord_ui_compiled_template__.fullmatch(custom_id)
        assert match is not None and match["id"] and bot._connection._view_store._dynamic_items
        item = await FullOutputButton.from_custom_id(press, types.SimpleNamespace(label=button), match)
        await item.callback(press)
        return press

    assert (await click(other)).sent == [{"content": ONLY_AUTHOR_OUTPUT, "ephemeral": True}]
    press = await click(author)
    assert press.sent[-1]["ephemeral"] is True and press.sent[-1]["file"].filename == "output.txt"
    assert press.file_bytes() == whole
    runtime.outputs.budget = 1  # many later outputs pushed it out (or the bot restarted)
    runtime.outputs.keep(("x", "y"), b"newer")
    assert (await click(author)).sent == [{"content": OUTPUT_GONE, "ephemeral": True}]


async def test_files_lists_data_and_sends_the_file_picked(bot: commands.Bot, runtime: Runtime) -> None:
    config = dpytest.get_config()
    channel, member = config.channels[0], config.members[0]
    user, session = str(member.id), str(channel.id)
    await runtime.terminal.execute(user, session, "mkdir -p /data/results && printf 'hello\\n' > /data/a.txt && "
                                                  "head -c 3000 /dev/zero > /data/results/z.bin && "
                                                  "ln -s /etc/shadow /data/sneaky")
    cog = bot.get_cog("Everyone")
    press = Press(member, channel)
    await invoke(bot, ("files",), press)
    sent = press.sent[-1]
    lines = sent["content"].split("\n")
    assert lines[0] == "**/data**" and sent["ephemeral"] is True
    assert sorted(line.split(" · ")[0] for line in lines[1:]) == ["📁 `results/`", "📄 `a.txt`",
                                                                  "🔗 `sneaky` (a link)"]
    assert all(line.split(" · ")[-1].startswith("<t:") for line in lines[1:])
    picker = sent["view"]
    assert [o.label for o in picker.menu.options] == ["a.txt"]  # files only: never a link or a folder
    pick = await choose(picker, member, channel, "a.txt")
    assert pick.sent[-1]["file"].filename == "a.txt" and pick.file_bytes() == b"hello\n"
    # a folder, and a file named directly
    folder = Press(member, channel)
    await invoke(bot, ("files",), folder, path="/data/results")
    assert folder.sent[-1]["content"].split("\n")[:2] == ["**/data/results**", f"📄 `z.bin` · 3 KB · "
                                                          + folder.sent[-1]["content"].split(" · ")[-1]]
    direct = Press(member, channel)
    await invoke(bot, ("files",), direct, path="results/z.bin")
    assert direct.file_bytes() == b"\0" * 3000
    choices = await cog._files_path(Press(member, channel), "res")
    assert [(c.name, c.value) for c in choices] == [("results/", "results")]
    assert [c.value for c in await cog._files_path(Press(member, channel), "/data/results/z")] == ["results/z.bin"]
    escape = Press(member, channel)
    await invoke(bot, ("files",), escape, path="../..")
    assert escape.sent[-1]["content"] == "⚠️ Paths stay inside /data: no '..'."


async def choose(picker: Any, member: Any, channel: Any, label: str) -> Press:
    """Pick the menu option shown as `label`, as Discord would send the choice back: by its value."""
    [value] = [o.value for o in picker.menu.options if o.label == label]
    press = Press(member, channel)
    token = selected_values.set({picker.menu.custom_id: [value]})
    try:
        await picker.menu.callback(press)
    finally:
        selected_values.reset(token)
    return press


async def test_a_name_with_a_newline_or_backticks_is_one_line_and_downloads_exactly(
        bot: commands.Bot, runtime: Runtime) -> None:
    config = dpytest.get_config()
    channel, member = config.channels[0], config.members[0]
    user, session = str(member.id), str(channel.id)
    # names the sandbox chose to forge a line of the listing (and one ending in a newline, which a
    # strip would turn into another file's name); \140 is a backtick
    await runtime.terminal.execute(user, session, "printf forged > \"$(printf '/data/x\\n\\360\\237\\223\\204 "
                                                  "\\140HOST_ONLY_id_rsa\\140 \\302\\267 1 KB')\" && "
                                                  "n=$(printf '/data/tail\\n.') && printf tail > \"${n%.}\" && "
                                                  "printf other > /data/tail")
    names = sorted(p.name for p in runtime.sandboxes.data_dir(user, session).iterdir())
    assert names == ["tail", "tail\n", "x\n📄 `HOST_ONLY_id_rsa` · 1 KB"]
    cog = bot.get_cog("Everyone")
    press = Press(member, channel)
    await invoke(bot, ("files",), press)
    lines = press.sent[-1]["content"].split("\n")
    assert lines[0] == "**/data**" and len(lines) == 4
    assert sorted(line.rsplit(" · ", 1)[0] for line in lines[1:]) == [
        "📄 `tail\\n` · 4 bytes", "📄 `tail` · 5 bytes", "📄 `x\\n📄 ˋHOST_ONLY_id_rsaˋ · 1 KB` · 6 bytes"]
    assert all(line.startswith("📄 `") and line.count("`") == 2 and line.endswith(":R>") for line in lines[1:])
    picker = press.sent[-1]["view"]
    assert sorted(o.label for o in picker.menu.options) == ["tail", "tail\\n", "x\\n📄 `HOST_ONLY_id_rsa` · 1 KB"]
    assert all(len(o.value) <= 100 and o.value.isdigit() for o in picker.menu.options)
    assert (await choose(picker, member, channel, "tail\\n")).file_bytes() == b"tail"  # not /data/tail
    assert (await choose(picker, member, channel, "tail")).file_bytes() == b"other"
    forged = await choose(picker, member, channel, "x\\n📄 `HOST_ONLY_id_rsa` · 1 KB")
    assert forged.file_bytes() == b"forged" and "\n" not in forged.sent[-1]["file"].filename
    choices = await cog._files_path(Press(member, channel), "")
    assert [c.value for c in choices] == ["tail"]  # a name that cannot come back intact is not offered


async def test_files_works_the_same_in_a_dm(bot: commands.Bot, runtime: Runtime) -> None:
    config = dpytest.get_config()
    member = config.members[0]
    dm = await member.create_dm()
    press = Press(member, dm, guild=None)
    press.guild = None
    await invoke(bot, ("files",), press)
    assert press.sent[-1]["content"] == "Your /data here is empty. Attach files to a message to me to put them there."
    await runtime.terminal.execute(str(member.id), str(dm.id), "printf 'dm file' > /data/d.txt")
    again = Press(member, dm, guild=None)
    again.guild = None
    await invoke(bot, ("files",), again, path="d.txt")
    assert again.file_bytes() == b"dm file"


def png_file(folder: Path, color: tuple[int, int, int]) -> Path:
    path = folder / "photo.png"
    Image.new("RGB", (12, 8), color).save(path, format="PNG")
    return path


async def test_an_image_attachment_reaches_a_vision_model_as_base64(bot: commands.Bot, runtime: Runtime,
                                                                     fake_ollama: FakeOllama, tmp_path: Path) -> None:
    fake_ollama.capabilities["qwen3:8b"] = ["completion", "tools", "vision"]
    fake_ollama.script(text("A green photo."))
    picture = png_file(tmp_path, (0, 200, 0))
    message = await send_with_files(f"<@{bot.user.id}> what is this?", [picture])
    await settle(bot, runtime)
    last = fake_ollama.requests[-1]["messages"][-1]
    assert last["content"] == "[uploaded: /data/photo.png]\nwhat is this?"
    assert [base64.b64decode(i) for i in last["images"]] == [picture.read_bytes()]
    assert channel_messages(message.channel, bot)[-1].content == "A green photo."
    async with ChatSession(user=message.author.id, session=message.channel.id, runtime=runtime) as chat:
        [row] = [r for r in await chat.history() if r["role"] == "user"]
    assert row["images"] == ["/data/photo.png"] and row["content"] == last["content"]


async def test_an_image_for_a_model_without_vision_is_only_in_data(bot: commands.Bot, runtime: Runtime,
                                                                   fake_ollama: FakeOllama, tmp_path: Path) -> None:
    fake_ollama.capabilities["qwen3:8b"] = ["completion", "tools"]
    fake_ollama.script(text("I can look at it with commands."))
    message = await send_with_files(f"<@{bot.user.id}> what is this?", [png_file(tmp_path, (1, 2, 3))])
    await settle(bot, runtime)
    assert "images" not in fake_ollama.requests[-1]["messages"][-1]
    assert channel_messages(message.channel, bot)[-1].content.split("\n") == [
        "-# ℹ️ The AI model here cannot see images; your picture is saved as /data/photo.png, where commands can "
        "work with it.",
        "I can look at it with commands."]


async def test_files_applies_the_same_access_lists_as_chat(bot: commands.Bot, runtime: Runtime) -> None:
    config = dpytest.get_config()
    member = config.members[0]
    runtime.settings = runtime.settings.replace(blocked_user_ids=frozenset({member.id}))
    await runtime.terminal.execute(str(member.id), str(config.channels[0].id), "echo secret > /data/s.txt")
    press = Press(member, config.channels[0])
    await invoke(bot, ("files",), press, path="s.txt")
    assert press.sent == [{"content": "Sorry, I'm not available to you here.", "ephemeral": True}]


async def test_a_reply_with_a_file_and_a_cut_output_shows_both_on_its_last_message(
        bot: commands.Bot, runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "seq 1 20000 | tee /data/n.txt"})),
                       tool_calls(("send_file", {"path": "n.txt"})), text("Both here."))
    config = dpytest.get_config()
    await dpytest.message(f"<@{bot.user.id}> count and send", channel=config.channels[0], member=config.members[0])
    await settle(bot, runtime)
    [reply] = channel_messages(config.channels[0], bot)
    assert reply.content.split("\n") == ["-# ✅ `seq 1 20000 | tee /data/n.txt` → exit 0 · 📄 full output below",
                                         "-# 📎 `n.txt` attached below", "Both here."]
    assert [a.filename for a in reply.attachments] == ["n.txt"]
    assert await reply.attachments[0].read() == "".join(f"{n}\n" for n in range(1, 20001)).encode()
    assert [[c.label for c in row.children] for row in reply.components] == [
        ["Full output: seq 1 20000 | tee /data/n.txt (106 KB)"]]


async def test_files_says_how_much_of_the_persons_total_their_conversations_hold(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: Any) -> None:
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.skip("disk images need root and loop devices on the Docker host")
    settings = make_settings(tmp_path, fake_ollama.url, vm_disk=64 * 1024 ** 2, user_disk=70 * 1024 ** 2)
    async with open_runtime(settings, docker_client) as rt:
        bot = await start_bot(rt)
        try:
            config = dpytest.get_config()
            channel, other, member = config.channels[0], config.channels[1], config.members[0]
            user = str(member.id)
            await rt.terminal.execute(user, str(channel.id), "dd if=/dev/zero of=/data/big bs=1M count=40")
            quiet = Press(member, channel)
            await invoke(bot, ("files",), quiet)
            assert len(quiet.sent[-1]["content"].split("\n")) == 2  # 40 of 70 MB: nothing to say yet
            await rt.terminal.execute(user, str(other.id), "dd if=/dev/zero of=/data/more bs=1M count=40")
            press = Press(member, channel)
            await invoke(bot, ("files",), press)
            lines = press.sent[-1]["content"].split("\n")
            assert lines[0] == "**/data**" and lines[1].startswith("📄 `big` · 40 MB · <t:")
            assert re.fullmatch(rf"-# ⚠️ Your conversations' files hold (69|70)(\.\d)? MB of your 70 MB in all "
                                rf"\(<#{channel.id}> 40 MB, <#{other.id}> (29|30)(\.\d)? MB\)\. New files do not fit "
                                r"until some are deleted: `rm` them here, or `/reset files:true` in a conversation "
                                r"you no longer need\.", lines[2]), lines[2]
            assert len(lines) == 3
        finally:
            await dpytest.empty_queue()


async def test_files_lists_without_starting_a_sandbox_or_a_conversation(bot: commands.Bot, runtime: Runtime,
                                                                        docker_client: Any) -> None:
    """Issue 19: /files by someone who never talked to the bot starts nothing and creates nothing; by
    someone whose sandbox is gone, it lists /data and still starts nothing."""
    config = dpytest.get_config()
    newcomer, person, room = config.members[1], config.members[0], config.channels[0]

    def sandboxes(member: Any) -> list[Any]:
        return docker_client.containers.list(all=True, filters={"label": f"llmbot.user={member.id}"})

    press = Press(newcomer, room)
    await invoke(bot, ("files",), press)
    assert press.sent[-1]["content"] == "Your /data here is empty. Attach files to a message to me to put them there."
    await asyncio.sleep(0.5)  # a sandbox start, had one been asked for, would be under way by now
    assert sandboxes(newcomer) == [] and runtime.history.find_session(str(newcomer.id), str(room.id)) is None

    await runtime.terminal.execute(str(person.id), str(room.id), "echo kept > /data/notes.txt")
    await runtime.stop_session(str(person.id), str(room.id))  # no sandbox now; the files stay
    assert sandboxes(person) == []
    listed = Press(person, room)
    await invoke(bot, ("files",), listed)
    assert "notes.txt" in listed.sent[-1]["content"]
    await asyncio.sleep(0.5)
    assert sandboxes(person) == []
