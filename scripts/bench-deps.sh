#!/usr/bin/env bash
# Installs the Debian packages `make bench PEER=etcd` needs when they are missing: etcd-server
# (the `etcd` binary; the bench starts a three-member etcd of its own on loopback beside
# chatfeed's cluster, issue 19). A fresh machine has none. Idempotent and quiet: it prints nothing
# when everything is there, runs `apt-get update` only when an install fails for want of a
# package list, and needs root to install. The package's own service is not started by the
# install (a policy-rc.d that denies it, for the install only, when the machine has none): the
# bench needs the binary, not a system etcd on port 2379.
set -euo pipefail

# command → Debian package that provides it.
declare -A needed=([etcd]=etcd-server)

have() { command -v "$1" > /dev/null 2>&1 || [ -x "/usr/bin/$1" ]; }
missing=()
for cmd in "${!needed[@]}"; do
    have "$cmd" || missing+=("${needed[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "bench-deps.sh: make bench PEER=etcd needs ${missing[*]} (the etcd it compares with)," \
        "and installing needs root: run 'sudo apt-get install -y ${missing[*]}' or run it as root" >&2
    exit 1
fi
if ! command -v apt-get > /dev/null 2>&1; then
    echo "bench-deps.sh: make bench PEER=etcd needs ${missing[*]}, and there is no apt-get here:" \
        "install etcd 3.4 or later by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
policy=/usr/sbin/policy-rc.d
own_policy=
cleanup() {
    rm -f "$log"
    if [ -n "$own_policy" ]; then rm -f "$policy"; fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    # 101: "action forbidden by policy": invoke-rc.d and deb-systemd-invoke start nothing.
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=1
fi
install() {
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >> "$log" 2>&1
}
# The package lists may be missing or stale on a fresh machine: update once, then try again.
if ! install && ! { apt-get update -qq >> "$log" 2>&1 && install; }; then
    echo "bench-deps.sh: could not install ${missing[*]}; the end of apt-get's output:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
for cmd in "${!needed[@]}"; do
    if ! have "$cmd"; then
        echo "bench-deps.sh: ${needed[$cmd]} is installed, yet '$cmd' is nowhere to be found" >&2
        exit 1
    fi
done
