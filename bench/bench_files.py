"""send_file against `docker cp`: handing a 5 MB file from a sandbox to the user.

    python bench/bench_files.py            # needs the Docker engine and the test image
    python bench/bench_files.py --runs 5

Each run makes a fresh 5 MB file of random bytes in the sandbox, then times
  * send_file: a whole tool call through the engine (ChatSession turn: the model asks for
    send_file, the engine reads the file through the Docker API and hands its bytes over as a
    FileReady event), minus nothing: the fake Ollama's two short answers are in the figure;
  * docker cp: `docker cp <container>:/data/blob.bin <local file>`, the operator's own way out.
The figure is the median of send_file divided by the median of docker cp, measured in the same
run on the same container.                                            target <= 1.5
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from core import ChatSession, Runtime, Settings, set_runtime  # noqa: E402
from core.sandbox.docker.diskimage import unmount_under  # noqa: E402
from core.events import FileReady  # noqa: E402
from tests.conftest import remove_containers  # noqa: E402
from tests.fake_ollama import FakeOllama, text, tool_calls  # noqa: E402

IMAGE = os.environ.get("TEST_VM_IMAGE", "llmbot-test:latest")
SIZE = 5 * 1024 * 1024
TARGET = 1.5


async def bench(runs: int) -> bool:
    with tempfile.TemporaryDirectory() as tmp_name, FakeOllama() as fake:
        tmp = Path(tmp_name)
        prefix = f"llmbench{uuid.uuid4().hex[:6]}"
        settings = Settings(ollama_host=fake.url, database_url=f"sqlite:///{tmp}/bench.db",
                            upload_dir=str(tmp / "uploads"), vm_image=IMAGE, vm_name_prefix=prefix,
                            vm_data_nosuid=False)
        rt = Runtime(settings)
        set_runtime(rt)
        engine, cli = [], []
        try:
            async with ChatSession(user="bench", session="files", runtime=rt) as chat:
                name = rt.sandboxes.name("bench", "files")
                for run in range(runs + 1):  # the first run warms both paths up and is not counted
                    made = await rt.terminal.execute("bench", "files", f"head -c {SIZE} /dev/urandom > /data/blob.bin")
                    assert made.exit_code == 0, made.stderr
                    fake.script(tool_calls(("send_file", {"path": "/data/blob.bin"})), text("Sent."))
                    started = time.perf_counter()
                    ready = [e async for e in chat.events("send it") if isinstance(e, FileReady)]
                    took_engine = time.perf_counter() - started
                    assert len(ready) == 1 and len(ready[0].data) == SIZE
                    target = tmp / f"cp-{run}.bin"
                    started = time.perf_counter()
                    subprocess.run(["docker", "cp", f"{name}:/data/blob.bin", str(target)], check=True,
                                   capture_output=True)
                    took_cli = time.perf_counter() - started
                    same = hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(ready[0].data).digest()
                    assert same, "send_file and docker cp disagree on the file's bytes"
                    target.unlink()
                    if run:
                        engine.append(took_engine)
                        cli.append(took_cli)
        finally:
            await rt.close()
            set_runtime(None)
            remove_containers(docker.from_env(), prefix)
            unmount_under(tmp)  # the sandbox's /data disk image, before the folder goes
    ratio = statistics.median(engine) / statistics.median(cli)
    print(f"send_file of a 5 MB file: median {statistics.median(engine) * 1000:.0f} ms over {runs} runs "
          f"(a whole tool call, the fake model's answers included)")
    print(f"docker cp of the same file: median {statistics.median(cli) * 1000:.0f} ms")
    ok = ratio <= TARGET
    print(f"ratio {ratio:.2f} (target <= {TARGET}) {'OK' if ok else 'MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    return 0 if asyncio.run(bench(args.runs)) else 1


if __name__ == "__main__":
    sys.exit(main())
