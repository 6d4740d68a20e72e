# chatfeed: the two commands a newcomer needs are `make run` and `make test`.
.PHONY: all build run stop test verify clean soak bench

all: build

build:
	cargo build --release --bins

# Starts a local cluster in the background (3 masters, a pool of 3 workers) and prints its status.
run: build
	CHATFEED_NO_BUILD=1 scripts/MasterStartup.sh
	CHATFEED_NO_BUILD=1 scripts/WorkerStartup.sh
	@echo
	@target/release/chatfeed status
	@echo
	@echo "Start a client:  scripts/ClientStartup.sh <user>  (asks for the password; a new user chooses it)      Stop everything:  make stop"

# Stops every process this checkout started (by the pid files in run/).
stop:
	scripts/stop.sh

# The whole test suite (what .ci/run calls). The process tests run the debug binaries it builds;
# the bench's own tests start a real etcd (scripts/bench-deps.sh installs it).
test:
	scripts/test-deps.sh
	scripts/bench-deps.sh
	cargo test --workspace --all-targets

# The fault-injection soak: SECS seconds of seeded faults (kill -9 of masters and workers, a
# stopped leader; with HOSTS=1 across network-namespace hosts, also partitions, packet loss and
# delay) under posting and streaming clients, a full restart, then the history checker; prints a
# line per fault and a final report. RAFT=relaxed runs the test suite's timing; CANARIES=1 adds
# the deliberately broken streams the checker must catch; KEEP_LOGS=1 keeps the processes' logs of
# a run that passes too (a failed run always keeps them). HOSTS=1 needs root (scripts/test-deps.sh
# installs iptables and nftables).
SECS ?= 300
SEED ?= 1
RAFT ?= default
soak:
	$(if $(HOSTS),scripts/test-deps.sh)
	cargo build --release --bins
	cargo run --release -p chatfeed-e2e --example soak -- --secs $(SECS) --seed $(SEED) --raft $(RAFT) $(if $(HOSTS),--hosts) $(if $(CANARIES),--canaries) $(if $(KEEP_LOGS),--keep-logs)

# The benchmark suite (issue 5): starts its own local cluster from the release binaries (or, with
# MASTER=host:port,..., measures a running one without killing anything), runs the scenarios,
# checks every answer, prints a table with the targets and writes bench/results/<time>.json and
# latest.json. QUICK=1: about a minute. ONLY=throughput,fanout,...: some scenarios. PLAINTEXT=1:
# without TLS, to compare with the default (TLS) figures. COMPARE=N: N runs of each mode,
# alternated, and the medians of TLS against plaintext (issue 6). KEEP_LOGS=dir: copy the
# cluster's logs there at the end. PEER=etcd (issue 19): then the throughput and fan-out against
# a three-member etcd on this machine in the same mode (scripts/bench-deps.sh installs Debian's
# etcd-server), each figure for both and the ratio; with COMPARE=N, N alternated rounds of
# chatfeed and etcd (in the mode PLAINTEXT chooses) and the medians.
bench:
	$(if $(PEER),scripts/bench-deps.sh)
	cargo build --release --bins
	target/release/chatfeed-bench $(if $(QUICK),--quick) $(if $(MASTER),--master $(MASTER)) $(if $(ONLY),--only $(ONLY)) $(if $(PLAINTEXT),--plaintext) $(if $(COMPARE),--compare $(COMPARE)) $(if $(KEEP_LOGS),--keep-logs $(KEEP_LOGS)) $(if $(PEER),--peer $(PEER))

verify:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(MAKE) test

clean:
	cargo clean
