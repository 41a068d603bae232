#!/usr/bin/env bash
# A sandbox image with Python 3.11 and the `mcp` SDK, for the test of an MCP server run inside a
# conversation's own sandbox ("sandbox": true). Debian 12 minbase with python3 (debootstrap, cached
# under /var/cache/llmbot like fresh-debian.sh), the SDK installed into it from wheels the host's
# pip fetches once (same CPython 3.11 ABI), imported as a local image: no registry is needed.
# Usage: bash tests/images/python-mcp.sh [tag]
set -euo pipefail
tag="${1:-llmbot-test-python:latest}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
pip="${PIP:-$here/.venv/bin/pip}"
cache=/var/cache/llmbot
root="$cache/python-debian"
if [ ! -x "$root/usr/bin/python3" ]; then
  command -v debootstrap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  rm -rf "$root.partial"
  mkdir -p "$cache"
  debootstrap --variant=minbase --include=python3 bookworm "$root.partial" http://deb.debian.org/debian >/dev/null
  mv "$root.partial" "$root"
fi
site="$root/usr/local/lib/python3.11/dist-packages"
if [ ! -d "$site/mcp" ]; then
  version="$("$pip" show mcp | sed -n 's/^Version: //p')"
  mkdir -p "$cache/wheels"
  "$pip" download -q --only-binary=:all: -d "$cache/wheels" "mcp==$version"
  "$pip" install -q --no-index --find-links "$cache/wheels" --target "$site" "mcp==$version"
fi
chroot "$root" python3 -c 'import mcp.server.mcpserver'  # the SDK imports in the image's own Python
mkdir -p "$root/data"
tar -C "$root" --exclude=./proc --exclude=./sys --exclude=./dev -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'WORKDIR /data' - "$tag" >/dev/null
echo "built $tag"
