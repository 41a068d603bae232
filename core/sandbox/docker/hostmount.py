"""Keep setuid and device files written into /data powerless on the host.

A sandbox's root can `chmod 4755` a file in /data, and /data is a folder of this
machine. Docker 20.10's bind mounts take no nosuid option, but a bind mount
inherits the flags of the mount it comes from: so UPLOAD_DIR is made a mount of
its own with nosuid,nodev (a bind mount onto itself), and every sandbox's /data
under it carries both flags. That needs root on the machine dockerd runs on;
elsewhere the operator does it once (docs/security.md).
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def mounts() -> list[tuple[str, set[str]]]:
    """Every mount point of this process with its options, from /proc/self/mounts."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    table = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4:
            table.append((fields[1].encode().decode("unicode_escape"), set(fields[3].split(","))))  # \040: space
    return table


def run(*command: str) -> str | None:
    """Run a mount-type command: None on success, else its complaint in one line."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    said = (done.stderr or done.stdout).strip()
    return said.splitlines()[-1][:200] if said else f"{command[0]} failed ({done.returncode})"


def mount_flags(path: Path) -> set[str] | None:
    """The options of the mount that holds `path` (the longest mount point above it), or None."""
    best: tuple[int, set[str]] | None = None
    target = str(path.resolve())
    for point, options in mounts():
        if target == point or target.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= best[0]:
                best = (len(point), options)
    return best[1] if best else None


def ensure_nosuid(path: Path) -> str | None:
    """Make `path` a nosuid,nodev mount if it is not on one; a warning line when that cannot be done."""
    flags = mount_flags(path)
    if flags is not None and {"nosuid", "nodev"} <= flags:
        return None
    if sys.platform != "linux" or os.geteuid() != 0:
        return (f"{path} is not on a nosuid,nodev mount and this process cannot make it one (not root): "
                "see docs/security.md to do it once on the host")
    target = str(path)
    for command in (["mount", "--bind", target, target],
                    ["mount", "-o", "remount,bind,nosuid,nodev", target]):
        problem = run(*command)
        if problem:
            return f"could not make {path} a nosuid,nodev mount ({problem}): see docs/security.md"
    log.info("mounted %s onto itself with nosuid,nodev", path)
    return None


def propagates(path: Path) -> bool:
    """The mount holding `path` shares its submounts with its peers (rshared): a disk image the bot
    mounts below it, inside its container, is then seen by the host's Docker engine too."""
    best: tuple[int, bool] | None = None
    target = str(path.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) < 7:
            continue
        point = fields[4].encode().decode("unicode_escape")
        optional = fields[6:fields.index("-")] if "-" in fields else []
        if target == point or target.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= best[0]:
                best = (len(point), any(o.startswith("shared:") for o in optional))
    return bool(best and best[1])


# -- the bot in a container: where the host keeps UPLOAD_DIR ---------------------------------
_CONTAINER_FILE = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)\b")


def own_container_id(mountinfo: str, hostname: str) -> str | None:
    """This process's container id, when it runs in a Docker container: the engine bind-mounts
    /etc/hostname from the container's own folder (/var/lib/docker/containers/<id>/hostname);
    failing that, a default hostname is the id's first 12 hex digits."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
            match = _CONTAINER_FILE.search(fields[3])
            if match:
                return match.group(1)
    return hostname if re.fullmatch(r"[0-9a-f]{12}", hostname) else None


def host_path(mounts: list[dict], local: Path) -> str | None:
    """Where the engine's host keeps `local` (a path inside this container), from the container's
    Mounts as `docker inspect` lists them; None when `local` is on no mount from the host."""
    best: tuple[int, str] | None = None
    for mount in mounts:
        destination, source = mount.get("Destination", ""), mount.get("Source", "")
        if not destination or not source:
            continue
        inside = Path(destination)
        if local == inside or inside in local.parents:
            if best is None or len(destination) > best[0]:
                best = (len(destination), str(Path(source) / local.relative_to(inside)))
    return best[1] if best else None
