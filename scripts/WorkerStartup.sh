#!/usr/bin/env bash
# Starts this host's chatfeed worker pool in the background, registered with the masters, and
# waits until every worker is registered with the active master and serving.
#   scripts/WorkerStartup.sh                 masters from the file default_master_address
#   scripts/WorkerStartup.sh ADDR            masters at ADDR: comma-separated host:port (a bare
#                                            host means the configured API ports on that host)
#   scripts/WorkerStartup.sh [ADDR] --count N   N workers instead of the configured pool size
# Run again, it reports the workers already running and starts only the missing ones.
# CHATFEED_CONFIG names another configuration file (default: chatfeed.toml at the checkout's root);
# CHATFEED_BIN_DIR another directory of binaries (default: target/release, built when out of date).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="${CHATFEED_CONFIG:-$root/chatfeed.toml}"
bin_dir="${CHATFEED_BIN_DIR:-$root/target/release}"
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then
    masters="$1"
    shift
else
    if [ ! -r "$root/default_master_address" ]; then
        echo "WorkerStartup.sh: no master address given and $root/default_master_address is missing" >&2
        exit 2
    fi
    masters="$(tr -d '[:space:]' < "$root/default_master_address")"
fi
if [ -z "$masters" ]; then
    echo "WorkerStartup.sh: the master address is empty" >&2
    exit 2
fi
[ -n "${CHATFEED_BIN_DIR:-}" ] || "$root/scripts/build.sh"
exec "$bin_dir/chatfeed-worker" --config "$config" start "$@" "$masters"
