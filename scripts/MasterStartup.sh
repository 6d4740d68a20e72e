#!/usr/bin/env bash
# Starts the chatfeed master group on this host in the background and waits for a leader.
#   scripts/MasterStartup.sh                 all members of chatfeed.toml (a fresh checkout bootstraps a new group)
#   scripts/MasterStartup.sh --node N        member N alone (one member per host)
#   scripts/MasterStartup.sh --node N --new  member N on a brand-new host: create its data directory
# Run again, it reports what is already running and starts only what is missing.
# TLS: without --node, the first start creates the cluster CA and this host's role certificates
# (member-N.pem for each member, worker.pem) in the configuration's [tls] dir (tls/) and never
# overwrites them; a tls/ of an earlier release (node.pem only) gets them from its ca.key. With
# --node (several hosts) the certificates come from `chatfeed-master certs ... --member N=NAME`
# (see the README, "Reissuing certificates").
# CHATFEED_CONFIG names another configuration file (default: chatfeed.toml at the checkout's root);
# CHATFEED_BIN_DIR another directory of binaries (default: target/release, built when out of date).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="${CHATFEED_CONFIG:-$root/chatfeed.toml}"
bin_dir="${CHATFEED_BIN_DIR:-$root/target/release}"
[ -n "${CHATFEED_BIN_DIR:-}" ] || "$root/scripts/build.sh"
exec "$bin_dir/chatfeed-master" --config "$config" start "$@"
