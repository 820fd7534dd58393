#!/usr/bin/env bash
# Puts Prometheus's promtool at $1 for the tests (`promtool check metrics`
# on a live scrape): unpacked from Debian's prometheus package rather than
# installed, which would bring the server and enable its service.
set -euo pipefail
dest=${1:?usage: $0 DEST}
[[ -x $dest ]] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null; }
dpkg-deb -x prometheus_*.deb unpacked
cd - >/dev/null
install -D -m 0755 "$tmp/unpacked/usr/bin/promtool" "$dest"
"$dest" --version | head -1
