#!/usr/bin/env bash
# Builds the release binaries when a script needs them (a no-op when they are up to date).
# CHATFEED_NO_BUILD=1 skips it, for test harnesses that built already.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "${CHATFEED_NO_BUILD:-0}" = 1 ] && exit 0
cd "$root"
cargo build --release --quiet --bins
