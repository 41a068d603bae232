#!/usr/bin/env bash
# Build the local sandbox image the tests use: a busybox root file system, imported
# (no registry is needed). Usage: bash tests/images/build.sh [tag]
set -euo pipefail
tag="${1:-llmbot-test:latest}"
busybox="$(command -v busybox || true)"
if [ -z "$busybox" ] || ! "$busybox" --list >/dev/null 2>&1 || ldd "$busybox" >/dev/null 2>&1; then
  busybox=/bin/busybox
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,data,etc,root,tmp,proc,sys,dev,usr/bin,usr/sbin,sbin}
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
# Debian's busybox-static has no nohup applet; the system prompt teaches `nohup CMD > log 2>&1 &`.
[ -e "$root/bin/nohup" ] || printf '#!/bin/sh\ntrap "" HUP\nexec "$@"\n' > "$root/usr/bin/nohup"
chmod +x "$root/usr/bin/nohup" 2>/dev/null || true
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
chmod 1777 "$root/tmp"
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'WORKDIR /data' - "$tag" >/dev/null
echo "built $tag"
