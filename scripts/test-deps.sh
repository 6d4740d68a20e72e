#!/usr/bin/env bash
# Installs the Debian packages the test suite needs when they are missing: iptables (cutting links
# between the namespace hosts of e2e/tests/it/hosts.rs) and nftables (packet loss). A fresh
# machine has neither. Idempotent and quiet: it prints nothing when everything is there, runs
# `apt-get update` only when an install fails for want of a package list, and needs root (the
# namespace tests need root anyway).
set -euo pipefail

# command → Debian package that provides it.
declare -A needed=([iptables]=iptables [nft]=nftables)

# Root's tools live in sbin, which a non-login PATH may lack.
have() { command -v "$1" > /dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
missing=()
for cmd in "${!needed[@]}"; do
    have "$cmd" || missing+=("${needed[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "test-deps.sh: the tests need ${missing[*]} (for the network-namespace tests), and" \
        "installing needs root: run 'sudo apt-get install -y ${missing[*]}' or run the tests as root" >&2
    exit 1
fi
if ! command -v apt-get > /dev/null 2>&1; then
    echo "test-deps.sh: the tests need ${missing[*]}, and there is no apt-get here: install them by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
install() {
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >> "$log" 2>&1
}
# The package lists may be missing or stale on a fresh machine: update once, then try again.
if ! install && ! { apt-get update -qq >> "$log" 2>&1 && install; }; then
    echo "test-deps.sh: could not install ${missing[*]}; the end of apt-get's output:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
for cmd in "${!needed[@]}"; do
    if ! have "$cmd"; then
        echo "test-deps.sh: ${needed[$cmd]} is installed, yet '$cmd' is nowhere to be found" >&2
        exit 1
    fi
done
