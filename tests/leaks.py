"""What a test run leaves on the host: mounts, loop devices, test containers and networks.

tests/conftest.py takes a census before the session and after it, prints both, and in CI fails
the run when something the tests own grew. Other processes on the machine (another test run,
the system) mount, attach loop devices and start containers too, so only what can be told to be
this run's is compared; the totals are shown alongside, for a person to read:

- mounts: those below this run's pytest base folder;
- loop devices: those whose image lies below the base folder, and those on a deleted image that
  were not so before, unless the image lay below another pytest run's base folder;
- containers and networks labelled `llmbot.app=llmt…` (the tests' prefix) that were not there
  before, unless they are another pytest run's (a container whose /data lies below another run's
  base folder, a network of such a container's prefix).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

TEST_LABEL = "llmbot.app"
TEST_PREFIX = "llmt"
DELETED = " (deleted)"
# A pytest run's own base folder: /tmp/pytest-of-<user>/pytest-<n>
_BASETEMP = re.compile(r"/pytest-of-[^/]+/pytest-\d+(?=/|$)")

# What is compared (in CI, growth fails the run); the rest is shown only.
COMPARED = ("mounts below basetemp", "loop devices of this run", "test containers of this run",
            "test networks of this run")
Counts = Mapping[str, "int | None"]


@dataclass
class Snapshot:
    """The host as seen at one moment. None for Docker's part when the engine could not be asked."""

    mounts: list[str] = field(default_factory=list)  # mount points of this mount namespace
    loops: dict[str, str] = field(default_factory=dict)  # attached loop device -> its backing file
    containers: dict[str, tuple[str, list[str]]] | None = None  # id -> (llmbot.app label, mount sources)
    networks: dict[str, str] | None = None  # id -> llmbot.app label


def _unescape(path: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline and backslash in octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def read_mounts(mountinfo: str) -> list[str]:
    return [_unescape(line.split(" ")[4]) for line in mountinfo.splitlines() if line.count(" ") >= 4]


def read_loops(sys_block: Path = Path("/sys/block")) -> dict[str, str]:
    loops = {}
    for backing in sys_block.glob("loop*/loop/backing_file"):
        try:
            loops[backing.parent.parent.name] = backing.read_text().rstrip("\n")
        except OSError:
            pass  # detached meanwhile
    return loops


def read_docker() -> tuple[dict[str, tuple[str, list[str]]] | None, dict[str, str] | None]:
    """The tests' containers and networks (label llmbot.app=llmt…), or (None, None) without an engine."""
    try:
        import docker

        client = docker.from_env(timeout=20)
        try:
            containers = {
                c["Id"]: (c.get("Labels", {}).get(TEST_LABEL, ""), [m.get("Source", "") for m in c.get("Mounts") or []])
                for c in client.api.containers(all=True, filters={"label": TEST_LABEL})
                if c.get("Labels", {}).get(TEST_LABEL, "").startswith(TEST_PREFIX)}
            networks = {n["Id"]: (n.get("Labels") or {}).get(TEST_LABEL, "")
                        for n in client.api.networks(filters={"label": TEST_LABEL})
                        if (n.get("Labels") or {}).get(TEST_LABEL, "").startswith(TEST_PREFIX)}
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no engine, no socket: nothing to count there
        return None, None
    return containers, networks


def snapshot() -> Snapshot:
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        mountinfo = ""
    containers, networks = read_docker()
    return Snapshot(read_mounts(mountinfo), read_loops(), containers, networks)


def _below(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _foreign(path: str, base: str) -> bool:
    """Below another pytest run's base folder (a run going on beside this one, or an earlier one)."""
    return _BASETEMP.search(path) is not None and not _below(path, base)


def census(now: Snapshot, before: Snapshot, base: Path | str) -> dict[str, int | None]:
    """The numbers shown for `now`; those in COMPARED count what this run owns (relative to `before`)."""
    base = str(Path(base).resolve())
    deleted = {dev: f for dev, f in now.loops.items() if f.endswith(DELETED)}

    def loop_ours(dev: str, backing: str) -> bool:
        image = backing.removesuffix(DELETED)
        if _below(image, base):
            return True
        return dev in deleted and before.loops.get(dev) != backing and not _foreign(image, base)

    counts: dict[str, int | None] = {
        "mounts": len(now.mounts),
        "mounts below basetemp": sum(_below(m, base) for m in now.mounts),
        "loop devices": len(now.loops),
        "loop devices on deleted files": len(deleted),
        "loop devices of this run": sum(loop_ours(d, f) for d, f in now.loops.items()),
        "test containers": None, "test containers of this run": None,
        "test networks": None, "test networks of this run": None,
    }
    if now.containers is not None and before.containers is not None:
        foreign = {label for label, sources in now.containers.values() if any(_foreign(s, base) for s in sources)}
        counts["test containers"] = len(now.containers)
        counts["test containers of this run"] = sum(
            1 for cid, (label, sources) in now.containers.items()
            if cid not in before.containers and not any(_foreign(s, base) for s in sources))
        if now.networks is not None and before.networks is not None:
            counts["test networks"] = len(now.networks)
            counts["test networks of this run"] = sum(
                1 for nid, label in now.networks.items() if nid not in before.networks and label not in foreign)
    return counts


def grown(before: Counts, after: Counts, compared: tuple[str, ...] = COMPARED) -> list[str]:
    """One line per compared number that is higher after than before (unknown numbers are skipped)."""
    lines = []
    for name in compared:
        was, now = before.get(name), after.get(name)
        if was is not None and now is not None and now > was:
            lines.append(f"{name}: {was} before, {now} after")
    return lines


def report(before: Counts, after: Counts) -> list[str]:
    """Before and after, one line per number; compared ones marked."""
    def shown(value: int | None) -> str:
        return "?" if value is None else str(value)

    return [f"{'*' if name in COMPARED else ' '} {name}: {shown(before.get(name))} -> {shown(after.get(name))}"
            for name in after]
