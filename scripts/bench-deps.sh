#!/usr/bin/env bash
# The Debian packages `make bench PEER=etcd` needs, installed when missing
# (scripts/apt-install.sh): etcd-server (the `etcd` binary; the bench starts a three-member etcd
# of its own on loopback beside chatfeed's cluster). `make test` runs it too: the bench's own
# tests start a real etcd.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" bench-deps.sh etcd=etcd-server
