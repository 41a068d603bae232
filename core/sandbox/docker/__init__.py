"""The Docker provider: one persistent, locked-down container per conversation, on one engine.

provider.py (DockerProvider, DockerSandbox), naming.py (names, labels, folders), engine.py (the
client and the private aiodocker calls), archive.py (tar in and out), watch.py (the disk watch),
diskimage.py (/data's loop-mounted images, USER_DISK), hostmount.py (host mounts, the bot in a
container), busybox.py (the bot's static busybox, mounted into every sandbox).
"""
from .provider import DockerProvider, DockerSandbox

__all__ = ["DockerProvider", "DockerSandbox"]
