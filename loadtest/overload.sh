#!/usr/bin/env bash
# Overload, side by side in one run: three mock upstreams that each serve
# CAPACITY requests at once at 20 ms (beyond that they share their time, so
# more load only queues), offered 1.5× what they can serve together. nginx
# with `max_conns` at the capacity (open source nginx has no queue: the rest
# get 502 at once), HAProxy leastconn with `maxconn` at the capacity and
# `timeout queue` of QUEUE_MS (both tuned to the known capacity), and
# hybrid-lb with `concurrency: { adaptive: true, queue_timeout: QUEUE_MS }`,
# which is not told the capacity and learns it.
#
# The load is open loop (load-client: requests start on schedule whatever
# the answers take, as users arrive). Each turn starts its system fresh,
# measures it unloaded (a third of the capacity) for the reference p99,
# warms up overloaded for WARM seconds, then measures overloaded. Reports
# goodput (answers 2xx a second), served p50/p99 and p99 ÷ the system's own
# unloaded p99, refusals (502/503) and how fast they came (p50/p99).
# ROUNDS rounds, systems in a rotating order, medians over rounds. Traffic
# goes only to 127.0.0.1; every run is bounded.
#
#   loadtest/overload.sh [seconds measured per turn, default 10]
#   env: ROUNDS (default 2), WARM (default 5), CAPACITY (default 8 per
#        upstream), FACTOR (offered ÷ capacity, default 1.5), QUEUE_MS
#        (default 10), ONLY (a regex of the systems to run),
#        RESULTS (default loadtest/results/overload.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${ROUNDS:-2}
WARM=${WARM:-5}
CAPACITY=${CAPACITY:-8}
FACTOR=${FACTOR:-1.5}
QUEUE_MS=${QUEUE_MS:-10}
LATENCY_MS=20
RESULTS=${RESULTS:-loadtest/results/overload.csv}
mkdir -p "$(dirname "$RESULTS")"

. loadtest/common.sh
install_peers
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins
BIN=target/release
start_workspace

PORTS=""
for n in 1 2 3; do
  p=$(free_port)
  "$BIN/mock-backend" "$p" --name "b$n" --latency-ms $LATENCY_MS --jitter-ms 2 --capacity "$CAPACITY" >/dev/null & pids+=($!)
  wait_port "$p"
  PORTS="$PORTS $p"
done
# What the three serve together, a second.
CAN=$((3 * CAPACITY * 1000 / LATENCY_MS))
OFFERED=$(awk -v c="$CAN" -v f="$FACTOR" 'BEGIN {printf "%d", c * f}')
UNLOADED=$((CAN / 3))

systems=("nginx max_conns" "haproxy maxconn" "hybrid-lb dynamic" "hybrid-lb p2c")
if [ -n "${ONLY:-}" ]; then
  mapfile -t systems < <(printf '%s\n' "${systems[@]}" | grep -E "$ONLY")
fi
# Starts system $1 → SPID, SPORT.
start_system() {
  SPORT=$(free_port)
  case $1 in
    nginx*)
      NGINX_SERVER_OPTS="max_conns=$CAPACITY" nginx_conf "$work/nginx.conf" "$work" "$SPORT" "$PORTS"
      nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx.err" & SPID=$! ;;
    haproxy*)
      HAPROXY_BALANCE=leastconn HAPROXY_SERVER_OPTS="maxconn $CAPACITY" \
        HAPROXY_BACKEND_OPTS="timeout queue ${QUEUE_MS}ms" haproxy_cfg "$work/haproxy.cfg" "$SPORT" "$PORTS"
      haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & SPID=$! ;;
    hybrid-lb*)
      hybrid_config "$work/hlb.yaml" "$SPORT" "$(free_port)" "${1#hybrid-lb }" off "$PORTS" \
        "  concurrency: { adaptive: true, queue_timeout: ${QUEUE_MS}ms }"
      RUST_LOG=error "$BIN/hybrid-lb" -c "$work/hlb.yaml" >"$work/hlb.log" 2>&1 & SPID=$! ;;
  esac
  pids+=($SPID)
  wait_port "$SPORT"
}
load() { "$BIN/load-client" "http://127.0.0.1:$SPORT/" --rate "$1" --seconds "$2" --timeout-ms 10000; }
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d[sys.argv[2]])' "$1" "$2"; }

# One turn of system $1: appends "unloaded_p99 goodput p50 p99 refused refused_p50 refused_p99 offered".
turn() {
  local sys=$1 idle out
  start_system "$sys"
  idle=$(load "$UNLOADED" 5)
  load "$OFFERED" "$WARM" >/dev/null
  out=$(load "$OFFERED" "$DUR")
  echo "$sys: $out" >> "$work/raw"
  [ -n "${SHOW:-}" ] && echo "$sys: $out" >&2
  stop_system
  echo "$(field "$idle" served_p99_ms) $(field "$out" goodput_per_sec) $(field "$out" served_p50_ms) \
$(field "$out" served_p99_ms) $(field "$out" refused) $(field "$out" refused_p50_ms) $(field "$out" refused_p99_ms) \
$(field "$out" offered) $(field "$out" other_status) $(field "$out" errors)" >> "$work/turns.${sys// /_}"
}

echo "3 upstreams × capacity $CAPACITY at ${LATENCY_MS} ms (together $CAN/s); offered $OFFERED/s open loop;"
echo "unloaded reference $UNLOADED/s; ${WARM}s warm-up + ${DUR}s measured per turn, $ROUNDS rounds, $(nproc) cores"
count=${#systems[@]}
for r in $(seq "$ROUNDS"); do
  for k in $(seq 0 $((count - 1))); do turn "${systems[$(((k + r - 1) % count))]}"; done
  echo "round $r of $ROUNDS done" >&2
done

col() { awk -v c="$1" '{print $c}' "$2" | median; }
echo "system,unloaded_p99_ms,goodput_per_sec,served_p50_ms,served_p99_ms,p99_vs_unloaded,refused_pct,refused_p50_ms,refused_p99_ms,other_or_errors" > "$RESULTS"
for sys in "${systems[@]}"; do
  f="$work/turns.${sys// /_}"
  idle=$(col 1 "$f"); p99=$(col 4 "$f")
  refused=$(awk '{r+=$5; n+=$8} END {printf "%.1f", n ? r*100/n : 0}' "$f")
  other=$(awk '{o+=$9+$10} END {print o}' "$f")
  ratio=$(awk -v a="$p99" -v b="$idle" 'BEGIN {printf "%.2f", (b > 0 ? a/b : 0)}')
  echo "$sys,$idle,$(col 2 "$f"),$(col 3 "$f"),$p99,$ratio,$refused,$(col 6 "$f"),$(col 7 "$f"),$other" >> "$RESULTS"
done
echo
echo "| system | unloaded p99 ms | goodput /s | served p50 ms | served p99 ms | p99 ÷ unloaded | refused % | refusal p50 ms | refusal p99 ms | other |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -F, 'NR > 1 {printf "| %s | %s | %s | %s | %s | %s× | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}' "$RESULTS"
