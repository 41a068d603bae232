"""Uploads: safe names, no clobbering, /data in the session's own container only, size caps."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core import ChatSession, Runtime, UploadError
from core.errors import WorkspaceError
from core.sandbox.workspace import list_folder
from core.uploads import safe_filename

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("raw, safe", [
    ("notes.txt", "notes.txt"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\boot.ini", "boot.ini"),
    ("/abs/path/report.pdf", "report.pdf"),
    (".hidden", "hidden"),
    ("..", "upload"),
    ("", "upload"),
    ("a\x00b\nc.txt", "abc.txt"),
    ("x" * 300 + ".csv", "x" * 116 + ".csv"),
])
async def test_safe_filename(raw: str, safe: str) -> None:
    assert safe_filename(raw) == safe


async def test_upload_lands_in_data_of_that_session_only(runtime: Runtime, tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("secret notes\n")
    async with ChatSession(user="alice", session="docs") as chat:
        path = chat.upload_document(source)
        assert path == "/data/notes.txt"
        assert (await runtime.terminal.execute("alice", "docs", f"cat {path}")).stdout == "secret notes\n"
    other = await runtime.terminal.execute("bob", "docs", "ls -A /data")
    assert other.stdout == ""
    assert not (runtime.sandboxes.data_dir("bob", "docs") / "notes.txt").exists()


async def test_no_clobbering_without_intent(runtime: Runtime, tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    async with ChatSession(user="alice", session="dup") as chat:
        source.write_text("one")
        assert chat.upload_document(source) == "/data/a.txt"
        source.write_text("two")
        assert chat.upload_document(source) == "/data/a-1.txt"
        source.write_text("three")
        assert chat.upload_document(source, overwrite=True) == "/data/a.txt"
        folder = chat.upload_folder
    assert (folder / "a.txt").read_text() == "three" and (folder / "a-1.txt").read_text() == "two"


async def test_caps_and_unreadable_files_are_refused_and_leave_nothing(runtime: Runtime, tmp_path: Path) -> None:
    runtime.uploads.max_file = 1000
    runtime.uploads.max_session = 1500
    async with ChatSession(user="alice", session="caps") as chat:
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 1001)
        with pytest.raises(UploadError, match="limit per file"):
            chat.upload_document(big)
        with pytest.raises(UploadError, match="limit per file"):
            await chat.save_upload("big.bin", [b"x" * 600, b"x" * 600])
        ok = tmp_path / "ok.bin"
        ok.write_bytes(b"y" * 900)
        chat.upload_document(ok)
        with pytest.raises(UploadError, match="uploads"):
            chat.upload_document(ok)
        with pytest.raises(UploadError, match="not a readable file"):
            chat.upload_document(tmp_path / "missing.txt")
        assert sorted(p.name for p in chat.upload_folder.iterdir()) == ["ok.bin"]


async def test_async_upload_streams_chunks(runtime: Runtime) -> None:
    async def chunks():
        for piece in (b"hello ", b"from ", b"discord"):
            yield piece

    async with ChatSession(user="alice", session="stream") as chat:
        path = await chat.save_upload("../msg.txt", chunks())
        assert path == "/data/msg.txt"
        assert (chat.upload_folder / "msg.txt").read_bytes() == b"hello from discord"


# What a sandbox's root can do to /data: swap a folder and a link to a host folder, atomically, forever.
SWAPPER = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2])
swaps = 0
def stop(*_):
    print(swaps, flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    if libc.renameat2(-100, a, -100, b, 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
    swaps += 1
"""


async def test_a_folder_swapped_for_a_link_never_lists_the_host(tmp_path: Path) -> None:
    """Issue 16: /files checked a path, then listed it by name; a swap in between listed the host's folder."""
    folder, host = tmp_path / "data", tmp_path / "host"
    (folder / "swap" / "inner").mkdir(parents=True)
    (folder / "swap" / "real.txt").write_text("mine")
    (folder / "swap" / "inner" / "deep.txt").write_text("mine too")
    (host / "inner").mkdir(parents=True)
    (host / "HOST_ONLY_id_rsa").write_text("secret")
    (host / "inner" / "HOST_ONLY_id_rsa").write_text("secret")
    (folder / "swap.tmp").symlink_to(host)
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(folder / "swap"), str(folder / "swap.tmp")],
                               stdout=subprocess.PIPE, text=True)
    listed, refused = 0, []
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == "ready\n"
        for n in range(1500):
            relative = ("swap", "swap/inner", "/swap/./inner/")[n % 3]
            try:
                entries = list_folder(folder, relative)
            except WorkspaceError as exc:
                refused.append(str(exc))
                continue
            paths = sorted(e.path for e in entries)
            assert not any("HOST_ONLY" in p for p in paths), paths
            assert paths == (["swap/inner", "swap/real.txt"] if n % 3 == 0 else ["swap/inner/deep.txt"]), paths
            listed += 1
    finally:
        swapper.terminate()
        out, _ = swapper.communicate(timeout=10)
    assert swapper.returncode == 0, out
    assert int(out) > 100  # the swap really ran all along
    assert set(refused) <= {"/data/swap is not a folder.", "/data/swap/inner is not a folder."}, set(refused)
    assert listed > 0 and refused, (listed, len(refused))  # both sides of the race were hit
    assert listed + len(refused) == 1500
