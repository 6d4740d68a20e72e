#!/usr/bin/env bash
# Stops every chatfeed process this checkout started, by the pid files in its run directory:
# SIGTERM first (a worker moves its clients to other workers, an active master hands its
# leadership to a replica), SIGKILL for whatever is still running after the deadline. Workers
# stop before masters, so they can still tell the active master they are leaving.
#   scripts/stop.sh [run_dir]    (default: run/ at the checkout's root)
#   CHATFEED_STOP_DEADLINE=S     seconds to wait for each group before SIGKILL (default 10)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_dir="${1:-$root/run}"
deadline_s="${CHATFEED_STOP_DEADLINE:-10}"
shopt -s nullglob
stopped_any=0

# stop_group GLOB: SIGTERM every live chatfeed process with a pid file matching GLOB, wait until
# they exit or the deadline passes, then SIGKILL the rest.
stop_group() {
  local pids=() f pid
  for f in "$run_dir"/$1; do
    pid="$(cat "$f" 2>/dev/null || true)"
    # Only a live chatfeed process: a stale pid file may name a reused pid.
    if [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -q chatfeed; then
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid") && echo "stopping $(basename "$f" .pid) (pid $pid)"
    else
      rm -f "$f"
    fi
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  stopped_any=1
  local end=$(( $(date +%s) + deadline_s )) alive
  while :; do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && return 0
    [ "$(date +%s)" -ge "$end" ] && break
    sleep 0.2
  done
  for pid in "${alive[@]}"; do echo "pid $pid did not stop in ${deadline_s}s: killing it"; kill -KILL "$pid" 2>/dev/null; done
}

stop_group 'worker-*.pid'
stop_group 'master-*.pid'
rm -f "$run_dir"/*.pid
if [ "$stopped_any" -eq 0 ]; then echo "nothing running from $run_dir"; else echo "stopped"; fi
