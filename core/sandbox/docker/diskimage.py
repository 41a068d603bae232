"""A hard size for each conversation's /data: a loop-mounted ext4 image of VM_DISK bytes.

A sandbox writing past it gets ENOSPC, whatever the host's filesystem is (this
needs no quota support from the kernel, which many hosts lack). The image is a
sparse file beside the folder (`<folder>.disk`), so it takes on the host only
what is written into it; it is mounted nosuid,nodev, so nothing setuid or a
device node in it works, on the host or in the sandbox. Mounting needs root on
the machine dockerd runs on; where that is missing the caller gets a warning
line and /data is only watched (see the disk watch, docker/watch.py).

Inodes are bounded too (mkfs -N VM_INODES: a million empty files cost the host
nothing past that). The image is mounted with `discard`, so deleting files in /data
punches holes in the image and gives the host its space back. One person's total
(USER_DISK) is kept by reserving the blocks of each of their mounted images that the
total does not allow (ext4's `reserved_clusters`, which no process can use, root
included): writes past it fail with ENOSPC, like writes past VM_DISK.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import struct
import threading
import time
from pathlib import Path

from ...config import Settings
from ..quota import UserDisk
from ..workspace import folder_usage, folders_of, session_of
from .hostmount import mounts, run

log = logging.getLogger(__name__)


def image_for(folder: Path) -> Path:
    return folder.with_name(folder.name + ".disk")


# The loop-device calls `mount -o loop` makes, made directly: mount(8) looks through every loop
# device for one already backed by the file, which grows with the number of sandboxes.
LOOP_CTL_GET_FREE, LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS64 = 0x4C82, 0x4C00, 0x4C01, 0x4C04
LOOP_MAJOR = 7
LO_FLAGS_AUTOCLEAR = 4  # the device frees itself when the filesystem is unmounted
LOOP_INFO64_SIZE, LO_FLAGS_OFFSET = 232, 52
MS_NOSUID, MS_NODEV = 2, 4
_libc = ctypes.CDLL(None, use_errno=True)


def loop_mount(image: Path, target: Path) -> None:
    """Attach `image` to a free loop device and mount it (ext4, nosuid, nodev) on `target`."""
    control = os.open("/dev/loop-control", os.O_RDWR)
    try:
        for attempt in range(20):  # another process may take the free device first
            if attempt:
                time.sleep(0.05 * attempt)
            number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            device = f"/dev/loop{number}"
            if not os.path.exists(device):  # a container's /dev holds only the devices there were at its start
                os.mknod(device, 0o660 | stat.S_IFBLK, os.makedev(LOOP_MAJOR, number))
            loop = os.open(device, os.O_RDWR)
            try:
                backing = os.open(image, os.O_RDWR)
                try:
                    fcntl.ioctl(loop, LOOP_SET_FD, backing)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        continue
                    raise
                finally:
                    os.close(backing)
                info = bytearray(LOOP_INFO64_SIZE)
                struct.pack_into("I", info, LO_FLAGS_OFFSET, LO_FLAGS_AUTOCLEAR)
                try:
                    fcntl.ioctl(loop, LOOP_SET_STATUS64, bytes(info))
                    # discard: deleted files give the host its space back (the loop device punches holes);
                    # noinit_itable: no background thread zeroes inode tables into the sparse file.
                    if _libc.mount(device.encode(), str(target).encode(), b"ext4", MS_NOSUID | MS_NODEV,
                                   b"discard,noinit_itable") != 0:
                        code = ctypes.get_errno()
                        raise OSError(code, os.strerror(code))
                except OSError:
                    fcntl.ioctl(loop, LOOP_CLR_FD, 0)
                    raise
                return
            finally:
                os.close(loop)
        raise OSError(errno.EBUSY, "no free loop device")
    finally:
        os.close(control)


_template_lock = threading.Lock()


def _template(root: Path, size: int, inodes: int) -> Path:
    """An empty filesystem of `size` bytes and `inodes` files, made once: every new image is a copy of
    it (no mkfs per sandbox)."""
    template = root / f".empty-{size}-{inodes}.disk"
    with _template_lock:
        if not template.exists():
            part = template.with_suffix(".part")
            with open(part, "wb") as handle:
                handle.truncate(size)  # sparse: costs the host only what is written
            # At most `inodes` files (VM_INODES), and never more than one per 4 KB.
            inodes = max(64, min(inodes, size // 4096))
            problem = run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-N", str(inodes),
                           "-E", "nodiscard,lazy_itable_init=1,root_owner=0:0", str(part))
            if problem:
                part.unlink(missing_ok=True)
                raise OSError(problem)
            os.replace(part, template)
    return template


def _clone(template: Path, image: Path, size: int) -> str | None:
    """Copy only the template's written blocks (about 1 MB), keeping the holes: a sparse copy."""
    try:
        with open(template, "rb") as source, open(image, "wb") as target:
            target.truncate(size)
            offset = 0
            while True:
                try:
                    start = os.lseek(source.fileno(), offset, os.SEEK_DATA)
                except OSError:  # no data after offset
                    break
                end = os.lseek(source.fileno(), start, os.SEEK_HOLE)
                source.seek(start)
                target.seek(start)
                target.write(source.read(end - start))
                offset = end
    except OSError as exc:
        return str(exc)
    return None


def prepare(folder: Path, size: int, inodes: int) -> str | None:
    """Mount the folder's image on it (made on first use, holding what the folder had); a warning or None."""
    if os.path.ismount(folder):
        return None
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        folder.mkdir(parents=True, exist_ok=True)
        return "/data has no hard size (mounting its disk image needs root and loop devices on the Docker host)"
    folder.mkdir(parents=True, exist_ok=True)
    image = image_for(folder)
    fresh = not image.exists()
    if not fresh and attached(image):
        # Still in use through another loop device (a sandbox's own view of it, a lazy unmount): a second
        # mount of the same ext4 would corrupt it. The caller tries again later; nothing is mounted.
        raise DiskBusy(f"{image.name} is still attached to a loop device")
    if fresh:
        problem = _clone(_template(folder.parent.parent, size, inodes), image, size)
        if problem:
            image.unlink(missing_ok=True)
            return f"could not make a disk image for /data: {problem}"
    if any(folder.iterdir()):  # files from before the image existed: move them in
        problem = _move_into_image(folder, image)
        if problem:
            return problem
    try:
        loop_mount(image, folder)
    except OSError as exc:
        return f"could not mount the disk image for /data: {exc}"
    if fresh:
        (folder / "lost+found").rmdir()
    return None


class DiskBusy(OSError):
    """The image is attached to a loop device already: mounting it again would corrupt it."""


def attached(image: Path) -> bool:
    """Some loop device is backed by `image` now."""
    target = str(image.resolve())
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip() == target:
                return True
        except OSError:
            continue
    return False


def _move_into_image(folder: Path, image: Path) -> str | None:
    staging = folder.with_name(folder.name + ".moving")
    staging.mkdir(exist_ok=True)
    try:
        loop_mount(image, staging)
    except OSError as exc:
        return f"could not mount the disk image for /data: {exc}"
    try:
        problem = run("cp", "-a", f"{folder}/.", str(staging))
    finally:
        run("umount", str(staging))
        staging.rmdir()
    if problem:
        return f"the files in /data do not fit its size, so it was left without one: {problem}"
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            run("rm", "-rf", "--one-file-system", str(entry))
        else:
            entry.unlink()
    return None


def used_bytes(folder: Path) -> int | None:
    """What the mounted image holds (statfs: no walk); None when /data is a plain folder."""
    used = usage(folder)
    return None if used is None else used[0]


def usage(folder: Path) -> tuple[int, int] | None:
    """(bytes, files) the mounted image holds, from statfs (no walk); None when it is not mounted."""
    if not os.path.ismount(folder):
        return None
    stats = os.statvfs(folder)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize, stats.f_files - stats.f_ffree


def image_bytes(folder: Path) -> int:
    """What the folder's image takes on the host while it is not mounted (its allocated blocks:
    with `discard`, deleted files are not counted)."""
    try:
        return os.stat(image_for(folder)).st_blocks * 512
    except OSError:
        return 0


def _reserve_file(folder: Path) -> Path | None:
    """/sys/fs/ext4/<loop device>/reserved_clusters of the image mounted on `folder`."""
    try:
        device = os.stat(folder).st_dev
        name = os.path.basename(os.path.realpath(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}"))
    except OSError:
        return None
    path = Path("/sys/fs/ext4") / name / "reserved_clusters"
    return path if path.exists() else None


def limit_free(folder: Path, allowance: int | None) -> bool:
    """Let the mounted image take at most `allowance` more bytes (None: up to its own size), by
    reserving the rest of its free blocks; False when this host cannot (not mounted, no sysfs)."""
    reserve = _reserve_file(folder)
    if reserve is None or not os.path.ismount(folder):
        return False
    stats = os.statvfs(folder)
    blocks = stats.f_blocks
    free = stats.f_bfree
    floor = min(blocks // 50, 4096)  # what ext4 keeps back by itself, for its own metadata
    wanted = floor if allowance is None else max(floor, free - max(0, allowance) // stats.f_frsize)
    wanted = min(wanted, blocks - 1)  # the kernel refuses anything from the image's size up
    try:
        reserve.write_text(str(wanted))
    except OSError as exc:
        log.debug("could not reserve blocks on %s: %s", folder, exc)
        return False
    return True


def release(folder: Path) -> str | None:
    """Unmount the folder's image, keeping it (its sandbox is gone); a problem line or None."""
    if not os.path.ismount(folder):
        return None
    return run("umount", str(folder))


def mounted_under(root: Path) -> list[Path]:
    """The data images mounted below `root`."""
    prefix = str(root.resolve()) + "/"
    return [Path(point) for point, _options in mounts() if point.startswith(prefix)]


def destroy(folder: Path) -> None:
    """Unmount and delete the image; the caller removes the folder."""
    if os.path.ismount(folder):
        problem = run("umount", str(folder))
        if problem:
            log.warning("could not unmount %s: %s", folder, problem)
            return
    image_for(folder).unlink(missing_ok=True)


def unmount_under(root: Path) -> None:
    """Unmount every data image below `root` (tests and tools tidying up)."""
    if not root.exists():
        return
    prefix = str(root.resolve()) + "/"
    for point, _options in mounts():
        if point.startswith(prefix):
            run("umount", "-l", point)


# -- one person's images together: USER_DISK ---------------------------------------------------
def folder_bytes(folder: Path, unmeasured: int) -> int:
    """What one /data holds on the host: statfs of its mounted image, its image's blocks, or a walk;
    `unmeasured` for a plain folder too large to walk in time (a hostile tree hides nothing)."""
    used = used_bytes(folder)
    if used is not None:
        return used
    if image_for(folder).exists():
        return image_bytes(folder)
    try:
        return folder_usage(folder)
    except Exception:  # noqa: BLE001 - a tree too large to walk in time counts as its limit
        return unmeasured


def user_disk(user_root: Path, settings: Settings) -> UserDisk:
    """One person's total. Blocking (statfs and stats; a walk only for folders without an image)."""
    return UserDisk(settings.user_disk_limit, [(session_of(f), folder_bytes(f, settings.vm_disk))
                                                for f in folders_of(user_root)])


_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _person_lock(user_root: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(user_root, threading.Lock())


def rebalance(user_root: Path, settings: Settings, active: frozenset[Path] = frozenset()) -> UserDisk:
    """Share out what USER_DISK leaves this person among their mounted images, so that all of them
    together can never hold more: the conversations at work now (`active`) get equal shares, the
    others none until they are at work again. Blocking: run it off the loop."""
    with _person_lock(user_root):  # two conversations starting at once must not both get what is left
        return _rebalance(user_root, settings, active)


def _rebalance(user_root: Path, settings: Settings, active: frozenset[Path]) -> UserDisk:
    disk = user_disk(user_root, settings)
    mounted = [f for f in folders_of(user_root) if os.path.ismount(f)]
    if not mounted:
        return disk
    left = max(0, disk.limit - disk.total)
    room = sum(max(0, settings.vm_disk - (used_bytes(f) or 0)) for f in mounted)
    working = [f for f in mounted if f in active] or mounted
    for folder in mounted:
        if room <= left:  # nothing could go over: no reservation at all
            limit_free(folder, None)
        else:
            limit_free(folder, left // len(working) if folder in working else 0)
    return disk
