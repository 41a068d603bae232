"""A hard size for each conversation's /data: a loop-mounted ext4 image of VM_DISK bytes.

A sandbox writing past it gets ENOSPC, whatever the host's filesystem is (this
needs no quota support from the kernel, which many hosts lack). The image is a
sparse file beside the folder (`<folder>.disk`), so it takes on the host only
what is written into it; it is mounted nosuid,nodev, so nothing setuid or a
device node in it works, on the host or in the sandbox. Mounting needs root on
the machine dockerd runs on; where that is missing the caller gets a warning
line and /data is only watched (see core/runtime.py's disk watch).
"""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def image_for(folder: Path) -> Path:
    return folder.with_name(folder.name + ".disk")


def _run(*command: str) -> str | None:
    """None on success, else the command's complaint in one line."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    return (done.stderr or done.stdout).strip().splitlines()[-1][:200] if (done.stderr or done.stdout) else \
        f"{command[0]} failed ({done.returncode})"


def prepare(folder: Path, size: int) -> str | None:
    """Mount the folder's image on it (made on first use, holding what the folder had); a warning or None."""
    if os.path.ismount(folder):
        return None
    if os.geteuid() != 0:
        return "/data has no hard size (mounting its disk image needs root on the Docker host)"
    folder.mkdir(parents=True, exist_ok=True)
    image = image_for(folder)
    fresh = not image.exists()
    if fresh:
        with open(image, "wb") as handle:
            handle.truncate(size)  # sparse: costs the host only what is written
        # One inode per 4 KB: a folder of many small files fills its bytes before its inodes.
        problem = _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-i", "4096", "-E", "root_owner=0:0",
                       str(image))
        if problem:
            image.unlink(missing_ok=True)
            return f"could not make a disk image for /data: {problem}"
    if any(folder.iterdir()):  # files from before the image existed: move them in
        problem = _move_into_image(folder, image)
        if problem:
            return problem
    problem = _run("mount", "-o", "loop,nosuid,nodev", str(image), str(folder))
    if problem:
        return f"could not mount the disk image for /data: {problem}"
    if fresh:
        (folder / "lost+found").rmdir()
    return None


def _move_into_image(folder: Path, image: Path) -> str | None:
    staging = folder.with_name(folder.name + ".moving")
    staging.mkdir(exist_ok=True)
    problem = _run("mount", "-o", "loop,nosuid,nodev", str(image), str(staging))
    if problem:
        return f"could not mount the disk image for /data: {problem}"
    try:
        problem = _run("cp", "-a", f"{folder}/.", str(staging))
    finally:
        _run("umount", str(staging))
        staging.rmdir()
    if problem:
        return f"the files in /data do not fit its size, so it was left without one: {problem}"
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            _run("rm", "-rf", "--one-file-system", str(entry))
        else:
            entry.unlink()
    return None


def used_bytes(folder: Path) -> int | None:
    """What the mounted image holds (statfs: no walk); None when /data is a plain folder."""
    if not os.path.ismount(folder):
        return None
    stats = os.statvfs(folder)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def destroy(folder: Path) -> None:
    """Unmount and delete the image; the caller removes the folder."""
    if os.path.ismount(folder):
        problem = _run("umount", str(folder))
        if problem:
            log.warning("could not unmount %s: %s", folder, problem)
            return
    image_for(folder).unlink(missing_ok=True)


def unmount_under(root: Path) -> None:
    """Unmount every data image below `root` (tests and tools tidying up)."""
    if not root.exists():
        return
    prefix = str(root.resolve()) + "/"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")
        if point.startswith(prefix):
            _run("umount", "-l", point)

