"""Files and images both ways, in the engine (issue 11): send_file through the real Docker engine and
the real Ollama client (fake server), pictures for vision models, small text files quoted."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest
from PIL import Image

from core import ChatSession, Runtime
from core.errors import SandboxFileError
from core.attachments import compose
from core.events import Event, FileReady, Notice, ToolFinished
from core.tools import MAX_FILES_PER_REPLY, SEND_FILE
from tests.conftest import make_settings, open_runtime
from tests.fake_ollama import FakeOllama, request_problems, text, tool_calls
from tests.socket_proxy import SocketProxy

pytestmark = pytest.mark.asyncio


async def turn(chat: ChatSession, message: str, **kwargs: Any) -> list[Event]:
    return [event async for event in chat.events(message, **kwargs)]


def from_docker(client: docker.DockerClient, name: str, path: str) -> bytes:
    """The file as the engine itself hands it out (an independent reader: the docker SDK)."""
    stream, _ = client.containers.get(name).get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
        member = archive.getmembers()[0]
        return archive.extractfile(member).read()  # type: ignore[union-attr]


def send(path: str, caption: str | None = None) -> tuple[str, dict[str, Any]]:
    return (SEND_FILE, {"path": path, **({"caption": caption} if caption else {})})


def results(chat_rows: list[dict[str, Any]]) -> list[str]:
    return [row["content"] for row in chat_rows if row["role"] == "tool"]


async def test_a_file_made_in_the_sandbox_comes_back_with_the_same_bytes(
        runtime: Runtime, fake_ollama: FakeOllama, docker_client: docker.DockerClient) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "head -c 300000 /dev/urandom > /data/blob.bin"})),
                       tool_calls(send("blob.bin", "random bytes")),
                       text("Here it is."))
    async with ChatSession(user="u1", session="s1", runtime=runtime) as chat:
        events = await turn(chat, "make me a file")
        [ready] = [e for e in events if isinstance(e, FileReady)]
        original = from_docker(docker_client, runtime.sandboxes.name("u1", "s1"), "/data/blob.bin")
        assert ready.name == "blob.bin" and ready.caption == "random bytes" and ready.path == "/data/blob.bin"
        assert hashlib.sha256(ready.data).digest() == hashlib.sha256(original).digest() and len(ready.data) == 300000
        stored = results(await chat.history())
        assert stored[-1] == ("sent /data/blob.bin (293 KB) (random bytes) to the user: it is attached to your "
                              "reply, so do not paste its contents.")
    audit = runtime.store.audit.latest("u1", "s1")
    assert audit[0].command == "send_file /data/blob.bin" and audit[0].exit_code == 0
    assert audit[0].output_bytes == 300000
    assert all(request_problems(r) == [] for r in fake_ollama.requests)
    first = fake_ollama.requests[0]
    assert [t["function"]["name"] for t in first["tools"]] == ["execute_terminal", "send_file"]
    assert "send_file attaches a file from the container to your reply" in first["messages"][0]["content"]


async def test_oversize_missing_and_folder_paths_are_tool_errors(runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.script(tool_calls(("execute_terminal", {"command": "head -c 5000 /dev/zero > /data/big.bin"}),
                                  send("/data/big.bin"), send("/data/nothing.txt"), send("/tmp")),
                       text("Sorry."))
    async with ChatSession(user="u2", session="s2", file_limit=4096, runtime=runtime) as chat:
        events = await turn(chat, "send things")
        assert not [e for e in events if isinstance(e, FileReady)]
        finished = [e for e in events if isinstance(e, ToolFinished) and e.name == SEND_FILE]
        assert [e.error for e in finished] == [True, True, True]
        big, missing, folder = results(await chat.history())[1:]
    assert big == ("error: /data/big.bin was not sent: the files of one reply may be at most 4 KB in all here "
                   "(Discord's upload limit for this channel). Compress it, split it, or send a smaller version "
                   "(e.g. fewer rows, a lower resolution).")
    assert missing == "error: /data/nothing.txt does not exist in the sandbox. It was not sent."
    assert folder == "error: /tmp is not a regular file. It was not sent."


async def test_at_most_ten_files_per_reply(tmp_path: Path, fake_ollama: FakeOllama,
                                           docker_client: docker.DockerClient) -> None:
    settings = make_settings(tmp_path, fake_ollama.url, max_tool_calls_per_round=12)
    async with open_runtime(settings, docker_client) as runtime:
        fake_ollama.script(tool_calls(("execute_terminal", {"command": "echo hi > /data/a.txt"})),
                           tool_calls(*[send("a.txt")] * (MAX_FILES_PER_REPLY + 1)), text("Done."))
        async with ChatSession(user="u3", session="s3", runtime=runtime) as chat:
            events = await turn(chat, "spam files")
            assert len([e for e in events if isinstance(e, FileReady)]) == MAX_FILES_PER_REPLY
            assert results(await chat.history())[-1].startswith(
                "error: /data/a.txt was not sent: at most 10 files go with one reply.")


async def test_a_remote_style_engine_with_no_shared_disk_still_sends_files(
        tmp_path: Path, fake_ollama: FakeOllama, docker_client: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker over TCP, and a file that exists only inside the container (not under UPLOAD_DIR)."""
    proxy = await SocketProxy().start()
    monkeypatch.setenv("DOCKER_HOST", proxy.url)
    async with open_runtime(make_settings(tmp_path, fake_ollama.url), docker_client) as runtime:
        fake_ollama.script(tool_calls(("execute_terminal", {"command": "mkdir -p /srv && echo made-inside > /srv/x.txt"})),
                           tool_calls(send("/srv/x.txt")), text("Sent."))
        async with ChatSession(user="u4", session="s4", runtime=runtime) as chat:
            [ready] = [e for e in await turn(chat, "go") if isinstance(e, FileReady)]
        assert ready.data == b"made-inside\n"
        assert not list(Path(settings_upload(runtime)).rglob("x.txt"))
    await proxy.cut()


async def test_a_file_changing_while_it_is_read_is_a_file_error_not_a_crash(
        runtime: Runtime, docker_client: docker.DockerClient) -> None:
    """Issue 16: the engine cuts its archive short when the file shrinks or grows under the copy, and
    tarfile's ReadError escaped the turn ("Something went wrong"); it must be a SandboxFileError, which
    the model reads as a tool error."""
    async with ChatSession(user="u11", session="s11", runtime=runtime):
        await runtime.terminal.execute("u11", "s11", "head -c 3000000 /dev/zero > /data/live.bin")
        box = docker_client.containers.get(runtime.sandboxes.name("u11", "s11"))
        box.exec_run(["sh", "-c", "while :; do head -c 3000000 /dev/zero > /data/live.bin; : > /data/live.bin; done"],
                     detach=True)
        changed, whole = 0, 0
        for _ in range(400):  # about one read in seven is cut (here, idle): stop once both were seen a few times
            try:
                data = await runtime.sandboxes.get("u11", "s11").read_file("/data/live.bin", 10_000_000)
            except SandboxFileError as exc:
                assert str(exc) == "/data/live.bin changed while it was read; try again.", exc
                assert isinstance(exc.__cause__, (tarfile.TarError, EOFError))
                changed += 1
            else:
                assert data == bytes(len(data)) and len(data) <= 3000000
                whole += 1
            if changed >= 3 and whole >= 3:
                break
        assert changed >= 3 and whole >= 3, (changed, whole)


def settings_upload(runtime: Runtime) -> str:
    return runtime.settings.upload_dir


# -- pictures -----------------------------------------------------------------------
def png(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def gif(first: tuple[int, int, int], second: tuple[int, int, int]) -> bytes:
    frames = [Image.new("RGB", (10, 10), c) for c in (first, second)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


def request_images(request: dict[str, Any]) -> list[list[bytes]]:
    """The decoded images of each message of a request."""
    return [[base64.b64decode(i) for i in m.get("images", [])] for m in request["messages"]]


@pytest.fixture
def vision(fake_ollama: FakeOllama) -> FakeOllama:
    fake_ollama.capabilities["qwen3:8b"] = ["completion", "tools", "vision"]
    return fake_ollama


async def test_an_image_reaches_a_vision_model_and_the_history_keeps_a_reference(
        runtime: Runtime, vision: FakeOllama) -> None:
    picture = png((255, 0, 0))
    vision.script(text("A red rectangle."))
    async with ChatSession(user="u5", session="s5", runtime=runtime) as chat:
        path = await chat.save_upload("red.png", picture)
        events = await turn(chat, "[uploaded: /data/red.png]\nwhat is this?", images=[path])
        assert not [e for e in events if isinstance(e, Notice)]
        request = vision.requests[-1]
        assert request_images(request)[-1] == [picture] and request_problems(request) == []
        rows = await chat.history()
    user = next(r for r in rows if r["role"] == "user")
    assert user["images"] == ["/data/red.png"] and user["content"] == "[uploaded: /data/red.png]\nwhat is this?"
    stored = runtime.store.database.db.execute_sql("SELECT content, images FROM messages").fetchall()
    assert all(base64.b64encode(picture).decode()[:40] not in (c or "") + (i or "") for c, i in stored)


async def test_only_the_latest_images_are_sent_again(tmp_path: Path, vision: FakeOllama,
                                                     docker_client: docker.DockerClient) -> None:
    async with open_runtime(make_settings(tmp_path, vision.url, vision_max_images=2), docker_client) as runtime:
        colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
        async with ChatSession(user="u6", session="s6", runtime=runtime) as chat:
            for i, color in enumerate(colors):
                vision.script(text(f"Picture {i}."))
                path = await chat.save_upload(f"p{i}.png", png(color))
                await turn(chat, f"look {i}", images=[path])
        sent = [images for images in request_images(vision.requests[-1]) if images]
        assert sent == [[png(colors[1])], [png(colors[2])]]  # the oldest one is no longer sent


def webp(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (10, 10), color).save(out, format="WEBP", lossless=True)
    return out.getvalue()


@pytest.mark.parametrize("name, make", [("anim.gif", lambda: gif((0, 0, 255), (255, 255, 0))),
                                        ("pic.webp", lambda: webp((0, 0, 255)))], ids=["gif", "webp"])
async def test_a_gif_goes_as_its_first_frame_and_a_webp_as_png(runtime: Runtime, vision: FakeOllama, name: str,
                                                               make: Any) -> None:
    vision.script(text("Blue."))
    async with ChatSession(user="u7", session="s7", runtime=runtime) as chat:
        path = await chat.save_upload(name, make())
        await turn(chat, "colour?", images=[path])
    [[sent]] = [images for images in request_images(vision.requests[-1]) if images]
    with Image.open(io.BytesIO(sent)) as frame:
        assert frame.format == "PNG" and frame.size == (10, 10)
        assert frame.convert("RGB").getpixel((5, 5)) == (0, 0, 255)


async def test_a_turn_without_pictures_never_asks_what_the_model_can_do(runtime: Runtime,
                                                                        fake_ollama: FakeOllama) -> None:
    fake_ollama.script(text("Hi."))
    async with ChatSession(user="u10", session="s10", runtime=runtime) as chat:
        await turn(chat, "hello")
    assert fake_ollama.shown == []  # /api/show only when a picture is involved (a down Ollama costs no extra wait)


async def test_a_model_without_vision_gets_no_images_and_the_user_is_told_once(
        runtime: Runtime, fake_ollama: FakeOllama) -> None:
    fake_ollama.capabilities["qwen3:8b"] = ["completion", "tools"]
    fake_ollama.script(text("I cannot see it."), text("Still cannot."))
    async with ChatSession(user="u8", session="s8", runtime=runtime) as chat:
        first = await chat.save_upload("a.png", png((1, 2, 3)))
        notices = [e.text for e in await turn(chat, "see?", images=[first]) if isinstance(e, Notice)]
        assert notices == ["The AI model here cannot see images; your picture is saved as /data/a.png, where "
                           "commands can work with it."]
        second = await chat.save_upload("b.png", png((4, 5, 6)))
        assert not [e for e in await turn(chat, "and now?", images=[second]) if isinstance(e, Notice)]
        assert fake_ollama.shown == ["qwen3:8b"]  # asked once, then remembered for a while
        rows = await chat.history()
    assert all("images" not in m for r in fake_ollama.requests for m in r["messages"])
    assert [r["images"] for r in rows if r["role"] == "user"] == [["/data/a.png"], ["/data/b.png"]]


async def test_a_symlink_planted_in_data_never_shows_the_model_a_host_file(
        runtime: Runtime, vision: FakeOllama, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.png"
    secret.write_bytes(png((9, 9, 9)))  # a picture that exists only on the host
    vision.script(text("First."), text("Second."))
    async with ChatSession(user="u9", session="s9", runtime=runtime) as chat:
        path = await chat.save_upload("cat.png", png((200, 100, 50)))
        await turn(chat, "look", images=[path])
        # the sandbox's root swaps the picture for a link to the host file's path
        await runtime.terminal.execute("u9", "s9", f"rm /data/cat.png && ln -s {secret} /data/cat.png")
        await turn(chat, "look again")
    again = vision.requests[-1]
    assert all(png((9, 9, 9)) not in images for images in request_images(again))
    user = [m for m in again["messages"] if m["role"] == "user"][0]
    assert "images" not in user and user["content"].endswith("[/data/cat.png is no longer a readable image in /data]")


async def test_small_text_files_are_quoted_and_others_only_named() -> None:
    saved = [("/data/notes.md", b"# Plan\nuse ``` fences\n"), ("/data/pic.png", png((1, 1, 1))),
             ("/data/big.txt", b"x" * 5000), ("/data/bin.dat", b"\x00\x01\x02")]
    composed, pictures = compose("what now?", saved, inline_limit=4096)
    assert composed.split("\n") == [
        "[uploaded: /data/notes.md, /data/pic.png, /data/big.txt, /data/bin.dat]",
        "[/data/notes.md, 22 bytes]", "````", "# Plan", "use ``` fences", "````",
        "what now?"]
    assert pictures == ["/data/pic.png"]
    assert compose("hi", saved, inline_limit=0)[0].split("\n") == [
        "[uploaded: /data/notes.md, /data/pic.png, /data/big.txt, /data/bin.dat]", "hi"]


async def test_pictures_are_checked_before_a_model_sees_them() -> None:
    from core.images import MAX_SIDE, NotAnImage, for_model
    with pytest.raises(NotAnImage):
        for_model(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # the right magic, not a picture
    with pytest.raises(NotAnImage):
        for_model(b"plain text")
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # a small file that decodes to 144 million pixels
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(NotAnImage, match="too large to look at"):
        for_model(bomb.getvalue())
    big = io.BytesIO()
    Image.new("RGB", (3000, 1500), (10, 20, 30)).save(big, format="PNG")
    with Image.open(io.BytesIO(for_model(big.getvalue()))) as fitted:
        assert fitted.format == "PNG" and fitted.size == (MAX_SIDE, MAX_SIDE // 2)
    small = png((1, 2, 3))
    assert for_model(small) == small  # already fit: sent as it is


# Prepares one picture twice in a fresh process (Pillow allocates in C, so the measure is the process's
# peak RSS, ru_maxrss, before and after) and reports what it cost and how often Pillow opened it.
PREPARE = r"""
import io, json, resource, sys
from PIL import Image
from core import images
warm = io.BytesIO()
Image.new("RGB", (3000, 10)).save(warm, format="PNG")
images.for_model(warm.getvalue())  # Pillow's plugins and codecs loaded before the measure
opened = 0
real_open = Image.open
def counting_open(*args, **kwargs):
    global opened
    opened += 1
    return real_open(*args, **kwargs)
Image.open = counting_open
data = open(sys.argv[1], "rb").read()
outcomes, opens = [], []
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(2):
    try:
        with real_open(io.BytesIO(images.prepared(data))) as fit:
            outcomes.append(f"{fit.format} {fit.size[0]}x{fit.size[1]}")
    except images.NotAnImage as exc:
        outcomes.append(f"refused: {exc}")
    opens.append(opened)
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"peak": peak, "outcomes": outcomes, "opened": opens}))
"""


def picture_file(folder: Path, kind: str, size: tuple[int, int]) -> Path:
    """A large picture that is small on disk: stripes, so that it is not one flat colour."""
    picture = Image.new("RGB", size, (30, 90, 200))
    for x in range(0, size[0], size[0] // 20):
        picture.paste((x % 256, 50, 100), (x, 0, x + size[0] // 40, size[1]))
    path = folder / f"big.{kind}"
    picture.save(path, format=kind.upper(), **({"quality": 80} if kind == "jpeg" else {}))
    return path


@pytest.mark.parametrize("kind, size, outcome", [
    ("png", (7000, 7000), "refused: the picture is 7000×7000 pixels, too large to look at: it would take 196 MB "
                          "to decode, and pictures may take at most 157 MB (40 million pixels); send a smaller one"),
    ("png", (5000, 5000), "PNG 2048x2048"),  # 100 MB decoded, reduced, resized: no full-size copy on top
    ("jpeg", (8000, 6000), "JPEG 2048x1536"),  # a 48 MP photo: libjpeg decodes it at half size (draft)
], ids=["png-7000", "png-5000", "jpeg-48mp"])
async def test_a_huge_picture_costs_bounded_memory_and_is_decoded_once(tmp_path: Path, kind: str,
                                                                       size: tuple[int, int], outcome: str) -> None:
    """Issue 16: a 190 KB PNG of 7000×7000 cost 694 MB of the bot's memory, again on every later turn."""
    path = picture_file(tmp_path, kind, size)
    assert path.stat().st_size < 2_000_000
    done = subprocess.run([sys.executable, "-c", PREPARE, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outcomes"] == [outcome, outcome]
    assert report["peak"] < 200 * 1024 ** 2, report["peak"] / 1024 ** 2
    assert report["opened"] == [1, 1]  # the second preparation came from the cache: no decode


async def test_later_turns_send_an_earlier_picture_without_decoding_it_again(
        runtime: Runtime, vision: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import images
    opened: list[object] = []
    real_open = images.Image.open

    def counting_open(*args: Any, **kwargs: Any) -> Image.Image:
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(images.Image, "open", counting_open)
    picture = png((7, 77, 177), size=(3000, 1500))  # over MAX_SIDE: made fit by decoding and resizing
    vision.script(text("Wide and blue."), text("Still blue."), text("Yes."))
    async with ChatSession(user="u12", session="s12", runtime=runtime) as chat:
        path = await chat.save_upload("wide.png", picture)
        await turn(chat, "what is this?", images=[path])
        assert len(opened) == 1
        await turn(chat, "and the colour?")
        await turn(chat, "sure?")
    assert len(opened) == 1  # decoded once, not once per turn
    sent = [shown for request in vision.requests for shown in request_images(request) if shown]
    assert len(sent) == 3 and sent[0] == sent[1] == sent[2]
    with Image.open(io.BytesIO(sent[0][0])) as fitted:
        assert fitted.size == (2048, 1024)


async def test_the_picture_cache_is_bounded_and_keeps_refusals() -> None:
    from core.images import NotAnImage, PictureCache
    cache = PictureCache(max_bytes=300_000)
    wide = [png((n, 0, 0), size=(3000, 1500)) for n in range(6)]  # each re-encoded to a PNG of a few KB
    fits = [cache.for_model(data) for data in wide]
    assert cache.prepared == 6 and cache.size <= 300_000
    assert [cache.for_model(data) for data in wide[-2:]] == fits[-2:] and cache.prepared == 6
    tiny = PictureCache(max_bytes=2 * len(fits[0]) + 200)  # room for two
    for data in wide[:3]:
        tiny.for_model(data)
    tiny.for_model(wide[0])  # the oldest went out to make room: prepared again
    assert tiny.prepared == 4 and tiny.size <= tiny.max_bytes
    for _ in range(2):
        with pytest.raises(NotAnImage, match="could not be read"):
            cache.for_model(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert cache.prepared == 7  # the refusal was remembered too
