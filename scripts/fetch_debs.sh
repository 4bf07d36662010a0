#!/usr/bin/env bash
# Fetch the Debian packages of requirements/debs.txt, each checked against its pinned SHA-256, and
# unpack them (dpkg-deb -x, no install, no root) into <venv>/share/lesionspark/debs/. Idempotent: a
# package already unpacked from the pinned file is kept.
#   usage: scripts/fetch_debs.sh VENV      (scripts/setup.sh runs it)
#   LESIONSPARK_DEBIAN   the mirror to fetch from (default: http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: fetch_debs.sh VENV}
MIRROR=${LESIONSPARK_DEBIAN:-http://deb.debian.org/debian}
DEST="$VENV/share/lesionspark/debs"
mkdir -p "$DEST"
say() { printf '[setup] %s\n' "$*"; }
source scripts/download.sh
[ "$(uname -m)" = x86_64 ] || { say "skipping requirements/debs.txt: the pinned packages are amd64"; exit 0; }
command -v dpkg-deb >/dev/null || { echo "[setup] ERROR: dpkg-deb not found (Debian's dpkg package)" >&2; exit 1; }

while read -r pkg version sum pool; do
  case "$pkg" in ''|\#*) continue ;; esac
  stamp="$DEST/.$pkg.sha256"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then continue; fi
  deb="$DEST/$pkg.deb"
  download "$MIRROR/$pool" "$sum" "$deb" requirements/debs.txt
  dpkg-deb -x "$deb" "$DEST/root"
  rm -f "$deb"
  echo "$sum" > "$stamp"
  say "unpacked $pkg $version"
done < requirements/debs.txt
