#!/usr/bin/env bash
# Times one start and one clean stop of the daemon on an existing data
# folder: seconds from launch to health SERVING (the index loaded), RSS
# once SERVING, and seconds from one SIGTERM to exit (the graph saved).
# Run it twice: the first start after an older lookalike, or after a
# kill -9, counts the store and may rebuild the graph.
#
# Usage:  scripts/time-restart.sh DATA_DIR [--cold] [--bin PATH] [--port N]
#   --cold   drop the page cache first (root only): a start after a reboot
#   --bin    the lookalike binary (default target/release/lookalike)
# The daemon's log goes to DATA_DIR.time-restart.log.
set -euo pipefail

usage() { sed -n '2,12p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
dir=$1; shift
cold=false
bin=$(dirname "$0")/../target/release/lookalike
port=50998
while [ $# -gt 0 ]; do
  case $1 in
    --cold) cold=true ;;
    --bin) bin=$2; shift ;;
    --port) port=$2; shift ;;
    *) usage ;;
  esac
  shift
done
[ -d "$dir" ] || { echo "no data folder at $dir" >&2; exit 2; }
[ -x "$bin" ] || { echo "no lookalike binary at $bin (cargo build --release)" >&2; exit 2; }

if $cold; then
  sync
  echo 3 > /proc/sys/vm/drop_caches || { echo "--cold needs root" >&2; exit 2; }
fi
log=$dir.time-restart.log
now() { date +%s.%N; }
started=$(now)
"$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" > "$log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT
until "$bin" health --server "http://127.0.0.1:$port" > /dev/null 2>&1; do
  kill -0 $pid 2>/dev/null || { echo "the daemon exited; see $log" >&2; exit 1; }
  sleep 0.05
done
serving=$(now)
rss_kib=$(ps -o rss= -p $pid)
kill -TERM $pid
while kill -0 $pid 2>/dev/null; do sleep 0.05; done
stopped=$(now)
trap - EXIT
printf 'start to SERVING %.1f s   RSS %d MiB   clean stop %.1f s   (cold page cache: %s)\n' \
  "$(echo "$serving - $started" | bc)" $((rss_kib / 1024)) \
  "$(echo "$stopped - $serving" | bc)" "$cold"
grep -E "database opened|index loaded|saved index|rebuilding" "$log" | sed 's/^[^ ]* *//' || true
