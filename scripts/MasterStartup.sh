#!/usr/bin/env bash
# Starts the chatfeed master group on this host in the background and waits for a leader.
#   scripts/MasterStartup.sh                 all members of chatfeed.toml (a fresh checkout bootstraps a new group)
#   scripts/MasterStartup.sh --node N        member N alone (one member per host)
#   scripts/MasterStartup.sh --node N --new  member N on a brand-new host: create its data directory
# Run again, it reports what is already running and starts only what is missing.
# CHATFEED_CONFIG names another configuration file (default: chatfeed.toml at the checkout's root).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="${CHATFEED_CONFIG:-$root/chatfeed.toml}"
"$root/scripts/build.sh"
exec "$root/target/release/chatfeed-master" --config "$config" start "$@"
