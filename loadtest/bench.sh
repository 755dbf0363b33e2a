#!/usr/bin/env bash
# Side-by-side throughput on loopback, in one run with one load generator:
# direct to a mock backend, then through hybrid-lb (one worker thread).
# Usage: loadtest/bench.sh [seconds per run, default 10]
# Needs wrk (apt-get install -y wrk). Sends traffic only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${CONNS:-64}
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }
cargo build --release --workspace --quiet
BIN=${HLB_BIN:-target/release/hybrid-lb}
MOCK=target/release/mock-backend

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

BACKEND=$(free_port)
"$MOCK" "$BACKEND" --name b1 >/dev/null & pids+=($!)
wait_port "$BACKEND"

run() { # name url pid-to-measure
  local name=$1 url=$2 pid=${3:-}
  wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null 2>&1 || true   # warm-up
  local t0=0
  [ -n "$pid" ] && t0=$(awk '{print $14+$15}' /proc/"$pid"/stat)
  local out; out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$url")
  local rps p50 p99 cpu_us=""
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  if [ -n "$pid" ]; then
    local t1 reqs hz
    t1=$(awk '{print $14+$15}' /proc/"$pid"/stat); hz=$(getconf CLK_TCK)
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu_us=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", (b-a)/hz*1e6/n}')
  fi
  printf '%-28s %10s rps  p50 %-9s p99 %-9s cpu/req %s us\n' "$name" "$rps" "$p50" "$p99" "${cpu_us:--}"
  echo "$name $rps" >> "$work/results"
}

start_lb() { # name algorithm
  local port dash; port=$(free_port); dash=$(free_port)
  cat > "$work/$1.yaml" <<YAML
version: 1
threads: 1
work_stealing: false
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
pid_file: $work/$1.pid
upgrade_sock: $work/$1.sock
lb:
  listen: ["127.0.0.1:$port"]
  algorithm: $2
  upstreams:
    - { name: b1, addr: "127.0.0.1:$BACKEND", weight: 1 }
dashboard:
  listen: "127.0.0.1:$dash"
YAML
  RUST_LOG=warn "$BIN" -c "$work/$1.yaml" >/dev/null 2>&1 & LB_PID=$!; pids+=($LB_PID)
  LB_PORT=$port; wait_port "$port"
}

echo "wrk -t1 -c$CONNS -d${DUR}s, loopback, $(nproc) cores"
run "direct to backend" "http://127.0.0.1:$BACKEND/"
start_lb weighted weighted
run "hybrid-lb weighted" "http://127.0.0.1:$LB_PORT/" "$LB_PID"
kill -INT "$LB_PID"

awk 'NR==1 {d=$NF} {printf "  %-26s %.2f of direct\n", substr($0,1,length($0)-length($NF)-1), $NF/d}' "$work/results"
