#!/usr/bin/env bash
# Stops every chatfeed process this checkout started, by the pid files in its run directory:
# SIGTERM first, SIGKILL for whatever is still running after the deadline.
#   scripts/stop.sh [run_dir]    (default: run/ at the checkout's root)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_dir="${1:-$root/run}"
deadline_s="${CHATFEED_STOP_DEADLINE:-10}"
shopt -s nullglob
pids=()
for f in "$run_dir"/*.pid; do
  pid="$(cat "$f" 2>/dev/null || true)"
  # Only a live chatfeed process: a stale pid file may name a reused pid.
  if [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -q chatfeed; then
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid") && echo "stopping $(basename "$f" .pid) (pid $pid)"
  else
    rm -f "$f"
  fi
done
[ ${#pids[@]} -eq 0 ] && { echo "nothing running from $run_dir"; exit 0; }
end=$(( $(date +%s) + deadline_s ))
while [ "$(date +%s)" -lt "$end" ]; do
  alive=()
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
  [ ${#alive[@]} -eq 0 ] && { echo "stopped"; rm -f "$run_dir"/*.pid; exit 0; }
  sleep 0.2
done
for pid in "${alive[@]}"; do echo "pid $pid did not stop in ${deadline_s}s: killing it"; kill -KILL "$pid" 2>/dev/null; done
rm -f "$run_dir"/*.pid
