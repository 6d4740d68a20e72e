#!/usr/bin/env bash
# Shows that the fault-injection suite catches a broken product. Builds this checkout's HEAD with
# one of the deliberately broken changes of e2e/broken/ applied, in a scratch worktree (this
# checkout is left as it is), runs the fault-injection soak on that build and expects the checker
# to fail it with a report naming the fault. Exits 0 when the checker caught the breakage, 1 when
# the broken build passed (the suite would have missed it).
#
#   scripts/broken-build.sh drop   [SECS] [SEED] [--hosts]   a worker that drops one post in 100
#   scripts/broken-build.sh replay [SECS] [SEED] [--hosts]   a stream that replays its last post on resume
#
# The broken build goes to target/broken/ (kept between runs, so later runs build quickly).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
kind="${1:-}"
secs="${2:-25}"
seed="${3:-2}"
hosts="${4:-}"
case "$kind" in
    drop) patch="$repo/e2e/broken/drop-one-in-100.patch" ;;
    replay) patch="$repo/e2e/broken/replay-on-resume.patch" ;;
    *)
        echo "usage: $0 drop|replay [SECS] [SEED] [--hosts]" >&2
        exit 2
        ;;
esac
if [ -n "$hosts" ] && [ "$hosts" != "--hosts" ]; then
    echo "$0: the fourth argument can only be --hosts, not '$hosts'" >&2
    exit 2
fi

scratch="$(mktemp -d /tmp/chatfeed-broken-XXXXXX)"
cleanup() {
    git -C "$repo" worktree remove --force "$scratch" >/dev/null 2>&1 || rm -rf "$scratch"
}
trap cleanup EXIT

echo "broken build: $(basename "$patch") on $(git -C "$repo" rev-parse --short HEAD), in $scratch"
git -C "$repo" worktree add --quiet --detach "$scratch" HEAD
git -C "$scratch" apply "$patch"
export CARGO_TARGET_DIR="$repo/target/broken"
(cd "$scratch" && cargo build --release --bins && cargo build --release -p chatfeed-e2e --example soak)

echo "running the fault-injection soak on it: --secs $secs --seed $seed $hosts"
set +e
(cd "$scratch" && "$CARGO_TARGET_DIR/release/examples/soak" --secs "$secs" --seed "$seed" $hosts)
status=$?
set -e
if [ "$status" -eq 1 ]; then
    echo "the checker failed the broken build (as it must): see the VIOLATIONS above"
    exit 0
fi
echo "the broken build was NOT caught (soak exit status $status)" >&2
exit 1
