#!/usr/bin/env bash
# The Debian packages the test suite needs, installed when missing (scripts/apt-install.sh):
# iptables (cutting links between the namespace hosts of e2e/tests/it/hosts.rs), nftables
# (packet loss), and headless Chromium with its WebDriver (the web page's browser test). A fresh
# machine has none of them; the namespace tests need root anyway.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" test-deps.sh iptables=iptables nft=nftables \
    chromium=chromium chromedriver=chromium-driver
