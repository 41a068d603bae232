"""The test suite's own leak check (tests/leaks.py, run by tests/conftest.py around every session)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import require
from tests.leaks import COMPARED, Snapshot, census, grown, read_loops, read_mounts, report

BASE = "/tmp/pytest-of-ci/pytest-7"
OTHER_RUN = "/tmp/pytest-of-ci/pytest-8"
REPO = Path(__file__).resolve().parent.parent


def test_only_compared_numbers_that_grew_are_reported() -> None:
    before = {"mounts": 10, "mounts below basetemp": 0, "loop devices": 3, "loop devices of this run": 0,
              "test containers of this run": 0, "test networks of this run": None}
    after = {"mounts": 40, "mounts below basetemp": 2, "loop devices": 9, "loop devices of this run": 0,
             "test containers of this run": 1, "test networks of this run": 4}
    assert grown(before, after) == ["mounts below basetemp: 0 before, 2 after",
                                    "test containers of this run: 0 before, 1 after"]
    assert grown(before, before) == []
    assert grown(after, before) == []  # fewer is fine: the run cleaned up what others left
    assert "mounts" not in COMPARED and "loop devices" not in COMPARED  # other processes change those


def test_report_shows_every_number_and_marks_the_compared_ones() -> None:
    lines = report({"mounts": 1, "mounts below basetemp": 0}, {"mounts": 2, "mounts below basetemp": None})
    assert lines == ["  mounts: 1 -> 2", "* mounts below basetemp: 0 -> ?"]


def test_mounts_are_counted_below_the_base_folder_only() -> None:
    start = Snapshot(mounts=["/", "/proc", f"{OTHER_RUN}/t0/uploads/a/b"])
    end = Snapshot(mounts=[*start.mounts, f"{BASE}/test_x0/uploads/a/b", f"{BASE}-9/elsewhere", "/mnt/other"])
    assert census(start, start, BASE)["mounts below basetemp"] == 0
    counts = census(end, start, BASE)
    assert counts["mounts"] == 6 and counts["mounts below basetemp"] == 1


def test_loop_devices_of_this_run_and_not_of_others() -> None:
    start = Snapshot(loops={
        "loop0": "/var/lib/images/vm.img",
        "loop1": "/srv/old.disk (deleted)",  # deleted before the session: not this run's
        "loop2": "/srv/data.disk",  # deleted during the session: counted
        "loop5": "/srv/reused.disk"})
    end = Snapshot(loops={
        "loop0": "/var/lib/images/vm.img",
        "loop1": "/srv/old.disk (deleted)",
        "loop2": "/srv/data.disk (deleted)",
        "loop3": f"{BASE}/test_a0/uploads/u/s.disk",  # below the base folder, still there: counted
        "loop4": f"{BASE}/test_b0/uploads/u/s.disk (deleted)",  # counted
        "loop5": "/app/data/u/s.disk (deleted)",  # the device was reused for a deleted image: counted
        "loop6": f"{OTHER_RUN}/test_c0/uploads/u/s.disk (deleted)",  # another pytest run's
        "loop7": "/home/someone/disk.img",  # someone else attached it, the image is there
    })
    assert census(start, start, BASE)["loop devices of this run"] == 0
    counts = census(end, start, BASE)
    assert counts["loop devices"] == 8
    assert counts["loop devices on deleted files"] == 5
    assert counts["loop devices of this run"] == 4


def test_containers_and_networks_new_since_the_start_and_not_of_another_run() -> None:
    start = Snapshot(containers={"old": ("llmtaaaa", [f"/tmp/pytest-of-ci/pytest-3/t/uploads/u/s"])},
                     networks={"oldnet": "llmtaaaa"})
    end = Snapshot(
        containers={"old": start.containers["old"],
                    "mine": ("llmtbbbb", [f"{BASE}/test_a0/uploads/u/s"]),
                    "compose": ("llmtcccc", ["/var/run/docker.sock"]),
                    "theirs": ("llmtdddd", [f"{OTHER_RUN}/test_b0/uploads/u/s"])},
        networks={"oldnet": "llmtaaaa", "n1": "llmtbbbb", "n2": "llmtdddd"})
    assert census(start, start, BASE)["test containers of this run"] == 0
    counts = census(end, start, BASE)
    assert counts["test containers"] == 4 and counts["test containers of this run"] == 2
    assert counts["test networks"] == 3 and counts["test networks of this run"] == 1


def test_docker_unknown_is_not_compared() -> None:
    start = Snapshot()
    end = Snapshot(containers={"c": ("llmtx", [])}, networks={})
    counts = census(end, start, BASE)
    assert counts["test containers of this run"] is None and counts["test networks of this run"] is None
    assert grown(census(start, start, BASE), counts) == []


def test_mountinfo_and_sysfs_are_read_as_the_kernel_writes_them(tmp_path: Path) -> None:
    mountinfo = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                 "310 22 7:3 / /tmp/a\\040b/c\\134d rw,nosuid shared:2 - ext4 /dev/loop3 rw\n")
    assert read_mounts(mountinfo) == ["/", "/tmp/a b/c\\d"]
    (tmp_path / "loop0" / "loop").mkdir(parents=True)
    (tmp_path / "loop0" / "loop" / "backing_file").write_text("/tmp/x.disk (deleted)\n")
    (tmp_path / "loop1").mkdir()  # a loop device with nothing attached has no loop/ folder
    (tmp_path / "sda").mkdir()
    assert read_loops(tmp_path) == {"loop0": "/tmp/x.disk (deleted)"}


def test_a_run_that_leaves_a_mount_fails_in_ci_and_says_so(tmp_path: Path) -> None:
    """A whole pytest run through the real hooks: a test leaves a mount below the base folder."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "test_leaky.py").write_text(textwrap.dedent("""
        import subprocess

        def test_leaves_a_mount(tmp_path_factory):
            point = tmp_path_factory.mktemp("left")
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "leak", str(point)], check=True)
    """))
    base = tmp_path / "base"

    def run(ci: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "CI"} | {"LEAK_GRACE_SECONDS": "1"} | ({"CI": ci} if ci else {})
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                               "--basetemp", str(base), str(probe / "test_leaky.py")],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    def unmount() -> None:
        for point in read_mounts(Path("/proc/self/mountinfo").read_text()):
            if point.startswith(str(base) + "/"):
                subprocess.run(["umount", "-l", point], check=False)

    try:
        done = run("1")
        if "Permission denied" in done.stdout + done.stderr or "must be superuser" in done.stdout + done.stderr:
            require("needs the right to mount (root), as the /data disk images do")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "1 passed" in done.stdout
        assert "* mounts below basetemp: 0 -> 1" in done.stdout
        assert "LEFT BEHIND: mounts below basetemp: 0 before, 1 after (fails the run: CI is set)" in done.stdout
        unmount()
        done = run("")  # outside CI the same run passes, and still says what it left
        assert done.returncode == 0, done.stdout + done.stderr
        assert "LEFT BEHIND: mounts below basetemp: 0 before, 1 after" in done.stdout
        assert "fails the run" not in done.stdout
    finally:
        unmount()
