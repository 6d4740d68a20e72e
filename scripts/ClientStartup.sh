#!/usr/bin/env bash
# An interactive chatfeed session for a user (docs/semantics.md §1, §2).
#   scripts/ClientStartup.sh user [addr]
# addr: the masters' endpoints, comma-separated host:port; a bare host means the default ports on
# that host (default: the file default_master_address at the checkout's root).
# CHATFEED_BIN_DIR names another directory of binaries (default: target/release, built when out of
# date). The client verifies the cluster with the CA of CHATFEED_CONFIG's [tls] (default:
# chatfeed.toml at the checkout's root); CHATFEED_CA names the CA file instead. A plaintext
# cluster needs CHATFEED_PLAINTEXT=1 (the client says so on stderr): a configuration saying
# [tls] mode = "plaintext" is not enough.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ] || [ $# -gt 2 ] || [ -z "$1" ]; then
    echo "usage: $0 user [addr]" >&2
    exit 2
fi
bin_dir="${CHATFEED_BIN_DIR:-$root/target/release}"
[ -n "${CHATFEED_BIN_DIR:-}" ] || "$root/scripts/build.sh"
args=(--user "$1")
if [ $# -eq 2 ]; then
    args+=(--master "$2")
fi
export CHATFEED_CONFIG="${CHATFEED_CONFIG:-$root/chatfeed.toml}"
exec "$bin_dir/chatfeed" "${args[@]}"
