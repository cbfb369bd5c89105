#!/usr/bin/env bash
# Makes sure `.tools/bin/promtool` exists: Debian's `prometheus` package has it (the alert rules
# are checked and unit-tested with it). The package is downloaded and unpacked (`apt-get download`
# + `dpkg -x`), never installed: installing it would start a Prometheus server from its init
# script, and nothing of the package runs here but promtool. Idempotent.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO_ROOT/.tools"
PROMTOOL="$TOOLS/bin/promtool"
PACKAGE=prometheus

die() { echo "ensure-promtool: $*" >&2; exit 1; }

if [ -x "$PROMTOOL" ] && "$PROMTOOL" --version >/dev/null 2>&1; then
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get is not available; put a promtool binary at $PROMTOOL"
command -v dpkg >/dev/null 2>&1 || die "dpkg is not available; put a promtool binary at $PROMTOOL"

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# `apt-get download` writes into the current directory; the _apt sandbox user must be able to.
chmod 755 "$work"
cd "$work"

download() { apt-get download -qq "$PACKAGE" >/dev/null 2>&1; }
if ! download; then
  # A fresh machine may have no package lists yet.
  echo "ensure-promtool: refreshing the apt package lists..."
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    $SUDO apt-get update -qq
  fi
  download || die "apt-get download $PACKAGE failed (no Debian repository with '$PACKAGE'?)"
fi

deb="$(ls "$work"/"$PACKAGE"_*.deb)"
dpkg -x "$deb" "$work/root"
[ -x "$work/root/usr/bin/promtool" ] || die "$deb has no usr/bin/promtool"
mkdir -p "$TOOLS/bin"
install -m 0755 "$work/root/usr/bin/promtool" "$PROMTOOL"
"$PROMTOOL" --version 2>&1 | head -n1
