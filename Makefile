# chatfeed: the two commands a newcomer needs are `make run` and `make test`.
.PHONY: all build run stop test verify clean

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
	@echo "Start a client:  scripts/ClientStartup.sh <user>      Stop everything:  make stop"

# Stops every process this checkout started (by the pid files in run/).
stop:
	scripts/stop.sh

# The whole test suite (what .ci/run calls). The process tests run the debug binaries it builds.
test:
	cargo test --workspace --all-targets

verify:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(MAKE) test

clean:
	cargo clean
