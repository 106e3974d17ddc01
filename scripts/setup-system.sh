#!/usr/bin/env bash
# Installs what gotel needs from Debian and links kernel headers for bcc. Idempotent: a second run
# only checks. Runs as root on Debian 12 (bookworm).
set -euo pipefail

packages=(python3-bpfcc bpfcc-tools linux-headers-amd64 python3-venv golang-1.19-go wrk tmux)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# bcc compiles against /lib/modules/$(uname -r)/{build,source}. The running kernel ships no headers;
# Debian's generic amd64 headers work because uprobe programs do not depend on kernel structs.
kdir=/lib/modules/$(uname -r)
build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
if [ -z "$build" ] || [ -z "$common" ]; then
    echo "setup: no linux headers under /usr/src; install linux-headers-amd64" >&2
    exit 1
fi
mkdir -p "$kdir"
[ -e "$kdir/build" ] || ln -sfn "$build" "$kdir/build"
[ -e "$kdir/source" ] || ln -sfn "$common" "$kdir/source"

# tracefs is where uprobe events are listed; bcc falls back to perf_event_open without it,
# but mounting it keeps error messages useful.
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
