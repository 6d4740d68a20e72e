#!/usr/bin/env bash
# Replays the README's "Deploying on several hosts" steps in Linux network namespaces, as a
# reader would on real hosts: five namespaces on a private bridge (10.203.X.0/24, X unused here)
# stand for the three master hosts and the two worker hosts. Each host gets its own directory
# with only a copy of scripts/ and the files the README tells it to write (chatfeed.toml,
# default_master_address); the three release binaries are copied once and named by
# CHATFEED_BIN_DIR (step 1). The chatfeed.toml example, the check-config and status commands and
# the per-host commands of steps 4 and 5 are read from README.md itself, with 10.0.0.N replaced by
# 10.203.X.(100+N). Then it checks step 6 (three members, six workers; a post from one worker host
# seen live on a stream on the other; scripts/ClientStartup.sh), and step 7 (SIGTERM of a worker
# and of the active master, restarting them, scripts/stop.sh on every host).
#   sudo scripts/multihost-walkthrough.sh    binaries from CHATFEED_BIN_DIR (default: target/release,
#                                            built beforehand: cargo build --release --bins)
# Needs root, iproute2 and perl; no iptables. A trap kills every process in the namespaces and
# removes the namespaces, veths, bridge and temporary directory (kept with KEEP=1 or on failure).
set -euo pipefail
# Every client of the walkthrough logs in with this password (README: scripting with CHATFEED_PASSWORD).
export CHATFEED_PASSWORD="${CHATFEED_PASSWORD:-walkthrough-password}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src_bin="${CHATFEED_BIN_DIR:-$repo/target/release}"
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 2; }
for b in chatfeed-master chatfeed-worker chatfeed; do
    [ -x "$src_bin/$b" ] || { echo "no $src_bin/$b: build first (cargo build --release --bins)" >&2; exit 2; }
done

tag=$$
labels=(m1 m2 m3 w1 w2)
declare -A ip ns veth
br="cfwbr$tag"
net=""
for x in $(seq $((tag % 200 + 20)) 254) $(seq 20 254); do   # a 10.203.X.0/24 nothing uses
    ip -4 -o addr show | grep -q " 10\.203\.$x\." && continue
    ip -4 route show table all | grep -q "10\.203\.$x\." && continue
    net="10.203.$x"; break
done
[ -n "$net" ] || { echo "no free 10.203.X.0/24" >&2; exit 1; }
work="$(mktemp -d "/tmp/cfdocs-$tag.XXXX")"
addr_of() { echo "$net.$((100 + ${1##*.}))"; }   # 10.0.0.N -> 10.203.X.(100+N)
subst() { NET="$net" perl -pe 's/\b10\.0\.0\.(\d+)\b/"$ENV{NET}." . (100 + $1)/ge'; }
host_of() { local l; for l in "${labels[@]}"; do if [ "${ip[$l]}" = "$(addr_of "$1")" ]; then echo "$l"; fi; done; }

cleanup() {
    local rc=$? l p pids
    set +e
    for _ in $(seq 25); do   # a dying worker may just have started another: until none is left
        pids=""
        for l in "${labels[@]}"; do [ -n "${ns[$l]:-}" ] && pids+=" $(ip netns pids "${ns[$l]}" 2>/dev/null | tr '\n' ' ')"; done
        [ -z "${pids// /}" ] && break
        for p in $pids; do kill -KILL "$p" 2>/dev/null; done
        sleep 0.2
    done
    for l in "${labels[@]}"; do
        [ -n "${ns[$l]:-}" ] || continue
        ip link del "${veth[$l]}" 2>/dev/null
        ip netns del "${ns[$l]}" 2>/dev/null
    done
    ip link del "$br" 2>/dev/null
    if [ "$rc" -ne 0 ] || [ "${KEEP:-0}" = 1 ]; then echo "kept $work (each host's run/ has its logs)"; else rm -rf "$work"; fi
    if [ "$rc" -eq 0 ]; then echo "walkthrough: PASSED"; else echo "walkthrough: FAILED (exit $rc)"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n=== %s\n' "$*"; }
die() { echo "FAILED: $*" >&2; exit 1; }
# on HOST CMD: runs the shell command CMD in HOST's namespace and directory, as the README's reader
# would there (with CHATFEED_BIN_DIR exported, step 1).
on() {
    local h="$1"; shift
    echo "[$h ${ip[$h]}]\$ $*"
    ip netns exec "${ns[$h]}" env CHATFEED_BIN_DIR="$bin" bash -c "cd '$work/$h' && $*"
}

# Hosts: a bridge, and per host a namespace with lo and eth0 (a veth into the bridge).
ip link add "$br" type bridge
ip addr add "$net.1/24" dev "$br"
ip link set "$br" up
for l in "${labels[@]}"; do
    case $l in m?) n=${l#m} ;; w?) n=$((10 + ${l#w})) ;; esac
    ip[$l]="$(addr_of "10.0.0.$n")"; ns[$l]="cfw$tag-$l"; veth[$l]="cfw$tag$l"
    ip netns add "${ns[$l]}"
    ip link add "${veth[$l]}" type veth peer name eth0 netns "${ns[$l]}"
    ip link set "${veth[$l]}" master "$br" up
    ip -n "${ns[$l]}" addr add "${ip[$l]}/24" dev eth0
    ip -n "${ns[$l]}" link set eth0 up
    ip -n "${ns[$l]}" link set lo up
    mkdir -p "$work/$l"
done
echo "hosts on $net.0/24 (bridge $br), directories in $work:"
for l in "${labels[@]}"; do echo "  $l ${ip[$l]} (10.0.0.$(( ${ip[$l]##*.} - 100 ))) netns ${ns[$l]}"; done

section="$(awk '/^## Deploying on several hosts/{on=1;next} /^## /{on=0} on' "$repo/README.md")"
[ -n "$section" ] || die "README.md has no section '## Deploying on several hosts'"
# block LANG N: the Nth fenced block of the section whose fence names LANG, unindented.
block() { awk -v lang="$1" -v want="$2" '/^ *```/{ if (inb) { inb=0; next } if ($0 ~ "```" lang "$") { if (++n == want) inb=1 } next } inb' <<<"$section" | sed -E 's/^   //'; }
# host_cmds: a block's "10.0.0.N$ command  # comment" lines, as "10.0.0.N command".
host_cmds() { sed -nE 's/^ *(10\.0\.0\.[0-9]+)\$ +([^#]*[^# ]) *(#.*)?$/\1 \2/p'; }
# inline PATTERN: the first `code` span of the section that matches PATTERN, addresses replaced.
inline() { grep -oE '`[^`]*`' <<<"$section" | tr -d '`' | grep -E "$1" | head -1 | subst; }

say "step 1: the three release binaries, copied once; scripts/ on every host"
bin="$work/bin"; mkdir -p "$bin"
cp "$src_bin/chatfeed-master" "$src_bin/chatfeed-worker" "$src_bin/chatfeed" "$bin/"
for l in "${labels[@]}"; do cp -r "$repo/scripts" "$work/$l/"; done
echo "CHATFEED_BIN_DIR=$bin: $(ls "$bin" | tr '\n' ' ')"

say "step 2: one chatfeed.toml (the README's example) on every host; check-config"
block toml 1 | subst > "$work/chatfeed.toml"
grep -q '^\[\[member\]\]' "$work/chatfeed.toml" || die "no chatfeed.toml example in step 2"
for l in "${labels[@]}"; do cp "$work/chatfeed.toml" "$work/$l/"; done
cat "$work/chatfeed.toml"
on m1 "$(inline 'chatfeed-master check-config')"

say "step 2, certificates: the README's certs command, run once; each host's directory copied to its tls/"
certs_cmd="$(block sh 1 | subst)"
grep -q 'chatfeed-master certs' <<<"$certs_cmd" || die "no certs command in step 2"
echo "\$ $certs_cmd"
(cd "$work" && CHATFEED_BIN_DIR="$bin" bash -c "$certs_cmd") || die "the certs command"
for l in "${labels[@]}"; do
    [ -f "$work/certs/$l/worker.pem" ] || die "no worker certificate for host $l in certs/$l/"
    cp -rp "$work/certs/$l" "$work/$l/tls"
done
ls -l "$work/certs" "$work/m1/tls"

say "step 3: the ports: nothing to open (no firewall between the namespaces)"

say "step 4: the masters, one per host, at the same time"
pids=()
while read -r a cmd; do
    h="$(host_of "$a")"; [ -n "$h" ] || die "step 4: no host for $a"
    on "$h" "$(subst <<<"$cmd")" > "$work/$h/step4.out" 2>&1 &
    pids+=($!)
done < <(block sh 2 | host_cmds)
[ ${#pids[@]} -eq 3 ] || die "step 4 should have three host commands, found ${#pids[@]}"
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
for l in m1 m2 m3; do cat "$work/$l/step4.out"; done
[ $fail = 0 ] || die "step 4"

say "step 5: the workers: each worker host's address in its chatfeed.toml, the masters in default_master_address"
masters="$(subst <<<"10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001")"
for l in w1 w2; do
    sed -i -E "s|^listen = \"[^\"]*\"|listen = \"${ip[$l]}:0\"|" "$work/$l/chatfeed.toml"
    sed -i -E "/^listen = /a metrics_listen = \"${ip[$l]}:9200-9209\"" "$work/$l/chatfeed.toml"
    echo "$masters" > "$work/$l/default_master_address"
    echo "[$l] default_master_address: $(cat "$work/$l/default_master_address"); chatfeed.toml:"
    sed -n '/^\[worker\]/,/^$/p' "$work/$l/chatfeed.toml"
done
n=0
while read -r a cmd; do
    h="$(host_of "$a")"; [ -n "$h" ] || die "step 5: no host for $a"
    on "$h" "$(subst <<<"$cmd") </dev/null" || die "step 5 on $h"
    n=$((n + 1))
done < <(block sh 3 | host_cmds)
[ $n -eq 2 ] || die "step 5 should have two host commands, found $n"

status_cmd="$(inline 'chatfeed --master .* status$')"
[ -n "$status_cmd" ] || die "no status command in step 6"
# check_status HOST MEMBERS_UP WORKERS: step 6's status command on HOST; fails unless it shows a
# leader, MEMBERS_UP members up and WORKERS workers (retried for 10 s while they settle).
check_status() {
    local out up workers
    for _ in $(seq 20); do
        out="$(ip netns exec "${ns[$1]}" env CHATFEED_BIN_DIR="$bin" bash -c "cd '$work/$1' && $status_cmd" 2>&1)" || true
        up="$(grep -cE '^[0-9]+ .* (leader\*|replica) ' <<<"$out" || true)"
        workers="$(grep -cE '^w-' <<<"$out" || true)"
        if grep -q 'leader\*' <<<"$out" && [ "$up" = "$2" ] && [ "$workers" = "$3" ]; then
            echo "[$1 ${ip[$1]}]\$ $status_cmd"; echo "$out"; return 0
        fi
        sleep 0.5
    done
    echo "$out"; die "status should show $2 members up and $3 workers (saw $up and $workers)"
}
say "step 6: status (three members, six workers)"
check_status m1 3 6

say "step 6: clients in other namespaces: alice posts on w2, bob follows her and streams on w1"
# (in the host's directory, as a reader there would: the client takes the CA from its chatfeed.toml)
cli() { local h="$1"; shift; (cd "$work/$h" && ip netns exec "${ns[$h]}" "$bin/chatfeed" --master "$masters" "$@"); }
cli w2 --user alice post "alice's first post"
cli w1 --user bob follow alice
echo "[w1] $bin/chatfeed --master $masters --user bob timeline --follow &"
cli w1 --user bob timeline --follow > "$work/bob.stream" 2>&1 &
sleep 1
echo "[w2] $bin/chatfeed --master $masters --user alice post \"hello from w2 across namespaces\""
cli w2 --user alice post "hello from w2 across namespaces"
seen() {  # seen TEXT: waits up to 10 s for TEXT on bob's stream
    for _ in $(seq 50); do grep -q "$1" "$work/bob.stream" && return 0; sleep 0.2; done
    cat "$work/bob.stream" >&2; die "\"$1\" did not reach bob's stream"
}
seen "hello from w2"
echo "bob's stream on w1:"; cat "$work/bob.stream"
client_cmd="$(inline '^scripts/ClientStartup.sh alice ')"
[ -n "$client_cmd" ] || die "no ClientStartup.sh command in step 6"
out="$(on w2 "printf 'FOLLOW bob\\nLIST\\nEXIT\\n' | $client_cmd")"; echo "$out"
grep -q "following: bob" <<<"$out" || die "the interactive client did not work"

say "step 7: SIGTERM one worker of w1, then scripts/WorkerStartup.sh there again"
wpid="$(cat "$(ls "$work/w1/run/"worker-*.pid | head -1)")"
on w1 "kill $wpid"
for _ in $(seq 50); do kill -0 "$wpid" 2>/dev/null || break; sleep 0.2; done
kill -0 "$wpid" 2>/dev/null && die "worker $wpid still running 10 s after SIGTERM"
sleep 3   # past dead_after_ms and a pool check: a stopped worker is not replaced
check_status m1 3 5
cli w2 --user alice post "after a worker left"
seen "after a worker left"
on w1 "scripts/WorkerStartup.sh </dev/null"
check_status m1 3 6

say "step 7: SIGTERM the active master, then scripts/MasterStartup.sh --node N on its host"
leader="$(cli m1 status | sed -nE 's/^leader: member ([0-9]+).*/\1/p')"
[ -n "$leader" ] || die "no leader"
lpid="$(cat "$work/m$leader/run/master-$leader.pid")"
on "m$leader" "kill $lpid"
for _ in $(seq 100); do kill -0 "$lpid" 2>/dev/null || break; sleep 0.2; done
kill -0 "$lpid" 2>/dev/null && die "member $leader still running 20 s after SIGTERM"
other=$(( leader % 3 + 1 ))
cli w2 --user alice post "after the active master left"
seen "after the active master left"
sleep 3   # past supervisor.restart_after_ms: nothing restarts it across hosts
check_status "m$other" 2 6
on "m$leader" "scripts/MasterStartup.sh --node $leader </dev/null"
check_status "m$other" 3 6
cli w2 --user alice post "after the member came back"
seen "after the member came back"
echo "bob's stream on w1:"; cat "$work/bob.stream"

say "step 7: scripts/stop.sh on every host (workers first)"
for l in w1 w2 m1 m2 m3; do on "$l" "scripts/stop.sh"; done
for l in "${labels[@]}"; do
    left=""
    for p in $(ip netns pids "${ns[$l]}"); do
        if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q 'chatfeed-'; then left+=" $p"; fi
    done
    [ -z "$left" ] || die "chatfeed processes left on $l after scripts/stop.sh: $left"
done
echo "no chatfeed process left on any host"
