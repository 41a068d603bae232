#!/usr/bin/env bash
# A pristine Debian 12 root (debootstrap minbase: no Python at all), for the test that runs README's
# run command on a fresh machine. Built once; tests mount it read-only under an overlay.
# Usage: bash tests/images/fresh-debian.sh [dir]
set -euo pipefail
root="${1:-/var/cache/llmbot/fresh-debian}"
if [ -x "$root/usr/bin/apt-get" ]; then
  echo "fresh Debian root at $root"
  exit 0
fi
command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
rm -rf "$root.partial"
mkdir -p "$(dirname "$root")"
debootstrap --variant=minbase bookworm "$root.partial" http://deb.debian.org/debian >/dev/null
mv "$root.partial" "$root"
echo "built a fresh Debian root at $root"
