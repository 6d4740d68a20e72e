#!/usr/bin/env bash
# Installs the Debian packages a script of the project needs, when the commands they provide are
# missing: `apt-install.sh WHO cmd=package ...` (WHO names the caller in messages). Idempotent and
# quiet: it prints nothing when everything is there, runs `apt-get update` only when an install
# fails for want of a package list, and needs root to install. A package's own service is not
# started by the install (a policy-rc.d that denies it, for the install only, when the machine has
# none): the project needs the binaries, not system daemons.
set -euo pipefail

who="$1"
shift
declare -A needed=()
for pair in "$@"; do
    needed[${pair%%=*}]=${pair#*=}
done

# Root's tools live in sbin, which a non-login PATH may lack.
have() { command -v "$1" > /dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
missing=()
for cmd in "${!needed[@]}"; do
    have "$cmd" || missing+=("${needed[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "$who: needs ${missing[*]}, and installing needs root: run" \
        "'sudo apt-get install -y ${missing[*]}' or run it as root" >&2
    exit 1
fi
if ! command -v apt-get > /dev/null 2>&1; then
    echo "$who: needs ${missing[*]}, and there is no apt-get here: install them by hand" >&2
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
    echo "$who: could not install ${missing[*]}; the end of apt-get's output:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
for cmd in "${!needed[@]}"; do
    if ! have "$cmd"; then
        echo "$who: ${needed[$cmd]} is installed, yet '$cmd' is nowhere to be found" >&2
        exit 1
    fi
done
