#!/usr/bin/env bash
# The Debian packages the test suite needs, installed when missing (scripts/apt-install.sh):
# iptables (cutting links between the namespace hosts of e2e/tests/it/hosts.rs) and nftables
# (packet loss). A fresh machine has neither; the namespace tests need root anyway.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" test-deps.sh iptables=iptables nft=nftables
