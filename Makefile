# chatfeed: the two commands a newcomer needs are `make run` and `make test`.
.PHONY: all build run stop test verify clean

all: build

build:
	cargo build --release --bins

# Starts a local master group in the background and prints its status.
run: build
	CHATFEED_NO_BUILD=1 scripts/MasterStartup.sh
	@echo
	@target/release/chatfeed status
	@echo
	@echo "status again: target/release/chatfeed status    stop: make stop"

stop:
	scripts/stop.sh

# The whole test suite (what .ci/run calls). Release binaries first: the process tests run them.
test: build
	cargo test --workspace --all-targets

verify:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(MAKE) test

clean:
	cargo clean
