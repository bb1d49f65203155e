#!/usr/bin/env bash
# Fetches promtool (Prometheus 2.42, Debian's build) into .cache/promtool/ and prints its path. The chart's tests run
# `promtool check rules` and `promtool test rules` on the alerts.
# Only the .deb is downloaded and promtool taken out of it: installing the package would start a Prometheus server.
# Nothing is committed; a second run reuses the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=.cache/promtool
if [[ ! -x $cache/promtool ]]; then
  echo "==> fetching promtool from Debian's prometheus package" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # apt-get download needs the package lists; a fresh machine may not have them yet.
  (cd "$work" && apt-get download prometheus >/dev/null 2>&1) ||
    { apt-get update -qq && (cd "$work" && apt-get download prometheus >/dev/null 2>&1); }
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  mkdir -p "$cache"
  cp "$work/root/usr/bin/promtool" "$cache/promtool"
fi
"$cache/promtool" --version 2>&1 | head -1 >&2
echo "$PWD/$cache/promtool"
