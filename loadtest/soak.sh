#!/usr/bin/env bash
# A bounded soak: moderate load through hybrid-lb for a while, one of three
# upstreams flapping (killed and restarted every FLAP seconds). Reports requests,
# errors, and hybrid-lb's RSS at start and end. Traffic goes only to 127.0.0.1.
#
#   loadtest/soak.sh [minutes, default 10]      env: FLAP (seconds, default 15), CONNS (default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
FLAP=${FLAP:-15}
CONNS=${CONNS:-8}
command -v wrk >/dev/null || { echo "soak: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }
cargo build --release --quiet --workspace --bins
BIN=target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
. loadtest/common.sh
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

B1=$(free_port); B2=$(free_port); B3=$(free_port); P=$(free_port); D=$(free_port)
"$BIN/mock-backend" "$B1" --name s1 --latency-ms 5 --jitter-ms 2 >/dev/null & pids+=($!)
"$BIN/mock-backend" "$B2" --name s2 --latency-ms 5 --jitter-ms 2 >/dev/null & pids+=($!)
"$BIN/mock-backend" "$B3" --name flappy --latency-ms 5 --jitter-ms 2 >/dev/null & FLAPPY=$!
disown "$FLAPPY"  # the flapper kills and restarts it; no job report
pingora_keys "$work/lb.yaml"
cat >> "$work/lb.yaml" <<CONF
lb:
  listen: ["127.0.0.1:$P"]
  algorithm: dynamic
  retries: 2
  health_check: { interval: 1s, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }
  circuit_breaker: { fail_threshold: 3, open_time: 2s, max_open_time: 10s }
  upstreams:
    - { name: s1, addr: "127.0.0.1:$B1", weight: 1 }
    - { name: s2, addr: "127.0.0.1:$B2", weight: 1 }
    - { name: flappy, addr: "127.0.0.1:$B3", weight: 1 }
dashboard:
  listen: "127.0.0.1:$D"
CONF
RUST_LOG=warn "$BIN/hybrid-lb" -c "$work/lb.yaml" 2>"$work/lb.log" & LB=$!; pids+=($LB)
wait_port "$P"; wait_port "$B3"
RSS0=$(rss_mb "$LB")
echo "soak: ${MINUTES} min, wrk -t1 -c$CONNS, upstream 'flappy' killed and restarted every ${FLAP}s; RSS at start ${RSS0} MB"

(
  end=$((SECONDS + MINUTES * 60))
  up=1
  while [ $SECONDS -lt $end ]; do
    sleep "$FLAP"
    if [ $up = 1 ]; then kill -KILL "$FLAPPY" 2>/dev/null || true; wait "$FLAPPY" 2>/dev/null || true; up=0
    else "$BIN/mock-backend" "$B3" --name flappy --latency-ms 5 --jitter-ms 2 >/dev/null & FLAPPY=$!; up=1; fi
  done
  kill -KILL "$FLAPPY" 2>/dev/null || true; wait "$FLAPPY" 2>/dev/null || true
) 2>/dev/null & FLAPPER=$!; pids+=($FLAPPER)

out=$(wrk -t1 -c"$CONNS" -d"$((MINUTES * 60))s" --timeout 5s "http://127.0.0.1:$P/")
RSS1=$(rss_mb "$LB")
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
sockerr=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' <<<"$out"); sockerr=${sockerr:-0}
echo "$out" | sed -n '/Latency/,/Transfer/p'
echo "soak: $reqs requests, $non2xx non-2xx answers, $sockerr socket errors; RSS ${RSS0} MB -> ${RSS1} MB"
cat > "$work/per_upstream.py" <<'PY'
import json
import sys

for u in json.load(sys.stdin)["upstreams"]:
    print(f"  {u['name']}: {u['requests_total']} responses, {u['errors_total']} failures, "
          f"{u['retries_total']} retried, health {u['health']}, breaker {u['breaker']}")
PY
curl -s "http://127.0.0.1:$D/api/state" | python3 "$work/per_upstream.py"
